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

/// The block loop of the 32-element formats: R weight rows against N activation rows, in
/// ggml's order (as `scalar::lanes_fma`): per block and (row, activation) pair, 8 i32 lane sums
/// of 4 products, converted and FMA'd with `d_w * d_a` into that pair's 8-lane accumulator; one
/// horizontal sum at the end (plus the `m * s` chain of the formats with an offset). `$decode`
/// turns weight block `$xb` into its 32 values once for all N activations: i8 for `signed`
/// formats (multiplied with the sign trick), u8 for `offset` ones. With `$wide` the activation
/// scales come pre-widened to f32 from `$ys` (`QuantActs::row_scales`), else they are converted
/// per block; the values are the same. Every pair runs the same operations whatever R and N
/// are, so every tile shape gives the single-row kernel's bits.
macro_rules! loop32 {
    ($us8:ident, $x:expr, $y:expr, $ys:expr, $r:expr, $n:expr, $wide:expr,
     |$xb:ident| $decode:expr, $kind:ident) => {{
        let (x, y, ys) = ($x, $y, $ys);
        let nb = x[0].len();
        assert!(x.iter().all(|w| w.len() == nb) && y.iter().all(|a| a.len() >= nb));
        if $wide {
            let need_s = loop32!(@has_min $kind);
            assert!(ys.iter().all(|(d, s)| d.len() >= nb && (!need_s || s.len() >= nb)));
        }
        let mut acc = [[_mm256_setzero_ps(); $n]; $r];
        #[allow(unused_mut, unused_variables)] // the `m * s` chain exists for `offset` only
        let mut summs = [[0f32; $n]; $r];
        for i in 0..nb {
            // Plain loops, not closures: closures do not inherit `target_feature`, and the
            // intrinsics inside would become calls.
            let mut q = [_mm256_setzero_si256(); $r];
            let mut aq = [_mm256_setzero_si256(); $r];
            let mut dx = [_mm256_setzero_ps(); $r];
            #[allow(unused_mut, unused_variables)]
            let mut mx = [0f32; $r];
            for r in 0..$r {
                let $xb = &x[r][i];
                q[r] = $decode;
                aq[r] = loop32!(@abs $kind, q[r]);
                dx[r] = _mm256_set1_ps(fp16($xb.d));
                loop32!(@m $kind, mx[r], $xb);
            }
            for a in 0..$n {
                let yb = &y[a][i];
                let qy = _mm256_loadu_si256(yb.qs.as_ptr().cast());
                let dy = _mm256_set1_ps(if $wide { ys[a].0[i] } else { fp16(yb.d) });
                #[allow(unused_variables)]
                let sy = loop32!(@s $kind, $wide, yb, ys[a], i);
                for r in 0..$r {
                    let qyr = loop32!(@sign $kind, qy, q[r]);
                    loop32!(@min $kind, summs[r][a], mx[r], sy);
                    let p = _mm256_cvtepi32_ps($us8(_mm256_setzero_si256(), aq[r], qyr));
                    // d_w * d_a as a vector product: the same f32 as the scalar one.
                    acc[r][a] = _mm256_fmadd_ps(_mm256_mul_ps(dx[r], dy), p, acc[r][a]);
                }
            }
        }
        let mut out = [[0f32; $n]; $r];
        for r in 0..$r {
            for a in 0..$n {
                out[r][a] = loop32!(@finish $kind, hsum_f32_8(acc[r][a]), summs[r][a]);
            }
        }
        out
    }};
    (@has_min signed) => { false };
    (@has_min offset) => { true };
    (@abs signed, $q:expr) => { _mm256_sign_epi8($q, $q) };
    (@abs offset, $q:expr) => { $q };
    (@sign signed, $qy:ident, $q:expr) => { _mm256_sign_epi8($qy, $q) };
    (@sign offset, $qy:ident, $q:expr) => { $qy };
    (@m signed, $mx:expr, $xb:ident) => {};
    (@m offset, $mx:expr, $xb:ident) => { $mx = fp16($xb.m) };
    (@s signed, $wide:expr, $yb:ident, $ys:expr, $i:ident) => { 0f32 };
    (@s offset, $wide:expr, $yb:ident, $ys:expr, $i:ident) => {
        if $wide { $ys.1[$i] } else { fp16($yb.s) }
    };
    (@min signed, $s:expr, $mx:expr, $sy:ident) => {};
    (@min offset, $s:expr, $mx:expr, $sy:ident) => { $s = $mx.mul_add($sy, $s) };
    (@finish signed, $h:expr, $s:expr) => { $h };
    (@finish offset, $h:expr, $s:expr) => { $h + $s };
}

/// One 32-element format's kernels from its decode expression: `$name::<R, N, WIDE>` for any
/// tile (see `loop32`).
macro_rules! format32 {
    ($features:literal, $us8:ident, $name:ident, $w:ty, $a:ty, $kind:ident,
     |$xb:ident| $decode:expr) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $name<const R: usize, const N: usize, const WIDE: bool>(
            x: [&[$w]; R],
            y: [&[$a]; N],
            ys: [(&[f32], &[f32]); N],
        ) -> [[f32; N]; R] {
            loop32!($us8, x, y, ys, R, N, WIDE, |$xb| $decode, $kind)
        }
    };
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

            format32!(
                $features,
                $us8,
                dot_q4_0_q8_0,
                BlockQ4_0,
                BlockQ8_0,
                signed,
                |xb| { _mm256_sub_epi8(nibbles_32(xb.qs.as_ptr()), _mm256_set1_epi8(8)) }
            );
            format32!(
                $features,
                $us8,
                dot_q4_1_q8_1,
                BlockQ4_1,
                BlockQ8_1,
                offset,
                |xb| { nibbles_32(xb.qs.as_ptr()) }
            );
            // Q5_0: the nibble, minus 16 where the high bit is clear (`| 0xf0`).
            format32!(
                $features,
                $us8,
                dot_q5_0_q8_0,
                BlockQ5_0,
                BlockQ8_0,
                signed,
                |xb| {
                    _mm256_or_si256(
                        nibbles_32(xb.qs.as_ptr()),
                        _mm256_andnot_si256(
                            bytes_from_bits_32(xb.qh),
                            _mm256_set1_epi8(0xf0u8 as i8),
                        ),
                    )
                }
            );
            format32!(
                $features,
                $us8,
                dot_q5_1_q8_1,
                BlockQ5_1,
                BlockQ8_1,
                offset,
                |xb| {
                    _mm256_or_si256(
                        nibbles_32(xb.qs.as_ptr()),
                        _mm256_and_si256(bytes_from_bits_32(xb.qh), _mm256_set1_epi8(0x10)),
                    )
                }
            );
            format32!(
                $features,
                $us8,
                dot_q8_0_q8_0,
                BlockQ8_0,
                BlockQ8_0,
                signed,
                |xb| { _mm256_loadu_si256(xb.qs.as_ptr().cast()) }
            );
            format32!(
                $features,
                $us8,
                dot_iq4nl_q8_0,
                BlockIq4Nl,
                BlockQ8_0,
                signed,
                |xb| { _mm256_shuffle_epi8(iq4nl_table(), nibbles_32(xb.qs.as_ptr())) }
            );

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

            /// The scalar Q8_K quantizer compiled for this tier (its rounding becomes one
            /// instruction instead of a libm call; identical arithmetic).
            #[target_feature(enable = $features)]
            pub unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
                super::super::scalar::quantize_q8k(x, out)
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
