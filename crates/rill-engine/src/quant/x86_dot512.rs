//! AVX-512 float dot products of one weight row against 4 activation rows: the batched path
//! (prefill, batched decode) of the F16, BF16 and F32 weight formats on the VNNI tier. Each
//! pair runs its single-row order exactly (`scalar::dot_f16_f16`'s 4x16-lane tree,
//! `scalar::dot_float_with`'s 4x8 lanes as two zmm), so the bits are the single-row kernels';
//! the weight vectors are loaded and widened once for the 4 rows.
//!
//! SAFETY contract for every `unsafe fn` here: the caller has verified the features in the
//! function's `target_feature` attribute (only `dispatch::Kernels` builds calls to them, after
//! `all_supported` detected them). Slice lengths are checked by asserts.

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

use std::arch::x86_64::*;

use super::blocks::{bf16_to_f32, f16_to_f32};
use super::scalar::{hsum8, reduce16};

/// `scalar::dot_f16_f16` for 4 activation rows: per pair 4 zmm accumulators over 64-element
/// steps, folded (0 + 2) + (1 + 3), reduced in `_mm512_reduce_add_ps`'s order, the tail in f64.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot4_f16(x: &[u16], y: [&[u16]; 4]) -> [f32; 4] {
    let n = x.len();
    assert!(y.iter().all(|a| a.len() >= n));
    let np = n / 64 * 64;
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    for i in (0..np).step_by(64) {
        // SAFETY: i + 64 <= np <= every row's length. (Plain loops, not closures, in these
        // kernels: a closure does not inherit the target features, so it is not inlined.)
        let mut w = [_mm512_setzero_ps(); 4];
        for (r, v) in w.iter_mut().enumerate() {
            *v = _mm512_cvtph_ps(_mm256_loadu_si256(x.as_ptr().add(i + 16 * r).cast()));
        }
        for (a, row) in acc.iter_mut().zip(&y) {
            for r in 0..4 {
                let v = _mm512_cvtph_ps(_mm256_loadu_si256(row.as_ptr().add(i + 16 * r).cast()));
                a[r] = _mm512_fmadd_ps(w[r], v, a[r]);
            }
        }
    }
    let mut out = [0f32; 4];
    for j in 0..4 {
        let a = &acc[j];
        let t = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), t);
        let mut sum = reduce16(&lanes) as f64;
        for k in np..n {
            sum += (f16_to_f32(x[k]) * f16_to_f32(y[j][k])) as f64;
        }
        out[j] = sum as f32;
    }
    out
}

/// `scalar::dot_float_with` for 4 activation rows, elements widened by `$load` (16 at a time)
/// and `$scalar` (the tail): per pair 2 zmm accumulators over 32-element steps (the reference's
/// 8-lane accumulators 0|1 and 2|3), folded (0 + 1) + (2 + 3), `hsum8`, then sequential FMAs.
/// A macro, not a generic function over closures, so the loads inline with the features.
macro_rules! dot4_float {
    ($x:expr, $y:expr, $load:ident, $scalar:expr) => {{
        let (x, y) = ($x, $y);
        let n = x.len();
        assert!(y.iter().all(|a| a.len() >= n));
        let np = n / 32 * 32;
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        for i in (0..np).step_by(32) {
            // SAFETY: i + 32 <= np <= every row's length.
            let w = [$load(x.as_ptr().add(i)), $load(x.as_ptr().add(i + 16))];
            for (a, row) in acc.iter_mut().zip(&y) {
                for r in 0..2 {
                    let v = $load(row.as_ptr().add(i + 16 * r));
                    a[r] = _mm512_fmadd_ps(w[r], v, a[r]);
                }
            }
        }
        let mut out = [0f32; 4];
        for j in 0..4 {
            let [z0, z1] = acc[j];
            let f0 = _mm256_add_ps(_mm512_castps512_ps256(z0), _mm512_extractf32x8_ps::<1>(z0));
            let f1 = _mm256_add_ps(_mm512_castps512_ps256(z1), _mm512_extractf32x8_ps::<1>(z1));
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(f0, f1));
            let mut s = hsum8(&lanes);
            for k in np..n {
                s = $scalar(x[k]).mul_add($scalar(y[j][k]), s);
            }
            out[j] = s;
        }
        out
    }};
}

/// 16 bf16 widened to f32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn load_bf16x16(p: *const u16) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
        _mm256_loadu_si256(p.cast()),
    )))
}

/// 16 f32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn load_f32x16(p: *const f32) -> __m512 {
    _mm512_loadu_ps(p)
}

/// `scalar::dot_bf16` for 4 activation rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot4_bf16(x: &[u16], y: [&[u16]; 4]) -> [f32; 4] {
    dot4_float!(x, y, load_bf16x16, bf16_to_f32)
}

/// `scalar::dot_f32` for 4 activation rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot4_f32(x: &[f32], y: [&[f32]; 4]) -> [f32; 4] {
    dot4_float!(x, y, load_f32x16, |v: f32| v)
}
