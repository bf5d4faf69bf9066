//! Portable reference kernels: activation quantizers, the dot products of the 32-element block
//! formats and of float weights, and the f16 attention primitives (the 256-element super-block
//! formats are in [`super::kquants`]).
//! They follow ggml's reference arithmetic (round-half-even quantization, per-block integer sums
//! scaled in f32) and are what the SIMD kernels are tested against. Always compiled.

use super::blocks::*;

/// ggml's x86 quantizer: d = amax/127 stored as f16, q = round_half_even(x * 127/amax).
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        yb.d = f32_to_f16(d);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
}

/// ggml's x86 Q8_1 quantizer: [`quantize_q8_0`]'s values plus `s = d * sum(qs)`.
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        yb.d = f32_to_f16(d);
        let mut sum = 0i32;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        yb.s = f32_to_f16(d * sum as f32);
    }
}

/// ggml's Q8_K quantizer: the element of largest magnitude maps to -127, `d = max / -127`,
/// q = round_half_even(x / d), and the sums of each 16 values.
#[inline(always)]
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *yb = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for (s, qs) in yb.bsums.iter_mut().zip(yb.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        yb.d = 1.0 / iscale;
    }
}

/// The integer view of a 32-element weight block that the reference arithmetic works on.
pub trait Block32: Copy {
    /// Whether the format has an offset `m` (paired with the Q8_1 sum term `s`).
    const OFFSET: bool;
    /// Whether [`dot32`] keeps ggml's 8 lane sums per block (else one exact block sum).
    const LANES: bool;
    /// The scale, f16 bits.
    fn d(&self) -> u16;
    /// The offset, f16 bits (0 where there is none).
    fn m(&self) -> u16 {
        0
    }
    /// Element `k` (0..32) as the integer the scale multiplies.
    fn value(&self, k: usize) -> i32;
}

/// The 8-bit activation blocks paired with [`Block32`] weights.
pub trait Act32 {
    /// The scale, f16 bits.
    fn d(&self) -> u16;
    /// `d * sum(qs)` as f16 bits (Q8_1; 0 for Q8_0).
    fn s(&self) -> u16;
    /// The 32 values.
    fn qs(&self) -> &[i8; QK];
}

impl Act32 for BlockQ8_0 {
    fn d(&self) -> u16 {
        self.d
    }
    fn s(&self) -> u16 {
        0
    }
    fn qs(&self) -> &[i8; QK] {
        &self.qs
    }
}

impl Act32 for BlockQ8_1 {
    fn d(&self) -> u16 {
        self.d
    }
    fn s(&self) -> u16 {
        self.s
    }
    fn qs(&self) -> &[i8; QK] {
        &self.qs
    }
}

/// The reference dot product of the 32-element formats, in the arithmetic llama.cpp uses for
/// the format on AVX2 CPUs (so results match it bit for bit where its kernels agree):
/// - [`Block32::LANES`] formats (Q4_1, Q5_0, Q5_1, Q8_0: llama.cpp's `ggml_vec_dot_*`): per block
///   8 exact lane sums of 4 products (lane l holds elements 4l..4l+4), each accumulated as
///   `lane = fma(d_w * d_a, sum, lane)`; one horizontal sum ([`hsum8`]) at the end;
/// - the others (Q4_0, IQ4_NL, which llama.cpp repacks and runs through its GEMV/GEMM): per
///   block the exact sum of all 32 products, `acc = fma(d_w * d_a, sum, acc)`, one f32 chain.
///
/// The offset formats add `summs = fma(m, s, summs)` (block after block) at the end. The SIMD
/// tiers compute the same integers in any order and the same f32 operations.
#[inline(always)]
pub fn dot32<B: Block32, A: Act32>(x: impl IntoIterator<Item = B>, y: &[A]) -> f32 {
    let (mut lanes, mut summs) = ([0f32; 8], 0f32);
    for (xb, yb) in x.into_iter().zip(y) {
        let q = yb.qs();
        let d = f16_to_f32(xb.d()) * f16_to_f32(yb.d());
        if B::LANES {
            for (l, lane) in lanes.iter_mut().enumerate() {
                let s: i32 = (4 * l..4 * l + 4).map(|k| xb.value(k) * q[k] as i32).sum();
                *lane = d.mul_add(s as f32, *lane);
            }
        } else {
            let s: i32 = (0..QK).map(|k| xb.value(k) * q[k] as i32).sum();
            lanes[0] = d.mul_add(s as f32, lanes[0]);
        }
        if B::OFFSET {
            summs = f16_to_f32(xb.m()).mul_add(f16_to_f32(yb.s()), summs);
        }
    }
    let acc = if B::LANES { hsum8(&lanes) } else { lanes[0] };
    if B::OFFSET {
        acc + summs
    } else {
        acc
    }
}

/// `hsum_float_8`'s order: (v0+v4)+(v2+v6) + (v1+v5)+(v3+v7).
#[inline(always)]
pub fn hsum8(v: &[f32; 8]) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

/// Element `k` (0..32) of a 4-bit block: low nibbles are elements 0..16, high ones 16..32.
#[inline(always)]
fn nibble(qs: &[u8; QK / 2], k: usize) -> i32 {
    if k < QK / 2 {
        (qs[k] & 0x0f) as i32
    } else {
        (qs[k - QK / 2] >> 4) as i32
    }
}

/// Element `k` (0..32) of a 5-bit block: the nibble plus bit `k` of `qh` as bit 4.
#[inline(always)]
fn q5_value(qs: &[u8; QK / 2], qh: [u8; 4], k: usize) -> i32 {
    nibble(qs, k) | ((((u32::from_le_bytes(qh) >> k) & 1) << 4) as i32)
}

macro_rules! block32 {
    ($t:ty, $offset:expr, $lanes:expr, |$b:ident, $k:ident| $value:expr $(, m = $m:ident)?) => {
        impl Block32 for $t {
            const OFFSET: bool = $offset;
            const LANES: bool = $lanes;
            fn d(&self) -> u16 {
                self.d
            }
            $(fn m(&self) -> u16 {
                self.$m
            })?
            #[inline(always)]
            fn value(&self, $k: usize) -> i32 {
                let $b = self;
                $value
            }
        }
    };
}
block32!(BlockQ4_0, false, false, |b, k| nibble(&b.qs, k) - 8);
block32!(BlockQ4_1, true, true, |b, k| nibble(&b.qs, k), m = m);
block32!(BlockQ5_0, false, true, |b, k| q5_value(&b.qs, b.qh, k) - 16);
block32!(
    BlockQ5_1,
    true,
    true,
    |b, k| q5_value(&b.qs, b.qh, k),
    m = m
);
block32!(BlockQ8_0, false, true, |b, k| b.qs[k] as i32);
block32!(
    BlockIq4Nl,
    false,
    false,
    |b, k| IQ4NL_VALUES[nibble(&b.qs, k) as usize] as i32
);

/// [`dot32`] of Q4_0 weights and Q8_0 activations.
pub fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    dot32(x.iter().copied(), y)
}

/// [`dot32`] of Q4_1 weights and Q8_1 activations.
pub fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    dot32(x.iter().copied(), y)
}

/// [`dot32`] of Q5_0 weights and Q8_0 activations.
pub fn dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    dot32(x.iter().copied(), y)
}

/// [`dot32`] of Q5_1 weights and Q8_1 activations.
pub fn dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    dot32(x.iter().copied(), y)
}

/// [`dot32`] of IQ4_NL weights and Q8_0 activations.
pub fn dot_iq4nl_q8_0(x: &[BlockIq4Nl], y: &[BlockQ8_0]) -> f32 {
    dot32(x.iter().copied(), y)
}

/// [`dot32`] of Q8_0 weights and Q8_0 activations.
pub fn dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    dot32(x.iter().copied(), y)
}

/// The scalar tier's tile product: each of the tile row's 8 rows against each activation row
/// through [`dot32`] (the reference itself, on the unpacked blocks).
pub fn tiles<T, A, const N: usize>(t: &[T], y: &[&[A]; N]) -> [[f32; TILE_ROWS]; N]
where
    T: super::repack::Tiled,
    T::Row: Block32,
    A: Act32,
{
    y.map(|a| std::array::from_fn(|j| dot32(t.iter().map(|tile| tile.unpack(j)), a)))
}

/// The float dots' lane partial sums: lane `l` of `S` accumulates `x(k) * y(k)` (FMA) over the
/// positions `k = l, l + S, l + 2S, ...` below `np` (a multiple of `S`), in increasing `k`.
/// Every float dot below is these lanes, a fixed fold of them, and a tail: any code that
/// accumulates the same positions in the same order (the SIMD tiers, the GEMMs) gets the bits.
#[inline(always)]
fn float_lanes<const S: usize>(
    np: usize,
    x: impl Fn(usize) -> f32,
    y: impl Fn(usize) -> f32,
) -> [f32; S] {
    let mut lanes = [0f32; S];
    for i in (0..np).step_by(S) {
        for (l, v) in lanes.iter_mut().enumerate() {
            *v = x(i + l).mul_add(y(i + l), *v);
        }
    }
    lanes
}

/// Lanes of the F32/BF16 dot: 32 (four 8-lane accumulators over 32-element steps).
pub const FLOAT_LANES: usize = 32;

/// Lanes of the f16 dot: 64 (ggml's four 16-lane accumulators over 64-element steps).
pub const F16_LANES: usize = 64;

/// The F32/BF16 fold: the four 8-lane accumulators `(a0 + a1) + (a2 + a3)`, reduced as
/// [`hsum8`].
#[inline(always)]
pub fn fold_float_lanes(l: &[f32; FLOAT_LANES]) -> f32 {
    hsum8(&std::array::from_fn(|i| {
        (l[i] + l[8 + i]) + (l[16 + i] + l[24 + i])
    }))
}

/// The F32/BF16 tail after the fold: sequential FMAs.
#[inline(always)]
pub fn finish_float(folded: f32, tail: impl Iterator<Item = (f32, f32)>) -> f32 {
    tail.fold(folded, |s, (x, y)| x.mul_add(y, s))
}

/// ggml's f16 fold: the four 16-lane accumulators `(a0 + a2) + (a1 + a3)`, reduced as
/// [`reduce16`].
#[inline(always)]
pub fn fold_f16_lanes(l: &[f32; F16_LANES]) -> f32 {
    reduce16(&std::array::from_fn(|i| {
        (l[i] + l[32 + i]) + (l[16 + i] + l[48 + i])
    }))
}

/// The f16 tail after the fold: products added in f64.
#[inline(always)]
pub fn finish_f16(folded: f32, tail: impl Iterator<Item = (f32, f32)>) -> f32 {
    tail.fold(folded as f64, |s, (x, y)| s + (x * y) as f64) as f32
}

/// rill's dot order for float weights (F32, BF16): four 8-lane FMA accumulators over
/// 32-element steps, folded (a0 + a1) + (a2 + a3), reduced as [`hsum8`], then the tail added
/// with sequential FMAs. The SIMD tiers use the same order, so every tier gives the same bits.
#[inline(always)]
pub fn dot_float_with(n: usize, x: impl Fn(usize) -> f32, y: impl Fn(usize) -> f32) -> f32 {
    let np = n / FLOAT_LANES * FLOAT_LANES;
    let lanes = float_lanes::<FLOAT_LANES>(np, &x, &y);
    finish_float(fold_float_lanes(&lanes), (np..n).map(|k| (x(k), y(k))))
}

/// F32 dot product in [`dot_float_with`]'s order. Panics on different lengths.
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_f32 operand lengths");
    dot_float_with(x.len(), |k| x[k], |k| y[k])
}

/// BF16 weights against BF16-rounded activations (ggml's pairing), in [`dot_float_with`]'s order.
pub fn dot_bf16(x: &[u16], y: &[u16]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_bf16 operand lengths");
    dot_float_with(x.len(), |k| bf16_to_f32(x[k]), |k| bf16_to_f32(y[k]))
}

/// f16 dot product with ggml's AVX-512 summation tree, so attention scores are bit-identical to
/// llama.cpp's on the reference machine: four 16-lane f32 accumulators over 64-element steps
/// (FMA), folded 4 -> 1, then the 16 lanes reduced as `_mm512_reduce_add_ps` does; a tail
/// shorter than 64 is added in f64.
pub fn dot_f16_f16(x: &[u16], y: &[u16]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_f16_f16 operand lengths");
    dot_f16_with(x.len(), |k| f16_to_f32(x[k]), |k| f16_to_f32(y[k]))
}

/// [`dot_f16_f16`]'s tree over any two widened sequences of length `n`.
#[inline(always)]
fn dot_f16_with(n: usize, x: impl Fn(usize) -> f32, y: impl Fn(usize) -> f32) -> f32 {
    let np = n / F16_LANES * F16_LANES;
    let lanes = float_lanes::<F16_LANES>(np, &x, &y);
    finish_f16(fold_f16_lanes(&lanes), (np..n).map(|k| (x(k), y(k))))
}

/// The float formats' GEMM, the reference for the SIMD tiers' (`dispatch::FloatGemm`): `m`
/// weight rows (`w`, row-major, `k` wide) against `n` activation rows already widened to f32
/// (`a`; rounded to the weight type's activation precision, so each product is the single-row
/// dot's), `out[j * m + i] = dot(w row i, a row j)`.
fn gemm_with<W: Copy>(
    w: &[W],
    a: &[f32],
    k: usize,
    out: &mut [f32],
    dot: impl Fn(&[W], &[f32]) -> f32,
) {
    let (m, n) = check_gemm(w.len(), a.len(), k, out.len());
    for j in 0..n {
        for i in 0..m {
            out[j * m + i] = dot(&w[i * k..(i + 1) * k], &a[j * k..(j + 1) * k]);
        }
    }
}

/// What every GEMM assumes: whole rows of `k` on both sides and one output per pair. Returns
/// (weight rows, activation rows).
pub fn check_gemm(w: usize, a: usize, k: usize, out: usize) -> (usize, usize) {
    assert!(
        k > 0 && w.is_multiple_of(k) && a.is_multiple_of(k),
        "GEMM operands are not whole rows of {k}"
    );
    let (m, n) = (w / k, a / k);
    assert_eq!(out, m * n, "GEMM output size");
    (m, n)
}

/// F16 weights against f16-rounded activations widened to f32: [`dot_f16_f16`]'s bits.
pub fn gemm_f16(w: &[u16], a: &[f32], k: usize, out: &mut [f32]) {
    gemm_with(w, a, k, out, |x, y| {
        dot_f16_with(k, |i| f16_to_f32(x[i]), |i| y[i])
    });
}

/// BF16 weights against bf16-rounded activations widened to f32: [`dot_bf16`]'s bits.
pub fn gemm_bf16(w: &[u16], a: &[f32], k: usize, out: &mut [f32]) {
    gemm_with(w, a, k, out, |x, y| {
        dot_float_with(k, |i| bf16_to_f32(x[i]), |i| y[i])
    });
}

/// F32 weights: [`dot_f32`]'s bits.
pub fn gemm_f32(w: &[f32], a: &[f32], k: usize, out: &mut [f32]) {
    gemm_with(w, a, k, out, |x, y| dot_float_with(k, |i| x[i], |i| y[i]));
}

/// `_mm512_reduce_add_ps`'s order: halves of 8, then of 4, then pairs (0+2, 1+3), then the two.
pub fn reduce16(a: &[f32; 16]) -> f32 {
    let b: [f32; 8] = std::array::from_fn(|i| a[i] + a[i + 8]);
    let c: [f32; 4] = std::array::from_fn(|i| b[i] + b[i + 4]);
    (c[0] + c[2]) + (c[1] + c[3])
}

// ---- dequantization (tests, embeddings lookup) ----

/// Q4_0 blocks to f32, 32 values each into `out` (exact).
pub fn dequantize_q4_0(x: &[BlockQ4_0], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for j in 0..QK / 2 {
            o[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            o[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1 blocks to f32, 32 values each into `out` (exact).
pub fn dequantize_q4_1(x: &[BlockQ4_1], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for j in 0..QK / 2 {
            o[j] = (b.qs[j] & 0x0f) as f32 * d + m;
            o[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// Q5_0 blocks to f32, 32 values each into `out` (exact).
pub fn dequantize_q5_0(x: &[BlockQ5_0], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            o[j] = (((b.qs[j] & 0x0f) | h0) as i32 - 16) as f32 * d;
            o[j + QK / 2] = (((b.qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

/// Q5_1 blocks to f32, 32 values each into `out` (exact).
pub fn dequantize_q5_1(x: &[BlockQ5_1], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            o[j] = ((b.qs[j] & 0x0f) | h0) as f32 * d + m;
            o[j + QK / 2] = ((b.qs[j] >> 4) | h1) as f32 * d + m;
        }
    }
}

/// Q8_0 blocks to f32, 32 values each into `out` (exact).
pub fn dequantize_q8_0(x: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (v, &q) in o.iter_mut().zip(&b.qs) {
            *v = q as f32 * d;
        }
    }
}

/// IQ4_NL blocks to f32, 32 values each into `out` (exact).
pub fn dequantize_iq4nl(x: &[BlockIq4Nl], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (k, v) in o.iter_mut().enumerate() {
            *v = d * IQ4NL_VALUES[nibble(&b.qs, k) as usize] as f32;
        }
    }
}

/// ggml's `quantize_row_q4_0_ref` (what llama.cpp writes into a `q4_0` KV cache): the element
/// of largest magnitude maps to -8, d = max / -8, q = min(15, trunc(x / d + 8.5)). Multiply
/// and add stay separate roundings (ggml-base is built without FMA).
pub fn quantize_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16(d);
        let q = |v: f32| (((v * id) + 8.5) as i8).min(15) as u8;
        for (j, b) in yb.qs.iter_mut().enumerate() {
            *b = q(xb[j]) | (q(xb[j + QK / 2]) << 4);
        }
    }
}

/// A block read in ggml's 8-lane order whatever the format's matmul order (llama.cpp's
/// `ggml_vec_dot_q4_0_q8_0`, used on un-repacked tensors such as a Q4_0 KV cache).
#[derive(Clone, Copy)]
pub struct Lanes<B>(pub B);

impl<B: Block32> Block32 for Lanes<B> {
    const OFFSET: bool = B::OFFSET;
    const LANES: bool = true;
    fn d(&self) -> u16 {
        self.0.d()
    }
    fn m(&self) -> u16 {
        self.0.m()
    }
    #[inline(always)]
    fn value(&self, k: usize) -> i32 {
        self.0.value(k)
    }
}

/// Q4_0 against Q8_0 in lane order (see [`Lanes`]).
pub fn dot_q4_0_q8_0_lanes(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    dot32(x.iter().copied().map(Lanes), y)
}
