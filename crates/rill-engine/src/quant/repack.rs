//! The load-time transform of the 32-element block formats and the K-quants (Q2_K, Q3_K,
//! Q4_K, Q5_K, Q6_K) and IQ4_XS from GGUF's row-major blocks into
//! interleaved tiles (`blocks::Tile*`): the blocks of 8 consecutive rows for one column block
//! side by side, arranged so that one 32-byte load yields 4 values of each of the 8 rows. The
//! SIMD kernels then keep one output row per f32 lane, sum each block's products exactly in
//! integers and need one conversion and one FMA per block for 8 rows (no horizontal sums).
//!
//! The tiles of one group of 8 rows are stored one column block after the other, so a
//! single-stream decode still reads each weight byte once, sequentially. A matrix whose row
//! count is not a multiple of 8 gets zero rows (scale 0) in its last tile.

use super::blocks::*;
use super::kquants::{iq4xs_scale, q3k_pack_scales, q3k_scales, q4k_pack_scales, q4k_scale_min};

/// A tile type and the row block it interleaves.
pub trait Tiled: PodBlock {
    /// The GGUF block of one row.
    type Row: PodBlock + Default;
    /// Elements per row block.
    const ELEMS: usize;
    /// Interleaves one column block of 8 rows.
    fn pack(rows: &[Self::Row; TILE_ROWS]) -> Self;
    /// Row `j`'s block back (the exact inverse of `pack`).
    fn unpack(&self, j: usize) -> Self::Row;
}

/// `qs[32 * g + 4 * j + k] = row j's qs[4 * g + k]` for `G` groups of 4 bytes.
fn interleave<const G: usize, const B: usize, T: Copy + Default>(
    rows: [&[T]; TILE_ROWS],
) -> [T; B] {
    let mut out = [T::default(); B];
    for g in 0..G {
        for (j, row) in rows.iter().enumerate() {
            out[32 * g + 4 * j..32 * g + 4 * j + 4].copy_from_slice(&row[4 * g..4 * g + 4]);
        }
    }
    out
}

/// Row `j`'s bytes out of an [`interleave`]d array.
fn deinterleave<const G: usize, const B: usize, T: Copy + Default>(qs: &[T], j: usize) -> [T; B] {
    let mut out = [T::default(); B];
    for g in 0..G {
        out[4 * g..4 * g + 4].copy_from_slice(&qs[32 * g + 4 * j..32 * g + 4 * j + 4]);
    }
    out
}

/// The fifth bits of 8 rows regrouped per 4-element group: bit `4j + k` of `out[g]` is bit
/// `4g + k` of row `j`'s `qh`.
fn interleave_qh(qh: [[u8; 4]; TILE_ROWS]) -> [u32; 8] {
    let mut out = [0u32; 8];
    for (g, o) in out.iter_mut().enumerate() {
        for (j, h) in qh.iter().enumerate() {
            let bits = (u32::from_le_bytes(*h) >> (4 * g)) & 0xf;
            *o |= bits << (4 * j);
        }
    }
    out
}

fn deinterleave_qh(qh: &[u32; 8], j: usize) -> [u8; 4] {
    let mut h = 0u32;
    for (g, &m) in qh.iter().enumerate() {
        h |= ((m >> (4 * j)) & 0xf) << (4 * g);
    }
    h.to_le_bytes()
}

/// `Tiled` for a 4-/5-bit format: scales, optional offsets `m` and fifth bits `qh`, nibbles.
macro_rules! tiled_nibbles {
    ($tile:ident, $row:ident $(, m = $m:ident)? $(, qh = $qh:ident)?) => {
        impl Tiled for $tile {
            type Row = $row;
            const ELEMS: usize = QK;
            fn pack(rows: &[$row; TILE_ROWS]) -> Self {
                Self {
                    d: rows.each_ref().map(|r| r.d),
                    $($m: rows.each_ref().map(|r| r.$m),)?
                    $($qh: interleave_qh(rows.each_ref().map(|r| r.$qh)),)?
                    qs: interleave::<4, 128, u8>(rows.each_ref().map(|r| &r.qs[..])),
                }
            }
            fn unpack(&self, j: usize) -> $row {
                $row {
                    d: self.d[j],
                    $($m: self.$m[j],)?
                    $($qh: deinterleave_qh(&self.$qh, j),)?
                    qs: deinterleave::<4, 16, u8>(&self.qs, j),
                }
            }
        }
    };
}
tiled_nibbles!(TileQ4_0, BlockQ4_0);
tiled_nibbles!(TileIq4Nl, BlockIq4Nl);
tiled_nibbles!(TileQ4_1, BlockQ4_1, m = m);
tiled_nibbles!(TileQ5_0, BlockQ5_0, qh = qh);
tiled_nibbles!(TileQ5_1, BlockQ5_1, m = m, qh = qh);

impl Tiled for TileQ8_0 {
    type Row = BlockQ8_0;
    const ELEMS: usize = QK;
    fn pack(rows: &[BlockQ8_0; TILE_ROWS]) -> Self {
        Self {
            d: rows.each_ref().map(|r| r.d),
            qs: interleave::<8, 256, i8>(rows.each_ref().map(|r| &r.qs[..])),
        }
    }
    fn unpack(&self, j: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: self.d[j],
            qs: deinterleave::<8, 32, i8>(&self.qs, j),
        }
    }
}

/// The unpacked 6-bit scales and minimums of 8 Q4_K/Q5_K rows, as [`TileQ4K`] and [`TileQ5K`]
/// store them: `sc[j][r]` and `m[p][2r + h]` (sub-block `2p + h`).
type KScales = ([[u8; 8]; 8], [[u8; 16]; 4]);

fn k_scales(packed: [&[u8; 12]; TILE_ROWS]) -> KScales {
    let sm: [[(u8, u8); 8]; TILE_ROWS] =
        packed.map(|q| std::array::from_fn(|j| q4k_scale_min(j, q)));
    (
        std::array::from_fn(|j| std::array::from_fn(|r| sm[r][j].0)),
        std::array::from_fn(|p| std::array::from_fn(|k| sm[k / 2][2 * p + k % 2].1)),
    )
}

/// Row `r`'s 12 packed scale bytes back out of [`k_scales`]' arrays.
fn k_scales_row((sc, m): (&[[u8; 8]; 8], &[[u8; 16]; 4]), r: usize) -> [u8; 12] {
    let s: [u8; 8] = std::array::from_fn(|j| sc[j][r]);
    let mm: [u8; 8] = std::array::from_fn(|j| m[j / 2][2 * r + j % 2]);
    q4k_pack_scales(&s, &mm)
}

impl Tiled for TileQ4K {
    type Row = BlockQ4K;
    const ELEMS: usize = QK_K;
    fn pack(rows: &[BlockQ4K; TILE_ROWS]) -> Self {
        let (sc, m) = k_scales(rows.each_ref().map(|r| &r.scales));
        Self {
            d: rows.each_ref().map(|r| r.d),
            dmin: rows.each_ref().map(|r| r.dmin),
            sc,
            m,
            qs: interleave::<32, 1024, u8>(rows.each_ref().map(|r| &r.qs[..])),
        }
    }
    fn unpack(&self, r: usize) -> BlockQ4K {
        BlockQ4K {
            d: self.d[r],
            dmin: self.dmin[r],
            scales: k_scales_row((&self.sc, &self.m), r),
            qs: deinterleave::<32, 128, u8>(&self.qs, r),
        }
    }
}

impl Tiled for TileQ5K {
    type Row = BlockQ5K;
    const ELEMS: usize = QK_K;
    fn pack(rows: &[BlockQ5K; TILE_ROWS]) -> Self {
        let (sc, m) = k_scales(rows.each_ref().map(|r| &r.scales));
        Self {
            d: rows.each_ref().map(|r| r.d),
            dmin: rows.each_ref().map(|r| r.dmin),
            sc,
            m,
            qh: interleave::<8, 256, u8>(rows.each_ref().map(|r| &r.qh[..])),
            qs: interleave::<32, 1024, u8>(rows.each_ref().map(|r| &r.qs[..])),
        }
    }
    fn unpack(&self, r: usize) -> BlockQ5K {
        BlockQ5K {
            d: self.d[r],
            dmin: self.dmin[r],
            scales: k_scales_row((&self.sc, &self.m), r),
            qh: deinterleave::<8, 32, u8>(&self.qh, r),
            qs: deinterleave::<32, 128, u8>(&self.qs, r),
        }
    }
}

impl Tiled for TileQ2K {
    type Row = BlockQ2K;
    const ELEMS: usize = QK_K;
    fn pack(rows: &[BlockQ2K; TILE_ROWS]) -> Self {
        Self {
            d: rows.each_ref().map(|r| r.d),
            dmin: rows.each_ref().map(|r| r.dmin),
            sm: std::array::from_fn(|g| std::array::from_fn(|r| rows[r].scales[g])),
            qs: interleave::<16, 512, u8>(rows.each_ref().map(|r| &r.qs[..])),
        }
    }
    fn unpack(&self, r: usize) -> BlockQ2K {
        BlockQ2K {
            scales: std::array::from_fn(|g| self.sm[g][r]),
            qs: deinterleave::<16, 64, u8>(&self.qs, r),
            d: self.d[r],
            dmin: self.dmin[r],
        }
    }
}

impl Tiled for TileQ3K {
    type Row = BlockQ3K;
    const ELEMS: usize = QK_K;
    fn pack(rows: &[BlockQ3K; TILE_ROWS]) -> Self {
        let sc = rows.each_ref().map(|r| q3k_scales(&r.scales));
        Self {
            d: rows.each_ref().map(|r| r.d),
            sc: std::array::from_fn(|g| std::array::from_fn(|r| sc[r][g])),
            hm: interleave::<8, 256, u8>(rows.each_ref().map(|r| &r.hmask[..])),
            qs: interleave::<16, 512, u8>(rows.each_ref().map(|r| &r.qs[..])),
        }
    }
    fn unpack(&self, r: usize) -> BlockQ3K {
        BlockQ3K {
            hmask: deinterleave::<8, 32, u8>(&self.hm, r),
            qs: deinterleave::<16, 64, u8>(&self.qs, r),
            scales: q3k_pack_scales(&std::array::from_fn(|g| self.sc[g][r])),
            d: self.d[r],
        }
    }
}

impl Tiled for TileIq4Xs {
    type Row = BlockIq4Xs;
    const ELEMS: usize = QK_K;
    fn pack(rows: &[BlockIq4Xs; TILE_ROWS]) -> Self {
        Self {
            d: rows.each_ref().map(|r| r.d),
            sc: std::array::from_fn(|ib| std::array::from_fn(|r| iq4xs_scale(&rows[r], ib) as i8)),
            qs: interleave::<32, 1024, u8>(rows.each_ref().map(|r| &r.qs[..])),
        }
    }
    fn unpack(&self, r: usize) -> BlockIq4Xs {
        let (mut scales_h, mut scales_l) = (0u16, [0u8; QK_K / 64]);
        for ib in 0..8 {
            let ls = (self.sc[ib][r] as i32 + 32) as u16;
            scales_l[ib / 2] |= ((ls & 0x0f) as u8) << (4 * (ib % 2));
            scales_h |= (ls >> 4 & 3) << (2 * ib);
        }
        BlockIq4Xs {
            d: self.d[r],
            scales_h,
            scales_l,
            qs: deinterleave::<32, 128, u8>(&self.qs, r),
        }
    }
}

impl Tiled for TileQ6K {
    type Row = BlockQ6K;
    const ELEMS: usize = QK_K;
    fn pack(rows: &[BlockQ6K; TILE_ROWS]) -> Self {
        Self {
            d: rows.each_ref().map(|r| r.d),
            sc: std::array::from_fn(|g| std::array::from_fn(|r| rows[r].scales[g])),
            ql: interleave::<32, 1024, u8>(rows.each_ref().map(|r| &r.ql[..])),
            qh: interleave::<16, 512, u8>(rows.each_ref().map(|r| &r.qh[..])),
        }
    }
    fn unpack(&self, r: usize) -> BlockQ6K {
        BlockQ6K {
            ql: deinterleave::<32, 128, u8>(&self.ql, r),
            qh: deinterleave::<16, 64, u8>(&self.qh, r),
            scales: std::array::from_fn(|g| self.sc[g][r]),
            d: self.d[r],
        }
    }
}

/// A matrix's tiles: `tile_rows` groups of 8 rows, each `blocks` tiles long, in u64 storage so
/// every tile type is aligned.
pub struct Tiles {
    words: Vec<u64>,
    tile_bytes: usize,
    /// Groups of 8 rows (the last one zero-padded).
    pub tile_rows: usize,
    /// Column blocks per row.
    pub blocks: usize,
}

impl Tiles {
    /// Packs `rows` rows of `blocks` blocks each; `row(r)` is row `r`'s blocks. Panics if a
    /// row does not hold exactly `blocks` blocks.
    pub fn pack<'a, T: Tiled>(
        rows: usize,
        blocks: usize,
        row: impl Fn(usize) -> &'a [T::Row],
    ) -> Self {
        let tile_rows = rows.div_ceil(TILE_ROWS);
        let tile_bytes = std::mem::size_of::<T>();
        let mut words = vec![0u64; (tile_rows * blocks * tile_bytes).div_ceil(8)];
        let zero = T::Row::default();
        {
            let tiles = as_tiles_mut::<T>(&mut words, tile_rows * blocks);
            for rt in 0..tile_rows {
                // The rows of this tile row; None past the last row (zero padding).
                let src: [Option<&[T::Row]>; TILE_ROWS] = std::array::from_fn(|j| {
                    let r = rt * TILE_ROWS + j;
                    (r < rows).then(|| {
                        let b = row(r);
                        assert_eq!(b.len(), blocks, "row {r} has {} blocks", b.len());
                        b
                    })
                });
                for (i, tile) in tiles[rt * blocks..(rt + 1) * blocks].iter_mut().enumerate() {
                    let blocks8 = src.map(|s| s.map_or(zero, |s| s[i]));
                    *tile = T::pack(&blocks8);
                }
            }
        }
        Self {
            words,
            tile_bytes,
            tile_rows,
            blocks,
        }
    }

    /// The tiles of rows `8 * rt .. 8 * rt + 8`, one per column block.
    pub fn tile_row<T: Tiled>(&self, rt: usize) -> &[T] {
        assert_eq!(
            std::mem::size_of::<T>(),
            self.tile_bytes,
            "tile type of the matrix"
        );
        let all = as_tiles::<T>(&self.words, self.tile_rows * self.blocks);
        &all[rt * self.blocks..(rt + 1) * self.blocks]
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

fn as_tiles_mut<T: Tiled>(words: &mut [u64], n: usize) -> &mut [T] {
    assert!(n * std::mem::size_of::<T>() <= words.len() * 8 && std::mem::align_of::<T>() <= 8);
    // SAFETY: the range lies inside `words` (checked), u64 storage is aligned for T (align <= 8,
    // checked), and T is plain data valid for any bit pattern (PodBlock contract).
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<T>(), n) }
}

fn as_tiles<T: Tiled>(words: &[u64], n: usize) -> &[T] {
    assert!(n * std::mem::size_of::<T>() <= words.len() * 8 && std::mem::align_of::<T>() <= 8);
    // SAFETY: as in as_tiles_mut, read-only.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<T>(), n) }
}
