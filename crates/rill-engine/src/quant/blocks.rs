//! `#[repr(C)]` quantized block layouts, byte-compatible with ggml's, plus the activation blocks
//! (8-bit) that each weight type is paired with in dot products.

use half::f16;

pub const QK: usize = 32;
pub const QK_K: usize = 256;

#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

#[inline(always)]
pub fn f32_to_f16(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// ggml's f32 -> bf16: round to nearest even, NaNs kept quiet.
#[inline(always)]
pub fn f32_to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Q8_1: like Q8_0 plus `s = d * sum(qs)`, which pairs with the offset (`m`) of Q4_1/Q5_1.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

impl Default for BlockQ4K {
    /// A zero block (scales 0): the padding rows of a tile.
    fn default() -> Self {
        Self {
            d: 0,
            dmin: 0,
            scales: [0; 12],
            qs: [0; QK_K / 2],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: u16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

impl Default for BlockQ6K {
    /// A zero block (scale 0): the padding rows of a tile.
    fn default() -> Self {
        Self {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: 0,
        }
    }
}

/// IQ4_NL: 32 non-linear 4-bit codes (indices into [`IQ4NL_VALUES`]) and one f16 scale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockIq4Nl {
    pub d: u16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Nl>() == 18);

/// The IQ4_NL / IQ4_XS code book (ggml's `kvalues_iq4nl`).
pub const IQ4NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Q2_K: 16 groups of 16 2-bit values, each group with a 4-bit scale and 4-bit min.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: u16,
    pub dmin: u16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

/// Q3_K: 2 low bits in `qs`, the third in `hmask`, 16 groups with 6-bit signed scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: u16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

impl Default for BlockQ3K {
    /// A zero block (d 0): the padding rows of a tile.
    fn default() -> Self {
        Self {
            hmask: [0; QK_K / 8],
            qs: [0; QK_K / 4],
            scales: [0; 12],
            d: 0,
        }
    }
}

impl Default for BlockQ2K {
    /// A zero block (d and dmin 0): the padding rows of a tile.
    fn default() -> Self {
        Self {
            scales: [0; QK_K / 16],
            qs: [0; QK_K / 4],
            d: 0,
            dmin: 0,
        }
    }
}

/// Q5_K: Q4_K's layout plus one high bit per value in `qh`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

/// IQ4_XS: IQ4_NL codes in 8 sub-blocks of 32 with 6-bit scales (offset by 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockIq4Xs {
    pub d: u16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Xs>() == 136);

impl Default for BlockIq4Xs {
    /// A zero block (d 0): the padding rows of a tile.
    fn default() -> Self {
        Self {
            d: 0,
            scales_h: 0,
            scales_l: [0; QK_K / 64],
            qs: [0; QK_K / 2],
        }
    }
}

/// The activation block for K-quants: f32 scale and per-16 sums.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl Default for BlockQ8_0 {
    fn default() -> Self {
        Self { d: 0, qs: [0; QK] }
    }
}
impl Default for BlockQ8_1 {
    fn default() -> Self {
        Self {
            d: 0,
            s: 0,
            qs: [0; QK],
        }
    }
}
impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// Marker for plain-old-data blocks that may be viewed from raw file bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only integer fields and have no padding.
pub unsafe trait PodBlock: Copy + 'static {}
unsafe impl PodBlock for BlockQ4_0 {}
unsafe impl PodBlock for BlockQ4_1 {}
unsafe impl PodBlock for BlockQ5_0 {}
unsafe impl PodBlock for BlockQ5_1 {}
unsafe impl PodBlock for BlockQ8_0 {}
unsafe impl PodBlock for BlockQ4K {}
unsafe impl PodBlock for BlockQ6K {}
unsafe impl PodBlock for BlockQ2K {}
unsafe impl PodBlock for BlockQ3K {}
unsafe impl PodBlock for BlockQ5K {}
unsafe impl PodBlock for BlockIq4Nl {}
unsafe impl PodBlock for BlockIq4Xs {}
unsafe impl PodBlock for u16 {}
unsafe impl PodBlock for f32 {}

/// Views bytes as a slice of blocks. Returns None when the length or alignment does not fit.
pub fn cast_blocks<T: PodBlock>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return None;
    }
    // SAFETY: length and alignment checked above; T is POD (PodBlock contract), so every bit
    // pattern is a valid value.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

// ---- Interleaved tiles (see `super::repack`) ----

/// Weight rows per interleaved tile: one output row per f32 lane of an AVX2 vector.
pub const TILE_ROWS: usize = 8;

/// 8 rows' Q4_0 blocks of one column block. `qs[32 * g + 4 * j + k]` is row `j`'s byte
/// `4 * g + k` (g in 0..4): one 32-byte load gives group `g` (low nibbles, elements 4g..4g+4)
/// and group `g + 4` (high nibbles) of all 8 rows.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ4_0 {
    pub d: [u16; TILE_ROWS],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileQ4_0>() == TILE_ROWS * 18);

/// 8 rows' IQ4_NL blocks, laid out as [`TileQ4_0`] (the nibbles index [`IQ4NL_VALUES`]).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileIq4Nl {
    pub d: [u16; TILE_ROWS],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileIq4Nl>() == TILE_ROWS * 18);

/// 8 rows' Q4_1 blocks: scales, offsets, nibbles as in [`TileQ4_0`].
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ4_1 {
    pub d: [u16; TILE_ROWS],
    pub m: [u16; TILE_ROWS],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileQ4_1>() == TILE_ROWS * 20);

/// 8 rows' Q5_0 blocks: nibbles as in [`TileQ4_0`]; `qh[g]` bit `4 * j + k` is the fifth bit
/// of row `j`'s element `4 * g + k` (g in 0..8), matching the byte order of group `g`'s vector.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ5_0 {
    pub d: [u16; TILE_ROWS],
    pub qh: [u32; 8],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileQ5_0>() == TILE_ROWS * 22);

/// 8 rows' Q5_1 blocks: as [`TileQ5_0`] plus the offsets.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ5_1 {
    pub d: [u16; TILE_ROWS],
    pub m: [u16; TILE_ROWS],
    pub qh: [u32; 8],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileQ5_1>() == TILE_ROWS * 24);

/// 8 rows' Q8_0 blocks: `qs[32 * g + 4 * j + k]` is row `j`'s value `4 * g + k` (g in 0..8).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ8_0 {
    pub d: [u16; TILE_ROWS],
    pub qs: [i8; 256],
}
const _: () = assert!(std::mem::size_of::<TileQ8_0>() == TILE_ROWS * 34);

/// 8 rows' Q4_K super-blocks (`repack`): the quant bytes interleaved as in [`TileQ4_0`] (4
/// bytes of each row per 32-byte group, 32 groups: group `8c + g` holds values `64c + 4g ..`
/// in its low nibbles and `64c + 32 + 4g ..` in its high ones), the 6-bit scales and minimums
/// unpacked (32 bytes more than the 8 blocks' 1152).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ4K {
    pub d: [u16; TILE_ROWS],
    pub dmin: [u16; TILE_ROWS],
    /// `sc[j][r]` = row r's scale of sub-block j.
    pub sc: [[u8; 8]; 8],
    /// `m[p][2r + h]` = row r's minimum of sub-block `2p + h`.
    pub m: [[u8; 16]; 4],
    pub qs: [u8; 1024],
}
const _: () = assert!(std::mem::size_of::<TileQ4K>() == 1184);

/// 8 rows' Q6_K super-blocks (`repack`): `ql` and `qh` interleaved 4 bytes per row per 32-byte
/// group (as [`TileQ4_0`]), the 16 scales per group of 16 values side by side for the 8 rows
/// (the same 1680 bytes as the 8 blocks).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ6K {
    pub d: [u16; TILE_ROWS],
    /// `sc[g][r]` = row r's scale of group g (16 values).
    pub sc: [[i8; 8]; 16],
    pub ql: [u8; 1024],
    pub qh: [u8; 512],
}
const _: () = assert!(std::mem::size_of::<TileQ6K>() == TILE_ROWS * 210);

/// 8 rows' IQ4_XS super-blocks (`repack`): the code bytes interleaved as in [`TileQ4K`]
/// (group `4 * ib + q` holds values `32 * ib + 4q ..` of each row in its low nibbles and `32 *
/// ib + 16 + 4q ..` in its high ones), the 6-bit scales unpacked and signed (16 bytes more than
/// the 8 blocks' 1088).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileIq4Xs {
    pub d: [u16; TILE_ROWS],
    /// `sc[ib][r]` = row r's scale of sub-block ib (-32..=31).
    pub sc: [[i8; 8]; 8],
    pub qs: [u8; 1024],
}
const _: () = assert!(std::mem::size_of::<TileIq4Xs>() == 1104);

/// 8 rows' Q2_K super-blocks (`repack`): the quant bytes interleaved 4 bytes per row per
/// 32-byte group (group `8n + q` holds, at bit pair `j`, values `128n + 32j + 4q ..` of each
/// row), the 16 scale/min bytes side by side for the 8 rows (`sm[g][r]` = row r's byte of
/// group g): the same 672 bytes as the 8 blocks.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ2K {
    pub d: [u16; TILE_ROWS],
    pub dmin: [u16; TILE_ROWS],
    pub sm: [[u8; 8]; 16],
    pub qs: [u8; 512],
}
const _: () = assert!(std::mem::size_of::<TileQ2K>() == TILE_ROWS * 84);

/// 8 rows' Q3_K super-blocks (`repack`): `qs` as in [`TileQ2K`], the high-bit masks
/// interleaved the same way (group `q` holds mask bytes `4q ..` of each row), the 16 scales
/// unpacked and signed (`sc[g][r]`, -32..=31): 32 bytes more than the 8 blocks' 880.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ3K {
    pub d: [u16; TILE_ROWS],
    pub sc: [[i8; 8]; 16],
    pub hm: [u8; 256],
    pub qs: [u8; 512],
}
const _: () = assert!(std::mem::size_of::<TileQ3K>() == 912);

unsafe impl PodBlock for TileQ2K {}
unsafe impl PodBlock for TileQ3K {}
unsafe impl PodBlock for TileQ4K {}
unsafe impl PodBlock for TileIq4Xs {}
unsafe impl PodBlock for TileQ6K {}
unsafe impl PodBlock for TileQ4_0 {}
unsafe impl PodBlock for TileIq4Nl {}
unsafe impl PodBlock for TileQ4_1 {}
unsafe impl PodBlock for TileQ5_0 {}
unsafe impl PodBlock for TileQ5_1 {}
unsafe impl PodBlock for TileQ8_0 {}
