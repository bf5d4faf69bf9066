//! AVX-512 (zmm) kernels of the VNNI tier over **two tile rows at once**: 16 weight rows, one
//! per f32 lane of a zmm, against N activation rows. They serve prefill and batched decode of
//! the ggml-order 32-element formats, whose 8 lane accumulators per (row, activation) pair
//! make the 256-bit kernels (`x86_tiles::lanes_kernel`) bound by one conversion and one FMA
//! per 8 rows and 4 products; here the same two instructions cover 16 rows.
//!
//! Formats in ggml's lane order: Q5_0, Q8_0, Q4_1, Q5_1; with exact block sums (as
//! `x86_tiles::tile_kernel`): Q4_0, IQ4_NL; and the super-block format IQ4_XS
//! ([`tiles2_iq4xs`]). Every weight byte is multiplied unsigned (no sign trick,
//! which zmm has no `vpsignb` for; Q8_0 as `w + 128`, its offset taken off like Q5_0's). Q4_1/Q5_1 add their `m * s` chain per block as the 256-bit kernels do.
//! Q5_0 runs in its unsigned form `u = w + 16` (0..=31, the nibble with the fifth bit, no sign
//! trick): each group's `vpdpbusd` starts from `-16 * sum(a_group)` (`ActMeta::offsets16`), so
//! the i32 lane is exactly `sum(w * a)` of the group's 4 products, the integer the 256-bit
//! kernel and `scalar::dot32` compute. The float chain per lane (`fma(d_w * d_a, lane, acc)`
//! per block, lanes reduced in `hsum8`'s order) is the same, so are the bits; lanes 0..8 are
//! the first tile row's rows, 8..16 the second's.
//!
//! SAFETY contract for every `unsafe fn` here: the caller has verified the features in the
//! function's `target_feature` attribute (only `dispatch::Kernels` builds calls to them, after
//! `all_supported` detected them). Slice lengths are checked by asserts.

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::blocks::*;
use super::x86::iq4nl_table;
use super::x86_tiles::{fifth_bits, nibbles};
use super::ActMeta;

/// Column blocks whose decoded weights a call keeps (in L1) for all its activation rows.
const CHUNK: usize = 32;

/// Groups `gp` and `gp + 4` of a 5-bit tile in their unsigned form (0..=31): the nibbles with
/// 0x10 where the group masks `qh[gp]`, `qh[gp + 4]` have their bit set.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn five_bits(qs: &[u8; 128], qh: &[u32; 8], gp: usize) -> (__m256i, __m256i) {
    let (lo, hi) = nibbles(qs, gp);
    (
        _mm256_or_si256(lo, fifth_bits(qh[gp])),
        _mm256_or_si256(hi, fifth_bits(qh[gp + 4])),
    )
}

/// Two tiles' 256-bit vectors side by side (the first tile's rows in the low half).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn join(a: __m256i, b: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
}

/// Fills a scratch entry (8 zmm, one per group of 4 columns) from the same block of tiles `$a`
/// and `$b`, with `$pair` giving one tile's unsigned bytes of groups `gp` and `gp + 4`.
macro_rules! store_groups {
    ($w:expr, $a:ident, $b:ident, |$t:ident, $gp:ident| $pair:block) => {
        for $gp in 0..4 {
            let (al, ah) = {
                let $t = $a;
                $pair
            };
            let (bl, bh) = {
                let $t = $b;
                $pair
            };
            $w[$gp] = MaybeUninit::new(join(al, bl));
            $w[$gp + 4] = MaybeUninit::new(join(ah, bh));
        }
    };
}

/// Two tiles' 8 f16 values each as one zmm of f32 (the first tile's in lanes 0..8).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn lanes16_f16(a: &[u16; TILE_ROWS], b: &[u16; TILE_ROWS]) -> __m512 {
    _mm512_cvtph_ps(_mm256_set_m128i(
        _mm_loadu_si128(b.as_ptr().cast()),
        _mm_loadu_si128(a.as_ptr().cast()),
    ))
}

/// One format's two-tile-row kernel `$name::<N>`: `out[n][j]` is weight row j (0..8 of `t0`,
/// 8..16 of `t1`) against activation n, bit-identical to `x86_tiles::*::$name` on each tile
/// row and to `scalar::dot32`. `$pair` gives a tile's unsigned weight bytes of groups `gp` and
/// `gp + 4`; formats with `offsets = K` (multiplied as `u = w + K`) start each group's
/// `vpdpbusd` at `-K * sum(a_group)` (`ActMeta::offsets16`, `offsets128`), the others at 0; `min`
/// formats add the `m * s` chain.
macro_rules! pair_kernel {
    ($name:ident, $tile:ty, $act:ty, offsets = $offsets:tt, min = $min:tt,
     |$t:ident, $gp:ident| $pair:block) => {
        /// Two tile rows against N activation rows: `scalar::dot32`'s bits per pair.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn $name<const N: usize>(
            t0: &[$tile],
            t1: &[$tile],
            y: &[&[$act]; N],
            meta: &[ActMeta<'_>; N],
        ) -> [[f32; 2 * TILE_ROWS]; N] {
            let nb = t0.len();
            assert_eq!(t1.len(), nb, "tile rows of one matrix");
            assert!(y.iter().all(|a| a.len() >= nb));
            assert!(meta.iter().all(|m| m.d.len() >= nb
                && (!$min || m.s.len() >= nb)
                && ($offsets == 0 || (m.offsets16.len() >= 8 * nb
                    && m.offsets128.len() >= 8 * nb))));
            assert!(nb > 0, "at least one block");
            // Accumulators left uninitialised, each row's started at zero in the first chunk
            // (at N = 16 they are 8 KiB of stack, and zeroing them per call showed as memset).
            let mut acc = MaybeUninit::<[[__m512; 8]; N]>::uninit();
            let ap = acc.as_mut_ptr().cast::<[__m512; 8]>();
            #[allow(unused_mut, unused_variables)] // the `m * s` chain of the offset formats
            let mut summs = [_mm512_setzero_ps(); N];
            // Scratch left uninitialised (zeroing it per call costs more than short calls'
            // work): every entry read below was written first for the same chunk.
            let mut w = [[MaybeUninit::<__m512i>::uninit(); 8]; CHUNK];
            let mut dw = [MaybeUninit::<__m512>::uninit(); CHUNK];
            #[allow(unused_mut, unused_variables)]
            let mut mw = [MaybeUninit::<__m512>::uninit(); CHUNK];
            for c0 in (0..nb).step_by(CHUNK) {
                let c1 = (c0 + CHUNK).min(nb);
                for i in c0..c1 {
                    // SAFETY (the unchecked indexing in this function): i < nb, and every
                    // slice indexed with i (or 8i + g, g < 8) is long enough (asserted above).
                    let (a, b) = unsafe { (t0.get_unchecked(i), t1.get_unchecked(i)) };
                    dw[i - c0] = MaybeUninit::new(lanes16_f16(&a.d, &b.d));
                    pair_kernel!(@min_lanes $min, mw[i - c0], a, b);
                    store_groups!(w[i - c0], a, b, |$t, $gp| $pair);
                }
                for n in 0..N {
                    // SAFETY: n < N; row n was written by the previous chunk unless this is
                    // the first.
                    let mut s = if c0 == 0 { [_mm512_setzero_ps(); 8] } else { ap.add(n).read() };
                    for i in c0..c1 {
                        let yb = unsafe { y[n].get_unchecked(i) };
                        let qs = yb.qs.as_ptr();
                        let da = unsafe { *meta[n].d.get_unchecked(i) };
                        // SAFETY: entries i - c0 of the scratch were written for this chunk.
                        let d = _mm512_mul_ps(unsafe { dw[i - c0].assume_init() }, _mm512_set1_ps(da));
                        pair_kernel!(@min_chain $min, summs[n], mw[i - c0], meta[n], i);
                        for g in 0..8 {
                            // SAFETY: g < 8: the 4 bytes lie inside the block's 32 quants.
                            let a = unsafe { qs.add(4 * g).cast::<i32>().read_unaligned() };
                            let wg = unsafe { w[i - c0][g].assume_init() };
                            let start = pair_kernel!(@start $offsets, meta[n], i, g);
                            let lane = _mm512_dpbusd_epi32(start, wg, _mm512_set1_epi32(a));
                            s[g] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lane), s[g]);
                        }
                    }
                    ap.add(n).write(s);
                }
            }
            // Left uninitialised (zeroing N rows per call showed as memset in prefill): every row
            // is stored below.
            let mut out = MaybeUninit::<[[f32; 2 * TILE_ROWS]; N]>::uninit();
            let op = out.as_mut_ptr().cast::<f32>();
            for n in 0..N {
                // SAFETY: nb > 0, so the first chunk wrote every row (read in place: a copy
                // of the array showed as memmove).
                let a = &*ap.add(n);
                let h = _mm512_add_ps(
                    _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6])),
                    _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7])),
                );
                let r = pair_kernel!(@finish $min, h, summs[n]);
                _mm512_storeu_ps(op.add(n * 2 * TILE_ROWS), r);
            }
            // SAFETY: rows 0..N were all stored above.
            out.assume_init()
        }
    };
    (@min_lanes false, $mw:expr, $a:ident, $b:ident) => {};
    (@min_lanes true, $mw:expr, $a:ident, $b:ident) => {
        $mw = MaybeUninit::new(lanes16_f16(&$a.m, &$b.m));
    };
    (@min_chain false, $summs:expr, $mw:expr, $meta:expr, $i:ident) => {};
    // SAFETY: the scratch entry was written for this chunk; i < nb <= s.len() (asserted).
    (@min_chain true, $summs:expr, $mw:expr, $meta:expr, $i:ident) => {
        $summs = _mm512_fmadd_ps(
            unsafe { $mw.assume_init() },
            _mm512_set1_ps(unsafe { *$meta.s.get_unchecked($i) }),
            $summs,
        );
    };
    (@start 0, $meta:expr, $i:ident, $g:ident) => { _mm512_setzero_si512() };
    // SAFETY (both arms): 8i + g < 8nb <= offsets16.len() (asserted).
    (@start 16, $meta:expr, $i:ident, $g:ident) => {
        _mm512_set1_epi32(unsafe { *$meta.offsets16.get_unchecked(8 * $i + $g) })
    };
    (@start 128, $meta:expr, $i:ident, $g:ident) => {
        _mm512_set1_epi32(unsafe { *$meta.offsets128.get_unchecked(8 * $i + $g) })
    };
    (@finish false, $acc:expr, $summs:expr) => { $acc };
    (@finish true, $acc:expr, $summs:expr) => { _mm512_add_ps($acc, $summs) };
}

// Q5_0 as `u = w + 16` (the nibble with the fifth bit), offsets taken off per group.
pair_kernel!(
    tiles2_q5_0,
    TileQ5_0,
    BlockQ8_0,
    offsets = 16,
    min = false,
    |t, gp| { five_bits(&t.qs, &t.qh, gp) }
);
// Q8_0 as `u = w + 128` (the sign bit flipped).
pair_kernel!(
    tiles2_q8_0,
    TileQ8_0,
    BlockQ8_0,
    offsets = 128,
    min = false,
    |t, gp| {
        let flip = _mm256_set1_epi8(0x80u8 as i8);
        (
            _mm256_xor_si256(_mm256_loadu_si256(t.qs[32 * gp..].as_ptr().cast()), flip),
            _mm256_xor_si256(
                _mm256_loadu_si256(t.qs[32 * gp + 128..].as_ptr().cast()),
                flip,
            ),
        )
    }
);
pair_kernel!(
    tiles2_q4_1,
    TileQ4_1,
    BlockQ8_1,
    offsets = 0,
    min = true,
    |t, gp| { nibbles(&t.qs, gp) }
);
pair_kernel!(
    tiles2_q5_1,
    TileQ5_1,
    BlockQ8_1,
    offsets = 0,
    min = true,
    |t, gp| { five_bits(&t.qs, &t.qh, gp) }
);

/// One exact-sum format's two-tile-row kernel `$name::<N>` (`x86_tiles::tile_kernel`'s
/// arithmetic on 16 rows): per (row, activation) pair and block one exact i32 sum of all 32
/// products, the weights multiplied as unsigned `u = w + $corr` and `$corr * sum(a)`
/// (`ActMeta::sum`) taken off, then one conversion and one FMA by `d_w * d_a`.
macro_rules! exact_pair_kernel {
    ($name:ident, $tile:ty, corr = $corr:literal, |$t:ident, $gp:ident| $pair:block) => {
        /// Two tile rows against N activation rows: `scalar::dot32`'s bits per pair.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn $name<const N: usize>(
            t0: &[$tile],
            t1: &[$tile],
            y: &[&[BlockQ8_0]; N],
            meta: &[ActMeta<'_>; N],
        ) -> [[f32; 2 * TILE_ROWS]; N] {
            let nb = t0.len();
            assert_eq!(t1.len(), nb, "tile rows of one matrix");
            assert!(y.iter().all(|a| a.len() >= nb));
            assert!(meta.iter().all(|m| m.d.len() >= nb && m.sum.len() >= nb));
            assert!(nb > 0, "at least one block");
            // Accumulators left uninitialised, each started at zero in the first chunk.
            let mut acc = MaybeUninit::<[__m512; N]>::uninit();
            let ap = acc.as_mut_ptr().cast::<__m512>();
            // Scratch left uninitialised: every entry read below was written first for the
            // same chunk.
            let mut w = [[MaybeUninit::<__m512i>::uninit(); 8]; CHUNK];
            let mut dw = [MaybeUninit::<__m512>::uninit(); CHUNK];
            for c0 in (0..nb).step_by(CHUNK) {
                let c1 = (c0 + CHUNK).min(nb);
                for i in c0..c1 {
                    // SAFETY (the unchecked indexing in this function): i < nb, and every
                    // slice indexed with i is at least nb long (asserted above).
                    let (a, b) = unsafe { (t0.get_unchecked(i), t1.get_unchecked(i)) };
                    dw[i - c0] = MaybeUninit::new(lanes16_f16(&a.d, &b.d));
                    store_groups!(w[i - c0], a, b, |$t, $gp| $pair);
                }
                for n in 0..N {
                    // SAFETY: n < N; row n was written by the previous chunk unless this is
                    // the first.
                    let mut s = if c0 == 0 {
                        _mm512_setzero_ps()
                    } else {
                        ap.add(n).read()
                    };
                    for i in c0..c1 {
                        let qs = unsafe { y[n].get_unchecked(i) }.qs.as_ptr();
                        let sum = unsafe { *meta[n].sum.get_unchecked(i) };
                        let mut isum = _mm512_set1_epi32(-$corr * sum);
                        for g in 0..8 {
                            // SAFETY: g < 8: the 4 bytes lie inside the block's 32 quants;
                            // the scratch entry was written for this chunk.
                            let a = unsafe { qs.add(4 * g).cast::<i32>().read_unaligned() };
                            let wg = unsafe { w[i - c0][g].assume_init() };
                            isum = _mm512_dpbusd_epi32(isum, wg, _mm512_set1_epi32(a));
                        }
                        let da = unsafe { *meta[n].d.get_unchecked(i) };
                        let d =
                            _mm512_mul_ps(unsafe { dw[i - c0].assume_init() }, _mm512_set1_ps(da));
                        s = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum), s);
                    }
                    ap.add(n).write(s);
                }
            }
            // Left uninitialised (zeroing N rows per call showed as memset in prefill): every row
            // is stored below.
            let mut out = MaybeUninit::<[[f32; 2 * TILE_ROWS]; N]>::uninit();
            let op = out.as_mut_ptr().cast::<f32>();
            for n in 0..N {
                // SAFETY: nb > 0, so the first chunk wrote every row.
                _mm512_storeu_ps(op.add(n * 2 * TILE_ROWS), ap.add(n).read());
            }
            // SAFETY: rows 0..N were all stored above.
            out.assume_init()
        }
    };
}

// Q4_0 as the raw nibble `w + 8`.
exact_pair_kernel!(tiles2_q4_0, TileQ4_0, corr = 8, |t, gp| {
    nibbles(&t.qs, gp)
});
// IQ4_NL as `v + 128`: the table value with its sign bit flipped.
exact_pair_kernel!(tiles2_iq4nl, TileIq4Nl, corr = 128, |t, gp| {
    let (lo, hi) = nibbles(&t.qs, gp);
    let table = iq4nl_table();
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    (
        _mm256_xor_si256(_mm256_shuffle_epi8(table, lo), flip),
        _mm256_xor_si256(_mm256_shuffle_epi8(table, hi), flip),
    )
});

/// IQ4_XS over two tile rows (16 weight rows) against N activation rows (N a multiple of 4),
/// bit-identical to `x86_tiles::*::tiles_iq4xs` on each tile row: per sub-block the codes
/// looked up as `v + 128` (`vpshufb` per 128-bit lane), `vpdpbusd` from `-128 * sum(y)` (two
/// activation block sums), so each lane holds the exact `sum(v * y)`; times the row's scale,
/// summed over the super-block, then one FMA per lane. Activation rows go 4 at a time so the
/// accumulators stay in registers; each group's codes are decoded once per 4 rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tiles2_iq4xs<const N: usize>(
    t0: &[TileIq4Xs],
    t1: &[TileIq4Xs],
    y: &[&[BlockQ8K]; N],
    _meta: &[ActMeta<'_>; N],
) -> [[f32; 2 * TILE_ROWS]; N] {
    let nb = t0.len();
    assert_eq!(t1.len(), nb, "tile rows of one matrix");
    assert!(N.is_multiple_of(4) && y.iter().all(|a| a.len() >= nb));
    let table = _mm512_broadcast_i32x4(_mm256_castsi256_si128(_mm256_add_epi8(
        iq4nl_table(),
        _mm256_set1_epi8(-128),
    )));
    let m4 = _mm512_set1_epi8(0x0f);
    // Left uninitialised (zeroing N rows per call showed as memset in prefill): every row
    // is stored below.
    let mut out = MaybeUninit::<[[f32; 2 * TILE_ROWS]; N]>::uninit();
    let op = out.as_mut_ptr().cast::<f32>();
    for n0 in (0..N).step_by(4) {
        let mut total = [_mm512_setzero_ps(); 4];
        for i in 0..nb {
            // SAFETY (the unchecked indexing): i < nb, and every activation row has at least
            // nb blocks (asserted above).
            let (a, b) = unsafe { (t0.get_unchecked(i), t1.get_unchecked(i)) };
            let mut yb = [y[n0].get_unchecked(i); 4];
            for (j, v) in yb.iter_mut().enumerate() {
                *v = y[n0 + j].get_unchecked(i);
            }
            let mut sumi = [_mm512_setzero_si512(); 4];
            for ib in 0..8 {
                let mut s = [_mm512_setzero_si512(); 4];
                for (j, v) in s.iter_mut().enumerate() {
                    let bs = &yb[j].bsums;
                    *v = _mm512_set1_epi32(-128 * (bs[2 * ib] as i32 + bs[2 * ib + 1] as i32));
                }
                for q in 0..4 {
                    let off = 32 * (4 * ib + q);
                    let v = join(
                        _mm256_loadu_si256(a.qs[off..].as_ptr().cast()),
                        _mm256_loadu_si256(b.qs[off..].as_ptr().cast()),
                    );
                    let wl = _mm512_shuffle_epi8(table, _mm512_and_si512(v, m4));
                    let wh =
                        _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4));
                    for (j, acc) in s.iter_mut().enumerate() {
                        // SAFETY: 32 * ib + 16 + 4q + 4 <= 256, inside the block's quants.
                        let ap = yb[j].qs.as_ptr().add(32 * ib + 4 * q);
                        let lo = _mm512_set1_epi32(ap.cast::<i32>().read_unaligned());
                        let hi = _mm512_set1_epi32(ap.add(16).cast::<i32>().read_unaligned());
                        *acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(*acc, wl, lo), wh, hi);
                    }
                }
                let sc = _mm512_cvtepi8_epi32(_mm_set_epi64x(
                    i64::from_le_bytes(b.sc[ib].map(|x| x as u8)),
                    i64::from_le_bytes(a.sc[ib].map(|x| x as u8)),
                ));
                for (acc, v) in sumi.iter_mut().zip(&s) {
                    *acc = _mm512_add_epi32(*acc, _mm512_mullo_epi32(*v, sc));
                }
            }
            let dw = lanes16_f16(&a.d, &b.d);
            for j in 0..4 {
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(yb[j].d));
                total[j] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi[j]), total[j]);
            }
        }
        for (j, t) in total.iter().enumerate() {
            _mm512_storeu_ps(op.add((n0 + j) * 2 * TILE_ROWS), *t);
        }
    }
    // SAFETY: N is a multiple of 4 (asserted): every row was stored.
    out.assume_init()
}
