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
    fn d(&self) -> u16;
    /// `d * sum(qs)` as f16 bits (Q8_1; 0 for Q8_0).
    fn s(&self) -> u16;
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

pub fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    dot32(x.iter().copied(), y)
}

pub fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    dot32(x.iter().copied(), y)
}

pub fn dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    dot32(x.iter().copied(), y)
}

pub fn dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    dot32(x.iter().copied(), y)
}

pub fn dot_iq4nl_q8_0(x: &[BlockIq4Nl], y: &[BlockQ8_0]) -> f32 {
    dot32(x.iter().copied(), y)
}

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

/// ggml's vectorised expf (ARM optimized-routines polynomial, max error ~1.5 ulp), which its
/// SwiGLU uses; reproduced so activations match llama.cpp bit for bit.
#[inline(always)]
pub fn ggml_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3d2b_9f17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0)); // 0x1.ffffecp-1
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    scale_pow2(j, n as i32)
}

/// glibc's `expf` (since 2.27; ARM optimized-routines: `2^(k/32)` from a 32-entry table times a
/// cubic in double precision), as its FMA build computes it (the variant glibc picks on every
/// CPU with FMA, which llama.cpp's attention calls through libm): reproduced so that the
/// softmax weights are libm's bits on every tier, and so that they can be computed 4 at a
/// time (`x86::expf_x4`). The tests compare it with the machine's libm.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let bits = x.to_bits();
    if (bits >> 20) & 0x7ff >= EXPF_SPECIAL_TOP12 {
        return expf_special(x);
    }
    expf_core(x as f64) as f32
}

/// `top12(88.0)`: at or above it (|x| >= 88, inf, NaN) [`expf`] takes [`expf_special`].
pub const EXPF_SPECIAL_TOP12: u32 = 0x42b;

/// `2^(i/32)` minus `i << 47`, glibc's `__exp2f_data.tab`.
pub const EXPF_TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// `32 / ln 2`.
pub const EXPF_INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
/// `0x1.8p52`: adding it rounds to an integer held in the low mantissa bits.
pub const EXPF_SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
/// The cubic's coefficients (glibc's `poly_scaled`).
pub const EXPF_C: [f64; 3] = [
    f64::from_bits(0x3ebc_6af8_4b91_2394),
    f64::from_bits(0x3f2e_bfce_50fa_c4f3),
    f64::from_bits(0x3f96_2e42_ff0c_52d6),
];

/// [`expf`] for |x| < 88, in the FMA build's operation order.
#[inline(always)]
fn expf_core(xd: f64) -> f64 {
    let kds = EXPF_INV_LN2_N.mul_add(xd, EXPF_SHIFT);
    let ki = kds.to_bits();
    let kd = kds - EXPF_SHIFT;
    let r = EXPF_INV_LN2_N.mul_add(xd, -kd);
    let t = EXPF_TABLE[(ki & 31) as usize].wrapping_add(ki << 47);
    let s = f64::from_bits(t);
    let z = EXPF_C[0].mul_add(r, EXPF_C[1]);
    let r2 = r * r;
    let y = r.mul_add(EXPF_C[2], 1.0);
    z.mul_add(r2, y) * s
}

/// [`expf`] for |x| >= 88, infinities and NaN: glibc's special cases (0 for -inf and below
/// `log(2^-150)`, inf above `log(2^128)`, NaN propagated, the subnormal range computed).
#[cold]
pub fn expf_special(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        return 0.0;
    }
    if x.is_nan() || x == f32::INFINITY {
        return x + x;
    }
    if x > f32::from_bits(0x42b1_7217) {
        return f32::INFINITY;
    }
    if x < f32::from_bits(0xc2cf_f1b4) {
        return 0.0;
    }
    if x < f32::from_bits(0xc2ce_8ecf) {
        // glibc's __math_may_uflowf: 0x1.4p-75 squared, rounded to float.
        return f32::from_bits(0x1a20_0000) * f32::from_bits(0x1a20_0000);
    }
    expf_core(x as f64) as f32
}

/// j * 2^n, exact while the result is normal (what `_mm512_scalef_ps` computes).
#[inline(always)]
fn scale_pow2(j: f32, n: i32) -> f32 {
    let half = n / 2;
    let p = |e: i32| f32::from_bits(((e + 127).clamp(0, 255) as u32) << 23);
    j * p(half) * p(n - half)
}

/// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)) with ggml's expf.
#[inline(always)]
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = (*g / (1.0 + ggml_expf(-*g))) * u;
    }
}

// ---- dequantization (tests, embeddings lookup) ----

pub fn dequantize_q4_0(x: &[BlockQ4_0], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for j in 0..QK / 2 {
            o[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            o[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(x: &[BlockQ4_1], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for j in 0..QK / 2 {
            o[j] = (b.qs[j] & 0x0f) as f32 * d + m;
            o[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

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

pub fn dequantize_q8_0(x: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (v, &q) in o.iter_mut().zip(&b.qs) {
            *v = q as f32 * d;
        }
    }
}

pub fn dequantize_iq4nl(x: &[BlockIq4Nl], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (k, v) in o.iter_mut().enumerate() {
            *v = d * IQ4NL_VALUES[nibble(&b.qs, k) as usize] as f32;
        }
    }
}

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

/// Rotary embedding, "normal" mode (adjacent pairs), in place. `cs` holds (cos, sin) per pair.
/// The products are fused exactly as llama.cpp's compiled (vectorised, FMA-contracted) RoPE
/// does, found by fitting its dumped tensors: x0*cos - x1*sin is fma(x0, cos, -(x1*sin)) and
/// x0*sin + x1*cos is fma(x0, sin, x1*cos).
#[inline(always)]
pub fn rope_norm(head: &mut [f32], cs: &[(f32, f32)]) {
    for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cs) {
        let (x0, x1) = (pair[0], pair[1]);
        pair[0] = x0.mul_add(c, -(x1 * s));
        pair[1] = x0.mul_add(s, x1 * c);
    }
}

/// Rotary embedding, "neox" mode (pairs `i` and `i + n/2`, as Gemma, Qwen and Phi-3 use), in
/// place, with [`rope_norm`]'s fused products (both modes are one function in ggml).
#[inline(always)]
pub fn rope_neox(head: &mut [f32], cs: &[(f32, f32)]) {
    let (lo, hi) = head.split_at_mut(head.len() / 2);
    for ((a, b), &(c, s)) in lo.iter_mut().zip(hi.iter_mut()).zip(cs) {
        let (x0, x1) = (*a, *b);
        *a = x0.mul_add(c, -(x1 * s));
        *b = x0.mul_add(s, x1 * c);
    }
}

/// Where one KV head's rows of a sequence live, in the cache's storage unit `T` (`u16` f16
/// elements, or Q8_0 / Q4_0 blocks of 32 elements): position `j`'s head row starts at unit
/// `offsets[j]` of both buffers.
pub struct KvRows<'a, T = u16> {
    pub keys: &'a [T],
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
/// block kernels (`dispatch::AttendBlockFn`), which widen each key and value row once for all
/// of the block's tokens and heads. Token `i` attends the positions `kv.offsets[keys[i]]` in
/// order, exactly as a per-token call over those offsets would.
pub struct AttendBlock<'a, T = u16> {
    /// Token `i`'s query row starts at `i * stride` (query head `h` at `h * head_dim` in it).
    pub q: &'a [f32],
    /// Floats between consecutive tokens' rows, in `q` and in the output alike.
    pub stride: usize,
    /// The query heads sharing the KV head.
    pub heads: std::ops::Range<usize>,
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
