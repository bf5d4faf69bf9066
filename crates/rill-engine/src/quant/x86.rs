//! x86-64 SIMD kernels of float weights, activation quantizers and attention, compiled for
//! AVX2+FMA and again for the AVX-512 VNNI tier (one macro, so the two cannot drift), plus the
//! vector helpers the block-format kernels share (the 32-element formats' tile kernels are in
//! `x86_tiles`, the super-block formats in `x86_kquants`).
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

/// `scalar::expf` of 4 values at once (the double-precision steps in ymm, the table look-up
/// a gather): the same operations in the same order, so the same bits. Lanes that need
/// glibc's special cases (|x| >= 88, inf, NaN) are redone by `scalar::expf_special`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn expf_x4(x: __m128) -> __m128 {
    use super::scalar::{EXPF_C, EXPF_INV_LN2_N, EXPF_SHIFT, EXPF_SPECIAL_TOP12, EXPF_TABLE};
    let xd = _mm256_cvtps_pd(x);
    let inv = _mm256_set1_pd(EXPF_INV_LN2_N);
    let shift = _mm256_set1_pd(EXPF_SHIFT);
    let kds = _mm256_fmadd_pd(inv, xd, shift);
    let ki = _mm256_castpd_si256(kds);
    let kd = _mm256_sub_pd(kds, shift);
    let r = _mm256_fmsub_pd(inv, xd, kd);
    let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
    // SAFETY: every index is in 0..32, inside the table.
    let tab = _mm256_i64gather_epi64::<8>(EXPF_TABLE.as_ptr().cast(), idx);
    let s = _mm256_castsi256_pd(_mm256_add_epi64(tab, _mm256_slli_epi64::<47>(ki)));
    let z = _mm256_fmadd_pd(_mm256_set1_pd(EXPF_C[0]), r, _mm256_set1_pd(EXPF_C[1]));
    let r2 = _mm256_mul_pd(r, r);
    let y = _mm256_fmadd_pd(r, _mm256_set1_pd(EXPF_C[2]), _mm256_set1_pd(1.0));
    let y = _mm256_mul_pd(_mm256_fmadd_pd(z, r2, y), s);
    let out = _mm256_cvtpd_ps(y);
    // Lanes whose bits 20..31 (sans sign) reach top12(88.0).
    let top = _mm_and_si128(
        _mm_srli_epi32::<20>(_mm_castps_si128(x)),
        _mm_set1_epi32(0x7ff),
    );
    let special = _mm_cmpgt_epi32(top, _mm_set1_epi32(EXPF_SPECIAL_TOP12 as i32 - 1));
    if _mm_movemask_epi8(special) == 0 {
        return out;
    }
    let (mut xs, mut o) = ([0f32; 4], [0f32; 4]);
    _mm_storeu_ps(xs.as_mut_ptr(), x);
    _mm_storeu_ps(o.as_mut_ptr(), out);
    for (o, &x) in o.iter_mut().zip(&xs) {
        if (x.to_bits() >> 20) & 0x7ff >= EXPF_SPECIAL_TOP12 {
            *o = super::scalar::expf_special(x);
        }
    }
    _mm_loadu_ps(o.as_ptr())
}

/// One tier's public attention kernel over a quantized cache format: `attend_quant` with the
/// format's dot product and block values.
macro_rules! attend_quant_entry {
    ($features:literal, $name:ident, $block:ty, $dot:expr, $values:expr) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            q: &[f32],
            q_heads: std::ops::Range<usize>,
            head_dim: usize,
            scale: f32,
            kv: &super::super::scalar::KvRows<'_, $block>,
            out: &mut [f32],
        ) {
            attend_quant($dot, $values, q, q_heads, head_dim, scale, kv, out)
        }
    };
}

macro_rules! kernels {
    ($modname:ident, $features:literal) => {
        pub mod $modname {
            use super::*;

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

            /// The scalar neox RoPE compiled with FMA available (identical arithmetic).
            #[target_feature(enable = $features)]
            pub unsafe fn rope_neox(head: &mut [f32], cs: &[(f32, f32)]) {
                super::super::scalar::rope_neox(head, cs)
            }

            /// ggml's AVX2 `ggml_vec_dot_q8_0_q8_0` / `ggml_vec_dot_q4_0_q8_0` (the lane order
            /// of `scalar::dot32`): per block 8 exact i32 lane sums of 4 products, `acc =
            /// fma(d_x * d_y, lanes, acc)`, one horizontal sum. `row` yields block `b`'s 32
            /// signed values and its scale.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn dot_lanes_q8_0(
                nb: usize,
                row: impl Fn(usize) -> (__m256i, u16),
                y: &[BlockQ8_0],
            ) -> f32 {
                assert!(y.len() >= nb);
                let mut acc = _mm256_setzero_ps();
                for (b, yb) in y[..nb].iter().enumerate() {
                    let (qx, dx) = row(b);
                    let d = _mm256_set1_ps(fp16(dx) * fp16(yb.d));
                    let qy = _mm256_loadu_si256(yb.qs.as_ptr().cast());
                    // |x| * sign(y, x): the products' signs without a signed-by-signed
                    // multiply; values stay within +-127, so the i16 pair sums are exact.
                    let p16 =
                        _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
                    let lanes = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
                    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc);
                }
                hsum_f32_8(acc)
            }

            /// Dequantizes blocks (`values` gives a block's 32 signed values and scale) into
            /// `out`: `q as f32 * d`, exact, as `scalar::dequantize_q8_0` / `_q4_0`.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn dequant_blocks<B>(
                x: &[B],
                out: &mut [f32],
                values: impl Fn(&B) -> (__m256i, u16),
            ) {
                assert!(out.len() >= x.len() * QK);
                for (b, o) in x.iter().zip(out.chunks_exact_mut(QK)) {
                    let (q, d) = values(b);
                    let d = _mm256_set1_ps(fp16(d));
                    let lo = _mm256_castsi256_si128(q);
                    let hi = _mm256_extracti128_si256(q, 1);
                    let parts = [
                        _mm256_cvtepi8_epi32(lo),
                        _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)),
                        _mm256_cvtepi8_epi32(hi),
                        _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)),
                    ];
                    for (r, p) in parts.into_iter().enumerate() {
                        let v = _mm256_mul_ps(_mm256_cvtepi32_ps(p), d);
                        _mm256_storeu_ps(o.as_mut_ptr().add(8 * r), v);
                    }
                }
            }

            /// `scalar::dot_q8_0_q8_0` (lane order).
            #[target_feature(enable = $features)]
            pub unsafe fn dot_kv_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
                dot_lanes_q8_0(
                    x.len(),
                    |b| (_mm256_loadu_si256(x[b].qs.as_ptr().cast()), x[b].d),
                    y,
                )
            }

            /// `scalar::dot_q4_0_q8_0_lanes`.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_kv_q4_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
                dot_lanes_q8_0(x.len(), |b| q4_0_values(&x[b]), y)
            }

            /// A Q4_0 block's 32 signed values (nibble - 8) and its scale.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn q4_0_values(b: &BlockQ4_0) -> (__m256i, u16) {
                let q = nibbles_32(b.qs.as_ptr());
                (_mm256_sub_epi8(q, _mm256_set1_epi8(8)), b.d)
            }

            /// `scalar::attend_q8_0` / `_q4_0` with this tier's dot product, dequantization and
            /// quantizer; the value loops compile to FMA vectors (same per-element operations).
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::too_many_arguments)] // the kernel's arguments plus its two primitives
            unsafe fn attend_quant<B: Copy>(
                dot: impl Fn(&[B], &[BlockQ8_0]) -> f32,
                values: impl Fn(&B) -> (__m256i, u16),
                q: &[f32],
                q_heads: std::ops::Range<usize>,
                head_dim: usize,
                scale: f32,
                kv: &super::super::scalar::KvRows<'_, B>,
                out: &mut [f32],
            ) {
                super::super::scalar::attend_quant_with(
                    dot,
                    |x, o| dequant_blocks(x, o, &values),
                    |x, y| quantize_q8_0(x, y),
                    q,
                    q_heads,
                    head_dim,
                    scale,
                    kv,
                    out,
                )
            }

            attend_quant_entry!(
                $features,
                attend_q8_0,
                BlockQ8_0,
                |x, y| dot_kv_q8_0(x, y),
                |b: &BlockQ8_0| (_mm256_loadu_si256(b.qs.as_ptr().cast()), b.d)
            );
            attend_quant_entry!(
                $features,
                attend_q4_0,
                BlockQ4_0,
                |x, y| dot_kv_q4_0(x, y),
                |b: &BlockQ4_0| q4_0_values(b)
            );

            /// The scalar Q4_0 quantizer compiled for this tier (identical arithmetic: Rust
            /// never contracts its multiply and add).
            #[target_feature(enable = $features)]
            pub unsafe fn quantize_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
                super::super::scalar::quantize_q4_0(x, out)
            }

            /// `scalar::swiglu` 8 elements at a time: ggml's `expf` (`scalar::ggml_expf`) with
            /// the same FMAs in the same order, its overflow cases blended in, the power of two
            /// applied as the same two factors; the tail through the scalar code. (The scalar
            /// loop did not vectorize: 5% of Q4_1 prefill in `perf`.)
            #[target_feature(enable = $features)]
            pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
                let n = gate.len().min(up.len());
                let n8 = n / 8 * 8;
                let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
                let r = c(0x4b40_0000);
                for i in (0..n8).step_by(8) {
                    // SAFETY: i + 8 <= n8 <= both lengths.
                    let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                    let u = _mm256_loadu_ps(up.as_ptr().add(i));
                    let x = _mm256_xor_ps(g, _mm256_set1_ps(-0.0));
                    let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), r);
                    let nf = _mm256_sub_ps(z, r);
                    let neg = _mm256_xor_ps(nf, _mm256_set1_ps(-0.0));
                    let b = _mm256_fmadd_ps(
                        neg,
                        c(0x35bf_be8e),
                        _mm256_fmadd_ps(neg, c(0x3f31_7200), x),
                    );
                    let uu = _mm256_mul_ps(b, b);
                    let t1 = _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17));
                    let t2 = _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb));
                    let t4 = _mm256_fmadd_ps(c(0x3f7f_fff6), b, _mm256_set1_ps(1.0));
                    let j = _mm256_fmadd_ps(_mm256_fmadd_ps(t1, uu, t2), uu, t4);
                    // scale_pow2(j, n): j * 2^(n/2) * 2^(n - n/2), exponents clamped to 0..255.
                    let ni = _mm256_cvttps_epi32(nf);
                    let half =
                        _mm256_srai_epi32::<1>(_mm256_add_epi32(ni, _mm256_srli_epi32::<31>(ni)));
                    let pow = |e: __m256i| {
                        let e = _mm256_add_epi32(e, _mm256_set1_epi32(127));
                        let e = _mm256_min_epi32(
                            _mm256_max_epi32(e, _mm256_setzero_si256()),
                            _mm256_set1_epi32(255),
                        );
                        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
                    };
                    let scaled =
                        _mm256_mul_ps(_mm256_mul_ps(j, pow(half)), pow(_mm256_sub_epi32(ni, half)));
                    // |n| > 192: 0 where n <= 0, else infinity.
                    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), nf);
                    let big = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
                    let limit = _mm256_blendv_ps(
                        _mm256_set1_ps(f32::INFINITY),
                        _mm256_setzero_ps(),
                        _mm256_cmp_ps::<_CMP_LE_OQ>(nf, _mm256_setzero_ps()),
                    );
                    let e = _mm256_blendv_ps(scaled, limit, big);
                    let out =
                        _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u);
                    _mm256_storeu_ps(gate.as_mut_ptr().add(i), out);
                }
                super::super::scalar::swiglu(&mut gate[n8..n], &up[n8..n]);
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
