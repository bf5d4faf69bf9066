//! x86-64 SIMD kernels of the super-block format that is not tiled, Q5_K (the others run on
//! `x86_tiles`), against Q8_K
//! activations, for N activation rows at once: each weight super-block is decoded once (values
//! as 8 vectors of 32 bytes, an i16 scale vector per 32 values) and used for all N rows.
//!
//! The arithmetic is `kquants`' exactly: integer sums per super-block (any lane order gives the
//! same integer), then the same float folds, so every tier and every N give the reference's bits.
//! No `maddubs` here can saturate: |u8 * i8 pair| <= 2 * 31 * 127 (Q5_K) < 32768.
//!
//! SAFETY contract as in `x86`: the caller checked the tier's CPU features and that every
//! activation row has at least as many blocks as the weight row.

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

use std::arch::x86_64::*;

use super::blocks::*;
use super::kquants::{fold_min, q4k_scale_min};
use super::x86::{fp16, hsum_i32_8};

/// One i16 scale for all 32 values of a chunk.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scale32(s: i16) -> __m256i {
    _mm256_set1_epi16(s)
}

/// `(q >> shift) & mask` per byte, for a run-time shift.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bits_at(q: __m256i, shift: i32, mask: __m256i) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(shift)), mask)
}

/// `value` in the bytes whose bit `bit` of `h` is set, 0 elsewhere.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn high_bit(h: __m256i, bit: usize, value: i8) -> __m256i {
    let b = _mm256_set1_epi8((1u8 << bit) as i8);
    _mm256_and_si256(
        _mm256_cmpeq_epi8(_mm256_and_si256(h, b), b),
        _mm256_set1_epi8(value),
    )
}

/// Exact sum over 16 groups of `bsums[g] * w[g]` (w as 16 i16 lanes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bsum_dot(yb: &BlockQ8K, w: __m256i) -> i32 {
    hsum_i32_8(_mm256_madd_epi16(
        _mm256_loadu_si256(yb.bsums.as_ptr().cast()),
        w,
    ))
}

/// `[f(0), .., f(7)]` for a vector-valued `f`, as a plain loop: closures do not inherit
/// `target_feature`, so intrinsics inside `std::array::from_fn` would become calls.
macro_rules! per_chunk {
    (|$c:ident| $e:expr) => {{
        let mut v = [_mm256_setzero_si256(); 8];
        for $c in 0..8 {
            v[$c] = $e;
        }
        v
    }};
}

/// The super-block loop every format here shares. `$setup` (run once per weight block `$xb`)
/// must define the two arrays named after `=>`: `[__m256i; 8]` of the values of each 32-element
/// chunk (u8, or i8 with `signed`) and `[__m256i; 8]` of each chunk's i16 scales; then per activation row the
/// chunk products are summed exactly and `$fin` folds `$sumi` (an i32) into `$t` with `$yb`
/// (the row's block) in scope.
macro_rules! superblocks {
    ($x:ident, $y:ident, $n:ident, |$xb:ident| { $($setup:tt)* } => ($vals:ident, $scs:ident),
     $kind:ident, |$yb:ident, $sumi:ident, $t:ident| $fin:expr) => {{
        let mut total = [0f32; $n];
        for (i, $xb) in $x.iter().enumerate() {
            $($setup)*
            let mut acc = [_mm256_setzero_si256(); $n];
            for c in 0..8 {
                let v = $vals[c];
                let av = superblocks!(@abs $kind, v);
                for a in 0..$n {
                    let yv = _mm256_loadu_si256($y[a][i].qs.as_ptr().add(32 * c).cast());
                    let yv = superblocks!(@sign $kind, yv, v);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(av, yv), $scs[c]);
                    acc[a] = _mm256_add_epi32(acc[a], p);
                }
            }
            for a in 0..$n {
                let $yb = &$y[a][i];
                let $sumi = hsum_i32_8(acc[a]);
                let $t = total[a];
                total[a] = $fin;
            }
        }
        total
    }};
    (@abs signed, $v:ident) => { _mm256_sign_epi8($v, $v) };
    (@abs unsigned, $v:ident) => { $v };
    (@sign signed, $yv:ident, $v:ident) => { _mm256_sign_epi8($yv, $v) };
    (@sign unsigned, $yv:ident, $v:ident) => { $yv };
}

/// Q4_K and Q5_K: the same nibbles, 6-bit scales and minimums; `$high` (run per chunk `$c`,
/// after `$pre` per block) adds Q5_K's fifth bit (zero for Q4_K).
macro_rules! q45k {
    ($x:ident, $y:ident, $n:ident, |$xb:ident, $c:ident| { $($pre:tt)* } high $high:expr) => {{
        let m4 = _mm256_set1_epi8(0x0f);
        superblocks!($x, $y, $n, |$xb| {
            $($pre)*
            let vals: [__m256i; 8] = per_chunk!(|$c| {
                let q = _mm256_loadu_si256($xb.qs.as_ptr().add(32 * ($c / 2)).cast());
                _mm256_or_si256(bits_at(q, 4 * ($c % 2) as i32, m4), $high)
            });
            // Plain loops, not `array::from_fn`: its closures stayed calls here (42% of the
            // single-row kernel's time in `perf`).
            let mut sm = [(0u8, 0u8); 8];
            for (s, v) in sm.iter_mut().enumerate() {
                *v = q4k_scale_min(s, &$xb.scales);
            }
            let scs: [__m256i; 8] = per_chunk!(|c| scale32(sm[c].0 as i16));
            let mut mins = [0i16; 16];
            for (g, m) in mins.iter_mut().enumerate() {
                *m = sm[g / 2].1 as i16;
            }
            let mins = _mm256_loadu_si256(mins.as_ptr().cast());
            let (d, dmin) = (fp16($xb.d), fp16($xb.dmin));
        } => (vals, scs), unsigned, |yb, sumi, t| {
            fold_min(t, d * yb.d, sumi, dmin * yb.d, bsum_dot(yb, mins))
        })
    }};
}

macro_rules! kquant_kernels {
    ($modname:ident, $features:literal) => {
        /// The kernels of one tier.
        pub mod $modname {
            use super::*;

            /// `kquants::dot_q5k_q8k` of one weight row against N activation rows (each
            /// weight block decoded once), each result the reference's bits.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_q5k_q8k<const N: usize>(
                x: &[BlockQ5K],
                y: &[&[BlockQ8K]; N],
            ) -> [f32; N] {
                q45k!(x, y, N, |xb, c| {
                    let qh = _mm256_loadu_si256(xb.qh.as_ptr().cast());
                } high high_bit(qh, c, 16))
            }
        }
    };
}

// The VNNI tier uses these too: its `vpdpbusd` has no i16 stage to apply the scales in.
kquant_kernels!(avx2, "avx2,fma,f16c");
