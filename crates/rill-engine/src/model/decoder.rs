//! The decoder-only transformer every supported architecture is an instance of: token embedding,
//! blocks of (RMSNorm, rotary attention over the paged KV cache, residual; RMSNorm, gated
//! feed-forward network, residual), final norm, output projection. What differs between
//! architectures (RoPE mode, FFN activation, QK-norm, QKV biases, post-norms, embedding and query
//! scales, sliding windows, fused projections) is data: [`Features`] and [`ModelConfig`], which
//! each architecture's module reads from the GGUF metadata. This module holds the one forward
//! pass and the tensor loading they share.
//!
//! A step is a handful of parallel regions per layer: fused Q/K/V projection (+ bias, QK-norm,
//! RoPE, KV-cache write), attention, output projection (+ post-norm, residual), fused gate/up (+
//! activation), down projection (+ post-norm, residual). Each projection reads every weight row
//! once per block of up to 64 tokens (once for a whole decode batch), and a prefill region is
//! split over weight rows and token blocks so both threads stay busy to its end.

use std::sync::Arc;

use memmap2::Mmap;

use super::ops::{self, resize, Workspace};
use super::{FfnActivation, ForwardBatch, ForwardCtx, ModelConfig, RopeMode};
use crate::error::{EngineError, Result};
use crate::gguf::{GgmlType, GgufFile};
use crate::kv_cache::{AttendQuery, BlockId, KvCache};
use crate::quant::{act_row_chunk, Kernels, QMatrix, QuantActs};
use crate::threadpool::SharedMut;

/// How an architecture departs from the plain llama block. Optional tensors named here are
/// required when their flag is set (a file without them is refused, naming the tensor).
#[derive(Debug, Clone)]
pub struct Features {
    /// How RoPE pairs dimensions.
    pub rope: RopeMode,
    /// The feed-forward gate's activation.
    pub activation: FfnActivation,
    /// Embeddings are multiplied by this after the look-up (Gemma: sqrt(dim)).
    pub embed_scale: Option<f32>,
    /// Queries are multiplied by this after RoPE and attention then scales scores by 1, as
    /// llama.cpp's graphs for Gemma and Phi-3 do; None: scores are scaled by 1/sqrt(head_dim).
    pub query_scale: Option<f32>,
    /// Per-head RMSNorm of queries and keys before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// Biases on the Q/K/V projections (`attn_q.bias`, ...).
    pub qkv_bias: bool,
    /// RMSNorm of the attention and FFN outputs before their residual adds
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Final logits become cap * tanh(logits / cap).
    pub logit_softcap: Option<f32>,
}

/// A row range of a weight matrix: the whole of it, or one part of a fused one (Phi-3's
/// `attn_qkv`, `ffn_up` holding gate and up).
#[derive(Clone)]
struct Proj {
    m: QMatrix<'static>,
    row0: usize,
}

impl Proj {
    /// Runs rows `rows` (relative to this projection) for the activation rows `toks` and hands
    /// each run of outputs to `out(t, row, values)` with `row` relative too.
    fn matmul_block(
        &self,
        k: &Kernels,
        acts: &QuantActs,
        rows: std::ops::Range<usize>,
        toks: std::ops::Range<usize>,
        out: &mut dyn FnMut(usize, usize, &[f32]),
    ) {
        let r0 = self.row0;
        self.m.matmul_block(
            k,
            acts,
            r0 + rows.start..r0 + rows.end,
            toks,
            &mut |t, r, v| out(t, r - r0, v),
        );
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Proj,
    wk: Proj,
    wv: Proj,
    /// Q, K, V biases (concatenated like the outputs), when the architecture has them.
    qkv_bias: Option<[Vec<f32>; 3]>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: QMatrix<'static>,
    attn_post_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Proj,
    w_up: Proj,
    w_down: QMatrix<'static>,
    ffn_post_norm: Option<Vec<f32>>,
    /// Index of this layer's RoPE parameters in `Decoder::rope_sets`.
    rope_set: usize,
}

/// A loaded model of any supported architecture.
pub struct Decoder {
    /// Hyperparameters.
    pub cfg: ModelConfig,
    features: Features,
    tok_embd: QMatrix<'static>,
    output: QMatrix<'static>,
    output_norm: Vec<f32>,
    rope_freqs: Option<Vec<f32>>,
    /// Distinct (base, freq_scale) pairs of the layers' RoPE (Gemma 3: local and global).
    rope_sets: Vec<(f32, f32)>,
    layers: Vec<Layer>,
    /// Keeps the mapping alive for the `'static` slices above. Declared last: dropped last.
    _map: Arc<Mmap>,
}

/// Rows per chunk for projection regions. Long chunks keep each thread on one sequential weight
/// stream, which is what single-stream decode (memory-latency bound) needs. Measured with
/// interleaved `rill bench-engine -t 2` runs: tg128 ~108 tok/s at 32 rows, ~128 at 64, ~134 at
/// 128; prefill and batch-16 decode unchanged.
const ROW_CHUNK: usize = 128;
const OUTPUT_ROW_CHUNK: usize = 512;
/// Activation rows per chunk of a projection region over a large batch (prefill). Row chunks
/// alone leave a 640-row matrix 5 chunks, so one of 2 threads idles for a fifth of the region;
/// splitting activation rows as well gives a pp512 layer 30-40 chunks. Decode batches (up to
/// this many rows) keep one activation block per chunk.
const TOK_CHUNK: usize = 64;

/// Query tokens per attention call: consecutive tokens of one sequence share one widening of
/// each key and value row (`Kernels::attend_block`). Prefill of 512 tokens then has 32 runs per
/// KV head, enough chunks for both threads across the triangle of causal work. 16 against 8:
/// Q4_1 pp512 +1.5-2.6% on the AVX-512 tier since the keys are widened transposed (dearer per
/// key); 32 gained nothing more.
const ATT_RUN_TOKENS: usize = 16;

/// Splits a batch's tokens into runs of at most `max` consecutive tokens of one sequence
/// (same block table, consecutive positions): the units of attention calls.
fn attention_runs(
    tables: &[&[BlockId]],
    positions: &[usize],
    max: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for t in 0..positions.len() {
        match runs.last_mut() {
            Some(r)
                if r.len() < max
                    && std::ptr::eq(tables[t], tables[t - 1])
                    && positions[t] == positions[t - 1] + 1 =>
            {
                r.end = t + 1
            }
            _ => runs.push(t..t + 1),
        }
    }
    runs
}

/// The chunks of a projection region: `n_row` chunks of weight rows times `n_tok` blocks of
/// activation rows, row chunks varying fastest (both threads then share one activation block).
#[derive(Clone, Copy)]
struct Split2d {
    rows: usize,
    row_chunk: usize,
    n_row: usize,
    t_n: usize,
    tok_chunk: usize,
    n_tok: usize,
}

impl Split2d {
    /// Splits `rows` weight rows by `row_chunk` and `t_n` activation rows into near-equal
    /// blocks of at most [`TOK_CHUNK`] (rounded up to 16, the widest tile kernel).
    fn new(rows: usize, row_chunk: usize, t_n: usize) -> Self {
        let t_n = t_n.max(1);
        let blocks = t_n.div_ceil(TOK_CHUNK);
        let tok_chunk = t_n.div_ceil(blocks).next_multiple_of(16).min(t_n);
        Self {
            rows,
            row_chunk,
            n_row: rows.div_ceil(row_chunk),
            t_n,
            tok_chunk,
            n_tok: t_n.div_ceil(tok_chunk),
        }
    }

    fn n_chunks(&self) -> usize {
        self.n_row * self.n_tok
    }

    /// Weight rows and activation rows of chunk `c`.
    fn chunk(&self, c: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (rc, tc) = (c % self.n_row, c / self.n_row);
        let rows = rc * self.row_chunk..((rc + 1) * self.row_chunk).min(self.rows);
        let toks = tc * self.tok_chunk..((tc + 1) * self.tok_chunk).min(self.t_n);
        (rows, toks)
    }
}

impl Decoder {
    /// Loads the weights of `cfg`'s architecture with `features` from `g`.
    pub fn load(g: &GgufFile, cfg: ModelConfig, features: Features) -> Result<Self> {
        let (dim, hd, ffn) = (cfg.dim, cfg.head_dim, cfg.ffn_dim);
        let map = g.mmap().clone();
        let mat = |name: &str, rows: usize, cols: usize| -> Result<QMatrix<'static>> {
            let t = g.tensor(name)?;
            if t.dims.len() != 2 || t.dims[0] != cols || t.dims[1] != rows {
                return Err(EngineError::BadTensor {
                    name: name.into(),
                    reason: format!("shape {:?}, expected [{cols}, {rows}]", t.dims),
                });
            }
            let bytes = g.tensor_bytes(t);
            // SAFETY: the bytes live in the mmap held by `_map`, which outlives every QMatrix
            // (struct field order) and is never remapped.
            let bytes: &'static [u8] =
                unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
            let m = QMatrix::new(name, t.dtype, rows, cols, bytes)?;
            if m.repacked_bytes() > 0 {
                g.release_tensor_pages(t);
            }
            Ok(m)
        };
        let whole = |name: &str, rows: usize, cols: usize| -> Result<Proj> {
            Ok(Proj {
                m: mat(name, rows, cols)?,
                row0: 0,
            })
        };
        let vecf = |name: &str, n: usize| -> Result<Vec<f32>> {
            let t = g.tensor(name)?;
            if t.n_elements() != n {
                return Err(EngineError::BadTensor {
                    name: name.into(),
                    reason: format!("{} elements, expected {n}", t.n_elements()),
                });
            }
            let mut out = vec![0f32; n];
            match t.dtype {
                GgmlType::F32 | GgmlType::F16 => {
                    let bytes = g.tensor_bytes(t);
                    let m = QMatrix::new(name, t.dtype, 1, n, bytes)?;
                    m.dequantize_row(0, &mut out);
                    Ok(out)
                }
                d => Err(EngineError::UnsupportedTensorType {
                    name: name.into(),
                    dtype: d.name(),
                }),
            }
        };
        let q_dim = cfg.n_heads * hd;
        let kv_dim = cfg.n_kv_heads * hd;
        let mut rope_sets: Vec<(f32, f32)> = Vec::new();
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for (i, la) in cfg.layers.iter().enumerate() {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let has = |s: &str| g.tensors.contains_key(&p(s));
            let (wq, wk, wv) = if has("attn_qkv") {
                let m = mat(&p("attn_qkv"), q_dim + 2 * kv_dim, dim)?;
                let part = |row0| Proj { m: m.clone(), row0 };
                (part(0), part(q_dim), part(q_dim + kv_dim))
            } else {
                (
                    whole(&p("attn_q"), q_dim, dim)?,
                    whole(&p("attn_k"), kv_dim, dim)?,
                    whole(&p("attn_v"), kv_dim, dim)?,
                )
            };
            let (w_gate, w_up) = if has("ffn_gate") {
                (
                    whole(&p("ffn_gate"), ffn, dim)?,
                    whole(&p("ffn_up"), ffn, dim)?,
                )
            } else {
                // Fused: the first half of `ffn_up` is the gate (ggml_swiglu's split).
                let m = mat(&p("ffn_up"), 2 * ffn, dim)?;
                (
                    Proj {
                        m: m.clone(),
                        row0: 0,
                    },
                    Proj { m, row0: ffn },
                )
            };
            let bias = |s: &str, n| vecf(&format!("blk.{i}.{s}.bias"), n);
            let rope = (la.rope_base, la.rope_freq_scale);
            let rope_set = match rope_sets.iter().position(|&r| r == rope) {
                Some(s) => s,
                None => {
                    rope_sets.push(rope);
                    rope_sets.len() - 1
                }
            };
            layers.push(Layer {
                attn_norm: vecf(&p("attn_norm"), dim)?,
                wq,
                wk,
                wv,
                qkv_bias: if features.qkv_bias {
                    Some([
                        bias("attn_q", q_dim)?,
                        bias("attn_k", kv_dim)?,
                        bias("attn_v", kv_dim)?,
                    ])
                } else {
                    None
                },
                q_norm: features
                    .qk_norm
                    .then(|| vecf(&p("attn_q_norm"), hd))
                    .transpose()?,
                k_norm: features
                    .qk_norm
                    .then(|| vecf(&p("attn_k_norm"), hd))
                    .transpose()?,
                wo: mat(&p("attn_output"), dim, q_dim)?,
                attn_post_norm: features
                    .post_norms
                    .then(|| vecf(&p("post_attention_norm"), dim))
                    .transpose()?,
                ffn_norm: vecf(&p("ffn_norm"), dim)?,
                w_gate,
                w_up,
                w_down: mat(&p("ffn_down"), dim, ffn)?,
                ffn_post_norm: features
                    .post_norms
                    .then(|| vecf(&p("post_ffw_norm"), dim))
                    .transpose()?,
                rope_set,
            });
        }
        let tok_embd = mat("token_embd.weight", cfg.vocab_size, dim)?;
        let output = if g.tensors.contains_key("output.weight") {
            mat("output.weight", cfg.vocab_size, dim)?
        } else {
            tok_embd.clone()
        };
        let rope_freqs = if g.tensors.contains_key("rope_freqs.weight") {
            Some(vecf("rope_freqs.weight", cfg.rope_dim / 2)?)
        } else {
            None
        };
        let output_norm = vecf("output_norm.weight", dim)?;
        g.release_resident_pages();
        Ok(Self {
            output_norm,
            cfg,
            features,
            tok_embd,
            output,
            rope_freqs,
            rope_sets,
            layers,
            _map: map,
        })
    }

    /// Bytes of the weight matrices in the file.
    pub fn weight_bytes(&self) -> usize {
        self.matrices().map(|m| m.data.len()).sum()
    }

    /// Heap bytes of the tiles repacked at load.
    pub fn repacked_bytes(&self) -> usize {
        self.matrices().map(|m| m.repacked_bytes()).sum()
    }

    /// Every weight matrix once (a tied output embedding counted with the embedding, a fused
    /// matrix once).
    fn matrices(&self) -> impl Iterator<Item = &QMatrix<'static>> {
        let output = (!self.output.same_as(&self.tok_embd)).then_some(&self.output);
        std::iter::once(&self.tok_embd)
            .chain(output)
            .chain(self.layers.iter().flat_map(|l| {
                let mut v = vec![&l.wq.m];
                for p in [&l.wk, &l.wv] {
                    if !p.m.same_as(&l.wq.m) {
                        v.push(&p.m);
                    }
                }
                v.push(&l.wo);
                v.push(&l.w_gate.m);
                if !l.w_up.m.same_as(&l.w_gate.m) {
                    v.push(&l.w_up.m);
                }
                v.push(&l.w_down);
                v
            }))
    }

    /// Runs the batch, writing K/V into `kv`, and fills `logits` with one row of
    /// `vocab_size` per entry of `batch.logit_rows`.
    pub fn forward(
        &self,
        ctx: &ForwardCtx<'_>,
        ws: &mut Workspace,
        batch: &ForwardBatch<'_>,
        kv: &mut KvCache,
        logits: &mut Vec<f32>,
    ) {
        let (c, f) = (&self.cfg, &self.features);
        let (t_n, dim, hd) = (batch.tokens.len(), c.dim, c.head_dim);
        let (q_dim, kv_dim, ffn) = (c.n_heads * hd, c.n_kv_heads * hd, c.ffn_dim);
        let k = ctx.kernels;
        resize(&mut ws.x, t_n * dim);
        resize(&mut ws.xn, t_n * dim);
        resize(&mut ws.q, t_n * q_dim);
        resize(&mut ws.k, t_n * kv_dim);
        resize(&mut ws.v, t_n * kv_dim);
        resize(&mut ws.att, t_n * q_dim);
        resize(&mut ws.hb, t_n * ffn);
        for (t, &tok) in batch.tokens.iter().enumerate() {
            let row = &mut ws.x[t * dim..(t + 1) * dim];
            self.tok_embd.dequantize_row(tok as usize, row);
            if let Some(s) = f.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        // ropes[set][t]: (cos, sin) per rotated pair of token t under RoPE parameter set `set`.
        let ropes: Vec<Vec<Vec<(f32, f32)>>> = self
            .rope_sets
            .iter()
            .map(|&(base, scale)| {
                batch
                    .positions
                    .iter()
                    .map(|&p| {
                        ops::rope_table(p, c.rope_dim, base, scale, self.rope_freqs.as_deref())
                    })
                    .collect()
            })
            .collect();
        let rope_fn = match f.rope {
            RopeMode::Normal => Kernels::rope_norm,
            RopeMode::Neox => Kernels::rope_neox,
        };
        let score_scale = match f.query_scale {
            Some(_) => 1.0,
            None => 1.0 / (hd as f32).sqrt(),
        };
        // llama.cpp's rotation of heads around a quantized cache.
        let rotation = kv.layout.kv_type.rotation(hd);

        let runs = attention_runs(batch.tables, batch.positions, ATT_RUN_TOKENS);
        for (l_idx, layer) in self.layers.iter().enumerate() {
            let la = &c.layers[l_idx];
            // ---- attention block ----
            self.norm_rows(ctx, &ws.x, &layer.attn_norm, &mut ws.xn, t_n);
            let acts = ws.acts.quantize_for(
                Some(ctx.pool),
                k,
                &[&layer.wq.m, &layer.wk.m, &layer.wv.m],
                &ws.xn[..t_n * dim],
                t_n,
                dim,
            );
            let (qb, kb, vb) = (
                SharedMut::new(&mut ws.q),
                SharedMut::new(&mut ws.k),
                SharedMut::new(&mut ws.v),
            );
            let heads_q = c.n_heads;
            // One head (Q heads, then K heads, then V heads) and one block of tokens per chunk.
            let split = Split2d::new(c.n_heads + 2 * c.n_kv_heads, 1, t_n);
            let ropes = &ropes[layer.rope_set];
            let acts_ref = &acts;
            ctx.pool.run(split.n_chunks(), &|chunk| {
                let (heads, toks) = split.chunk(chunk);
                let chunk = heads.start;
                let (part, h, buf, width) = if chunk < heads_q {
                    (0, chunk, qb, q_dim)
                } else if chunk < heads_q + c.n_kv_heads {
                    (1, chunk - heads_q, kb, kv_dim)
                } else {
                    (2, chunk - heads_q - c.n_kv_heads, vb, kv_dim)
                };
                let m = [&layer.wq, &layer.wk, &layer.wv][part];
                let rows = h * hd..(h + 1) * hd;
                // SAFETY: this chunk alone writes columns `rows` of rows `toks` of its buffer.
                m.matmul_block(
                    k,
                    acts_ref.for_matrix(&m.m),
                    rows.clone(),
                    toks.clone(),
                    &mut |t, r, v| unsafe { put_run(buf.slice(t * width + r, v.len()), v) },
                );
                let norm = [&layer.q_norm, &layer.k_norm, &None][part];
                for (t, rope) in toks.clone().map(|t| (t, &ropes[t])) {
                    // SAFETY: same disjoint column range and token rows.
                    let head = unsafe { buf.slice(t * width + h * hd, hd) };
                    if let Some(b) = &layer.qkv_bias {
                        for (v, &b) in head.iter_mut().zip(&b[part][rows.clone()]) {
                            *v += b;
                        }
                    }
                    if let Some(w) = norm {
                        ops::rms_norm_in_place(head, w, c.norm_eps);
                    }
                    if part < 2 {
                        rope_fn(k, &mut head[..c.rope_dim], rope);
                    }
                    if part == 0 {
                        if let Some(s) = f.query_scale {
                            head.iter_mut().for_each(|v| *v *= s);
                        }
                    }
                    if let Some(n) = [rotation.k, rotation.k, rotation.v][part] {
                        ops::hadamard_rotate(head, n);
                    }
                }
            });
            ws.acts.put_all(acts);
            // Into the cache (every token before any attends: prefill sees its own chunk).
            kv.write(
                k,
                l_idx,
                batch.tables,
                batch.positions,
                &ws.k[..t_n * kv_dim],
                &ws.v[..t_n * kv_dim],
            );

            // Attention: one chunk per (run of consecutive tokens of one sequence, kv head).
            let group = c.n_heads / c.n_kv_heads;
            let kv = &*kv;
            let att = SharedMut::new(&mut ws.att);
            let q = &ws.q;
            ctx.pool.run(runs.len() * c.n_kv_heads, &|chunk| {
                let (run, g) = (runs[chunk / c.n_kv_heads].clone(), chunk % c.n_kv_heads);
                let table = batch.tables[run.start];
                // A sliding-window layer sees the last `window` positions, itself included
                // (llama.cpp masks key p0 for query p1 when p1 - p0 >= window).
                let seen = |t: usize| {
                    let pos = batch.positions[t];
                    la.window.map_or(0, |w| (pos + 1).saturating_sub(w))..pos + 1
                };
                let (first, last) = (seen(run.start).start, batch.positions[run.end - 1]);
                let keys: Vec<std::ops::Range<usize>> = run
                    .clone()
                    .map(|t| {
                        let r = seen(t);
                        r.start - first..r.end - first
                    })
                    .collect();
                let query = AttendQuery {
                    q: &q[run.start * q_dim..run.end * q_dim],
                    stride: q_dim,
                    heads: g * group..(g + 1) * group,
                    scale: score_scale,
                    keys: &keys,
                };
                // SAFETY: this chunk alone writes heads g*group..(g+1)*group of the run's
                // tokens.
                let out = unsafe { att.slice(run.start * q_dim, run.len() * q_dim) };
                kv.attend(k, l_idx, g, table, first..=last, &query, out);
            });

            if let Some(n) = rotation.v {
                ops::hadamard_rotate(&mut ws.att[..t_n * q_dim], n);
            }
            // Output projection (+ post-norm) + residual.
            let mut acts = ws.acts.take(layer.wo.act_format());
            acts.quantize_on(Some(ctx.pool), k, &ws.att[..t_n * q_dim], t_n, q_dim);
            self.project_residual(ctx, ws, &layer.wo, &acts, layer.attn_post_norm.as_deref());
            ws.acts.put(acts);

            // ---- feed-forward block ----
            self.norm_rows(ctx, &ws.x, &layer.ffn_norm, &mut ws.xn, t_n);
            let acts = ws.acts.quantize_for(
                Some(ctx.pool),
                k,
                &[&layer.w_gate.m, &layer.w_up.m],
                &ws.xn[..t_n * dim],
                t_n,
                dim,
            );
            resize(&mut ws.up, t_n * ffn);
            let (hb, up) = (SharedMut::new(&mut ws.hb), SharedMut::new(&mut ws.up));
            let acts_ref = &acts;
            let split = Split2d::new(ffn, ROW_CHUNK, t_n);
            ctx.pool.run(split.n_chunks(), &|chunk| {
                let (rows, toks) = split.chunk(chunk);
                // SAFETY: this chunk alone writes columns `rows` of rows `toks` of hb and up.
                layer.w_gate.matmul_block(
                    k,
                    acts_ref.for_matrix(&layer.w_gate.m),
                    rows.clone(),
                    toks.clone(),
                    &mut |t, r, v| unsafe { put_run(hb.slice(t * ffn + r, v.len()), v) },
                );
                layer.w_up.matmul_block(
                    k,
                    acts_ref.for_matrix(&layer.w_up.m),
                    rows.clone(),
                    toks.clone(),
                    &mut |t, r, v| unsafe { put_run(up.slice(t * ffn + r, v.len()), v) },
                );
                for t in toks {
                    // SAFETY: as above.
                    let (g, u) = unsafe {
                        (
                            hb.slice(t * ffn + rows.start, rows.len()),
                            up.slice(t * ffn + rows.start, rows.len()),
                        )
                    };
                    match f.activation {
                        FfnActivation::SiluGlu => k.swiglu(g, u),
                        FfnActivation::GeluGlu => ops::geglu(g, u),
                    }
                }
            });
            ws.acts.put_all(acts);
            let mut acts = ws.acts.take(layer.w_down.act_format());
            acts.quantize_on(Some(ctx.pool), k, &ws.hb[..t_n * ffn], t_n, ffn);
            self.project_residual(
                ctx,
                ws,
                &layer.w_down,
                &acts,
                layer.ffn_post_norm.as_deref(),
            );
            ws.acts.put(acts);
        }

        // ---- logits ----
        let n_out = batch.logit_rows.len();
        resize(&mut ws.out_x, n_out * dim);
        for (i, &t) in batch.logit_rows.iter().enumerate() {
            ops::rms_norm(
                &ws.x[t * dim..(t + 1) * dim],
                &self.output_norm,
                c.norm_eps,
                &mut ws.out_x[i * dim..(i + 1) * dim],
            );
        }
        let vocab = c.vocab_size;
        logits.clear();
        logits.resize(n_out * vocab, 0.0);
        if n_out == 0 {
            return;
        }
        let mut acts = ws.acts.take(self.output.act_format());
        acts.quantize(k, &ws.out_x[..n_out * dim], n_out, dim);
        let lg = SharedMut::new(logits);
        let acts_ref = &acts;
        ctx.pool.run(vocab.div_ceil(OUTPUT_ROW_CHUNK), &|chunk| {
            let rows = chunk * OUTPUT_ROW_CHUNK..((chunk + 1) * OUTPUT_ROW_CHUNK).min(vocab);
            // SAFETY: disjoint vocabulary columns per chunk.
            self.output
                .matmul_rows(k, acts_ref, rows, &mut |t, r, v| unsafe {
                    put_run(lg.slice(t * vocab + r, v.len()), v)
                });
        });
        ws.acts.put(acts);
        if let Some(cap) = f.logit_softcap {
            // ggml: scale by 1/cap, tanh, scale by cap.
            let inv = 1.0 / cap;
            logits.iter_mut().for_each(|v| *v = (*v * inv).tanh() * cap);
        }
    }

    /// xn[t] = RMSNorm(x[t]) * w for the batch's rows, in chunks of [`act_row_chunk`] rows on
    /// the pool.
    fn norm_rows(&self, ctx: &ForwardCtx<'_>, x: &[f32], w: &[f32], xn: &mut [f32], t_n: usize) {
        let dim = self.cfg.dim;
        let chunk = act_row_chunk(t_n, ctx.pool.n_threads());
        ctx.pool
            .for_rows(&mut xn[..t_n * dim], dim, chunk, &|t0, rows| {
                for (i, out) in rows.chunks_exact_mut(dim).enumerate() {
                    let t = t0 + i;
                    ops::rms_norm(&x[t * dim..(t + 1) * dim], w, self.cfg.norm_eps, out);
                }
            });
    }

    /// x[t] += (W a_t), or x[t] += RMSNorm(W a_t) * post_norm when the block has a post-norm.
    fn project_residual(
        &self,
        ctx: &ForwardCtx<'_>,
        ws: &mut Workspace,
        w: &QMatrix<'_>,
        acts: &QuantActs,
        post_norm: Option<&[f32]>,
    ) {
        let dim = self.cfg.dim;
        let t_n = acts.rows;
        match post_norm {
            None => project_add(ctx, w, acts, &mut ws.x, dim),
            Some(pn) => {
                resize(&mut ws.proj, t_n * dim);
                let proj = &mut ws.proj[..t_n * dim];
                proj.fill(0.0);
                project_add(ctx, w, acts, proj, dim);
                for (x, p) in ws.x.chunks_exact_mut(dim).zip(proj.chunks_exact_mut(dim)) {
                    ops::rms_norm_in_place(p, pn, self.cfg.norm_eps);
                    for (x, &p) in x.iter_mut().zip(p.iter()) {
                        *x += p;
                    }
                }
            }
        }
    }
}

/// Copies one output run of a projection into place: the usual 8-float run of a tile row as
/// one fixed-size copy, other lengths out of line. A slice copy of unknown length is a libc
/// call per 8 floats (2.5% of Q4_1 prefill), and with both branches inline LLVM merges them
/// back into that call.
#[inline(always)]
fn put_run(dst: &mut [f32], v: &[f32]) {
    match (
        <&mut [f32; 8]>::try_from(&mut *dst),
        <&[f32; 8]>::try_from(v),
    ) {
        (Ok(d), Ok(s)) => *d = *s,
        _ => put_run_any(dst, v),
    }
}

/// [`put_run`]'s other lengths (partial tile rows, the float formats' whole rows).
#[inline(never)]
fn put_run_any(dst: &mut [f32], v: &[f32]) {
    dst.copy_from_slice(v)
}

/// x[t][r] += (W a_t)[r] for all rows, in parallel over blocks of rows and tokens.
fn project_add(ctx: &ForwardCtx<'_>, w: &QMatrix<'_>, acts: &QuantActs, x: &mut [f32], dim: usize) {
    let xs = SharedMut::new(x);
    let k = ctx.kernels;
    let split = Split2d::new(w.rows, ROW_CHUNK, acts.rows);
    ctx.pool.run(split.n_chunks(), &|chunk| {
        let (rows, toks) = split.chunk(chunk);
        // SAFETY: disjoint blocks (weight rows x activation rows) of x per chunk.
        w.matmul_block(k, acts, rows, toks, &mut |t, r, v| {
            let dst = unsafe { xs.slice(t * dim + r, v.len()) };
            for (d, &v) in dst.iter_mut().zip(v) {
                *d += v;
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_runs_split_at_sequences_gaps_and_the_cap() {
        let (a, b) = (vec![BlockId(0)], vec![BlockId(1)]);
        // Sequence a: positions 5..=9 then a jump; b: two tokens; a again at its next position.
        let tables: Vec<&[BlockId]> = vec![&a, &a, &a, &a, &a, &b, &b, &a, &a];
        let positions = [5, 6, 7, 8, 20, 0, 1, 21, 22];
        assert_eq!(
            attention_runs(&tables, &positions, 3),
            vec![0..3, 3..4, 4..5, 5..7, 7..9]
        );
        assert_eq!(attention_runs(&tables[..1], &positions[..1], 8), vec![0..1]);
        assert!(attention_runs(&[], &[], 8).is_empty());
    }
}
