//! x86-64 attention, compiled for AVX2+FMA ([`avx2`]) and for the AVX-512 VNNI tier ([`vnni`]):
//! over an f16 KV cache for a block of consecutive query tokens of one sequence
//! ([`AttendBlock`], the prefill and decode path of the default cache format), and per token
//! over a Q8_0 / Q4_0 cache (`attend_q8_0`, `attend_q4_0`: [`attend_quant_with`] with the
//! tier's dot product, dequantization and query quantizer), plus the f16 accumulator
//! primitives (`mad_f16`, `scale_f16`).
//!
//! The f16 block kernel's arithmetic is [`attend_with`]'s per token and head, bit for bit:
//! query rounded to f16, ggml's f16 dot tree for the scores, online softmax with glibc's `expf`,
//! the value accumulator rounded to f16 after every update, `sum = fma(sum, ms, vs)`, one
//! normalisation.
//! What changes is the order of independent work:
//! - each block of `KEYS` key and value rows is widened to f32 once for all the call's tokens
//!   and heads (a per-token kernel widens every key once per token);
//! - scores come 8 keys at a time: each key's 64 lanes are folded to 8 in registers as the
//!   reference folds them, then the 8 keys' last three halving steps run as one transposed
//!   reduction (3 shuffle-and-add stages for 8 keys instead of 3 per key); on the AVX-512 tier,
//!   calls of at least `TRANSPOSE_MIN_ROWS` rows widen their keys transposed instead
//!   (`widen_keys_t`) and score 16 keys per zmm with the whole tree as vertical adds
//!   (`scores_t`);
//! - the softmax weights of 8 keys at once: the running maximum before each key is a prefix
//!   maximum, the exponentials 4 at a time (`weights8`; on AVX-512 8 at a time with the table in
//!   registers, `weights8_512`); only the sum's FMA chain stays key by key, the chains of a
//!   token's heads interleaved (`add_weights`);
//! - the value updates of up to `ATT_ROWS` (token, head) rows that cover the whole key block run
//!   interleaved with their accumulators in registers, so each row's chain of dependent
//!   roundings overlaps the others' (in zmm on the AVX-512 tier: `values512`).
//!
//! Measured with `instr_probe attention 64 3 RUN` (a 512-token prompt, SmolLM2's head dim and
//! group, best of 10 windows, AVX-512 tier, Emerald Rapids): the per-token kernel this replaced
//! 14.0 ns per (head, key) pair; 8-token calls 10.3-11.4 ns; with the transposed scores and the
//! in-register exponentials 9.3-9.5 ns (10.6-11.2 for the row-major build in the same run).
//!
//! SAFETY contract for every `unsafe fn` here: the caller has verified the CPU features named in
//! the function's `target_feature` attribute (only `quant::dispatch::Kernels` builds calls to
//! them, after `Kernels::all_supported` detected them);
//! shapes are checked by `AttendBlock::check` and the asserts below.

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

use std::arch::x86_64::*;

use super::attention::{attend_quant_with, attend_with, AttendBlock, KvRows};
use super::expf::{
    expf, expf_special, EXPF_C, EXPF_INV_LN2_N, EXPF_SHIFT, EXPF_SPECIAL_TOP12, EXPF_TABLE,
};
use crate::quant::blocks::*;
use crate::quant::x86::{fp16, hsum_f32_8, nibbles_32};

/// Keys per block: the widened K and V rows of a block (2 x 64 x 64 f32 = 32 KiB at head dim
/// 64) stay in L1 while every row of the call walks them.
const KEYS: usize = 64;

/// Rows (token, head) from which a call widens its keys transposed, where the tier can: the
/// transposes cost about 40 more operations per key than widening row by row, and the
/// transposed scores save about 10 per (row, key). A decode call (one token, a KV group of
/// 3) keeps the row path: transposed, it decoded 2-4% slower at 1024 tokens of context.
const TRANSPOSE_MIN_ROWS: usize = 8;

/// The scores of 8 keys come out of the transposed reduction in this lane order.
const SCORE_ORDER: [i32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// The kernel's large per-call buffers (widened K and V rows, softmax weights), kept per
/// thread between calls: allocating and zeroing them per call (32 KiB of K/V rows at head dim
/// 64, 128 KiB at 256) showed as 2.8% memset in Q4_1 prefill. Nothing needs initial contents:
/// every element a result depends on is written earlier in the same call (stale elements only
/// reach score lanes past a block's last key, which are never read).
#[derive(Default)]
struct Scratch {
    kf: Vec<f32>,
    vf: Vec<f32>,
    ms: Vec<f32>,
    vs: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Grows `v` to at least `n` elements (never shrinks).
fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// `x` shifted up by `k` lanes (lane `j` gets lane `j - k`), `-inf` shifted in.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn shift_up<const K: i32>(x: __m256) -> __m256 {
    let idx = _mm256_sub_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(K),
    );
    let shifted = _mm256_permutevar8x32_ps(x, idx);
    let low = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_set1_epi32(K),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    ));
    _mm256_blendv_ps(shifted, _mm256_set1_ps(f32::NEG_INFINITY), low)
}

/// The online-softmax weights of 8 keys (`s`: their scaled scores, lanes outside `lanes`
/// ignored) continuing the running maximum `m`, as `attend_with` computes them key by key:
/// where a key raises the maximum, `ms = expf(m - s)` and `vs = 1`, else `ms = 1` and
/// `vs = expf(s - m)`, `m` the maximum before that key. The maxima before each key are a
/// prefix maximum (3 shift-and-max steps); ties and signed zeros cannot change a weight (a zero
/// difference has `expf` 1 either way). Returns `(ms, vs)`; `None` where a score is NaN (the
/// caller then takes the keys one by one, as the reference treats NaN: never a new maximum).
macro_rules! weights_fn {
    ($(#[$doc:meta])* $name:ident, $features:literal, $exp8:ident) => {
$(#[$doc])*
#[target_feature(enable = $features)]
#[inline]
unsafe fn $name(
    s: __m256,
    lanes: std::ops::Range<usize>,
    m: &mut f32,
) -> Option<(__m256, __m256)> {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let valid = _mm256_castsi256_ps(_mm256_and_si256(
        _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(lanes.start as i32 - 1)),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes.end as i32), idx),
    ));
    if _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(s, s), valid)) != 0 {
        return None;
    }
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let x = _mm256_blendv_ps(ninf, s, valid);
    let p = _mm256_max_ps(x, shift_up::<1>(x));
    let p = _mm256_max_ps(p, shift_up::<2>(p));
    let p = _mm256_max_ps(p, shift_up::<4>(p));
    let carry = _mm256_set1_ps(*m);
    let inclusive = _mm256_max_ps(p, carry);
    let before = _mm256_blendv_ps(
        shift_up::<1>(inclusive),
        carry,
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(idx, _mm256_setzero_si256())),
    );
    let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(x, before), valid);
    // Lanes outside `lanes` take exponent 0 (no special-case path in the exponential).
    let arg = _mm256_blendv_ps(_mm256_sub_ps(x, before), _mm256_sub_ps(before, x), up);
    let arg = _mm256_blendv_ps(_mm256_setzero_ps(), arg, valid);
    let e = $exp8(arg);
    let one = _mm256_set1_ps(1.0);
    let mut top = [0f32; 8];
    _mm256_storeu_ps(top.as_mut_ptr(), inclusive);
    *m = top[7];
    Some((_mm256_blendv_ps(one, e, up), _mm256_blendv_ps(e, one, up)))
}
    };
}

weights_fn!(
    /// In ymm, the exponentials 4 at a time ([`expf_x4`], a gather of the table).
    weights8,
    "avx2,fma,f16c",
    expf_x8_ymm
);
weights_fn!(
    /// With AVX-512, the exponentials 8 at a time in zmm ([`expf_x8`], the table in registers).
    weights8_512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl",
    expf_x8
);

/// `sum = fma(sum, ms, vs)` over keys `keys` for `H` consecutive rows (row `i`'s weights at
/// `i * KEYS` of `ms` and `vs`): the reference's sequential chains, interleaved key by key so
/// they overlap, the sums held in registers.
#[inline(always)]
fn add_weights<const H: usize>(
    sums: &mut [f32],
    ms: &[f32],
    vs: &[f32],
    keys: std::ops::Range<usize>,
) {
    assert!(sums.len() == H && keys.end <= KEYS && ms.len() >= (H - 1) * KEYS + keys.end);
    assert!(vs.len() >= (H - 1) * KEYS + keys.end);
    let mut sr: [f32; H] = std::array::from_fn(|i| sums[i]);
    for j in keys {
        for (i, x) in sr.iter_mut().enumerate() {
            *x = x.mul_add(ms[i * KEYS + j], vs[i * KEYS + j]);
        }
    }
    sums.copy_from_slice(&sr);
}

/// Rounds 8 f32 to f16 precision (ties to even), kept as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn round16x8(x: __m256) -> __m256 {
    _mm256_cvtph_ps(_mm256_cvtps_ph::<0>(x))
}

/// `round16x8` for 16 f32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn round16x16(x: __m512) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtps_ph::<0>(x))
}

/// One vector width's value-update kernel `$name::<H>`: the value updates of rows `rows` over
/// the widened value rows `keys` of `vf`: per key, `acc = f16(acc * ms)` where the softmax
/// rescaled, then `acc = f16(fma(v, vs, acc))`, 4 vectors of a row at a time with the
/// accumulators in registers as f32 vectors of f16 values. Row `r`'s accumulator is
/// `acc[r * hd ..]`, its weights `ms[r * KEYS ..]`, `vs[r * KEYS ..]`.
macro_rules! values_fn {
    (
        $(#[$doc:meta])* $name:ident, $features:literal, $v:ty, width = $w:literal,
        zero = $zero:ident, load = $load:ident, store = $store:ident, set1 = $set1:ident,
        mul = $mul:ident, fma = $fma:ident, round = $round:ident
    ) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        #[inline]
        #[allow(clippy::too_many_arguments)] // the accumulators, the rows, the weights, the keys
        unsafe fn $name<const H: usize>(
            acc: &mut [f32],
            rows: [usize; H],
            vf: &[f32],
            ms: &[f32],
            vs: &[f32],
            keys: std::ops::Range<usize>,
            hd: usize,
        ) {
            const STEP: usize = 4 * $w;
            assert!(keys.end <= KEYS && vf.len() >= KEYS * hd && hd.is_multiple_of(STEP));
            for &r in &rows {
                assert!(acc.len() >= (r + 1) * hd && ms.len() >= (r + 1) * KEYS);
                assert!(vs.len() >= (r + 1) * KEYS);
            }
            for d0 in (0..hd).step_by(STEP) {
                let mut a = [[$zero(); 4]; H];
                for i in 0..H {
                    for (x, p) in a[i].iter_mut().zip((0..4).map(|q| rows[i] * hd + d0 + $w * q)) {
                        *x = $load(acc.as_ptr().add(p));
                    }
                }
                for j in keys.clone() {
                    let vp = vf.as_ptr().add(j * hd + d0);
                    let v: [$v; 4] = std::array::from_fn(|q| $load(vp.add($w * q)));
                    for i in 0..H {
                        let msj = *ms.get_unchecked(rows[i] * KEYS + j);
                        if msj != 1.0 {
                            let s = $set1(msj);
                            for x in a[i].iter_mut() {
                                *x = $round($mul(*x, s));
                            }
                        }
                        let s = $set1(*vs.get_unchecked(rows[i] * KEYS + j));
                        for (x, &vq) in a[i].iter_mut().zip(&v) {
                            *x = $round($fma(vq, s, *x));
                        }
                    }
                }
                for i in 0..H {
                    for (x, p) in a[i].iter().zip((0..4).map(|q| rows[i] * hd + d0 + $w * q)) {
                        $store(acc.as_mut_ptr().add(p), *x);
                    }
                }
            }
        }
    };
}

values_fn!(
    /// In ymm: 32 dims of a row per 4 vectors.
    values256,
    "avx2,fma,f16c",
    __m256,
    width = 8,
    zero = _mm256_setzero_ps,
    load = _mm256_loadu_ps,
    store = _mm256_storeu_ps,
    set1 = _mm256_set1_ps,
    mul = _mm256_mul_ps,
    fma = _mm256_fmadd_ps,
    round = round16x8
);
values_fn!(
    /// In zmm: 64 dims of a row per 4 vectors (per 16 dims one FMA and the two 2-uop
    /// conversions of the f16 rounding, against 2 x 5 uops in ymm), same operations per
    /// element.
    values512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl",
    __m512,
    width = 16,
    zero = _mm512_setzero_ps,
    load = _mm512_loadu_ps,
    store = _mm512_storeu_ps,
    set1 = _mm512_set1_ps,
    mul = _mm512_mul_ps,
    fma = _mm512_fmadd_ps,
    round = round16x16
);

/// Widens the key rows at `offs` (`hd` f16 each, `hd` a multiple of 8) into `kt` transposed:
/// element `d` of key `j` at `kt[d * KEYS + j]`, by 8x8 transposes of f16 then one conversion
/// per 8 keys. A last group of fewer than 8 keys repeats its last key in the unused columns.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn widen_keys_t(keys: &[u16], offs: &[usize], hd: usize, kt: &mut [f32]) {
    assert!(offs.len() <= KEYS && kt.len() >= KEYS * hd && hd.is_multiple_of(8));
    assert!(
        offs.iter().all(|&o| o + hd <= keys.len()),
        "key rows inside the cache"
    );
    for j0 in (0..offs.len()).step_by(8) {
        let rows: [*const u16; 8] =
            std::array::from_fn(|i| keys.as_ptr().add(offs[(j0 + i).min(offs.len() - 1)]));
        for d0 in (0..hd).step_by(8) {
            let r: [__m128i; 8] = std::array::from_fn(|i| _mm_loadu_si128(rows[i].add(d0).cast()));
            // Pairs of rows interleaved by element, then by pairs, then by quads.
            let t0 = _mm_unpacklo_epi16(r[0], r[1]);
            let t1 = _mm_unpackhi_epi16(r[0], r[1]);
            let t2 = _mm_unpacklo_epi16(r[2], r[3]);
            let t3 = _mm_unpackhi_epi16(r[2], r[3]);
            let t4 = _mm_unpacklo_epi16(r[4], r[5]);
            let t5 = _mm_unpackhi_epi16(r[4], r[5]);
            let t6 = _mm_unpacklo_epi16(r[6], r[7]);
            let t7 = _mm_unpackhi_epi16(r[6], r[7]);
            let u = [
                _mm_unpacklo_epi32(t0, t2),
                _mm_unpackhi_epi32(t0, t2),
                _mm_unpacklo_epi32(t1, t3),
                _mm_unpackhi_epi32(t1, t3),
            ];
            let w = [
                _mm_unpacklo_epi32(t4, t6),
                _mm_unpackhi_epi32(t4, t6),
                _mm_unpacklo_epi32(t5, t7),
                _mm_unpackhi_epi32(t5, t7),
            ];
            for (h, (&a, &b)) in u.iter().zip(&w).enumerate() {
                let cols = [_mm_unpacklo_epi64(a, b), _mm_unpackhi_epi64(a, b)];
                for (c, v) in cols.into_iter().enumerate() {
                    let d = d0 + 2 * h + c;
                    _mm256_storeu_ps(kt.as_mut_ptr().add(d * KEYS + j0), _mm256_cvtph_ps(v));
                }
            }
        }
    }
}

/// [`scores`] from keys widened transposed ([`widen_keys_t`]), 16 keys per zmm: the
/// reference's lanes (`l`, accumulating positions `l, l + 64, ...` by FMA from 0) are vectors
/// over keys, so its whole tree (`fold_f16_lanes`, then `reduce16`) is vertical adds in the
/// same order, with no shuffles; the query elements come broadcast from memory.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn scores_t<const S: usize>(
    q: &[f32],
    kt: &[f32],
    keys: std::ops::Range<usize>,
    out: &mut [f32; KEYS],
) {
    let hd = 64 * S;
    assert!(q.len() >= hd && kt.len() >= KEYS * hd && keys.end <= KEYS);
    let mut j = keys.start / 16 * 16;
    while j < keys.end {
        let kp = kt.as_ptr().add(j);
        let p = |l: usize| {
            let mut a = _mm512_setzero_ps();
            for s in 0..S {
                let d = l + 64 * s;
                let k = _mm512_loadu_ps(kp.add(d * KEYS));
                a = _mm512_fmadd_ps(_mm512_set1_ps(*q.get_unchecked(d)), k, a);
            }
            a
        };
        // fold_f16_lanes' element i (i < 16) ...
        let f = |i: usize| {
            _mm512_add_ps(
                _mm512_add_ps(p(i), p(32 + i)),
                _mm512_add_ps(p(16 + i), p(48 + i)),
            )
        };
        // ... then reduce16: halves, quarters, and (c0 + c2) + (c1 + c3).
        let bsum = |i: usize| _mm512_add_ps(f(i), f(i + 8));
        let c = |i: usize| _mm512_add_ps(bsum(i), bsum(i + 4));
        let v = _mm512_add_ps(_mm512_add_ps(c(0), c(2)), _mm512_add_ps(c(1), c(3)));
        _mm512_storeu_ps(out.as_mut_ptr().add(j), v);
        j += 16;
    }
}

/// [`expf`] of 4 values at once (the double-precision steps in ymm, the table look-up
/// a gather): the same operations in the same order, so the same bits. Lanes that need
/// glibc's special cases (|x| >= 88, inf, NaN) are redone by [`expf_special`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn expf_x4(x: __m128) -> __m128 {
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
    _mm_loadu_ps(special_lanes(&xs, o).as_ptr())
}

/// `out` with the lanes whose `x` needs glibc's special cases (|x| >= 88, inf, NaN) redone by
/// [`expf_special`]: the vector exponentials' rare path.
#[cold]
fn special_lanes<const N: usize>(x: &[f32; N], mut out: [f32; N]) -> [f32; N] {
    for (o, &x) in out.iter_mut().zip(x) {
        if (x.to_bits() >> 20) & 0x7ff >= EXPF_SPECIAL_TOP12 {
            *o = expf_special(x);
        }
    }
    out
}

/// [`expf`] of 8 values as two [`expf_x4`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn expf_x8_ymm(x: __m256) -> __m256 {
    _mm256_set_m128(
        expf_x4(_mm256_extractf128_ps::<1>(x)),
        expf_x4(_mm256_castps256_ps128(x)),
    )
}

/// [`expf`] of 8 values in zmm: [`expf_x4`]'s operations on 8 doubles, the 32-entry table
/// held in 4 registers and looked up by two 16-entry permutes and a blend on bit 4 of the
/// index (a gather of 8 cost more than the rest of the exponential). Same bits.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn expf_x8(x: __m256) -> __m256 {
    let xd = _mm512_cvtps_pd(x);
    let inv = _mm512_set1_pd(EXPF_INV_LN2_N);
    let shift = _mm512_set1_pd(EXPF_SHIFT);
    let kds = _mm512_fmadd_pd(inv, xd, shift);
    let ki = _mm512_castpd_si512(kds);
    let kd = _mm512_sub_pd(kds, shift);
    let r = _mm512_fmsub_pd(inv, xd, kd);
    let t = EXPF_TABLE.as_ptr();
    let quarter = |i: usize| _mm512_loadu_si512(t.add(8 * i).cast());
    let low = _mm512_permutex2var_epi64(quarter(0), ki, quarter(1));
    let high = _mm512_permutex2var_epi64(quarter(2), ki, quarter(3));
    let tab = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)), low, high);
    let s = _mm512_castsi512_pd(_mm512_add_epi64(tab, _mm512_slli_epi64::<47>(ki)));
    let z = _mm512_fmadd_pd(_mm512_set1_pd(EXPF_C[0]), r, _mm512_set1_pd(EXPF_C[1]));
    let r2 = _mm512_mul_pd(r, r);
    let y = _mm512_fmadd_pd(r, _mm512_set1_pd(EXPF_C[2]), _mm512_set1_pd(1.0));
    let y = _mm512_mul_pd(_mm512_fmadd_pd(z, r2, y), s);
    let out = _mm512_cvtpd_ps(y);
    // Lanes whose bits 20..31 (sans sign) reach top12(88.0).
    let top = _mm256_and_si256(
        _mm256_srli_epi32::<20>(_mm256_castps_si256(x)),
        _mm256_set1_epi32(0x7ff),
    );
    let special = _mm256_cmpgt_epi32(top, _mm256_set1_epi32(EXPF_SPECIAL_TOP12 as i32 - 1));
    if _mm256_movemask_epi8(special) == 0 {
        return out;
    }
    let (mut xs, mut o) = ([0f32; 8], [0f32; 8]);
    _mm256_storeu_ps(xs.as_mut_ptr(), x);
    _mm256_storeu_ps(o.as_mut_ptr(), out);
    _mm256_loadu_ps(special_lanes(&xs, o).as_ptr())
}

/// One tier's public attention kernel over a quantized cache format: `attend_quant` with the
/// format's dot product and block values.
macro_rules! attend_quant_entry {
    ($features:literal, $name:ident, $block:ty, $dot:expr, $values:expr) => {
        #[doc = concat!(
            "[`attend_quant_with`] over a `", stringify!($block), "` cache with this tier's ",
            "primitives: the reference's bits."
        )]
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            q: &[f32],
            q_heads: std::ops::Range<usize>,
            head_dim: usize,
            scale: f32,
            kv: &KvRows<'_, $block>,
            out: &mut [f32],
        ) {
            attend_quant($dot, $values, q, q_heads, head_dim, scale, kv, out)
        }
    };
}

macro_rules! attention_tier {
    (
        $modname:ident, $features:literal, $rows:literal, $values:ident, $weights:ident,
        transposed_keys = $transposed:literal
    ) => {
        /// The attention kernels of one tier.
        pub mod $modname {
            use super::*;

            /// Rows (token, head) whose value updates run interleaved: 3 with AVX2's 16
            /// registers (12 accumulators and 4 value vectors), 4 where AVX-512 VL gives 32.
            const ATT_ROWS: usize = $rows;

            /// Whether the scores may come from keys widened transposed ([`scores_t`], 16
            /// keys per zmm) instead of row by row ([`scores`]): on this tier, for calls of at
            /// least [`TRANSPOSE_MIN_ROWS`] (token, head) rows.
            const TRANSPOSED_KEYS: bool = $transposed;

            /// [`mad_f16`](crate::nn::attention::mad_f16) 8 elements at a time (the same bits).
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
                super::super::attention::mad_f16(&mut acc[n..], &v[n..], s);
            }

            /// [`scale_f16`](crate::nn::attention::scale_f16) 8 elements at a time (the same bits).
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
                super::super::attention::scale_f16(&mut acc[n..], s);
            }

            /// ggml's AVX2 `ggml_vec_dot_q8_0_q8_0` / `ggml_vec_dot_q4_0_q8_0` (the lane order
            /// of `quant::scalar::dot32`): per block 8 exact i32 lane sums of 4 products, `acc =
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
            /// `out`: `q as f32 * d`, exact, as `quant::scalar::dequantize_q8_0` / `_q4_0`.
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

            /// `quant::scalar::dot_q8_0_q8_0` (lane order).
            #[target_feature(enable = $features)]
            pub unsafe fn dot_kv_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
                dot_lanes_q8_0(
                    x.len(),
                    |b| (_mm256_loadu_si256(x[b].qs.as_ptr().cast()), x[b].d),
                    y,
                )
            }

            /// `quant::scalar::dot_q4_0_q8_0_lanes`.
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

            /// `attention::attend_q8_0` / `_q4_0` with this tier's dot product, dequantization and
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
                kv: &KvRows<'_, B>,
                out: &mut [f32],
            ) {
                attend_quant_with(
                    dot,
                    |x, o| dequant_blocks(x, o, &values),
                    |x, y| crate::quant::x86::$modname::quantize_q8_0(x, y),
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

            /// Widens one f16 row of `hd` (a multiple of 64) elements into `out`.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn widen_row(src: &[u16], out: &mut [f32]) {
                assert!(src.len() == out.len() && src.len().is_multiple_of(8));
                for (s, o) in src.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
                    let v = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast()));
                    _mm256_storeu_ps(o.as_mut_ptr(), v);
                }
            }

            /// A key's ggml f16 dot with the widened query `q` (`S` 64-element steps, already
            /// in registers) folded to the 8 lanes before the final three halving steps: the 64
            /// lanes (8 vectors) accumulate their positions by FMA, then `(a0 + a4) + (a2 + a6)`
            /// and `(a1 + a5) + (a3 + a7)` (`quant::scalar::fold_f16_lanes`) and their sum (the
            /// first step of `quant::scalar::reduce16`).
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn lanes8<const S: usize>(q: &[[__m256; 8]; S], k: *const f32) -> __m256 {
                let mut a = [_mm256_setzero_ps(); 8];
                for (s, qs) in q.iter().enumerate() {
                    for (g, x) in a.iter_mut().enumerate() {
                        *x = _mm256_fmadd_ps(qs[g], _mm256_loadu_ps(k.add(s * 64 + g * 8)), *x);
                    }
                }
                let lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
                let hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
                _mm256_add_ps(lo, hi)
            }

            /// Dot products of `q` with 8 consecutive widened keys (`hd = 64 * S` apart from
            /// `k`), unscaled, in key order: per key `lanes8`, then the remaining halving steps
            /// of `hsum_f32_8` (lanes 4 apart, 2 apart, 1 apart) for all 8 keys at once, each
            /// stage pairing vectors by shuffles so every add is one of the reference's.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn scores8<const S: usize>(q: &[[__m256; 8]; S], k: *const f32) -> __m256 {
                let r: [__m256; 8] = std::array::from_fn(|j| lanes8::<S>(q, k.add(j * 64 * S)));
                // Lanes 4 apart: [c_a (4), c_b (4)] from keys a, b.
                let c = |a: __m256, b: __m256| {
                    _mm256_add_ps(
                        _mm256_permute2f128_ps::<0x20>(a, b),
                        _mm256_permute2f128_ps::<0x31>(a, b),
                    )
                };
                let (c01, c23, c45, c67) =
                    (c(r[0], r[1]), c(r[2], r[3]), c(r[4], r[5]), c(r[6], r[7]));
                // Lanes 2 apart: [d_a, d_c | d_b, d_d] (2 each) from [c_a, c_b] and [c_c, c_d].
                let d = |x: __m256, y: __m256| {
                    _mm256_add_ps(
                        _mm256_shuffle_ps::<0x44>(x, y),
                        _mm256_shuffle_ps::<0xee>(x, y),
                    )
                };
                let (d0123, d4567) = (d(c01, c23), d(c45, c67));
                // Lanes 1 apart: keys [0, 2, 4, 6 | 1, 3, 5, 7].
                let s = _mm256_add_ps(
                    _mm256_shuffle_ps::<0x88>(d0123, d4567),
                    _mm256_shuffle_ps::<0xdd>(d0123, d4567),
                );
                let order = _mm256_loadu_si256(SCORE_ORDER.as_ptr().cast());
                _mm256_permutevar8x32_ps(s, order)
            }

            /// Scores of keys `keys` (indices into the widened block `kf`) against `q`, into
            /// `out[keys]`, unscaled; 8 keys per call of `scores8` (the block's storage is
            /// padded to whole groups, so a group may run past `keys` into unused slots).
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn scores<const S: usize>(
                q: &[f32],
                kf: &[f32],
                keys: std::ops::Range<usize>,
                out: &mut [f32; KEYS],
            ) {
                let hd = 64 * S;
                assert!(q.len() >= hd && kf.len() >= KEYS * hd && keys.end <= KEYS);
                let qv: [[__m256; 8]; S] = std::array::from_fn(|s| {
                    std::array::from_fn(|g| _mm256_loadu_ps(q.as_ptr().add(s * 64 + g * 8)))
                });
                let mut j = keys.start / 8 * 8;
                while j < keys.end {
                    let v = scores8::<S>(&qv, kf.as_ptr().add(j * hd));
                    _mm256_storeu_ps(out.as_mut_ptr().add(j), v);
                    j += 8;
                }
            }

            /// `values` for any number of rows, `ATT_ROWS` at a time.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)] // `values`' operands plus the row list
            unsafe fn values_rows(
                acc: &mut [f32],
                rows: &[usize],
                vf: &[f32],
                ms: &[f32],
                vs: &[f32],
                keys: std::ops::Range<usize>,
                hd: usize,
            ) {
                for g in rows.chunks(ATT_ROWS) {
                    let k = keys.clone();
                    match *g {
                        [a] => $values::<1>(acc, [a], vf, ms, vs, k, hd),
                        [a, b] => $values::<2>(acc, [a, b], vf, ms, vs, k, hd),
                        [a, b, c] => $values::<3>(acc, [a, b, c], vf, ms, vs, k, hd),
                        [a, b, c, d, ..] => $values::<4>(acc, [a, b, c, d], vf, ms, vs, k, hd),
                        [] => {}
                    }
                }
            }

            /// `attention::attend_block`, bit for bit (see the module doc), for head dims that
            /// are multiples of 64 up to 256; others go through the per-token reference
            /// compiled for this tier.
            #[target_feature(enable = $features)]
            pub unsafe fn attend_block(b: &AttendBlock<'_>, out: &mut [f32]) {
                b.check(out);
                let hd = b.head_dim;
                match hd {
                    64 => attend_steps::<1>(b, out),
                    128 => attend_steps::<2>(b, out),
                    192 => attend_steps::<3>(b, out),
                    256 => attend_steps::<4>(b, out),
                    _ => b.per_token(out, |q, hs, hd, sc, kv, o| {
                        attend_with(
                            crate::quant::scalar::dot_f16_f16,
                            super::super::attention::mad_f16,
                            super::super::attention::scale_f16,
                            q,
                            hs,
                            hd,
                            sc,
                            kv,
                            o,
                        )
                    }),
                }
            }

            /// `attend_block` at head dim `64 * S`.
            #[target_feature(enable = $features)]
            unsafe fn attend_steps<const S: usize>(b: &AttendBlock<'_>, out: &mut [f32]) {
                let hd = 64 * S;
                let (nt, gh) = (b.keys.len(), b.heads.len());
                let nr = nt * gh;
                let transposed = TRANSPOSED_KEYS && nr >= TRANSPOSE_MIN_ROWS;
                let lo = b.keys.iter().map(|r| r.start).min().unwrap_or(0);
                let hi = b.keys.iter().map(|r| r.end).max().unwrap_or(0);
                // Row r = (token r / gh, head heads.start + r % gh).
                let mut q32 = vec![0f32; nr * hd];
                let mut acc = vec![0f32; nr * hd];
                let (mut m, mut sum) = (vec![f32::NEG_INFINITY; nr], vec![0f32; nr]);
                let mut scratch = SCRATCH.with_borrow_mut(std::mem::take);
                let Scratch { kf, vf, ms, vs } = &mut scratch;
                grow(kf, KEYS * hd);
                grow(vf, KEYS * hd);
                grow(ms, nr * KEYS);
                grow(vs, nr * KEYS);
                // Scores of the current token's heads.
                let mut sc = vec![[0f32; KEYS]; gh];
                let mut full = Vec::with_capacity(nr);
                // The rows of a token that covers only part of the key block.
                let mut part = Vec::with_capacity(gh);
                for r in 0..nr {
                    let src = (r / gh) * b.stride + (b.heads.start + r % gh) * hd;
                    for (d, v) in q32[r * hd..(r + 1) * hd]
                        .chunks_exact_mut(8)
                        .zip(b.q[src..src + hd].chunks_exact(8))
                    {
                        _mm256_storeu_ps(d.as_mut_ptr(), round16x8(_mm256_loadu_ps(v.as_ptr())));
                    }
                }
                let mut k0 = lo;
                while k0 < hi {
                    let n = (hi - k0).min(KEYS);
                    for j in 0..n {
                        let off = b.kv.offsets[k0 + j];
                        if !transposed {
                            widen_row(&b.kv.keys[off..off + hd], &mut kf[j * hd..(j + 1) * hd]);
                        }
                        widen_row(&b.kv.values[off..off + hd], &mut vf[j * hd..(j + 1) * hd]);
                    }
                    if transposed {
                        widen_keys_t(b.kv.keys, &b.kv.offsets[k0..k0 + n], hd, kf);
                    }
                    full.clear();
                    for (t, keys) in b.keys.iter().enumerate() {
                        let (a, e) = (keys.start.max(k0), keys.end.min(k0 + n));
                        if a >= e {
                            continue;
                        }
                        let own = a - k0..e - k0;
                        for r in t * gh..(t + 1) * gh {
                            let (q, sr) = (&q32[r * hd..], &mut sc[r - t * gh]);
                            if transposed {
                                scores_t::<S>(q, kf, own.clone(), sr);
                            } else {
                                scores::<S>(q, kf, own.clone(), sr);
                            }
                        }
                        // Per head the weights 8 keys at a time (`weights8`), then the sums'
                        // FMA chains of the token's heads interleaved key by key.
                        for r in t * gh..(t + 1) * gh {
                            let (msr, vsr) = (
                                &mut ms[r * KEYS..(r + 1) * KEYS],
                                &mut vs[r * KEYS..(r + 1) * KEYS],
                            );
                            let scr = &sc[r - t * gh];
                            let scale = _mm256_set1_ps(b.scale);
                            let mut j0 = own.start / 8 * 8;
                            while j0 < own.end {
                                let lanes = own.start.max(j0) - j0..own.end.min(j0 + 8) - j0;
                                let s8 =
                                    _mm256_mul_ps(_mm256_loadu_ps(scr.as_ptr().add(j0)), scale);
                                match $weights(s8, lanes.clone(), &mut m[r]) {
                                    Some((w_ms, w_vs)) => {
                                        _mm256_storeu_ps(msr.as_mut_ptr().add(j0), w_ms);
                                        _mm256_storeu_ps(vsr.as_mut_ptr().add(j0), w_vs);
                                    }
                                    None => {
                                        for j in lanes.start + j0..lanes.end + j0 {
                                            let s = scr[j] * b.scale;
                                            (msr[j], vsr[j]) = if s > m[r] {
                                                let e = expf(m[r] - s);
                                                m[r] = s;
                                                (e, 1.0)
                                            } else {
                                                (1.0, expf(s - m[r]))
                                            };
                                        }
                                    }
                                }
                                j0 += 8;
                            }
                        }
                        for r0 in (t * gh..(t + 1) * gh).step_by(4) {
                            let sums = &mut sum[r0..(r0 + 4).min((t + 1) * gh)];
                            let (msr, vsr) = (&ms[r0 * KEYS..], &vs[r0 * KEYS..]);
                            match sums.len() {
                                1 => add_weights::<1>(sums, msr, vsr, own.clone()),
                                2 => add_weights::<2>(sums, msr, vsr, own.clone()),
                                3 => add_weights::<3>(sums, msr, vsr, own.clone()),
                                _ => add_weights::<4>(sums, msr, vsr, own.clone()),
                            }
                        }
                        if own == (0..n) {
                            full.extend(t * gh..(t + 1) * gh);
                        } else {
                            part.clear();
                            part.extend(t * gh..(t + 1) * gh);
                            values_rows(&mut acc, &part, vf, ms, vs, own, hd);
                        }
                    }
                    values_rows(&mut acc, &full, vf, ms, vs, 0..n, hd);
                    k0 += n;
                }
                SCRATCH.with_borrow_mut(|s| *s = scratch);
                for r in 0..nr {
                    let inv = 1.0 / sum[r];
                    let dst = (r / gh) * b.stride + (b.heads.start + r % gh) * hd;
                    for (o, &a) in out[dst..dst + hd]
                        .iter_mut()
                        .zip(&acc[r * hd..(r + 1) * hd])
                    {
                        *o = a * inv;
                    }
                }
            }
        }
    };
}

attention_tier!(
    avx2,
    "avx2,fma,f16c",
    3,
    values256,
    weights8,
    transposed_keys = false
);
attention_tier!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    4,
    values512,
    weights8_512,
    transposed_keys = true
);
