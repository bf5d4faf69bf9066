//! `#[repr(C)]` quantized block layouts, byte-compatible with ggml's, plus the activation blocks
//! (8-bit) that each weight type is paired with in dot products.

use half::f16;

/// Elements per block of the 32-element formats (Q4_0 ... Q8_1, IQ4_NL).
pub const QK: usize = 32;
/// Elements per super-block of the K-quants and IQ4_XS.
pub const QK_K: usize = 256;

/// IEEE half-precision bits to f32 (exact).
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// f32 to IEEE half-precision bits, rounding to nearest even.
#[inline(always)]
pub fn f32_to_f16(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

/// bfloat16 bits to f32 (exact).
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

/// Q4_0: 32 4-bit values `q`, each standing for `(q - 8) * d`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// The scale, f16 bits.
    pub d: u16,
    /// Element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// Q4_1: 32 4-bit values `q`, each standing for `q * d + m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// The scale, f16 bits.
    pub d: u16,
    /// The offset (the block's minimum), f16 bits.
    pub m: u16,
    /// The values, nibbles as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// Q5_0: 32 5-bit values `q`, each standing for `(q - 16) * d`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5_0 {
    /// The scale, f16 bits.
    pub d: u16,
    /// The fifth bits: bit `j` of the little-endian u32 is element `j`'s.
    pub qh: [u8; 4],
    /// The low four bits, nibbles as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// Q5_1: 32 5-bit values `q`, each standing for `q * d + m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5_1 {
    /// The scale, f16 bits.
    pub d: u16,
    /// The offset (the block's minimum), f16 bits.
    pub m: u16,
    /// The fifth bits, as in [`BlockQ5_0`].
    pub qh: [u8; 4],
    /// The low four bits, nibbles as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// Q8_0: 32 signed 8-bit values `q`, each standing for `q * d` (a weight format, and the
/// activations of the Q4_0, Q5_0, Q8_0 and IQ4_NL weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// The scale, f16 bits.
    pub d: u16,
    /// The values, in element order.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Q8_1: like Q8_0 plus `s = d * sum(qs)`, which pairs with the offset (`m`) of Q4_1/Q5_1.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_1 {
    /// The scale, f16 bits.
    pub d: u16,
    /// `d * sum(qs)`, f16 bits.
    pub s: u16,
    /// The values, in element order.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// Q4_K: 256 4-bit values in 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit minimum:
/// value `q` of sub-block `j` stands for `d * scale_j * q - dmin * min_j`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4K {
    /// The scale of the sub-block scales, f16 bits.
    pub d: u16,
    /// The scale of the sub-block minimums, f16 bits.
    pub dmin: u16,
    /// The 8 scales and 8 minimums, 6 bits each, packed (`kquants::q4k_scale_min`).
    pub scales: [u8; 12],
    /// Per 64 values, 32 bytes: the first 32 values in the low nibbles, the next 32 in the
    /// high ones.
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

/// Q6_K: 256 6-bit values `q` in 16 groups of 16, each standing for `d * scale_g * (q - 32)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ6K {
    /// The low four bits of each value (ggml's order, `kquants::q6k_values`).
    pub ql: [u8; QK_K / 2],
    /// The high two bits of each value.
    pub qh: [u8; QK_K / 4],
    /// One signed scale per group of 16 values.
    pub scales: [i8; QK_K / 16],
    /// The super-block scale, f16 bits.
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
    /// The scale, f16 bits.
    pub d: u16,
    /// The codes, nibbles as in [`BlockQ4_0`].
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
    /// Per group: its scale in the low nibble, its minimum in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// The values, four per byte (ggml's order, `kquants::q2k_values`).
    pub qs: [u8; QK_K / 4],
    /// The scale of the group scales, f16 bits.
    pub d: u16,
    /// The scale of the group minimums, f16 bits.
    pub dmin: u16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

/// Q3_K: 2 low bits in `qs`, the third in `hmask`, 16 groups with 6-bit signed scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ3K {
    /// The third bit of each value (ggml's order, `kquants::q3k_values`).
    pub hmask: [u8; QK_K / 8],
    /// The low two bits of each value, four per byte.
    pub qs: [u8; QK_K / 4],
    /// The 16 scales, 6 bits each, packed (`kquants::q3k_scales`).
    pub scales: [u8; 12],
    /// The super-block scale, f16 bits.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5K {
    /// The scale of the sub-block scales, f16 bits.
    pub d: u16,
    /// The scale of the sub-block minimums, f16 bits.
    pub dmin: u16,
    /// The 8 scales and 8 minimums, packed as in [`BlockQ4K`].
    pub scales: [u8; 12],
    /// The fifth bit of each value (`kquants::q5k_values`).
    pub qh: [u8; QK_K / 8],
    /// The low four bits, nibbles as in [`BlockQ4K`].
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl Default for BlockQ5K {
    /// A zero block (scales 0): the padding rows of a tile.
    fn default() -> Self {
        Self {
            d: 0,
            dmin: 0,
            scales: [0; 12],
            qh: [0; QK_K / 8],
            qs: [0; QK_K / 2],
        }
    }
}

/// IQ4_XS: IQ4_NL codes in 8 sub-blocks of 32 with 6-bit scales (offset by 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockIq4Xs {
    /// The super-block scale, f16 bits.
    pub d: u16,
    /// The high two bits of the 8 sub-block scales, two bits each.
    pub scales_h: u16,
    /// The low four bits of the 8 sub-block scales, two per byte.
    pub scales_l: [u8; QK_K / 64],
    /// The codes: per sub-block of 32, 16 bytes, nibbles as in [`BlockQ4_0`].
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
    /// The scale.
    pub d: f32,
    /// The values, in element order.
    pub qs: [i8; QK_K],
    /// The sum of each 16 consecutive values.
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
    /// Each row's scale, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// The rows' nibble bytes, interleaved.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileQ4_0>() == TILE_ROWS * 18);

/// 8 rows' IQ4_NL blocks, laid out as [`TileQ4_0`] (the nibbles index [`IQ4NL_VALUES`]).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileIq4Nl {
    /// Each row's scale, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// The rows' code bytes, interleaved.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileIq4Nl>() == TILE_ROWS * 18);

/// 8 rows' Q4_1 blocks: scales, offsets, nibbles as in [`TileQ4_0`].
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ4_1 {
    /// Each row's scale, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// Each row's offset, f16 bits.
    pub m: [u16; TILE_ROWS],
    /// The rows' nibble bytes, interleaved.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileQ4_1>() == TILE_ROWS * 20);

/// 8 rows' Q5_0 blocks: nibbles as in [`TileQ4_0`]; `qh[g]` bit `4 * j + k` is the fifth bit
/// of row `j`'s element `4 * g + k` (g in 0..8), matching the byte order of group `g`'s vector.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ5_0 {
    /// Each row's scale, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// The fifth bits, per group of 4 values.
    pub qh: [u32; 8],
    /// The rows' nibble bytes, interleaved.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileQ5_0>() == TILE_ROWS * 22);

/// 8 rows' Q5_1 blocks: as [`TileQ5_0`] plus the offsets.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ5_1 {
    /// Each row's scale, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// Each row's offset, f16 bits.
    pub m: [u16; TILE_ROWS],
    /// The fifth bits, as in [`TileQ5_0`].
    pub qh: [u32; 8],
    /// The rows' nibble bytes, interleaved.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<TileQ5_1>() == TILE_ROWS * 24);

/// 8 rows' Q8_0 blocks: `qs[32 * g + 4 * j + k]` is row `j`'s value `4 * g + k` (g in 0..8).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ8_0 {
    /// Each row's scale, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// The rows' values, interleaved.
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
    /// Each row's scale of its sub-block scales, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// Each row's scale of its sub-block minimums, f16 bits.
    pub dmin: [u16; TILE_ROWS],
    /// `sc[j][r]` = row r's scale of sub-block j.
    pub sc: [[u8; 8]; 8],
    /// `m[p][2r + h]` = row r's minimum of sub-block `2p + h`.
    pub m: [[u8; 16]; 4],
    /// The rows' nibble bytes, interleaved.
    pub qs: [u8; 1024],
}
const _: () = assert!(std::mem::size_of::<TileQ4K>() == 1184);

/// 8 rows' Q5_K super-blocks (`repack`): [`TileQ4K`]'s layout plus the fifth bits, whose bytes
/// are interleaved the same way (group `g` holds `qh` bytes `4g ..` of each row; bit `s` of a
/// row's byte `l` belongs to value `32s + l`): 32 bytes more than the 8 blocks' 1408.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ5K {
    /// Each row's scale of its sub-block scales, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// Each row's scale of its sub-block minimums, f16 bits.
    pub dmin: [u16; TILE_ROWS],
    /// `sc[j][r]` = row r's scale of sub-block j.
    pub sc: [[u8; 8]; 8],
    /// `m[p][2r + h]` = row r's minimum of sub-block `2p + h`.
    pub m: [[u8; 16]; 4],
    /// The rows' fifth-bit bytes, interleaved.
    pub qh: [u8; 256],
    /// The rows' nibble bytes, interleaved.
    pub qs: [u8; 1024],
}
const _: () = assert!(std::mem::size_of::<TileQ5K>() == 1440);

/// 8 rows' Q6_K super-blocks (`repack`): `ql` and `qh` interleaved 4 bytes per row per 32-byte
/// group (as [`TileQ4_0`]), the 16 scales per group of 16 values side by side for the 8 rows
/// (the same 1680 bytes as the 8 blocks).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ6K {
    /// Each row's super-block scale, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// `sc[g][r]` = row r's scale of group g (16 values).
    pub sc: [[i8; 8]; 16],
    /// The rows' low-bit bytes, interleaved.
    pub ql: [u8; 1024],
    /// The rows' high-bit bytes, interleaved.
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
    /// Each row's super-block scale, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// `sc[ib][r]` = row r's scale of sub-block ib (-32..=31).
    pub sc: [[i8; 8]; 8],
    /// The rows' code bytes, interleaved.
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
    /// Each row's scale of its group scales, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// Each row's scale of its group minimums, f16 bits.
    pub dmin: [u16; TILE_ROWS],
    /// `sm[g][r]` = row r's scale/minimum byte of group g.
    pub sm: [[u8; 8]; 16],
    /// The rows' 2-bit value bytes, interleaved.
    pub qs: [u8; 512],
}
const _: () = assert!(std::mem::size_of::<TileQ2K>() == TILE_ROWS * 84);

/// 8 rows' Q3_K super-blocks (`repack`): `qs` as in [`TileQ2K`], the high-bit masks
/// interleaved the same way (group `q` holds mask bytes `4q ..` of each row), the 16 scales
/// unpacked and signed (`sc[g][r]`, -32..=31): 32 bytes more than the 8 blocks' 880.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TileQ3K {
    /// Each row's super-block scale, f16 bits.
    pub d: [u16; TILE_ROWS],
    /// `sc[g][r]` = row r's scale of group g (-32..=31).
    pub sc: [[i8; 8]; 16],
    /// The rows' high-bit mask bytes, interleaved.
    pub hm: [u8; 256],
    /// The rows' low-bit bytes, interleaved.
    pub qs: [u8; 512],
}
const _: () = assert!(std::mem::size_of::<TileQ3K>() == 912);

unsafe impl PodBlock for TileQ2K {}
unsafe impl PodBlock for TileQ3K {}
unsafe impl PodBlock for TileQ4K {}
unsafe impl PodBlock for TileQ5K {}
unsafe impl PodBlock for TileIq4Xs {}
unsafe impl PodBlock for TileQ6K {}
unsafe impl PodBlock for TileQ4_0 {}
unsafe impl PodBlock for TileIq4Nl {}
unsafe impl PodBlock for TileQ4_1 {}
unsafe impl PodBlock for TileQ5_0 {}
unsafe impl PodBlock for TileQ5_1 {}
unsafe impl PodBlock for TileQ8_0 {}
