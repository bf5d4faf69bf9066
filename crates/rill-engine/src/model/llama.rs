//! The llama architecture (SmolLM2, Llama 2/3, Mistral-style GQA): pre-norm decoder blocks of
//! RMSNorm, rotary attention with grouped KV heads, and a SwiGLU feed-forward network.
//!
//! A step is a handful of parallel regions per layer: fused Q/K/V projection (+ RoPE + KV-cache
//! write), attention, output projection (+ residual), fused gate/up (+ SwiGLU), down projection
//! (+ residual). Each projection reads every weight row once for the whole batch.

use std::sync::Arc;

use half::f16;
use memmap2::Mmap;

use super::ops::{self, resize, Workspace};
use super::{ForwardBatch, ForwardCtx, ModelConfig};
use crate::error::{EngineError, Result};
use crate::gguf::{GgmlType, GgufFile};
use crate::kv_cache::{KvCache, BLOCK_TOKENS};
use crate::quant::scalar::KvRows;
use crate::quant::{QMatrix, QuantActs};
use crate::threadpool::SharedMut;

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix<'static>,
    wk: QMatrix<'static>,
    wv: QMatrix<'static>,
    wo: QMatrix<'static>,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix<'static>,
    w_up: QMatrix<'static>,
    w_down: QMatrix<'static>,
}

pub struct Llama {
    pub cfg: ModelConfig,
    tok_embd: QMatrix<'static>,
    output: QMatrix<'static>,
    output_norm: Vec<f32>,
    rope_freqs: Option<Vec<f32>>,
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

impl Llama {
    pub fn load(g: &GgufFile) -> Result<Self> {
        let a = "llama";
        let key = |k: &str| format!("{a}.{k}");
        let n_layers = g.req_u64(&key("block_count"))? as usize;
        let dim = g.req_u64(&key("embedding_length"))? as usize;
        let n_heads = g.req_u64(&key("attention.head_count"))? as usize;
        let n_kv_heads = g
            .opt_u64(&key("attention.head_count_kv"))?
            .map_or(n_heads, |v| v as usize);
        let ffn_dim = g.req_u64(&key("feed_forward_length"))? as usize;
        if n_heads == 0
            || n_kv_heads == 0
            || !n_heads.is_multiple_of(n_kv_heads)
            || !dim.is_multiple_of(n_heads)
        {
            return Err(EngineError::BadMetadata {
                key: key("attention.head_count"),
                reason: format!(
                    "{n_heads} heads / {n_kv_heads} kv heads / dim {dim} do not divide"
                ),
            });
        }
        let head_dim = g
            .opt_u64(&key("attention.key_length"))?
            .map_or(dim / n_heads, |v| v as usize);
        let tok = g.tensor("token_embd.weight")?;
        let vocab_size = tok.dims.get(1).copied().unwrap_or(0);
        let cfg = ModelConfig {
            architecture: a.into(),
            name: g
                .get("general.name")
                .and_then(|v| v.as_str())
                .unwrap_or("unnamed")
                .to_string(),
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            context_length: g.opt_u64(&key("context_length"))?.unwrap_or(2048) as usize,
            rope_base: g.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
            rope_dim: g
                .opt_u64(&key("rope.dimension_count"))?
                .map_or(head_dim, |v| v as usize),
            norm_eps: g
                .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
        };
        if head_dim % 2 != 0 || cfg.rope_dim > head_dim {
            return Err(EngineError::BadMetadata {
                key: key("rope.dimension_count"),
                reason: format!("rope dim {} with head dim {head_dim}", cfg.rope_dim),
            });
        }
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
            QMatrix::new(name, t.dtype, rows, cols, bytes)
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
        let q_dim = n_heads * head_dim;
        let kv_dim = n_kv_heads * head_dim;
        let layers = (0..n_layers)
            .map(|i| {
                let p = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(Layer {
                    attn_norm: vecf(&p("attn_norm"), dim)?,
                    wq: mat(&p("attn_q"), q_dim, dim)?,
                    wk: mat(&p("attn_k"), kv_dim, dim)?,
                    wv: mat(&p("attn_v"), kv_dim, dim)?,
                    wo: mat(&p("attn_output"), dim, q_dim)?,
                    ffn_norm: vecf(&p("ffn_norm"), dim)?,
                    w_gate: mat(&p("ffn_gate"), ffn_dim, dim)?,
                    w_up: mat(&p("ffn_up"), ffn_dim, dim)?,
                    w_down: mat(&p("ffn_down"), dim, ffn_dim)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tok_embd = mat("token_embd.weight", vocab_size, dim)?;
        let output = if g.tensors.contains_key("output.weight") {
            mat("output.weight", vocab_size, dim)?
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
            tok_embd,
            output,
            rope_freqs,
            layers,
            _map: map,
        })
    }

    pub fn weight_bytes(&self) -> usize {
        self.matrices().map(|m| m.data.len()).sum()
    }

    /// Heap bytes of the tiles repacked at load.
    pub fn repacked_bytes(&self) -> usize {
        self.matrices().map(|m| m.repacked_bytes()).sum()
    }

    /// Every weight matrix once (a tied output embedding counted with the embedding).
    fn matrices(&self) -> impl Iterator<Item = &QMatrix<'static>> {
        let output = (!self.output.same_as(&self.tok_embd)).then_some(&self.output);
        std::iter::once(&self.tok_embd).chain(output).chain(
            self.layers
                .iter()
                .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]),
        )
    }

    pub fn forward(
        &self,
        ctx: &ForwardCtx<'_>,
        ws: &mut Workspace,
        batch: &ForwardBatch<'_>,
        kv: &mut KvCache,
        logits: &mut Vec<f32>,
    ) {
        let c = &self.cfg;
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
            self.tok_embd
                .dequantize_row(tok as usize, &mut ws.x[t * dim..(t + 1) * dim]);
        }
        let ropes: Vec<Vec<(f32, f32)>> = batch
            .positions
            .iter()
            .map(|&p| ops::rope_table(p, c.rope_dim, c.rope_base, self.rope_freqs.as_deref()))
            .collect();
        // Slot offset (f16 elements within a layer buffer) of every token's KV row.
        let slots: Vec<usize> = (0..t_n)
            .map(|t| kv.slot_offset(batch.tables[t], batch.positions[t]))
            .collect();

        for (l_idx, layer) in self.layers.iter().enumerate() {
            // ---- attention block ----
            for t in 0..t_n {
                ops::rms_norm(
                    &ws.x[t * dim..(t + 1) * dim],
                    &layer.attn_norm,
                    c.norm_eps,
                    &mut ws.xn[t * dim..(t + 1) * dim],
                );
            }
            let acts = ws.acts.quantize_for(
                k,
                &[&layer.wq, &layer.wk, &layer.wv],
                &ws.xn[..t_n * dim],
                t_n,
                dim,
            );
            let (kc, vc) = kv.layer_mut(l_idx);
            let (kc, vc) = (SharedMut::new(kc), SharedMut::new(vc));
            let (qb, kb, vb) = (
                SharedMut::new(&mut ws.q),
                SharedMut::new(&mut ws.k),
                SharedMut::new(&mut ws.v),
            );
            let heads_q = c.n_heads;
            let n_chunks = c.n_heads + 2 * c.n_kv_heads;
            let ropes = &ropes;
            let slots = &slots;
            let acts_ref = &acts;
            ctx.pool.run(n_chunks, &|chunk| {
                // One head per chunk: Q heads, then K heads, then V heads.
                let (m, h, buf, width) = if chunk < heads_q {
                    (&layer.wq, chunk, qb, q_dim)
                } else if chunk < heads_q + c.n_kv_heads {
                    (&layer.wk, chunk - heads_q, kb, kv_dim)
                } else {
                    (&layer.wv, chunk - heads_q - c.n_kv_heads, vb, kv_dim)
                };
                let rows = h * hd..(h + 1) * hd;
                // SAFETY: this chunk alone writes columns `rows` of its buffer.
                m.matmul_rows(
                    k,
                    acts_ref.for_matrix(m),
                    rows.clone(),
                    &mut |t, r, v| unsafe { buf.slice(t * width + r, v.len()).copy_from_slice(v) },
                );
                for t in 0..t_n {
                    // SAFETY: same disjoint column range, per token row.
                    let head = unsafe { buf.slice(t * width + h * hd, hd) };
                    if chunk < heads_q + c.n_kv_heads {
                        (k.rope_norm)(&mut head[..c.rope_dim], &ropes[t]);
                    }
                    if chunk >= heads_q {
                        let cache = if chunk < heads_q + c.n_kv_heads {
                            kc
                        } else {
                            vc
                        };
                        // SAFETY: slot rows are distinct per token (distinct positions or
                        // sequences) and this chunk owns head h's columns of each row.
                        let dst = unsafe { cache.slice(slots[t] + h * hd, hd) };
                        for (d, &v) in dst.iter_mut().zip(head.iter()) {
                            *d = f16::from_f32(v).to_bits();
                        }
                    }
                }
            });
            ws.acts.put_all(acts);

            // Attention: one chunk per (token, kv head).
            let group = c.n_heads / c.n_kv_heads;
            let (kc, vc) = kv.layer(l_idx);
            let att = SharedMut::new(&mut ws.att);
            let q = &ws.q;
            ctx.pool.run(t_n * c.n_kv_heads, &|chunk| {
                let (t, g) = (chunk / c.n_kv_heads, chunk % c.n_kv_heads);
                let table = batch.tables[t];
                let offsets: Vec<usize> = (0..=batch.positions[t])
                    .map(|j| {
                        let b = table[j / BLOCK_TOKENS].0 as usize;
                        (b * BLOCK_TOKENS + j % BLOCK_TOKENS) * kv_dim + g * hd
                    })
                    .collect();
                let rows = KvRows {
                    keys: kc,
                    values: vc,
                    offsets: &offsets,
                };
                // SAFETY: this chunk alone writes heads g*group..(g+1)*group of token t.
                let out = unsafe { att.slice(t * q_dim, q_dim) };
                (k.attend)(
                    &q[t * q_dim..(t + 1) * q_dim],
                    g * group..(g + 1) * group,
                    hd,
                    &rows,
                    out,
                );
            });

            // Output projection + residual.
            let mut acts = ws.acts.take(layer.wo.act_format());
            acts.quantize(k, &ws.att[..t_n * q_dim], t_n, q_dim);
            self.project_add(ctx, &layer.wo, &acts, &mut ws.x, dim);
            ws.acts.put(acts);

            // ---- feed-forward block ----
            for t in 0..t_n {
                ops::rms_norm(
                    &ws.x[t * dim..(t + 1) * dim],
                    &layer.ffn_norm,
                    c.norm_eps,
                    &mut ws.xn[t * dim..(t + 1) * dim],
                );
            }
            let acts = ws.acts.quantize_for(
                k,
                &[&layer.w_gate, &layer.w_up],
                &ws.xn[..t_n * dim],
                t_n,
                dim,
            );
            resize(&mut ws.up, t_n * ffn);
            let (hb, up) = (SharedMut::new(&mut ws.hb), SharedMut::new(&mut ws.up));
            let acts_ref = &acts;
            ctx.pool.run(ffn.div_ceil(ROW_CHUNK), &|chunk| {
                let rows = chunk * ROW_CHUNK..((chunk + 1) * ROW_CHUNK).min(ffn);
                // SAFETY: this chunk alone writes columns `rows` of hb and up.
                layer.w_gate.matmul_rows(
                    k,
                    acts_ref.for_matrix(&layer.w_gate),
                    rows.clone(),
                    &mut |t, r, v| unsafe { hb.slice(t * ffn + r, v.len()).copy_from_slice(v) },
                );
                layer.w_up.matmul_rows(
                    k,
                    acts_ref.for_matrix(&layer.w_up),
                    rows.clone(),
                    &mut |t, r, v| unsafe { up.slice(t * ffn + r, v.len()).copy_from_slice(v) },
                );
                for t in 0..t_n {
                    // SAFETY: as above.
                    let (g, u) = unsafe {
                        (
                            hb.slice(t * ffn + rows.start, rows.len()),
                            up.slice(t * ffn + rows.start, rows.len()),
                        )
                    };
                    (k.swiglu)(g, u);
                }
            });
            ws.acts.put_all(acts);
            let mut acts = ws.acts.take(layer.w_down.act_format());
            acts.quantize(k, &ws.hb[..t_n * ffn], t_n, ffn);
            self.project_add(ctx, &layer.w_down, &acts, &mut ws.x, dim);
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
                    lg.slice(t * vocab + r, v.len()).copy_from_slice(v)
                });
        });
        ws.acts.put(acts);
    }

    /// x[t][r] += (W a_t)[r] for all rows, in parallel over row chunks.
    fn project_add(
        &self,
        ctx: &ForwardCtx<'_>,
        w: &QMatrix<'_>,
        acts: &QuantActs,
        x: &mut [f32],
        dim: usize,
    ) {
        let xs = SharedMut::new(x);
        let k = ctx.kernels;
        ctx.pool.run(w.rows.div_ceil(ROW_CHUNK), &|chunk| {
            let rows = chunk * ROW_CHUNK..((chunk + 1) * ROW_CHUNK).min(w.rows);
            // SAFETY: disjoint rows (columns of x) per chunk.
            w.matmul_rows(k, acts, rows, &mut |t, r, v| {
                let dst = unsafe { xs.slice(t * dim + r, v.len()) };
                for (d, &v) in dst.iter_mut().zip(v) {
                    *d += v;
                }
            });
        });
    }
}
