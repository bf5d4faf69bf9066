//! x86-64 GEMM of the float weight formats (F16, BF16, F32) against f32 activation rows: the
//! prefill and batched-decode path of those formats (single-stream decode keeps the one-row dot,
//! which streams the weights with prefetch).
//!
//! Each weight/activation pair's dot is a set of independent lanes (`scalar::F16_LANES` or
//! `scalar::FLOAT_LANES`), lane `l` accumulating positions `l, l + S, ...` with FMAs in order,
//! then a fixed fold and a tail (`scalar::fold_*`, `scalar::finish_*`). The kernels here compute
//! those lanes one vector (8 or 16 lanes) at a time for a register tile of `RM` weight rows x up
//! to `RN` activation rows, one accumulator per pair: per step, `RM` weight vectors are loaded
//! and widened once and `RN` activation vectors (already f32, so nothing to convert) serve `RM`
//! FMAs each. Each lane sees the reference's operations in the reference's order, so the bits
//! are the single-row dot's on every tier. AVX2: tiles of 2 x 6 (12 accumulators of 16 ymm),
//! one pass over `k` per lane group, the lanes folded from memory. AVX-512: all of a pair's
//! lane groups in registers (f16 1 x 6 pairs of 4 zmm, BF16/F32 2 x 6 of 2), folded in
//! registers (measured: the per-pair store and fold of the pass style cost as much as the FMAs
//! at SmolLM2's 576-wide rows).
//!
//! SAFETY contract for every `unsafe fn` here: the caller has verified the CPU features in the
//! function's `target_feature` attribute (only `dispatch::Kernels` builds calls to them, after
//! `all_supported` detected them). Operand sizes are checked by `scalar::check_gemm`.

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::blocks::{bf16_to_f32, f16_to_f32};
use super::scalar::{check_gemm, finish_f16, finish_float, F16_LANES, FLOAT_LANES};
use super::x86::hsum_f32_8;

/// `scalar::fold_f16_lanes` in ymm: the 16-lane fold as two halves, then `reduce16` as
/// `hsum_f32_8` of their sum.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fold_f16(l: &[f32; F16_LANES]) -> f32 {
    let p = l.as_ptr();
    let lo = _mm256_add_ps(
        _mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(32))),
        _mm256_add_ps(_mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(48))),
    );
    let hi = _mm256_add_ps(
        _mm256_add_ps(_mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(40))),
        _mm256_add_ps(_mm256_loadu_ps(p.add(24)), _mm256_loadu_ps(p.add(56))),
    );
    hsum_f32_8(_mm256_add_ps(lo, hi))
}

/// `scalar::fold_float_lanes` in ymm.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fold_float(l: &[f32; FLOAT_LANES]) -> f32 {
    let p = l.as_ptr();
    let v = _mm256_add_ps(
        _mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))),
        _mm256_add_ps(_mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))),
    );
    hsum_f32_8(v)
}

/// A pair's dot from its folded lanes: the fold itself when there is no tail (f16: f32 -> f64
/// -> f32 leaves it as it is), else the tail finished by `$finish` over weight row `$i` (its
/// elements widened by `$wide`) and activation row `$j` from `$np` to `$k`.
macro_rules! finalize {
    ($folded:expr, $finish:ident, $wide:expr, $w:ident, $a:ident, $k:ident, $np:ident, $i:expr, $j:expr) => {{
        let folded = $folded;
        if $np == $k {
            folded
        } else {
            let wrow = &$w[$i * $k..($i + 1) * $k];
            let arow = &$a[$j * $k..($j + 1) * $k];
            $finish(folded, ($np..$k).map(|e| (($wide)(wrow[e]), arow[e])))
        }
    }};
}

/// One format's GEMM in one tier: `$lanes` lanes per pair, weights widened by `$ldw`, folded
/// by `$fold`, the tail finished by `$finish` with `$wide` widening a weight element.
macro_rules! gemm_fn {
    (
        $features:literal, $v:ty, $zero:ident, $load:ident, $fma:ident, $store:ident,
        $name:ident, $block:ident, $wt:ty, $lanes:expr, $ldw:ident, $fold:ident,
        $finish:ident, $wide:expr
    ) => {
        /// Activation rows `j0..j0 + N` against every block of `RM` weight rows (the
        /// activations stay hot in L1), each block's lanes one vector (a pass over `k`) at a
        /// time, then folded and finished into `out`.
        #[target_feature(enable = $features)]
        #[allow(clippy::needless_range_loop)] // register tiles indexed by constants
        unsafe fn $block<const N: usize>(
            w: &[$wt],
            a: &[f32],
            k: usize,
            j0: usize,
            out: &mut [f32],
        ) {
            let m = w.len() / k;
            let np = k / $lanes * $lanes;
            let ap: [*const f32; N] = std::array::from_fn(|r| a[(j0 + r) * k..].as_ptr());
            for i0 in (0..m).step_by(RM) {
                // A short last block repeats its last row (those outputs are dropped).
                let wp: [*const $wt; RM] =
                    std::array::from_fn(|r| w[(i0 + r).min(m - 1) * k..].as_ptr());
                let mut lanes = MaybeUninit::<[[[f32; $lanes]; N]; RM]>::uninit();
                let lp = lanes.as_mut_ptr();
                for g in 0..$lanes / W {
                    let mut acc = [[$zero(); N]; RM];
                    let mut i = g * W;
                    while i < np {
                        // SAFETY: i + W <= np <= k, the length of every row pointed to.
                        let mut wv = [$zero(); RM];
                        for r in 0..RM {
                            wv[r] = $ldw(wp[r].add(i));
                        }
                        for c in 0..N {
                            let av = $load(ap[c].add(i));
                            for r in 0..RM {
                                acc[r][c] = $fma(wv[r], av, acc[r][c]);
                            }
                        }
                        i += $lanes;
                    }
                    for r in 0..RM {
                        for c in 0..N {
                            // SAFETY: lanes g*W..g*W+W of pair (r, c) lie inside the array.
                            $store((*lp)[r][c].as_mut_ptr().add(g * W), acc[r][c]);
                        }
                    }
                }
                // SAFETY: the passes g = 0..lanes/W stored every lane of every pair.
                let lanes = lanes.assume_init_ref();
                for r in 0..RM.min(m - i0) {
                    for c in 0..N {
                        out[(j0 + c) * m + i0 + r] = finalize!(
                            $fold(&lanes[r][c]),
                            $finish,
                            $wide,
                            w,
                            a,
                            k,
                            np,
                            i0 + r,
                            j0 + c
                        );
                    }
                }
            }
        }

        /// `out[j * m + i] = dot(w row i, a row j)` (`scalar::check_gemm`'s shapes),
        /// bit-identical to the scalar GEMM.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: &[$wt], a: &[f32], k: usize, out: &mut [f32]) {
            let (m, n) = check_gemm(w.len(), a.len(), k, out.len());
            if m == 0 {
                return;
            }
            let mut j0 = 0;
            while j0 < n {
                let step = (n - j0).min(RN);
                match step {
                    1 => $block::<1>(w, a, k, j0, out),
                    2 => $block::<2>(w, a, k, j0, out),
                    3 => $block::<3>(w, a, k, j0, out),
                    4 => $block::<4>(w, a, k, j0, out),
                    5 => $block::<5>(w, a, k, j0, out),
                    _ => $block::<RN>(w, a, k, j0, out),
                }
                j0 += step;
            }
        }
    };
}

/// One format's AVX-512 GEMM with each pair's `$g` lane groups in registers for the whole
/// pass (tiles of `$rm` weight x up to `$rn` activation rows), folded by `$fold`.
macro_rules! gemm_regs {
    (
        $name:ident, $block:ident, $wt:ty, $lanes:expr, $g:expr, $rm:expr, $rn:expr,
        $ldw:ident, $fold:ident, $finish:ident, $wide:expr
    ) => {
        /// Activation rows `j0..j0 + N` against every block of weight rows.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        #[allow(clippy::needless_range_loop)] // register tiles indexed by constants
        unsafe fn $block<const N: usize>(
            w: &[$wt],
            a: &[f32],
            k: usize,
            j0: usize,
            out: &mut [f32],
        ) {
            const G: usize = $g;
            const RM: usize = $rm;
            let m = w.len() / k;
            let np = k / $lanes * $lanes;
            let ap: [*const f32; N] = std::array::from_fn(|r| a[(j0 + r) * k..].as_ptr());
            for i0 in (0..m).step_by(RM) {
                // A short last block repeats its last row (those outputs are dropped).
                let wp: [*const $wt; RM] =
                    std::array::from_fn(|r| w[(i0 + r).min(m - 1) * k..].as_ptr());
                let mut acc = [[[_mm512_setzero_ps(); G]; N]; RM];
                let mut i = 0;
                while i < np {
                    for g in 0..G {
                        // SAFETY: i + g * W + W <= np <= k, the length of every row here.
                        let mut wv = [_mm512_setzero_ps(); RM];
                        for r in 0..RM {
                            wv[r] = $ldw(wp[r].add(i + g * W));
                        }
                        for c in 0..N {
                            let av = _mm512_loadu_ps(ap[c].add(i + g * W));
                            for r in 0..RM {
                                acc[r][c][g] = _mm512_fmadd_ps(wv[r], av, acc[r][c][g]);
                            }
                        }
                    }
                    i += $lanes;
                }
                for r in 0..RM.min(m - i0) {
                    for c in 0..N {
                        out[(j0 + c) * m + i0 + r] = finalize!(
                            $fold(&acc[r][c]),
                            $finish,
                            $wide,
                            w,
                            a,
                            k,
                            np,
                            i0 + r,
                            j0 + c
                        );
                    }
                }
            }
        }

        /// `out[j * m + i] = dot(w row i, a row j)` (`scalar::check_gemm`'s shapes),
        /// bit-identical to the scalar GEMM.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        pub unsafe fn $name(w: &[$wt], a: &[f32], k: usize, out: &mut [f32]) {
            let (m, n) = check_gemm(w.len(), a.len(), k, out.len());
            if m == 0 {
                return;
            }
            let mut j0 = 0;
            while j0 < n {
                let step = (n - j0).min($rn);
                match step {
                    1 => $block::<1>(w, a, k, j0, out),
                    2 => $block::<2>(w, a, k, j0, out),
                    3 => $block::<3>(w, a, k, j0, out),
                    4 => $block::<4>(w, a, k, j0, out),
                    5 => $block::<5>(w, a, k, j0, out),
                    _ => $block::<$rn>(w, a, k, j0, out),
                }
                j0 += step;
            }
        }
    };
}

/// One tier: its vector type, width, tile and weight loaders, and the three GEMMs.
macro_rules! gemm_tier {
    (
        $tier:ident, $features:literal, $v:ty, width = $wd:expr, rm = $rm:expr, rn = $rn:expr,
        zero = $zero:ident, load = $load:ident, fma = $fma:ident, store = $store:ident,
        f16 = |$p16:ident| $ld_f16:expr, bf16 = |$pb16:ident| $ld_bf16:expr
    ) => {
        /// The float GEMMs of one tier.
        pub mod $tier {
            use super::*;

            /// Weight rows per register tile.
            const RM: usize = $rm;
            /// Activation rows per register tile (the widest tile; 6 is also the largest
            /// narrower case the GEMMs dispatch).
            const RN: usize = $rn;
            /// f32 lanes per vector.
            const W: usize = $wd;

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn ld_f16($p16: *const u16) -> $v {
                $ld_f16
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn ld_bf16($pb16: *const u16) -> $v {
                $ld_bf16
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn ld_f32(p: *const f32) -> $v {
                $load(p)
            }

            gemm_fn!(
                $features, $v, $zero, $load, $fma, $store, gemm_f16, block_f16, u16, F16_LANES,
                ld_f16, fold_f16, finish_f16, f16_to_f32
            );
            gemm_fn!(
                $features,
                $v,
                $zero,
                $load,
                $fma,
                $store,
                gemm_bf16,
                block_bf16,
                u16,
                FLOAT_LANES,
                ld_bf16,
                fold_float,
                finish_float,
                bf16_to_f32
            );
            gemm_fn!(
                $features,
                $v,
                $zero,
                $load,
                $fma,
                $store,
                gemm_f32,
                block_f32,
                f32,
                FLOAT_LANES,
                ld_f32,
                fold_float,
                finish_float,
                |v: f32| v
            );
        }
    };
}

gemm_tier!(
    avx2,
    "avx2,fma,f16c",
    __m256,
    width = 8,
    rm = 2,
    rn = 6,
    zero = _mm256_setzero_ps,
    load = _mm256_loadu_ps,
    fma = _mm256_fmadd_ps,
    store = _mm256_storeu_ps,
    f16 = |p| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    bf16 = |p| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
        _mm_loadu_si128(p.cast()),
    )))
);

/// The AVX-512 tier: every lane group of a pair in its own zmm accumulator through the whole
/// pass over `k` (f16: 4 per pair, tiles of 1 weight x 6 activation rows; BF16/F32: 2 per pair,
/// 2 x 6), folded in registers at the end: 24 accumulators of 32 zmm either way. The AVX2 tier
/// cannot hold a pair's 8 f16 lane groups with a useful tile in 16 ymm, so it passes over `k`
/// once per group instead (`gemm_fn!`).
pub mod avx512 {
    use super::*;

    /// f32 lanes per vector.
    const W: usize = 16;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn ld_f16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn ld_bf16(p: *const u16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
            _mm256_loadu_si256(p.cast()),
        )))
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn ld_f32(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    /// The upper 8 lanes of a zmm (AVX-512 F only: through the f64 view).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn hi256(v: __m512) -> __m256 {
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
    }

    /// `scalar::fold_f16_lanes` of a pair's 4 lane groups (group g = lanes 16g..16g+16).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn fold_f16_regs(a: &[__m512; 4]) -> f32 {
        let t = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
        hsum_f32_8(_mm256_add_ps(_mm512_castps512_ps256(t), hi256(t)))
    }

    /// `scalar::fold_float_lanes` of a pair's 2 lane groups.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn fold_float_regs(a: &[__m512; 2]) -> f32 {
        let f0 = _mm256_add_ps(_mm512_castps512_ps256(a[0]), hi256(a[0]));
        let f1 = _mm256_add_ps(_mm512_castps512_ps256(a[1]), hi256(a[1]));
        hsum_f32_8(_mm256_add_ps(f0, f1))
    }

    gemm_regs!(
        gemm_f16,
        block_f16,
        u16,
        F16_LANES,
        4,
        1,
        6,
        ld_f16,
        fold_f16_regs,
        finish_f16,
        f16_to_f32
    );
    gemm_regs!(
        gemm_bf16,
        block_bf16,
        u16,
        FLOAT_LANES,
        2,
        2,
        6,
        ld_bf16,
        fold_float_regs,
        finish_float,
        bf16_to_f32
    );
    gemm_regs!(
        gemm_f32,
        block_f32,
        f32,
        FLOAT_LANES,
        2,
        2,
        6,
        ld_f32,
        fold_float_regs,
        finish_float,
        |v: f32| v
    );
}
