//! x86-64 SIMD kernels of the 32-element block formats, float weights, activation quantizers and
//! attention: AVX2+FMA, and the same kernels with AVX-512 VNNI (`vpdpbusd` on 256-bit vectors)
//! for the 8-bit multiply-adds (the super-block formats are in `x86_kquants`). Both tiers come from one macro so they cannot drift.
//! Accumulation order follows ggml's AVX2 code (per-lane f32 FMA across blocks, one horizontal
//! sum at the end) so results track llama.cpp's closely.
//!
//! SAFETY contract for every `unsafe fn` here: the caller has verified the CPU features named in
//! the function's `target_feature` attribute (only `dispatch::Kernels::detect` calls them), and
//! `x.len() == y.len()`.

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

use std::arch::x86_64::*;

use super::blocks::*;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn hsum_f32_8(v: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn hsum_i32_8(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn fp16(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// 32 nibbles from 16 bytes: low nibbles in bytes 0..16, high nibbles in 16..32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(p.cast());
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 0xff in byte `k` where bit `k` of the 32-bit mask is set (the Q5 high bits), else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bytes_from_bits_32(bits: [u8; 4]) -> __m256i {
    let x = _mm256_set1_epi32(i32::from_le_bytes(bits));
    let spread = _mm256_shuffle_epi8(
        x,
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let one_bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, one_bit), one_bit)
}

/// The IQ4_NL code book in both 128-bit lanes, for `_mm256_shuffle_epi8` look-ups.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn iq4nl_table() -> __m256i {
    _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4NL_VALUES.as_ptr().cast()))
}

/// Eight f32 from eight bf16.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_bf16x8(p: *const u16) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())),
        16,
    ))
}

/// Eight f32 from eight f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_f32x8(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

/// Sum of adjacent u8*i8 products into 8 i32 lanes (AVX2: maddubs + madd).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn us8_dot_avx2(acc: __m256i, ax: __m256i, sy: __m256i) -> __m256i {
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_add_epi32(acc, _mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// Same with VNNI: one `vpdpbusd`.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
#[inline]
unsafe fn us8_dot_vnni(acc: __m256i, ax: __m256i, sy: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, ax, sy)
}

/// The block loop of the 32-element formats against N activation rows, in ggml's order (as
/// `scalar::lanes_fma`): per block and row, 8 i32 lane sums of 4 products, converted and FMA'd
/// with `d_w * d_a` into that row's 8-lane accumulator; one horizontal sum at the end (plus the
/// `m * s` chain of the formats with an offset). `$decode` turns weight block `$xb` into its 32
/// values once for all N rows: i8 for `signed` formats (multiplied with the sign trick), u8 for
/// `offset` ones. Every (row, activation) pair runs the same operations whatever N is, so the
/// N-row kernels give the single-row kernel's bits.
macro_rules! loop32 {
    ($us8:ident, $x:expr, $y:expr, $n:expr, |$xb:ident| $decode:expr, $kind:ident) => {{
        let mut acc = [_mm256_setzero_ps(); $n];
        #[allow(unused_mut, unused_variables)] // the `m * s` chain exists for `offset` only
        let mut summs = [0f32; $n];
        for (i, $xb) in $x.iter().enumerate() {
            let q = $decode;
            let dx = fp16($xb.d);
            let aq = loop32!(@abs $kind, q);
            for a in 0..$n {
                let yb = &$y[a][i];
                let qy = _mm256_loadu_si256(yb.qs.as_ptr().cast());
                let qy = loop32!(@sign $kind, qy, q);
                loop32!(@min $kind, summs[a], $xb, yb);
                let p = _mm256_cvtepi32_ps($us8(_mm256_setzero_si256(), aq, qy));
                acc[a] = _mm256_fmadd_ps(_mm256_set1_ps(dx * fp16(yb.d)), p, acc[a]);
            }
        }
        std::array::from_fn(|a| loop32!(@finish $kind, hsum_f32_8(acc[a]), summs[a]))
    }};
    (@abs signed, $q:ident) => { _mm256_sign_epi8($q, $q) };
    (@abs offset, $q:ident) => { $q };
    (@sign signed, $qy:ident, $q:ident) => { _mm256_sign_epi8($qy, $q) };
    (@sign offset, $qy:ident, $q:ident) => { $qy };
    (@min signed, $s:expr, $xb:ident, $yb:ident) => {};
    (@min offset, $s:expr, $xb:ident, $yb:ident) => {
        $s = fp16($xb.m).mul_add(fp16($yb.s), $s)
    };
    (@finish signed, $h:expr, $s:expr) => { $h };
    (@finish offset, $h:expr, $s:expr) => { $h + $s };
}

/// rill's float dot order (`scalar::dot_float_with`): four 8-lane FMA accumulators over
/// 32-element steps, folded (a0 + a1) + (a2 + a3), one horizontal sum, then the tail with
/// sequential scalar FMAs.
macro_rules! loop_float {
    ($x:expr, $y:expr, $load:ident, $scalar:expr) => {{
        let (x, y) = ($x, $y);
        let n = x.len().min(y.len());
        let np = n / 32 * 32;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < np {
            for (j, a) in acc.iter_mut().enumerate() {
                let k = i + 8 * j;
                *a = _mm256_fmadd_ps($load(x.as_ptr().add(k)), $load(y.as_ptr().add(k)), *a);
            }
            i += 32;
        }
        let lanes = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum_f32_8(lanes);
        for k in np..n {
            s = $scalar(x[k]).mul_add($scalar(y[k]), s);
        }
        s
    }};
}

macro_rules! kernels {
    ($modname:ident, $features:literal, $us8:ident) => {
        pub mod $modname {
            use super::*;

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn us8_pairs_f32(ax: __m256i, sy: __m256i) -> __m256 {
                _mm256_cvtepi32_ps($us8(_mm256_setzero_si256(), ax, sy))
            }

            #[target_feature(enable = $features)]
            pub unsafe fn dot_q4_0_q8_0<const N: usize>(
                x: &[BlockQ4_0],
                y: [&[BlockQ8_0]; N],
            ) -> [f32; N] {
                let eight = _mm256_set1_epi8(8);
                loop32!(
                    $us8,
                    x,
                    y,
                    N,
                    |xb| _mm256_sub_epi8(nibbles_32(xb.qs.as_ptr()), eight),
                    signed
                )
            }

            #[target_feature(enable = $features)]
            pub unsafe fn dot_q4_1_q8_1<const N: usize>(
                x: &[BlockQ4_1],
                y: [&[BlockQ8_1]; N],
            ) -> [f32; N] {
                loop32!($us8, x, y, N, |xb| nibbles_32(xb.qs.as_ptr()), offset)
            }

            /// Q5_0: the nibble, minus 16 where the high bit is clear (`| 0xf0`).
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q5_0_q8_0<const N: usize>(
                x: &[BlockQ5_0],
                y: [&[BlockQ8_0]; N],
            ) -> [f32; N] {
                let f0 = _mm256_set1_epi8(0xf0u8 as i8);
                loop32!(
                    $us8,
                    x,
                    y,
                    N,
                    |xb| _mm256_or_si256(
                        nibbles_32(xb.qs.as_ptr()),
                        _mm256_andnot_si256(bytes_from_bits_32(xb.qh), f0)
                    ),
                    signed
                )
            }

            #[target_feature(enable = $features)]
            pub unsafe fn dot_q5_1_q8_1<const N: usize>(
                x: &[BlockQ5_1],
                y: [&[BlockQ8_1]; N],
            ) -> [f32; N] {
                let b4 = _mm256_set1_epi8(0x10);
                loop32!(
                    $us8,
                    x,
                    y,
                    N,
                    |xb| _mm256_or_si256(
                        nibbles_32(xb.qs.as_ptr()),
                        _mm256_and_si256(bytes_from_bits_32(xb.qh), b4)
                    ),
                    offset
                )
            }

            #[target_feature(enable = $features)]
            pub unsafe fn dot_q8_0_q8_0<const N: usize>(
                x: &[BlockQ8_0],
                y: [&[BlockQ8_0]; N],
            ) -> [f32; N] {
                loop32!(
                    $us8,
                    x,
                    y,
                    N,
                    |xb| _mm256_loadu_si256(xb.qs.as_ptr().cast()),
                    signed
                )
            }

            #[target_feature(enable = $features)]
            pub unsafe fn dot_iq4nl_q8_0<const N: usize>(
                x: &[BlockIq4Nl],
                y: [&[BlockQ8_0]; N],
            ) -> [f32; N] {
                let table = iq4nl_table();
                loop32!(
                    $us8,
                    x,
                    y,
                    N,
                    |xb| _mm256_shuffle_epi8(table, nibbles_32(xb.qs.as_ptr())),
                    signed
                )
            }

            /// Two Q4_1 rows against four activation rows: each weight block is unpacked once
            /// and used four times. Every (row, activation) pair keeps `dot_q4_1_q8_1`'s exact
            /// accumulation order, so results are bit-identical.
            #[target_feature(enable = $features)]
            pub unsafe fn dot2x4_q4_1_q8_1(
                x: [&[BlockQ4_1]; 2],
                y: [&[BlockQ8_1]; 4],
                ys: [(&[f32], &[f32]); 4],
            ) -> [[f32; 4]; 2] {
                let mut acc = [[_mm256_setzero_ps(); 4]; 2];
                let mut summs = [[0f32; 4]; 2];
                let nb = y[0].len();
                for i in 0..nb {
                    let x0 = x[0].get_unchecked(i);
                    let x1 = x[1].get_unchecked(i);
                    let q0 = nibbles_32(x0.qs.as_ptr());
                    let q1 = nibbles_32(x1.qs.as_ptr());
                    let (d0, d1, m0, m1) = (fp16(x0.d), fp16(x1.d), fp16(x0.m), fp16(x1.m));
                    for a in 0..4 {
                        let yb = y[a].get_unchecked(i);
                        let (dy, sy) = (*ys[a].0.get_unchecked(i), *ys[a].1.get_unchecked(i));
                        let qy = _mm256_loadu_si256(yb.qs.as_ptr().cast());
                        summs[0][a] = m0.mul_add(sy, summs[0][a]);
                        summs[1][a] = m1.mul_add(sy, summs[1][a]);
                        acc[0][a] = _mm256_fmadd_ps(
                            _mm256_set1_ps(d0 * dy),
                            us8_pairs_f32(q0, qy),
                            acc[0][a],
                        );
                        acc[1][a] = _mm256_fmadd_ps(
                            _mm256_set1_ps(d1 * dy),
                            us8_pairs_f32(q1, qy),
                            acc[1][a],
                        );
                    }
                }
                std::array::from_fn(|r| {
                    std::array::from_fn(|a| hsum_f32_8(acc[r][a]) + summs[r][a])
                })
            }

            /// Two Q8_0 rows against four activation rows, bit-identical to `dot_q8_0_q8_0`.
            #[target_feature(enable = $features)]
            pub unsafe fn dot2x4_q8_0_q8_0(
                x: [&[BlockQ8_0]; 2],
                y: [&[BlockQ8_0]; 4],
                ys: [(&[f32], &[f32]); 4],
            ) -> [[f32; 4]; 2] {
                let mut acc = [[_mm256_setzero_ps(); 4]; 2];
                let nb = y[0].len();
                for i in 0..nb {
                    let x0 = x[0].get_unchecked(i);
                    let x1 = x[1].get_unchecked(i);
                    let q0 = _mm256_loadu_si256(x0.qs.as_ptr().cast());
                    let q1 = _mm256_loadu_si256(x1.qs.as_ptr().cast());
                    // |x| and the sign trick, hoisted out of the activation loop.
                    let a0 = _mm256_sign_epi8(q0, q0);
                    let a1 = _mm256_sign_epi8(q1, q1);
                    let (d0, d1) = (fp16(x0.d), fp16(x1.d));
                    for a in 0..4 {
                        let yb = y[a].get_unchecked(i);
                        let dy = *ys[a].0.get_unchecked(i);
                        let qy = _mm256_loadu_si256(yb.qs.as_ptr().cast());
                        let p0 = us8_pairs_f32(a0, _mm256_sign_epi8(qy, q0));
                        let p1 = us8_pairs_f32(a1, _mm256_sign_epi8(qy, q1));
                        acc[0][a] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * dy), p0, acc[0][a]);
                        acc[1][a] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * dy), p1, acc[1][a]);
                    }
                }
                std::array::from_fn(|r| std::array::from_fn(|a| hsum_f32_8(acc[r][a])))
            }

            #[target_feature(enable = $features)]
            pub unsafe fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
                loop_float!(x, y, load_f32x8, |v: f32| v)
            }

            #[target_feature(enable = $features)]
            pub unsafe fn dot_bf16(x: &[u16], y: &[u16]) -> f32 {
                loop_float!(x, y, load_bf16x8, bf16_to_f32)
            }

            /// Same summation tree as `scalar::dot_f16_f16` (ggml's AVX-512 one): 4x16 lanes
            /// held as 8 AVX2 registers.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_f16_f16(x: &[u16], y: &[u16]) -> f32 {
                let np = x.len() / 64 * 64;
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut i = 0;
                while i < np {
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xa = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i + r * 8).cast()));
                        let ya = _mm256_cvtph_ps(_mm_loadu_si128(y.as_ptr().add(i + r * 8).cast()));
                        *a = _mm256_fmadd_ps(xa, ya, *a);
                    }
                    i += 64;
                }
                // Accumulator j lanes 0..8 = acc[2j], lanes 8..16 = acc[2j+1].
                let lo =
                    _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
                let hi =
                    _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
                let mut sum = hsum_f32_8(_mm256_add_ps(lo, hi)) as f64;
                for j in np..x.len() {
                    sum += (fp16(x[j]) * fp16(y[j])) as f64;
                }
                sum as f32
            }

            #[target_feature(enable = $features)]
            pub unsafe fn mad_f16(acc: &mut [u16], v: &[u16], s: f32) {
                let n = acc.len() / 8 * 8;
                let vs = _mm256_set1_ps(s);
                let mut i = 0;
                while i < n {
                    let a = _mm256_cvtph_ps(_mm_loadu_si128(acc.as_ptr().add(i).cast()));
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
                    let r = _mm256_fmadd_ps(x, vs, a);
                    _mm_storeu_si128(acc.as_mut_ptr().add(i).cast(), _mm256_cvtps_ph::<0>(r));
                    i += 8;
                }
                super::super::scalar::mad_f16(&mut acc[n..], &v[n..], s);
            }

            #[target_feature(enable = $features)]
            pub unsafe fn scale_f16(acc: &mut [u16], s: f32) {
                let n = acc.len() / 8 * 8;
                let vs = _mm256_set1_ps(s);
                let mut i = 0;
                while i < n {
                    let a = _mm256_cvtph_ps(_mm_loadu_si128(acc.as_ptr().add(i).cast()));
                    _mm_storeu_si128(
                        acc.as_mut_ptr().add(i).cast(),
                        _mm256_cvtps_ph::<0>(_mm256_mul_ps(a, vs)),
                    );
                    i += 8;
                }
                super::super::scalar::scale_f16(&mut acc[n..], s);
            }

            /// The scalar RoPE compiled with FMA available (identical arithmetic, fast `mul_add`).
            #[target_feature(enable = $features)]
            pub unsafe fn rope_norm(head: &mut [f32], cs: &[(f32, f32)]) {
                super::super::scalar::rope_norm(head, cs)
            }

            /// Attention with this tier's f16 kernels and FMA (identical arithmetic).
            #[target_feature(enable = $features)]
            pub unsafe fn attend(
                q: &[f32],
                q_heads: std::ops::Range<usize>,
                head_dim: usize,
                kv: &super::super::scalar::KvRows<'_>,
                out: &mut [f32],
            ) {
                super::super::scalar::attend_with(
                    |a, b| dot_f16_f16(a, b),
                    |a, v, s| mad_f16(a, v, s),
                    |a, s| scale_f16(a, s),
                    q,
                    q_heads,
                    head_dim,
                    kv,
                    out,
                )
            }

            /// The scalar `swiglu` compiled with FMA available (its `mul_add`s become single
            /// instructions; the arithmetic is identical).
            #[target_feature(enable = $features)]
            pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
                super::super::scalar::swiglu(gate, up)
            }

            /// Same arithmetic as `scalar::quantize_q8_0` (ties-to-even rounding).
            #[target_feature(enable = $features)]
            pub unsafe fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
                for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
                    let (q, d) = quantize_block(xb.as_ptr());
                    yb.d = f32_to_f16(d);
                    _mm256_storeu_si256(yb.qs.as_mut_ptr().cast(), q);
                }
            }

            #[target_feature(enable = $features)]
            pub unsafe fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
                for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
                    let (q, d) = quantize_block(xb.as_ptr());
                    yb.d = f32_to_f16(d);
                    _mm256_storeu_si256(yb.qs.as_mut_ptr().cast(), q);
                    // Sum of the 32 int8 values: maddubs with ones (as u8) then madd.
                    let s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q);
                    let s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
                    yb.s = f32_to_f16(d * hsum_i32_8(s32) as f32);
                }
            }

            /// Quantizes 32 floats: returns the packed int8 vector and the f32 scale.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn quantize_block(p: *const f32) -> (__m256i, f32) {
                let sign = _mm256_set1_ps(-0.0);
                let v0 = _mm256_loadu_ps(p);
                let v1 = _mm256_loadu_ps(p.add(8));
                let v2 = _mm256_loadu_ps(p.add(16));
                let v3 = _mm256_loadu_ps(p.add(24));
                let mut m = _mm256_andnot_ps(sign, v0);
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v1));
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v2));
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v3));
                let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
                let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
                let amax = _mm_cvtss_f32(m4);
                let d = amax / 127.0;
                let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
                const RN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
                let i0 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v0, id)));
                let i1 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v1, id)));
                let i2 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v2, id)));
                let i3 = _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(v3, id)));
                let a = _mm256_packs_epi32(i0, i1);
                let b = _mm256_packs_epi32(i2, i3);
                let q = _mm256_packs_epi16(a, b);
                // packs works per 128-bit lane: restore element order.
                let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                (q, d)
            }
        }
    };
}

kernels!(avx2, "avx2,fma,f16c", us8_dot_avx2);
kernels!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl", us8_dot_vnni);
