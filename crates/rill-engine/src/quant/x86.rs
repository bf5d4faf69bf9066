//! x86-64 SIMD kernels of float weights and the activation and KV-cache quantizers, compiled
//! for AVX2+FMA and again for the AVX-512 VNNI tier (one macro, so the two cannot drift), plus
//! the vector helpers the block-format kernels share (the tile kernels of every block format are
//! in `x86_tiles` and `x86_tiles512`; attention, RoPE and SwiGLU in [`crate::nn`]).
//!
//! SAFETY contract for every `unsafe fn` here: the caller has verified the CPU features named in
//! the function's `target_feature` attribute (only `dispatch::Kernels::detect` calls them), and
//! `x.len() == y.len()`.

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

use std::arch::x86_64::*;

use super::blocks::*;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn hsum_f32_8(v: __m256) -> f32 {
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
pub(crate) unsafe fn fp16(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// 32 nibbles from 16 bytes: low nibbles in bytes 0..16, high nibbles in 16..32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(p.cast());
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 0xff in byte `k` where bit `k` of the 32-bit mask is set (the Q5 high bits), else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn bytes_from_bits_32(bits: [u8; 4]) -> __m256i {
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
    ($modname:ident, $features:literal) => {
        /// The kernels of one tier.
        pub mod $modname {
            use super::*;

            /// `scalar::dot_f32` 8 lanes at a time (the same bits).
            #[target_feature(enable = $features)]
            pub unsafe fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
                loop_float!(x, y, load_f32x8, |v: f32| v)
            }

            /// `scalar::dot_bf16` 8 lanes at a time (the same bits).
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

            /// The scalar Q4_0 quantizer compiled for this tier (identical arithmetic: Rust
            /// never contracts its multiply and add).
            #[target_feature(enable = $features)]
            pub unsafe fn quantize_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
                super::super::scalar::quantize_q4_0(x, out)
            }

            /// The scalar Q8_K quantizer compiled for this tier (its rounding becomes one
            /// instruction instead of a libm call; identical arithmetic).
            #[target_feature(enable = $features)]
            pub unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
                assert_eq!(x.len(), out.len() * QK_K);
                let sign = _mm256_set1_ps(-0.0);
                for (xb, yb) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
                    let p = xb.as_ptr();
                    // The largest magnitude (max_ps returns its second operand for a NaN
                    // first one, so NaNs are skipped as the reference's `>` skips them).
                    let mut m = _mm256_setzero_ps();
                    for i in 0..QK_K / 8 {
                        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * i))), m);
                    }
                    let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
                    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
                    if amax == 0.0 {
                        *yb = BlockQ8K::default();
                        continue;
                    }
                    // The reference keeps the first element of that magnitude, with its sign.
                    let am = _mm256_set1_ps(amax);
                    let mut max = amax;
                    for i in 0..QK_K / 8 {
                        let v = _mm256_loadu_ps(p.add(8 * i));
                        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                            _mm256_andnot_ps(sign, v),
                            am,
                        ));
                        if hit != 0 {
                            max = xb[8 * i + hit.trailing_zeros() as usize];
                            break;
                        }
                    }
                    let iscale = -127.0 / max;
                    let id = _mm256_set1_ps(iscale);
                    let top = _mm256_set1_epi32(127);
                    // cvtps rounds ties to even (the default MXCSR mode), like round_ties_even;
                    // a NaN becomes 0 as in the reference's saturating cast.
                    let q32 = |j: usize| {
                        let v = _mm256_mul_ps(id, _mm256_loadu_ps(p.add(8 * j)));
                        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                        _mm256_andnot_si256(nan, _mm256_min_epi32(_mm256_cvtps_epi32(v), top))
                    };
                    for g in 0..QK_K / 32 {
                        let (i0, i1, i2, i3) =
                            (q32(4 * g), q32(4 * g + 1), q32(4 * g + 2), q32(4 * g + 3));
                        let q = _mm256_packs_epi16(
                            _mm256_packs_epi32(i0, i1),
                            _mm256_packs_epi32(i2, i3),
                        );
                        // packs works per 128-bit lane: restore element order.
                        let q = _mm256_permutevar8x32_epi32(
                            q,
                            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
                        );
                        _mm256_storeu_si256(yb.qs.as_mut_ptr().add(32 * g).cast(), q);
                        // The sums of elements 0..16 and 16..32 of this group.
                        let t =
                            _mm256_hadd_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
                        let t = _mm256_hadd_epi32(t, t);
                        let (lo, hi) =
                            (_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
                        let s = _mm_add_epi32(lo, hi);
                        yb.bsums[2 * g] = _mm_cvtsi128_si32(s) as i16;
                        yb.bsums[2 * g + 1] = _mm_extract_epi32::<1>(s) as i16;
                    }
                    yb.d = 1.0 / iscale;
                }
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

            /// Same arithmetic as `scalar::quantize_q8_1`.
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

kernels!(avx2, "avx2,fma,f16c");
kernels!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl");
