//! Causal attention of query heads over one KV head's cached rows: the portable reference of
//! ggml's CPU flash-attention arithmetic for the f16 cache ([`attend_with`], per token, and
//! [`AttendBlock`], a run of consecutive tokens of one sequence) and for the Q8_0 / Q4_0
//! caches ([`attend_quant_with`]), with the f16 accumulator primitives they use. The x86-64
//! kernels that reproduce it bit for bit are in [`super::x86_attention`].

use super::expf::expf;
use crate::quant::blocks::*;
use crate::quant::scalar::{
    dequantize_q4_0, dequantize_q8_0, dot_f16_f16, dot_q4_0_q8_0_lanes, dot_q8_0_q8_0,
    quantize_q8_0,
};

/// Flash-attention value accumulation in f16, as ggml's `ggml_vec_mad_f16`: acc = f16(v * s + acc).
pub fn mad_f16(acc: &mut [u16], v: &[u16], s: f32) {
    assert_eq!(acc.len(), v.len(), "mad_f16 operand lengths");
    for (a, &x) in acc.iter_mut().zip(v) {
        *a = f32_to_f16(f16_to_f32(x).mul_add(s, f16_to_f32(*a)));
    }
}

/// acc = f16(acc * s), as `ggml_vec_scale_f16`.
pub fn scale_f16(acc: &mut [u16], s: f32) {
    for a in acc.iter_mut() {
        *a = f32_to_f16(f16_to_f32(*a) * s);
    }
}

/// Where one KV head's rows of a sequence live, in the cache's storage unit `T` (`u16` f16
/// elements, or Q8_0 / Q4_0 blocks of 32 elements): position `j`'s head row starts at unit
/// `offsets[j]` of both buffers.
pub struct KvRows<'a, T = u16> {
    /// The key buffer.
    pub keys: &'a [T],
    /// The value buffer, laid out as the keys.
    pub values: &'a [T],
    /// Offset of each position's row (already including the KV head's column offset).
    pub offsets: &'a [usize],
}

/// Causal attention for query heads `q_heads` (sharing one KV head) of one token, over the
/// positions in `kv.offsets`, scores multiplied by `scale` (llama.cpp's `kq_scale`). This is ggml's CPU flash-attention arithmetic, which matching
/// llama.cpp's greedy output needs: query rounded to f16, f16 dot products (ggml's summation
/// tree), online softmax with the value accumulator kept in f16, the running sum updated as
/// fma(S, ms, vs), one normalisation at the end.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // one kernel: three f16 primitives plus the data
pub fn attend_with(
    dot: impl Fn(&[u16], &[u16]) -> f32,
    mad: impl Fn(&mut [u16], &[u16], f32),
    scale_acc: impl Fn(&mut [u16], f32),
    q: &[f32],
    q_heads: std::ops::Range<usize>,
    head_dim: usize,
    scale: f32,
    kv: &KvRows<'_>,
    out: &mut [f32],
) {
    let mut q16 = [0u16; 256];
    let mut acc = [0u16; 256];
    let (q16, acc) = (&mut q16[..head_dim], &mut acc[..head_dim]);
    for h in q_heads {
        for (d, &v) in q16.iter_mut().zip(&q[h * head_dim..(h + 1) * head_dim]) {
            *d = f32_to_f16(v);
        }
        acc.fill(0);
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0f32;
        for &off in kv.offsets {
            let s = dot(q16, &kv.keys[off..off + head_dim]) * scale;
            let (ms, vs);
            if s > m {
                ms = expf(m - s);
                vs = 1.0;
                m = s;
                scale_acc(acc, ms);
            } else {
                ms = 1.0;
                vs = expf(s - m);
            }
            mad(acc, &kv.values[off..off + head_dim], vs);
            sum = sum.mul_add(ms, vs);
        }
        let inv = 1.0 / sum;
        for (o, &a) in out[h * head_dim..(h + 1) * head_dim]
            .iter_mut()
            .zip(acc.iter())
        {
            *o = f16_to_f32(a) * inv;
        }
    }
}

/// Attention of consecutive query tokens of one sequence over one KV head: the unit of the
/// block kernels (`Kernels::attend_block`), which widen each key and value row once for all of
/// the block's tokens and heads. Token `i` attends the positions `kv.offsets[keys[i]]` in
/// order, exactly as a per-token call over those offsets would.
pub struct AttendBlock<'a, T = u16> {
    /// Token `i`'s query row starts at `i * stride` (query head `h` at `h * head_dim` in it).
    pub q: &'a [f32],
    /// Floats between consecutive tokens' rows, in `q` and in the output alike.
    pub stride: usize,
    /// The query heads sharing the KV head.
    pub heads: std::ops::Range<usize>,
    /// Elements per head.
    pub head_dim: usize,
    /// Score scale (llama.cpp's `kq_scale`).
    pub scale: f32,
    /// The KV head's rows: every position any token of the block attends.
    pub kv: KvRows<'a, T>,
    /// Per token, the indices into `kv.offsets` it attends.
    pub keys: &'a [std::ops::Range<usize>],
}

impl<'a, T> AttendBlock<'a, T> {
    /// Checks what every block kernel assumes of the shapes, naming the broken invariant:
    /// rows wide enough for the heads, a query and an output row per token, key ranges inside
    /// the offsets.
    pub fn check(&self, out: &[f32]) {
        let n = self.keys.len();
        assert!(
            self.stride >= self.heads.end * self.head_dim,
            "attention rows narrower than their heads"
        );
        let need = n.saturating_sub(1) * self.stride + self.heads.end * self.head_dim;
        assert!(
            n == 0 || (self.q.len() >= need && out.len() >= need),
            "a query and an output row per token"
        );
        assert!(
            self.keys
                .iter()
                .all(|r| r.start <= r.end && r.end <= self.kv.offsets.len()),
            "key ranges inside the block's offsets"
        );
    }

    /// The block of one token's call of a per-token kernel (`attend`'s arguments; `keys` is
    /// `[0..kv.offsets.len()]`).
    pub fn one_token(
        q: &'a [f32],
        heads: std::ops::Range<usize>,
        head_dim: usize,
        scale: f32,
        kv: &KvRows<'a, T>,
        keys: &'a [std::ops::Range<usize>],
    ) -> Self {
        Self {
            q,
            stride: heads.end * head_dim,
            heads,
            head_dim,
            scale,
            kv: KvRows {
                keys: kv.keys,
                values: kv.values,
                offsets: kv.offsets,
            },
            keys,
        }
    }

    /// Runs a per-token kernel (`attend`'s signature) for each token of the block: the
    /// reference of every block kernel.
    pub fn per_token(
        &self,
        out: &mut [f32],
        mut attend: impl FnMut(&[f32], std::ops::Range<usize>, usize, f32, &KvRows<'_, T>, &mut [f32]),
    ) {
        self.check(out);
        for (i, keys) in self.keys.iter().enumerate() {
            let row = i * self.stride..i * self.stride + self.heads.end * self.head_dim;
            let kv = KvRows {
                keys: self.kv.keys,
                values: self.kv.values,
                offsets: &self.kv.offsets[keys.clone()],
            };
            attend(
                &self.q[row.clone()],
                self.heads.clone(),
                self.head_dim,
                self.scale,
                &kv,
                &mut out[row],
            );
        }
    }
}

/// The block form of [`attend`]: each token through the per-token reference.
pub fn attend_block(b: &AttendBlock<'_>, out: &mut [f32]) {
    b.per_token(out, attend)
}

/// [`attend_with`] with the portable f16 primitives: the reference of every tier's
/// `Kernels::attend`.
pub fn attend(
    q: &[f32],
    q_heads: std::ops::Range<usize>,
    head_dim: usize,
    scale: f32,
    kv: &KvRows<'_>,
    out: &mut [f32],
) {
    attend_with(
        dot_f16_f16,
        mad_f16,
        scale_f16,
        q,
        q_heads,
        head_dim,
        scale,
        kv,
        out,
    )
}

/// Causal attention over a quantized KV cache (Q8_0 or Q4_0 keys and values), for query
/// heads `q_heads` sharing one KV head: ggml's CPU flash-attention arithmetic for quantized
/// K/V (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`), which llama.cpp runs with
/// `-fa on -ctk q8_0 -ctv q8_0`:
/// - each query head quantized to Q8_0 (`quantize_q`), scores `dot(K row, q) * scale` in the
///   format's vec-dot order (`dot`);
/// - online softmax with an f32 value accumulator: on a new maximum `acc *= expf(m_old - s)`,
///   else the weight is `expf(s - m)`; then `acc = fma(v, w, acc)` with the V row
///   dequantized (`dequant`, exact); `sum = fma(sum, ms, vs)`;
/// - one normalisation `acc * (1 / sum)` at the end.
///
/// The heads of the group walk the positions together so each V row is dequantized once;
/// every head's own operations keep ggml's order, so the result is the per-head reference's.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // one kernel: three primitives plus the data
pub fn attend_quant_with<T: Copy>(
    dot: impl Fn(&[T], &[BlockQ8_0]) -> f32,
    dequant: impl Fn(&[T], &mut [f32]),
    quantize_q: impl Fn(&[f32], &mut [BlockQ8_0]),
    q: &[f32],
    q_heads: std::ops::Range<usize>,
    head_dim: usize,
    scale: f32,
    kv: &KvRows<'_, T>,
    out: &mut [f32],
) {
    let (hd, nb) = (head_dim, head_dim / QK);
    let heads: Vec<usize> = q_heads.collect();
    let nh = heads.len();
    let zero = BlockQ8_0 { d: 0, qs: [0; QK] };
    let mut qq = vec![zero; nh * nb];
    for (i, &h) in heads.iter().enumerate() {
        quantize_q(&q[h * hd..(h + 1) * hd], &mut qq[i * nb..(i + 1) * nb]);
    }
    let mut acc = vec![0f32; nh * hd];
    let mut v32 = vec![0f32; hd];
    let (mut m, mut sum) = (vec![f32::NEG_INFINITY; nh], vec![0f32; nh]);
    for &off in kv.offsets {
        dequant(&kv.values[off..off + nb], &mut v32);
        let krow = &kv.keys[off..off + nb];
        for i in 0..nh {
            let s = dot(krow, &qq[i * nb..(i + 1) * nb]) * scale;
            let a = &mut acc[i * hd..(i + 1) * hd];
            let (ms, vs);
            if s > m[i] {
                ms = expf(m[i] - s);
                vs = 1.0;
                m[i] = s;
                a.iter_mut().for_each(|x| *x *= ms);
            } else {
                ms = 1.0;
                vs = expf(s - m[i]);
            }
            for (x, &v) in a.iter_mut().zip(&v32) {
                *x = v.mul_add(vs, *x);
            }
            sum[i] = sum[i].mul_add(ms, vs);
        }
    }
    for (i, &h) in heads.iter().enumerate() {
        let inv = if sum[i] == 0.0 { 0.0 } else { 1.0 / sum[i] };
        for (o, &a) in out[h * hd..(h + 1) * hd].iter_mut().zip(&acc[i * hd..]) {
            *o = a * inv;
        }
    }
}

/// Defines the safe reference entry point of [`attend_quant_with`] for one cache format.
macro_rules! attend_quant {
    ($(#[$doc:meta])* $name:ident, $block:ty, $dot:path, $dequant:path) => {
        $(#[$doc])*
        pub fn $name(
            q: &[f32],
            q_heads: std::ops::Range<usize>,
            head_dim: usize,
            scale: f32,
            kv: &KvRows<'_, $block>,
            out: &mut [f32],
        ) {
            attend_quant_with($dot, $dequant, quantize_q8_0, q, q_heads, head_dim, scale, kv, out)
        }
    };
}

attend_quant!(
    /// [`attend_quant_with`] over a Q8_0 cache.
    attend_q8_0,
    BlockQ8_0,
    dot_q8_0_q8_0,
    dequantize_q8_0
);
attend_quant!(
    /// [`attend_quant_with`] over a Q4_0 cache.
    attend_q4_0,
    BlockQ4_0,
    dot_q4_0_q8_0_lanes,
    dequantize_q4_0
);
