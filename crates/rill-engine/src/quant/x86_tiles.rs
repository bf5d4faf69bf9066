//! AVX2 kernels over the interleaved tiles of every block format (`repack`): one tile row
//! (8 weight rows, one per f32 lane) against N activation rows. Per column block, the 32
//! products of every (row, activation) pair are summed exactly in integers, 4 values of all 8
//! rows per `maddubs` against one broadcast group of 4 activation bytes; then one conversion and
//! one FMA by `d_w * d_a` per 8 rows (`scalar::dot32`'s chain), no horizontal sums. N = 1 is
//! single-stream decode (one sequential weight stream), N = 4 the batched/prefill tile; every
//! pair runs the same operations whatever N is, so both give the reference's bits.
//!
//! Exactness of the integer part (`maddubs` saturates its i16 pair sums; none can here):
//! - unsigned formats multiply the raw 4-/5-bit value (0..=31) by the activation (|a| <= 127:
//!   `quantize_q8_*` never produces -128); a pair is at most 2 * 31 * 127 = 7874, so 4-bit
//!   pairs of all 8 groups (8 * 3810 = 30480) and 5-bit pairs of 4 groups (31496) are summed in
//!   i16 before widening. Q4_0/Q5_0's offsets (-8, -16) come off exactly as `8 * sum(a)`,
//!   `16 * sum(a)` (`ActMeta::sum`).
//! - signed formats (Q8_0, IQ4_NL) use the sign trick: |w| (u8, <= 128) times a * sign(w), a
//!   pair at most 2 * 128 * 127 = 32512, widened per group. Except in AVX2's lane kernels
//!   against several activation rows: there Q8_0 and Q5_0 are widened to i16 once per chunk
//!   and multiplied by the activations' i16 pairs with `pmaddwd` (`rows_i16`: one multiplier
//!   operation per group fewer than the sign trick).
//!
//! The kernels are compiled three times from one macro: [`avx2`], and with each group's
//! 4-product row sums as one `vpdpbusd` (u8 x i8 summed into i32, no i16 step) instead of
//! `maddubs` + `madd`, [`vnni`] for the AVX-512 VNNI tier and [`avxvnni`] for AVX-VNNI (its VEX
//! form, on AVX2 CPUs without AVX-512). The integers are the same, so are the bits.
//!
//! SAFETY contract for every `unsafe fn` here: the caller has verified the features in the
//! function's `target_feature` attribute (only `dispatch::Kernels::detect` calls them). Slice
//! lengths are checked by asserts.

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::blocks::*;
use super::x86::{bytes_from_bits_32, iq4nl_table};
use super::ActMeta;

/// Activation group `g` (bytes 4g..4g+4 of a block's quants) in every i32 lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn group(qs: *const i8, g: usize) -> __m256i {
    // SAFETY: g < 8, so the 4 bytes lie inside the 32-byte quant array `qs` points to.
    _mm256_set1_epi32(unsafe { qs.add(4 * g).cast::<i32>().read_unaligned() })
}

/// A tile's 8 f16 scales as f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn lanes_f16(d: &[u16; TILE_ROWS]) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast()))
}

/// Groups `gp` (low nibbles) and `gp + 4` (high nibbles) of a nibble tile, as u8.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn nibbles(qs: &[u8; 128], gp: usize) -> (__m256i, __m256i) {
    let v = _mm256_loadu_si256(qs[32 * gp..32 * gp + 32].as_ptr().cast());
    let m = _mm256_set1_epi8(0x0f);
    (
        _mm256_and_si256(v, m),
        _mm256_and_si256(_mm256_srli_epi16(v, 4), m),
    )
}

/// 0x10 in each byte whose bit is set in a Q5 tile's group mask.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn fifth_bits(mask: u32) -> __m256i {
    _mm256_and_si256(
        bytes_from_bits_32(mask.to_le_bytes()),
        _mm256_set1_epi8(0x10),
    )
}

/// Q5_0's signed values from nibbles and a group mask: the nibble, minus 16 (`| 0xf0`) where
/// the fifth bit is clear.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn signed_q5(nib: __m256i, mask: u32) -> __m256i {
    let clear = _mm256_andnot_si256(
        bytes_from_bits_32(mask.to_le_bytes()),
        _mm256_set1_epi8(0xf0u8 as i8),
    );
    _mm256_or_si256(nib, clear)
}

/// i16 pair sums of unsigned weight bytes `w` times activation group `a`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn pairs_u(w: __m256i, a: __m256i) -> __m256i {
    _mm256_maddubs_epi16(w, a)
}

/// i16 row-pair sums to i32 row sums.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn widen(s16: __m256i) -> __m256i {
    _mm256_madd_epi16(s16, _mm256_set1_epi16(1))
}

/// A group of signed weight bytes (row r's 4 values in i32 lane r) as the two `pmaddwd`
/// operands of [`rows_i16`]: lane r holds the i16 pair [w_r0, w_r1], resp. [w_r2, w_r3].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn pairs_i16(w: __m256i) -> [__m256i; 2] {
    // Per 128-bit half (4 rows): the rows' first pairs, then their second pairs.
    let pick = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    );
    // Quad-words [first pairs 0-3, first 4-7, second 0-3, second 4-7].
    let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(w, pick));
    [
        _mm256_cvtepi8_epi16(_mm256_castsi256_si128(p)),
        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(p)),
    ]
}

/// i32 row sums of a signed group ([`pairs_i16`]) times the 4 activation quants at `a16` as
/// i16: two `pmaddwd` on broadcast pairs (exact: |w| <= 128, |a| <= 127), where the sign
/// trick (`rows_s`) needs a `psignb`, a `maddubs` and a `madd`: one multiplier operation per
/// group fewer.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn rows_i16(w: [__m256i; 2], a16: *const i16) -> __m256i {
    // SAFETY: the caller's `a16` points at 4 readable i16 (`ActMeta::q16` of the group).
    let (a01, a23) = unsafe {
        (
            _mm256_set1_epi32(a16.cast::<i32>().read_unaligned()),
            _mm256_set1_epi32(a16.add(2).cast::<i32>().read_unaligned()),
        )
    };
    _mm256_add_epi32(_mm256_madd_epi16(w[0], a01), _mm256_madd_epi16(w[1], a23))
}

/// What the kernels' unchecked indexing relies on: every activation row, and the per-block
/// values the kernel reads (`d`; `s` with `s`, `sum` with `sum`), cover the tile row's `nb`
/// blocks.
fn check_lengths<A>(nb: usize, y: &[&[A]], meta: &[ActMeta<'_>], s: bool, sum: bool) {
    assert!(y.iter().all(|a| a.len() >= nb));
    assert!(meta
        .iter()
        .all(|m| m.d.len() >= nb && (!s || m.s.len() >= nb) && (!sum || m.sum.len() >= nb)));
}

/// One format's kernel `$name::<N>`. `$int` fills `$isum[n]` (8 i32 row sums of tile `$t`
/// against activation quants `$ys[n]`); `corr` is the offset taken off as `corr * sum(a)`;
/// `min` adds the `m * s` chain of the offset formats.
macro_rules! tile_kernel {
    ($features:literal, $name:ident, $tile:ty, $act:ty, corr = $corr:expr, min = $min:tt,
     |$t:ident, $ys:ident, $isum:ident| $int:block) => {
        /// One tile row against N activation rows: `scalar::dot32`'s bits per pair.
        #[target_feature(enable = $features)]
        pub unsafe fn $name<const N: usize>(
            tiles: &[$tile],
            y: &[&[$act]; N],
            meta: &[ActMeta<'_>; N],
        ) -> [[f32; TILE_ROWS]; N] {
            let nb = tiles.len();
            check_lengths(nb, y, meta, $min, $corr != 0);
            let mut acc = [_mm256_setzero_ps(); N];
            #[allow(unused_mut, unused_variables)] // the `m * s` chain of the offset formats
            let mut summs = [_mm256_setzero_ps(); N];
            for i in 0..nb {
                // SAFETY (the unchecked indexing below): i < nb, and every slice indexed with
                // i is at least nb long (asserted above).
                let $t = unsafe { tiles.get_unchecked(i) };
                let $ys: [*const i8; N] =
                    std::array::from_fn(|n| unsafe { y[n].get_unchecked(i) }.qs.as_ptr());
                let mut $isum = [_mm256_setzero_si256(); N];
                $int
                let dw = lanes_f16(&$t.d);
                for n in 0..N {
                    let mut s = $isum[n];
                    if $corr != 0 {
                        let sum = unsafe { *meta[n].sum.get_unchecked(i) };
                        s = _mm256_sub_epi32(s, _mm256_set1_epi32($corr * sum));
                    }
                    let da = unsafe { *meta[n].d.get_unchecked(i) };
                    let dd = _mm256_mul_ps(dw, _mm256_set1_ps(da));
                    acc[n] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(s), acc[n]);
                }
                tile_kernel!(@min $min, $t, meta, summs, i, N);
            }
            // Left uninitialised (zeroing N rows per call showed as memset in prefill): every row
            // is stored below.
            let mut out = MaybeUninit::<[[f32; TILE_ROWS]; N]>::uninit();
            let op = out.as_mut_ptr().cast::<f32>();
            for n in 0..N {
                let r = tile_kernel!(@finish $min, acc[n], summs[n]);
                _mm256_storeu_ps(op.add(n * TILE_ROWS), r);
            }
            // SAFETY: rows 0..N were all stored above.
            out.assume_init()
        }
    };
    (@min false, $t:ident, $meta:ident, $summs:ident, $i:ident, $n:ident) => {};
    (@min true, $t:ident, $meta:ident, $summs:ident, $i:ident, $n:ident) => {
        let mw = lanes_f16(&$t.m);
        for n in 0..$n {
            let s = unsafe { *$meta[n].s.get_unchecked($i) };
            $summs[n] = _mm256_fmadd_ps(mw, _mm256_set1_ps(s), $summs[n]);
        }
    };
    (@finish false, $acc:expr, $summs:expr) => { $acc };
    (@finish true, $acc:expr, $summs:expr) => { _mm256_add_ps($acc, $summs) };
}

/// Column blocks whose decoded weights [`lanes_kernel`] keeps for the activation rows.
const LANE_CHUNK: usize = 32;

/// One ggml-order format's kernel `$name::<N>` (`scalar::dot32` with `LANES`): per (row,
/// activation) pair 8 lane accumulators, lane `g` the exact sum of group `g`'s 4 products,
/// `fma(d_w * d_a, sum, lane)` per block; the lanes reduced in `hsum8`'s order at the end, as
/// vertical adds over 8 rows at once. `$pair` decodes the weight vectors of groups `gp` and
/// `gp + 4`; `$signed` formats multiply with the sign trick (one row), as `w + 128` onto
/// group offsets (`by_offset`: several rows on the VNNI tiers) or as i16 pairs (several rows
/// on AVX2), the others directly (u8).
///
/// The integer multiplier bounds this arithmetic: every 32 products need a `maddubs` and a
/// `madd`, where the exact block sums (`tile_kernel`) need one `maddubs`. So nothing else may
/// repeat per activation row: for several rows, a chunk of blocks is decoded once into a
/// scratch (in the form the rows multiply, `@keep`), then each activation row runs over it
/// with its 8 accumulators in registers (8N would not fit). Measured against holding 8N
/// accumulators in memory and against re-decoding per row (`instr_probe speed FORMAT 16`).
/// On AVX2 the i16 form of Q8_0 against 16 rows: 44 -> 50 GMAC/s over the sign trick.
macro_rules! lanes_kernel {
    ($features:literal, $name:ident, $tile:ty, $act:ty, min = $min:tt, signed = $signed:tt,
     by_offset = $by_offset:tt, |$t:ident, $gp:ident| $pair:expr) => {
        /// One tile row against N activation rows: `scalar::dot32`'s bits per pair.
        #[target_feature(enable = $features)]
        pub unsafe fn $name<const N: usize>(
            tiles: &[$tile],
            y: &[&[$act]; N],
            meta: &[ActMeta<'_>; N],
        ) -> [[f32; TILE_ROWS]; N] {
            let nb = tiles.len();
            check_lengths(nb, y, meta, $min, false);
            lanes_kernel!(@offsets $signed $by_offset, meta, nb, N);
            #[allow(unused_mut, unused_variables)] // the `m * s` chain of the offset formats
            let mut summs = [_mm256_setzero_ps(); N];
            // Left uninitialised (zeroing N rows per call showed as memset in prefill): every row
            // is stored by the last chunk (or the one-row pass, or the empty case) below.
            let mut out = MaybeUninit::<[[f32; TILE_ROWS]; N]>::uninit();
            let op = out.as_mut_ptr().cast::<f32>();
            // Each row's lanes between chunks (a 1-KiB memset per call when zeroed here): read
            // only after the row's first chunk wrote them.
            let mut acc = [MaybeUninit::<[__m256; 8]>::uninit(); N];
            // Scratch left uninitialised (zeroing 17 KiB per call cost more than the work):
            // every entry read below was written first for the same chunk.
            // Each group in the form the activation rows multiply (`@keep`).
            let mut w = [[MaybeUninit::<lanes_kernel!(@scratch $signed $by_offset)>::uninit(); 8];
                LANE_CHUNK];
            let mut dw = [MaybeUninit::<__m256>::uninit(); LANE_CHUNK];
            if N == 1 || nb == 0 {
                // One activation row (decode): decoded weights go straight to the multiplier,
                // one sequential pass over the tiles.
                let mut a = [_mm256_setzero_ps(); 8];
                for i in 0..if N == 1 { nb } else { 0 } {
                    let $t = unsafe { tiles.get_unchecked(i) };
                    let ys = unsafe { y[0].get_unchecked(i) }.qs.as_ptr();
                    let da = unsafe { *meta[0].d.get_unchecked(i) };
                    let d = _mm256_mul_ps(lanes_f16(&$t.d), _mm256_set1_ps(da));
                    for $gp in 0..4 {
                        let (wl, wh) = $pair;
                        let pl = lanes_kernel!(@rows_now $signed, wl, group(ys, $gp));
                        a[$gp] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(pl), a[$gp]);
                        let ph = lanes_kernel!(@rows_now $signed, wh, group(ys, $gp + 4));
                        a[$gp + 4] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(ph), a[$gp + 4]);
                    }
                    tile_kernel!(@min $min, $t, meta, summs, i, N);
                }
                for n in 0..N {
                    lanes_kernel!(@finish $min, a, summs[n], op, n);
                }
            }
            let chunked = if N == 1 { 0 } else { nb };
            for c0 in (0..chunked).step_by(LANE_CHUNK) {
                let c1 = (c0 + LANE_CHUNK).min(chunked);
                for i in c0..c1 {
                    // SAFETY (the unchecked indexing in this function): i < nb, and every
                    // slice indexed with i is at least nb long (asserted above).
                    let $t = unsafe { tiles.get_unchecked(i) };
                    dw[i - c0] = MaybeUninit::new(lanes_f16(&$t.d));
                    for $gp in 0..4 {
                        let (wl, wh) = $pair;
                        w[i - c0][$gp] = MaybeUninit::new(lanes_kernel!(@keep $signed $by_offset, wl));
                        w[i - c0][$gp + 4] =
                            MaybeUninit::new(lanes_kernel!(@keep $signed $by_offset, wh));
                    }
                    tile_kernel!(@min $min, $t, meta, summs, i, N);
                }
                for n in 0..N {
                    let mut a = if c0 == 0 {
                        [_mm256_setzero_ps(); 8]
                    } else {
                        // SAFETY: the chunk at 0 stored row n's lanes.
                        unsafe { acc[n].assume_init() }
                    };
                    for i in c0..c1 {
                        #[allow(unused_variables)] // the AVX2 signed form reads `meta[n].q16`
                        let ys = unsafe { y[n].get_unchecked(i) }.qs.as_ptr();
                        let da = unsafe { *meta[n].d.get_unchecked(i) };
                        // SAFETY: entries i - c0 of the scratch were written for this chunk above.
                        let d = _mm256_mul_ps(unsafe { dw[i - c0].assume_init() }, _mm256_set1_ps(da));
                        for g in 0..8 {
                            let s = lanes_kernel!(
                                @rows $signed $by_offset, w[i - c0][g], ys, meta[n], i, g
                            );
                            a[g] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), a[g]);
                        }
                    }
                    if c1 == chunked {
                        lanes_kernel!(@finish $min, a, summs[n], op, n);
                    } else {
                        acc[n] = MaybeUninit::new(a);
                    }
                }
            }
            // SAFETY: rows 0..N were all stored above: by the one-row pass (N == 1 or no
            // blocks) or by the last chunk.
            out.assume_init()
        }
    };
    // Row n's 8 lanes reduced in `hsum8`'s order (vertical adds over 8 rows at once), the
    // `m * s` chain added, stored as row n of the output at `op`.
    (@finish $min:tt, $a:expr, $summ:expr, $op:ident, $n:expr) => {{
        let a = &$a;
        let h = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6])),
            _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7])),
        );
        let r = tile_kernel!(@finish $min, h, $summ);
        // SAFETY: n < N, so the row's 8 floats lie inside the output.
        unsafe { _mm256_storeu_ps($op.add($n * TILE_ROWS), r) };
    }};
    // The scratch entry of one decoded group: the weights themselves (unsigned), `w + 128`
    // (signed, by offset: the VNNI tiers), or their i16 pairs (signed on AVX2).
    (@scratch true false) => { [__m256i; 2] };
    (@scratch $signed:tt $by_offset:tt) => { __m256i };
    (@keep false $by_offset:tt, $w:ident) => { $w };
    (@keep true false, $w:ident) => { pairs_i16($w) };
    (@keep true true, $w:ident) => { _mm256_xor_si256($w, _mm256_set1_epi8(i8::MIN)) };
    // The signed forms read every row's group offsets, resp. i16 quants: checked once per call.
    (@offsets true true, $meta:ident, $nb:ident, $n:ident) => {
        if $n > 1 {
            assert!(
                $meta.iter().all(|m| m.offsets128.len() >= 8 * $nb),
                "group offsets of every block (QuantActs with Kernels::wants_group_offsets)"
            );
        }
    };
    (@offsets true false, $meta:ident, $nb:ident, $n:ident) => {
        if $n > 1 {
            assert!(
                $meta.iter().all(|m| m.q16.len() >= QK * $nb),
                "i16 quants of every block (QuantActs with Kernels::wants_wide_quants)"
            );
        }
    };
    (@offsets $signed:tt $by_offset:tt, $meta:ident, $nb:ident, $n:ident) => {};
    (@rows_now false, $w:expr, $a:expr) => { rows_u($w, $a) };
    (@rows_now true, $w:expr, $a:expr) => { rows_s($w, $a) };
    // Group `$g` of block `$i` against one activation row (quants at `$ys`, values `$meta`).
    // SAFETY (every arm): the scratch entry was written for this chunk (see above); `$i` < nb
    // and `$g` < 8 index the row's group offsets and i16 quants (checked by `@offsets`).
    (@rows false $by_offset:tt, $w:expr, $ys:ident, $meta:expr, $i:ident, $g:ident) => {
        rows_u(unsafe { $w.assume_init() }, group($ys, $g))
    };
    (@rows true false, $w:expr, $ys:ident, $meta:expr, $i:ident, $g:ident) => {
        rows_i16(unsafe { $w.assume_init() }, unsafe { $meta.q16.as_ptr().add(QK * $i + 4 * $g) })
    };
    (@rows true true, $w:expr, $ys:ident, $meta:expr, $i:ident, $g:ident) => {{
        // sum((w + 128) * a) by `vpdpbusd` onto -128 * sum(a): exactly sum(w * a).
        let bias = _mm256_set1_epi32(unsafe { *$meta.offsets128.get_unchecked(8 * $i + $g) });
        rows_acc_u(bias, unsafe { $w.assume_init() }, group($ys, $g))
    }};
}

/// The unsigned 6-bit values (`v + 32`) of quad `q` (bytes `4q..4q + 4` of each half's
/// `ql`/`qh`) of half `h` of a Q6_K tile: elements `128h + 4q + 32k` for k = 0..4.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6k_quad(t: &TileQ6K, h: usize, q: usize) -> [__m256i; 4] {
    let (m4, m30) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
    let ql0 = _mm256_loadu_si256(t.ql[32 * (16 * h + q)..].as_ptr().cast());
    let ql1 = _mm256_loadu_si256(t.ql[32 * (16 * h + 8 + q)..].as_ptr().cast());
    let qh = _mm256_loadu_si256(t.qh[32 * (8 * h + q)..].as_ptr().cast());
    // The 2-bit high parts moved to bits 4-5 of each byte (16-bit shifts; the 0x30 mask drops
    // what crosses a byte).
    let h0 = _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30);
    let h1 = _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30);
    let h2 = _mm256_and_si256(qh, m30);
    let h3 = _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30);
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), h0),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), h1),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h2),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h3),
    ]
}

/// Eight per-row bytes as 16 i16 lanes, each row's value in both halves of its i32 lane
/// (`signed`: sign-extended, else zero-extended).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn row_pairs_i16(b: &[u8; 8], signed: bool) -> __m256i {
    let v = _mm_loadl_epi64(b.as_ptr().cast());
    let dup = _mm_shuffle_epi8(
        v,
        _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
    );
    if signed {
        _mm256_cvtepi8_epi16(dup)
    } else {
        _mm256_cvtepu8_epi16(dup)
    }
}

/// Half `h`'s 8 scale vectors of a Q6_K tile: group `8h + i`'s scale of row r in both i16
/// halves of lane r.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6k_scales(t: &TileQ6K, h: usize) -> [__m256i; 8] {
    let mut v = [_mm256_setzero_si256(); 8];
    for (i, s) in v.iter_mut().enumerate() {
        *s = row_pairs_i16(&t.sc[8 * h + i].map(|x| x as u8), true);
    }
    v
}

/// Half `h`'s share of `32 * sum(scale * bsum)` per row (the unsigned values' offset), from its
/// scale vectors: two groups per `madd` against their two activation block sums.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6k_offset(scv: &[__m256i; 8], bsums: &[i16; 16], h: usize) -> __m256i {
    let mut corr = _mm256_setzero_si256();
    for p in 0..4 {
        // Lane r: [scale of group 2p, scale of group 2p + 1] (the odd i16 from the second).
        let pair = _mm256_blend_epi16::<0b1010_1010>(scv[2 * p], scv[2 * p + 1]);
        let (lo, hi) = (
            bsums[8 * h + 2 * p] as u16 as u32,
            bsums[8 * h + 2 * p + 1] as u16 as u32,
        );
        let bs = _mm256_set1_epi32((lo | hi << 16) as i32);
        corr = _mm256_add_epi32(corr, _mm256_madd_epi16(pair, bs));
    }
    _mm256_slli_epi32(corr, 5)
}

/// A Q6_K tile's `sum(scale * sum(v * y))` per row (lane) against N activation blocks,
/// computed on `u = v + 32`: per 4-value group one `maddubs` (pairs at most 2 * 63 * 127 =
/// 16002) and a `madd` by the group's scale, added in i32; the offset off at the end.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6k_sums_madd<const N: usize>(t: &TileQ6K, yb: [&BlockQ8K; N]) -> [__m256i; N] {
    let mut sumi = [_mm256_setzero_si256(); N];
    for h in 0..2 {
        let scv = q6k_scales(t, h);
        for q in 0..8 {
            let u = q6k_quad(t, h, q);
            for (k, &uk) in u.iter().enumerate() {
                let sc = scv[q / 4 + 2 * k];
                for n in 0..N {
                    // SAFETY: 128h + 4q + 32k + 4 <= 256, inside the block's quants.
                    let a = group(
                        unsafe { yb[n].qs.as_ptr().add(128 * h + 4 * q + 32 * k) },
                        0,
                    );
                    sumi[n] = _mm256_add_epi32(sumi[n], _mm256_madd_epi16(pairs_u(uk, a), sc));
                }
            }
        }
        for n in 0..N {
            sumi[n] = _mm256_sub_epi32(sumi[n], q6k_offset(&scv, &yb[n].bsums, h));
        }
    }
    sumi
}

/// Activation block sums of groups `2p` and `2p + 1` as the two i16 halves of every i32 lane
/// (the partner of a `madd` by per-row pairs).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bsum_pair(bs: &[i16; 16], p: usize) -> __m256i {
    let (lo, hi) = (bs[2 * p] as u16 as u32, bs[2 * p + 1] as u16 as u32);
    _mm256_set1_epi32((lo | hi << 16) as i32)
}

/// The 2-bit-plane formats' (Q2_K, Q3_K) `sum(scale * sum(u * y))` per row (lane) of a tile
/// against N activation blocks: `u` the 2-bit values of the interleaved `qs` (group `8h + q`,
/// bit pair `j`: values `128h + 32j + 4q ..`), plus 4 where the bit `4h + j` of the interleaved
/// high masks `hm` is set (Q3_K). Per scale group of 16 values, 4 `maddubs` summed in i16
/// (at most 4 * 2 * 7 * 127 = 7112), then one `madd` by `scales[g]` (the row's scale in both
/// halves of its lane).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k2_sums<const N: usize>(
    qs: &[u8; 512],
    hm: Option<&[u8; 256]>,
    yb: [&BlockQ8K; N],
    scales: &[__m256i; 16],
) -> [__m256i; N] {
    let m3 = _mm256_set1_epi8(3);
    let mut sumi = [_mm256_setzero_si256(); N];
    for p in 0..8 {
        let (half, j) = (p / 4, p % 4);
        let shift = _mm_cvtsi32_si128(2 * j as i32);
        for h in 0..2 {
            let mut s16 = [_mm256_setzero_si256(); N];
            for q in 0..4 {
                let g = 8 * half + 4 * h + q;
                let v = _mm256_loadu_si256(qs[32 * g..].as_ptr().cast());
                let mut u = _mm256_and_si256(_mm256_srl_epi16(v, shift), m3);
                if let Some(hm) = hm {
                    let bit = _mm256_set1_epi8((1u8 << (4 * half + j)) as i8);
                    let hv = _mm256_loadu_si256(hm[32 * (4 * h + q)..].as_ptr().cast());
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(hv, bit), bit);
                    u = _mm256_or_si256(u, _mm256_and_si256(set, _mm256_set1_epi8(4)));
                }
                for n in 0..N {
                    // SAFETY: 128 * half + 32 * j + 32 <= 256, inside the block's quants.
                    let a = unsafe { yb[n].qs.as_ptr().add(128 * half + 32 * j) };
                    s16[n] = _mm256_add_epi16(s16[n], pairs_u(u, group(a, 4 * h + q)));
                }
            }
            let sc = scales[2 * p + h];
            for n in 0..N {
                sumi[n] = _mm256_add_epi32(sumi[n], _mm256_madd_epi16(s16[n], sc));
            }
        }
    }
    sumi
}

/// `total[n] += (d_row * d_act) * sumi[n]` in every lane: the super-block formats' one-FMA fold
/// (`kquants::fold`) of each row's exact integer sum.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fold_scaled<const N: usize>(
    total: &mut [__m256; N],
    d: &[u16; TILE_ROWS],
    yb: [&BlockQ8K; N],
    sumi: &[__m256i; N],
) {
    let dw = lanes_f16(d);
    for n in 0..N {
        let dn = _mm256_mul_ps(dw, _mm256_set1_ps(yb[n].d));
        total[n] = _mm256_fmadd_ps(dn, _mm256_cvtepi32_ps(sumi[n]), total[n]);
    }
}

/// One activation row's `kquants::fold_min` in every lane: `total + (d_row * d_act) * sumi`,
/// then `- (dmin_row * d_act) * summ` as a second FMA (Q2_K, Q4_K).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fold_min_scaled(
    total: __m256,
    dw: __m256,
    dm: __m256,
    d_act: f32,
    sumi: __m256i,
    summ: __m256i,
) -> __m256 {
    let yd = _mm256_set1_ps(d_act);
    let t1 = _mm256_fmadd_ps(_mm256_mul_ps(dw, yd), _mm256_cvtepi32_ps(sumi), total);
    _mm256_fnmadd_ps(_mm256_mul_ps(dm, yd), _mm256_cvtepi32_ps(summ), t1)
}

/// The fifth bits of sub-blocks `2C` and `2C + 1` in a Q5_K tile's interleaved `qh` bytes `h`,
/// as 0x10 per byte: bit `s` moved to bit 4 by an immediate 16-bit shift (left by at most 4 or
/// right by at most 3, so every byte's bit 4 comes from its own byte), the rest masked off.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q5k_fifth_bits<const C: usize>(h: __m256i) -> (__m256i, __m256i) {
    let (lo, hi) = match C {
        0 => (_mm256_slli_epi16::<4>(h), _mm256_slli_epi16::<3>(h)),
        1 => (_mm256_slli_epi16::<2>(h), _mm256_slli_epi16::<1>(h)),
        2 => (h, _mm256_srli_epi16::<1>(h)),
        _ => (_mm256_srli_epi16::<2>(h), _mm256_srli_epi16::<3>(h)),
    };
    let m = _mm256_set1_epi8(0x10);
    (_mm256_and_si256(lo, m), _mm256_and_si256(hi, m))
}

/// Sub-blocks `2c` (low nibbles) and `2c + 1` (high nibbles) of group `g` of a Q4_K tile, or
/// with `Q5` of a Q5_K tile (its fifth bits `qh` added; then `c == C`): the rows' values as u8.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k45_values<const C: usize, const Q5: bool>(
    qs: &[u8; 1024],
    qh: Option<&[u8; 256]>,
    c: usize,
    g: usize,
) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0f);
    let v = _mm256_loadu_si256(qs[32 * (8 * c + g)..].as_ptr().cast());
    let (lo, hi) = (
        _mm256_and_si256(v, m4),
        _mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
    );
    match qh {
        Some(qh) if Q5 => {
            let (bl, bh) = q5k_fifth_bits::<C>(_mm256_loadu_si256(qh[32 * g..].as_ptr().cast()));
            (_mm256_or_si256(lo, bl), _mm256_or_si256(hi, bh))
        }
        _ => (lo, hi),
    }
}

/// A Q4_K/Q5_K tile's exact `sum(scale * sum(v * y))` per row (lane) against N activation
/// blocks: the tier's `k45_chunk` for each pair of sub-blocks, compiled apart for Q4_K and
/// Q5_K (`Q5`, with the tile's `qh`; one shared copy made Q4_K pay Q5_K's branches, +31%
/// instructions). Q4_K loops over the pairs; Q5_K is unrolled so that its bit shifts are
/// immediates (with the shift count in a register, 2 uops each on Intel, it ran 2x slower).
/// Q4_K's 4-row kernel counts 5.8% more instructions than its own kernel before Q5_K shared
/// it (register allocation; the same wall time in interleaved runs).
macro_rules! k45_sums {
    ($f:literal) => {
        /// A Q4_K (or with `Q5` and `qh`, Q5_K) tile's exact `sum(scale * sum(v * y))` per row
        /// against N activation blocks, sub-block pair after pair (`k45_chunk`).
        #[target_feature(enable = $f)]
        #[inline]
        unsafe fn k45_sums<const N: usize, const Q5: bool>(
            qs: &[u8; 1024],
            qh: Option<&[u8; 256]>,
            sc: &[[u8; 8]; 8],
            yb: [&BlockQ8K; N],
        ) -> [__m256i; N] {
            let ys: [*const i8; N] = std::array::from_fn(|n| yb[n].qs.as_ptr());
            let mut sumi = [_mm256_setzero_si256(); N];
            let mut add = |p: [__m256i; N]| {
                for n in 0..N {
                    sumi[n] = _mm256_add_epi32(sumi[n], p[n]);
                }
            };
            if Q5 {
                add(k45_chunk::<0, N, true>(qs, qh, sc, 0, ys));
                add(k45_chunk::<1, N, true>(qs, qh, sc, 1, ys));
                add(k45_chunk::<2, N, true>(qs, qh, sc, 2, ys));
                add(k45_chunk::<3, N, true>(qs, qh, sc, 3, ys));
            } else {
                for c in 0..4 {
                    add(k45_chunk::<0, N, false>(qs, None, sc, c, ys));
                }
            }
            sumi
        }
    };
}

/// Q4_K/Q5_K's fold of a super-block into each activation row's totals: `sum(min * bsum)`
/// (one `madd` per two sub-blocks), then `kquants::fold_min`'s two FMAs per lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k45_fold<const N: usize>(
    total: &mut [__m256; N],
    (d, dmin, m): (&[u16; TILE_ROWS], &[u16; TILE_ROWS], &[[u8; 16]; 4]),
    yb: [&BlockQ8K; N],
    sumi: &[__m256i; N],
) {
    let (dw, dm) = (lanes_f16(d), lanes_f16(dmin));
    for n in 0..N {
        let bs = &yb[n].bsums;
        let mut summ = _mm256_setzero_si256();
        for (p, mp) in m.iter().enumerate() {
            let m16 = _mm256_cvtepu8_epi16(_mm_loadu_si128(mp.as_ptr().cast()));
            let lo = bs[4 * p].wrapping_add(bs[4 * p + 1]) as u16 as u32;
            let hi = bs[4 * p + 2].wrapping_add(bs[4 * p + 3]) as u16 as u32;
            let pair = _mm256_set1_epi32((lo | hi << 16) as i32);
            summ = _mm256_add_epi32(summ, _mm256_madd_epi16(m16, pair));
        }
        total[n] = fold_min_scaled(total[n], dw, dm, yb[n].d, sumi[n], summ);
    }
}

/// A super-block format's tile kernel `$name::<N>` against Q8_K rows: `$body` folds tile `$t`
/// and the N rows' blocks `$yb` into the 8-lane totals `$total`, super-block after super-block.
macro_rules! ktile_kernel {
    ($f:literal, $(#[$doc:meta])* $name:ident, $tile:ty, |$t:ident, $yb:ident, $total:ident| $body:block) => {
        $(#[$doc])*
        #[target_feature(enable = $f)]
        pub unsafe fn $name<const N: usize>(
            tiles: &[$tile],
            y: &[&[BlockQ8K]; N],
            _meta: &[ActMeta<'_>; N],
        ) -> [[f32; TILE_ROWS]; N] {
            let nb = tiles.len();
            assert!(y.iter().all(|a| a.len() >= nb));
            let mut $total = [_mm256_setzero_ps(); N];
            for i in 0..nb {
                // SAFETY (the unchecked indexing): i < nb, and every activation row has at least
                // nb blocks (asserted above).
                let $t = unsafe { tiles.get_unchecked(i) };
                let $yb: [&BlockQ8K; N] = std::array::from_fn(|n| unsafe { y[n].get_unchecked(i) });
                $body
            }
            // Left uninitialised (zeroing N rows per call showed as memset in prefill): every row
            // is stored below.
            let mut out = MaybeUninit::<[[f32; TILE_ROWS]; N]>::uninit();
            let op = out.as_mut_ptr().cast::<f32>();
            for n in 0..N {
                _mm256_storeu_ps(op.add(n * TILE_ROWS), $total[n]);
            }
            // SAFETY: rows 0..N were all stored above.
            out.assume_init()
        }
    };
}

/// Every format's tile kernels for one tier: `$f` its target features; the module around the
/// invocation provides the integer primitives `rows_u` and `nibble_rows`. With
/// `signed_by_offset` (the VNNI tiers), the lane kernels' signed formats (Q8_0, Q5_0) against
/// several activation rows multiply `w + 128` (unsigned) with `vpdpbusd` accumulating onto
/// `-128 * sum(a)` of the group (`ActMeta::offsets128`): one operation per group fewer than the
/// sign trick, the same integers (`maddubs` would saturate, so not on AVX2).
macro_rules! tile_kernels {
    ($f:literal, signed_by_offset = $by_offset:tt) => {
        /// i32 row sums of signed weight bytes `w` times activation group `a` (sign trick:
        /// |w| times a * sign(w)).
        #[target_feature(enable = $f)]
        #[inline]
        unsafe fn rows_s(w: __m256i, a: __m256i) -> __m256i {
            rows_u(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
        }

        /// `acc` plus [`rows_s`] (accumulated in place by `vpdpbusd` on the VNNI tiers).
        #[target_feature(enable = $f)]
        #[inline]
        unsafe fn rows_acc_s(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
            rows_acc_u(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
        }

        ktile_kernel!(
            $f,
            /// Q4_K tiles against N Q8_K rows: `kquants::dot_q4k_q8k`'s arithmetic for 8 rows
            /// at once. Per super-block and row the exact `sum(scale * sum(v * y))`
            /// (`k45_sums`) and `sum(min * bsum)`, then its two FMAs per lane (`k45_fold`).
            tiles_q4k,
            TileQ4K,
            |t, yb, total| {
                let sumi = k45_sums::<N, false>(&t.qs, None, &t.sc, yb);
                k45_fold(&mut total, (&t.d, &t.dmin, &t.m), yb, &sumi);
            }
        );

        ktile_kernel!(
            $f,
            /// Q5_K tiles against N Q8_K rows: `kquants::dot_q5k_q8k`'s arithmetic for 8 rows
            /// at once, as Q4_K's with each value's fifth bit added (`k45_values`).
            tiles_q5k,
            TileQ5K,
            |t, yb, total| {
                let sumi = k45_sums::<N, true>(&t.qs, Some(&t.qh), &t.sc, yb);
                k45_fold(&mut total, (&t.d, &t.dmin, &t.m), yb, &sumi);
            }
        );

        ktile_kernel!(
            $f,
            /// Q2_K tiles against N Q8_K rows: `kquants::dot_q2k_q8k`'s arithmetic for 8 rows
            /// at once. Per scale group (16 values of a row) the 2-bit values' products summed
            /// in i16 (`maddubs`; at most 4 * 2 * 3 * 127) and multiplied by the group's scale
            /// (`madd`); the minimums' `sum(min * bsum)` two groups per `madd`; per super-block
            /// two FMAs per lane.
            tiles_q2k,
            TileQ2K,
            |t, yb, total| {
                // Plain loops, not closures (which do not inherit the target features).
                let mut scales = [_mm256_setzero_si256(); 16];
                for (g, v) in scales.iter_mut().enumerate() {
                    *v = _mm256_and_si256(row_pairs_i16(&t.sm[g], false), _mm256_set1_epi16(0x0f));
                }
                let sumi = k2_sums(&t.qs, None, yb, &scales);
                let (dw, dm) = (lanes_f16(&t.d), lanes_f16(&t.dmin));
                // Lane r of mins[p]: [min of group 2p, min of group 2p + 1], once for all rows.
                let mut mins = [_mm256_setzero_si256(); 8];
                for (p, v) in mins.iter_mut().enumerate() {
                    *v = _mm256_srli_epi16::<4>(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(
                        _mm_loadl_epi64(t.sm[2 * p].as_ptr().cast()),
                        _mm_loadl_epi64(t.sm[2 * p + 1].as_ptr().cast()),
                    )));
                }
                for n in 0..N {
                    let bs = &yb[n].bsums;
                    let mut summ = _mm256_setzero_si256();
                    for (p, &m) in mins.iter().enumerate() {
                        summ = _mm256_add_epi32(summ, _mm256_madd_epi16(m, bsum_pair(bs, p)));
                    }
                    total[n] = fold_min_scaled(total[n], dw, dm, yb[n].d, sumi[n], summ);
                }
            }
        );

        ktile_kernel!(
            $f,
            /// Q3_K tiles against N Q8_K rows: `kquants::dot_q3k_q8k`'s arithmetic for 8 rows
            /// at once, on the unsigned values `v + 4` (the two low bits, plus 4 where the high
            /// bit is set; i16 group sums at most 4 * 2 * 7 * 127) with `4 * sum(scale * bsum)`
            /// taken off exactly; per super-block one FMA per lane.
            tiles_q3k,
            TileQ3K,
            |t, yb, total| {
                let mut scales = [_mm256_setzero_si256(); 16];
                for (g, v) in scales.iter_mut().enumerate() {
                    *v = row_pairs_i16(&t.sc[g].map(|x| x as u8), true);
                }
                let mut sumi = k2_sums(&t.qs, Some(&t.hm), yb, &scales);
                for n in 0..N {
                    let mut corr = _mm256_setzero_si256();
                    for p in 0..8 {
                        // Lane r: [scale of group 2p, scale of group 2p + 1].
                        let pair =
                            _mm256_blend_epi16::<0b1010_1010>(scales[2 * p], scales[2 * p + 1]);
                        corr = _mm256_add_epi32(corr, _mm256_madd_epi16(pair, bsum_pair(&yb[n].bsums, p)));
                    }
                    sumi[n] = _mm256_sub_epi32(sumi[n], _mm256_slli_epi32::<2>(corr));
                }
                fold_scaled(&mut total, &t.d, yb, &sumi);
            }
        );

        ktile_kernel!(
            $f,
            /// IQ4_XS tiles against N Q8_K rows: `kquants::dot_iq4xs_q8k`'s arithmetic for 8
            /// rows at once: per sub-block the exact sum times the row's scale (`iq4xs_sums`),
            /// per super-block one FMA per lane.
            tiles_iq4xs,
            TileIq4Xs,
            |t, yb, total| {
                let sumi = iq4xs_sums(t, yb);
                fold_scaled(&mut total, &t.d, yb, &sumi);
            }
        );

        ktile_kernel!(
            $f,
            /// Q6_K tiles against N Q8_K rows: `kquants::dot_q6k_q8k`'s arithmetic for 8 rows
            /// at once. Values are multiplied unsigned (`v + 32`, 0..=63) and each group's `32 *
            /// scale * bsum` comes off exactly (`q6k_sums`); per super-block one FMA per lane.
            tiles_q6k,
            TileQ6K,
            |t, yb, total| {
                let sumi = q6k_sums(t, yb);
                fold_scaled(&mut total, &t.d, yb, &sumi);
            }
        );

        tile_kernel!(
            $f,
            tiles_q4_0,
            TileQ4_0,
            BlockQ8_0,
            corr = 8,
            min = false,
            |t, ys, isum| { isum.copy_from_slice(&nibble_rows(&t.qs, ys)) }
        );
        tile_kernel!(
            $f,
            tiles_iq4nl,
            TileIq4Nl,
            BlockQ8_0,
            corr = 0,
            min = false,
            |t, ys, isum| {
                let table = iq4nl_table();
                for gp in 0..4 {
                    let (lo, hi) = nibbles(&t.qs, gp);
                    let (wl, wh) = (
                        _mm256_shuffle_epi8(table, lo),
                        _mm256_shuffle_epi8(table, hi),
                    );
                    for n in 0..N {
                        let s = rows_acc_s(isum[n], wl, group(ys[n], gp));
                        isum[n] = rows_acc_s(s, wh, group(ys[n], gp + 4));
                    }
                }
            }
        );

        lanes_kernel!(
            $f,
            tiles_q4_1,
            TileQ4_1,
            BlockQ8_1,
            min = true,
            signed = false,
            by_offset = $by_offset,
            |t, gp| { nibbles(&t.qs, gp) }
        );
        // Q5_0 as ggml decodes it: signed values, the nibble minus 16 where the fifth bit is clear.
        lanes_kernel!(
            $f,
            tiles_q5_0,
            TileQ5_0,
            BlockQ8_0,
            min = false,
            signed = true,
            by_offset = $by_offset,
            |t, gp| {
                let (lo, hi) = nibbles(&t.qs, gp);
                (signed_q5(lo, t.qh[gp]), signed_q5(hi, t.qh[gp + 4]))
            }
        );
        lanes_kernel!(
            $f,
            tiles_q5_1,
            TileQ5_1,
            BlockQ8_1,
            min = true,
            signed = false,
            by_offset = $by_offset,
            |t, gp| {
                let (lo, hi) = nibbles(&t.qs, gp);
                (
                    _mm256_or_si256(lo, fifth_bits(t.qh[gp])),
                    _mm256_or_si256(hi, fifth_bits(t.qh[gp + 4])),
                )
            }
        );
        lanes_kernel!(
            $f,
            tiles_q8_0,
            TileQ8_0,
            BlockQ8_0,
            min = false,
            signed = true,
            by_offset = $by_offset,
            |t, gp| {
                (
                    _mm256_loadu_si256(t.qs[32 * gp..32 * gp + 32].as_ptr().cast()),
                    _mm256_loadu_si256(t.qs[32 * gp + 128..32 * gp + 160].as_ptr().cast()),
                )
            }
        );
    };
}

/// The AVX2+FMA tier.
pub mod avx2 {
    use super::*;

    /// i32 row sums of unsigned weight bytes `w` times activation group `a`: `maddubs` (exact
    /// i16 pairs, see the module doc) then `madd` with ones.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn rows_u(w: __m256i, a: __m256i) -> __m256i {
        widen(pairs_u(w, a))
    }

    /// `acc` plus [`rows_u`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn rows_acc_u(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_add_epi32(acc, rows_u(w, a))
    }

    /// The integer part of the 4-bit unsigned formats: all 8 groups summed in i16, widened once.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn nibble_rows<const N: usize>(qs: &[u8; 128], ys: [*const i8; N]) -> [__m256i; N] {
        let mut s16 = [_mm256_setzero_si256(); N];
        for gp in 0..4 {
            let (lo, hi) = nibbles(qs, gp);
            for n in 0..N {
                let p = _mm256_add_epi16(
                    pairs_u(lo, group(ys[n], gp)),
                    pairs_u(hi, group(ys[n], gp + 4)),
                );
                s16[n] = _mm256_add_epi16(s16[n], p);
            }
        }
        s16.map(|v| widen(v))
    }

    /// Sub-blocks `2c` and `2c + 1` of a Q4_K/Q5_K tile (Q5_K: `c == C`) against N activation
    /// blocks, added to each row's (lane's) `sumi`: per sub-block the products summed in i16 (`maddubs` pairs,
    /// at most 2 * 31 * 127 = 7874; Q4_K's values (<= 15) all 8 groups before widening, 8 *
    /// 3810 = 30480, Q5_K's 4 at a time, 31496), then `madd` by the row's scale (in both i16
    /// halves of its lane).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn k45_chunk<const C: usize, const N: usize, const Q5: bool>(
        qs: &[u8; 1024],
        qh: Option<&[u8; 256]>,
        sc: &[[u8; 8]; 8],
        c: usize,
        ys: [*const i8; N],
    ) -> [__m256i; N] {
        let run = if Q5 { 4 } else { 8 };
        let mut out = [_mm256_setzero_si256(); N];
        for half in 0..8 / run {
            let g0 = half * run;
            let (mut lo16, mut hi16) = ([_mm256_setzero_si256(); N], [_mm256_setzero_si256(); N]);
            for g in g0..g0 + run {
                let (lo, hi) = k45_values::<C, Q5>(qs, qh, c, g);
                for n in 0..N {
                    // SAFETY: 64c + 32 + 4g + 4 <= 256, inside the activation block's quants.
                    let (al, ah) = unsafe { (ys[n].add(64 * c), ys[n].add(64 * c + 32)) };
                    lo16[n] = _mm256_add_epi16(lo16[n], pairs_u(lo, group(al, g)));
                    hi16[n] = _mm256_add_epi16(hi16[n], pairs_u(hi, group(ah, g)));
                }
            }
            // The scales after the products (loaded before, they cost spills: +5% instructions).
            let (sl, sh) = (
                row_pairs_i16(&sc[2 * c], false),
                row_pairs_i16(&sc[2 * c + 1], false),
            );
            for n in 0..N {
                let p = _mm256_add_epi32(
                    _mm256_madd_epi16(lo16[n], sl),
                    _mm256_madd_epi16(hi16[n], sh),
                );
                out[n] = _mm256_add_epi32(out[n], p);
            }
        }
        out
    }

    k45_sums!("avx2,fma,f16c");

    /// [`q6k_sums_madd`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn q6k_sums<const N: usize>(t: &TileQ6K, yb: [&BlockQ8K; N]) -> [__m256i; N] {
        q6k_sums_madd(t, yb)
    }

    /// An IQ4_XS tile's `sum(scale * sum(v * y))` per row against N activation blocks: codes
    /// looked up (`vpshufb`) into signed bytes and multiplied with the sign trick (`rows_s`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn iq4xs_sums<const N: usize>(t: &TileIq4Xs, yb: [&BlockQ8K; N]) -> [__m256i; N] {
        let (table, m4) = (iq4nl_table(), _mm256_set1_epi8(0x0f));
        let mut sumi = [_mm256_setzero_si256(); N];
        for ib in 0..8 {
            let mut s = [_mm256_setzero_si256(); N];
            for q in 0..4 {
                let v = _mm256_loadu_si256(t.qs[32 * (4 * ib + q)..].as_ptr().cast());
                let wl = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m4));
                let wh = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
                for n in 0..N {
                    // SAFETY: 32 * ib + 32 <= 256, inside the activation block's quants.
                    let a = unsafe { yb[n].qs.as_ptr().add(32 * ib) };
                    s[n] = rows_acc_s(rows_acc_s(s[n], wl, group(a, q)), wh, group(a, q + 4));
                }
            }
            let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(t.sc[ib].as_ptr().cast()));
            for n in 0..N {
                sumi[n] = _mm256_add_epi32(sumi[n], _mm256_mullo_epi32(s[n], sc));
            }
        }
        sumi
    }

    tile_kernels!("avx2,fma,f16c", signed_by_offset = false);
}

/// The 256-bit `vpdpbusd` tiers' module `$tier` (features `$f`, the intrinsic `$dp`): the
/// same kernels for AVX-512 VNNI (EVEX, with AVX-512 VL) and for AVX-VNNI (VEX: Alder Lake and
/// later client CPUs, which lack AVX-512).
macro_rules! vnni_tier {
    ($(#[$doc:meta])* $tier:ident, $f:literal, $dp:ident) => {
        $(#[$doc])*
        pub mod $tier {
            use super::*;

            /// i32 row sums of unsigned weight bytes `w` times activation group `a`: one `vpdpbusd`.
            #[target_feature(enable = $f)]
            #[inline]
            unsafe fn rows_u(w: __m256i, a: __m256i) -> __m256i {
                $dp(_mm256_setzero_si256(), w, a)
            }

            /// `acc` plus [`rows_u`]: `vpdpbusd` accumulating into it.
            #[target_feature(enable = $f)]
            #[inline]
            unsafe fn rows_acc_u(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
                $dp(acc, w, a)
            }

            /// The integer part of the 4-bit unsigned formats: `vpdpbusd` accumulating all 8 groups.
            #[target_feature(enable = $f)]
            #[inline]
            unsafe fn nibble_rows<const N: usize>(qs: &[u8; 128], ys: [*const i8; N]) -> [__m256i; N] {
                let mut s = [_mm256_setzero_si256(); N];
                for gp in 0..4 {
                    let (lo, hi) = nibbles(qs, gp);
                    for n in 0..N {
                        s[n] = $dp(s[n], lo, group(ys[n], gp));
                        s[n] = $dp(s[n], hi, group(ys[n], gp + 4));
                    }
                }
                s
            }

            /// Sub-blocks `2c` and `2c + 1` of a Q4_K/Q5_K tile (Q5_K: `c == C`) against N activation
            /// blocks, per row: each sub-block's products accumulated by `vpdpbusd` in i32, times the
            /// row's scale.
            #[target_feature(enable = $f)]
            #[inline]
            unsafe fn k45_chunk<const C: usize, const N: usize, const Q5: bool>(
                qs: &[u8; 1024],
                qh: Option<&[u8; 256]>,
                sc: &[[u8; 8]; 8],
                c: usize,
                ys: [*const i8; N],
            ) -> [__m256i; N] {
                let (mut lo, mut hi) = ([_mm256_setzero_si256(); N], [_mm256_setzero_si256(); N]);
                for g in 0..8 {
                    let (wl, wh) = k45_values::<C, Q5>(qs, qh, c, g);
                    for n in 0..N {
                        // SAFETY: 64c + 32 + 4g + 4 <= 256, inside the activation block's quants.
                        let (al, ah) = unsafe { (ys[n].add(64 * c), ys[n].add(64 * c + 32)) };
                        lo[n] = $dp(lo[n], wl, group(al, g));
                        hi[n] = $dp(hi[n], wh, group(ah, g));
                    }
                }
                // The rows' scales as i32 lanes.
                let sl = _mm256_cvtepu8_epi32(_mm_loadl_epi64(sc[2 * c].as_ptr().cast()));
                let sh = _mm256_cvtepu8_epi32(_mm_loadl_epi64(sc[2 * c + 1].as_ptr().cast()));
                let mut out = [_mm256_setzero_si256(); N];
                for n in 0..N {
                    out[n] = _mm256_add_epi32(_mm256_mullo_epi32(lo[n], sl), _mm256_mullo_epi32(hi[n], sh));
                }
                out
            }

            k45_sums!($f);

            /// A Q6_K tile's `sum(scale * sum(v * y))` per row against N activation blocks, on `u =
            /// v + 32`: the 4 quads of a scale group accumulated by `vpdpbusd`, then one multiply by
            /// the scale; the offset off at the end.
            #[target_feature(enable = $f)]
            #[inline]
            unsafe fn q6k_sums<const N: usize>(t: &TileQ6K, yb: [&BlockQ8K; N]) -> [__m256i; N] {
                if N == 1 {
                    // One row (decode): per-group `madd` by the scale beats accumulate-then-multiply
                    // (`rill bench-engine --kernels avx2|avx512` on the Q6_K file).
                    return q6k_sums_madd(t, yb);
                }
                let mut sumi = [_mm256_setzero_si256(); N];
                for h in 0..2 {
                    let scv = q6k_scales(t, h);
                    for j in 0..2 {
                        let mut acc = [[_mm256_setzero_si256(); 4]; N];
                        for q in 4 * j..4 * j + 4 {
                            let u = q6k_quad(t, h, q);
                            for n in 0..N {
                                for (k, &uk) in u.iter().enumerate() {
                                    // SAFETY: 128h + 4q + 32k + 4 <= 256, inside the block's quants.
                                    let a = group(
                                        unsafe { yb[n].qs.as_ptr().add(128 * h + 4 * q + 32 * k) },
                                        0,
                                    );
                                    acc[n][k] = $dp(acc[n][k], uk, a);
                                }
                            }
                        }
                        // Group j + 2k's scale as i32 lanes: the low i16 half, sign-extended.
                        let mut scs = [_mm256_setzero_si256(); 4];
                        for (k, sc) in scs.iter_mut().enumerate() {
                            *sc = _mm256_srai_epi32(_mm256_slli_epi32(scv[j + 2 * k], 16), 16);
                        }
                        for (s, a) in sumi.iter_mut().zip(&acc) {
                            for (&ak, &sc) in a.iter().zip(&scs) {
                                *s = _mm256_add_epi32(*s, _mm256_mullo_epi32(ak, sc));
                            }
                        }
                    }
                    for n in 0..N {
                        sumi[n] = _mm256_sub_epi32(sumi[n], q6k_offset(&scv, &yb[n].bsums, h));
                    }
                }
                sumi
            }

            /// An IQ4_XS tile's `sum(scale * sum(v * y))` per row against N activation blocks: codes
            /// looked up as `v + 128` (unsigned, 1..=241) and accumulated by `vpdpbusd`, each
            /// sub-block's `128 * sum(y)` (two activation block sums) taken off exactly before its
            /// scale multiplies it.
            #[target_feature(enable = $f)]
            #[inline]
            unsafe fn iq4xs_sums<const N: usize>(t: &TileIq4Xs, yb: [&BlockQ8K; N]) -> [__m256i; N] {
                let table = _mm256_add_epi8(iq4nl_table(), _mm256_set1_epi8(-128));
                let m4 = _mm256_set1_epi8(0x0f);
                let mut sumi = [_mm256_setzero_si256(); N];
                for ib in 0..8 {
                    let mut s = [_mm256_setzero_si256(); N];
                    for n in 0..N {
                        let bs = &yb[n].bsums;
                        s[n] = _mm256_set1_epi32(-128 * (bs[2 * ib] as i32 + bs[2 * ib + 1] as i32));
                    }
                    for q in 0..4 {
                        let v = _mm256_loadu_si256(t.qs[32 * (4 * ib + q)..].as_ptr().cast());
                        let wl = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m4));
                        let wh = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
                        for n in 0..N {
                            // SAFETY: 32 * ib + 32 <= 256, inside the activation block's quants.
                            let a = unsafe { yb[n].qs.as_ptr().add(32 * ib) };
                            s[n] = $dp(s[n], wl, group(a, q));
                            s[n] = $dp(s[n], wh, group(a, q + 4));
                        }
                    }
                    let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(t.sc[ib].as_ptr().cast()));
                    for n in 0..N {
                        sumi[n] = _mm256_add_epi32(sumi[n], _mm256_mullo_epi32(s[n], sc));
                    }
                }
                sumi
            }

            tile_kernels!($f, signed_by_offset = true);
        }
    };
}

vnni_tier!(
    /// The AVX-512 VNNI tier (256-bit `vpdpbusd`, AVX-512 VL).
    vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl",
    _mm256_dpbusd_epi32
);
vnni_tier!(
    /// The AVX-VNNI tier (VEX `vpdpbusd` on AVX2 CPUs without AVX-512).
    avxvnni,
    "avx2,fma,f16c,avxvnni",
    _mm256_dpbusd_avx_epi32
);
