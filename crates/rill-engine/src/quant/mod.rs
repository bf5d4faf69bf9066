//! Quantized tensors and the products the model runs on them.
//!
//! A weight matrix ([`QMatrix`]) of a 32-element block format, a K-quant (Q2_K..Q6_K) or IQ4_XS
//! is repacked at load into interleaved tiles of 8 rows ([`repack`]); the float formats stay in
//! the mmap in their GGUF encoding and multiply through a register-tiled GEMM (`x86_gemm`). Activations are quantized once per step into the 8-bit block type
//! ggml pairs with that weight type ([`ActFormat`]); then each tile row (or weight row) is
//! multiplied with the activation rows of the batch, a few at a time, while it is hot in L1:
//! each weight byte is read from memory once per step, whatever the batch.

pub mod blocks;
pub mod dispatch;
pub mod kquants;
pub mod repack;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
pub mod x86_gemm;
#[cfg(target_arch = "x86_64")]
pub mod x86_tiles;
#[cfg(target_arch = "x86_64")]
pub mod x86_tiles512;

use std::sync::Arc;

use blocks::*;
pub use dispatch::{KernelTier, Kernels};
use repack::Tiles;

use crate::error::{EngineError, Result};
use crate::gguf::GgmlType;
use crate::threadpool::ThreadPool;

/// The activation encoding a weight type's dot product consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActFormat {
    /// [`BlockQ8_0`] (Q4_0, Q5_0, Q8_0 and IQ4_NL weights).
    Q8_0,
    /// [`BlockQ8_1`] (Q4_1 and Q5_1 weights).
    Q8_1,
    /// [`BlockQ8K`] (the K-quants and IQ4_XS).
    Q8K,
    /// f16 values (F16 weights).
    F16,
    /// bf16 values (BF16 weights).
    Bf16,
    /// f32 values (F32 weights).
    F32,
}

impl ActFormat {
    /// The encoding `t`'s products take; None for a type without kernels.
    pub fn for_weights(t: GgmlType) -> Option<Self> {
        Some(match t {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Iq4Nl => Self::Q8_0,
            GgmlType::Q4_1 | GgmlType::Q5_1 => Self::Q8_1,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Iq4Xs => Self::Q8K,
            GgmlType::F16 => Self::F16,
            GgmlType::Bf16 => Self::Bf16,
            GgmlType::F32 => Self::F32,
            GgmlType::Other(_) => return None,
        })
    }

    /// Bytes for one row of `n` activations.
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            Self::Q8_0 => n / QK * std::mem::size_of::<BlockQ8_0>(),
            Self::Q8_1 => n / QK * std::mem::size_of::<BlockQ8_1>(),
            Self::Q8K => n / QK_K * std::mem::size_of::<BlockQ8K>(),
            Self::F16 | Self::Bf16 => n * 2,
            Self::F32 => n * 4,
        }
    }

    fn block_elems(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q8_1 => QK,
            Self::Q8K => QK_K,
            Self::F16 | Self::Bf16 | Self::F32 => 1,
        }
    }
}

/// A batch of activation rows quantized for one [`ActFormat`]. Backed by u64 words so every
/// block type is aligned.
pub struct QuantActs {
    /// The encoding of every row.
    pub format: ActFormat,
    /// Rows quantized by the last [`Self::quantize`].
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    row_bytes: usize,
    buf: Vec<u64>,
    /// Per row, per block: the block scale `d` (and for Q8_1 the sum term `s`) already
    /// widened to f32, so batched kernels do not convert them once per weight row.
    scales_d: Vec<f32>,
    scales_s: Vec<f32>,
    /// Per row, per block: the sum of the 32 quants (Q8_0 only), with which the tile kernels
    /// take Q4_0's and Q5_0's offsets off exactly.
    sums: Vec<i32>,
    /// Per row, per block, per group of 4 quants: -16 and -128 times the group's sum (Q8_0
    /// only, on tiers with the AVX-512 pair kernels; see [`ActMeta::offsets16`]).
    offsets16: Vec<i32>,
    offsets128: Vec<i32>,
    /// Q8_0's quants sign-extended to i16, contiguous rows of `cols` (on tiers whose kernels
    /// multiply them with `pmaddwd`, see [`ActMeta::q16`]).
    q16: Vec<i16>,
    /// The float formats' rows as f32 (each value rounded to the format first), contiguous:
    /// what their GEMMs read, so no activation is widened once per weight row.
    wide: AlignedF32,
}

/// A growable f32 buffer whose contents start on a 64-byte boundary, so 512-bit loads of rows
/// whose width is a multiple of 16 never straddle two cache lines (measured: a misaligned
/// activation block costs the float GEMMs a third of their speed). Safe: an over-allocated
/// `Vec` and the offset of its first aligned element.
#[derive(Default)]
struct AlignedF32 {
    buf: Vec<f32>,
    off: usize,
    len: usize,
}

impl AlignedF32 {
    /// Floats per 64 bytes: the most an aligned start can lie past the allocation's.
    const SLACK: usize = 16;

    /// Sets the length to `len` (contents unspecified but initialized).
    fn resize(&mut self, len: usize) {
        if self.buf.len() < len + Self::SLACK {
            self.buf = vec![0.0; len + Self::SLACK];
        }
        let misalign = (self.buf.as_ptr() as usize % 64) / std::mem::size_of::<f32>();
        self.off = (Self::SLACK - misalign) % Self::SLACK;
        self.len = len;
    }

    fn as_slice(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// One activation row's per-block values that the tile kernels read besides the quants.
#[derive(Clone, Copy)]
pub struct ActMeta<'a> {
    /// Block scales `d` as f32.
    pub d: &'a [f32],
    /// Q8_1's `s = d * sum(qs)` as f32 (empty otherwise).
    pub s: &'a [f32],
    /// Q8_0's exact `sum(qs)` (empty otherwise).
    pub sum: &'a [i32],
    /// Q8_0's `-16 * sum` of each group of 4 quants, 8 per block: the accumulator start with
    /// which `x86_tiles512` multiplies Q5_0 in its unsigned form `w + 16` exactly (empty for
    /// other formats and tiers without that kernel).
    pub offsets16: &'a [i32],
    /// The same with -128 (Q8_0 weights multiplied as `w + 128`).
    pub offsets128: &'a [i32],
    /// Q8_0's quants as i16 (`cols` values; empty for other formats and tiers, and when only
    /// one row was quantized): the AVX2 tier multiplies the signed weight formats (Q8_0,
    /// Q5_0) against several activation rows with `pmaddwd` on i16 pairs, broadcast straight
    /// from here.
    pub q16: &'a [i16],
}

impl QuantActs {
    /// An empty buffer for `format` (sized by [`Self::quantize`]).
    pub fn new(format: ActFormat) -> Self {
        Self {
            format,
            rows: 0,
            cols: 0,
            row_bytes: 0,
            buf: Vec::new(),
            scales_d: Vec::new(),
            scales_s: Vec::new(),
            sums: Vec::new(),
            offsets16: Vec::new(),
            offsets128: Vec::new(),
            q16: Vec::new(),
            wide: AlignedF32::default(),
        }
    }

    /// Quantizes `rows` rows of `cols` floats from `x` (row-major), reusing the buffer.
    pub fn quantize(&mut self, k: &Kernels, x: &[f32], rows: usize, cols: usize) {
        self.quantize_on(None, k, x, rows, cols)
    }

    /// [`Self::quantize`], the rows encoded on `pool`'s threads in chunks of
    /// [`act_row_chunk`] rows: in prefill and batched decode the encoding is otherwise serial
    /// work the other threads wait through.
    pub fn quantize_on(
        &mut self,
        pool: Option<&ThreadPool>,
        k: &Kernels,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) {
        assert_eq!(x.len(), rows * cols, "activation rows of `cols` floats");
        assert_eq!(cols % self.format.block_elems(), 0, "whole blocks per row");
        // Round rows up to whole u64 words so every row starts aligned.
        self.row_bytes = self.format.row_bytes(cols).div_ceil(8) * 8;
        self.rows = rows;
        self.cols = cols;
        let words = rows * self.row_bytes / 8;
        if self.buf.len() < words {
            self.buf.resize(words, 0);
        }
        let float = matches!(
            self.format,
            ActFormat::F16 | ActFormat::Bf16 | ActFormat::F32
        );
        if float {
            self.wide.resize(rows * cols);
        }
        let (format, row_words, used) =
            (self.format, self.row_bytes / 8, self.format.row_bytes(cols));
        let chunk = act_row_chunk(rows, pool.map_or(1, ThreadPool::n_threads));
        rows_on(
            pool,
            &mut self.buf[..words],
            row_words,
            chunk,
            &|r0, part| {
                for (i, row) in part.chunks_exact_mut(row_words).enumerate() {
                    let r = r0 + i;
                    encode_row(
                        format,
                        k,
                        &x[r * cols..(r + 1) * cols],
                        &mut bytes_of(row)[..used],
                    );
                }
            },
        );
        if float {
            // The float formats' GEMMs read f32: the encoded values widened back, once.
            let buf = &self.buf;
            rows_on(pool, self.wide.as_mut_slice(), cols, chunk, &|r0, part| {
                for (i, out) in part.chunks_exact_mut(cols).enumerate() {
                    let row = &buf[(r0 + i) * row_words..(r0 + i + 1) * row_words];
                    widen_row(format, &words_bytes(row)[..used], out);
                }
            });
        }
        if self.format == ActFormat::Q8_0 && k.wants_wide_quants() && rows > 1 {
            // The AVX2 signed lane kernels' i16 activations: the quants sign-extended, once
            // (not for one row, which goes through the one-row kernels: they do not read them).
            // Resized, not cleared first: only a grown tail is zeroed before being overwritten.
            self.q16.resize(rows * cols, 0);
            let buf = &self.buf;
            rows_on(pool, &mut self.q16, cols, chunk, &|r0, part| {
                for (i, out) in part.chunks_exact_mut(cols).enumerate() {
                    let row = &buf[(r0 + i) * row_words..(r0 + i + 1) * row_words];
                    let blocks: &[BlockQ8_0] = cast_ref(&words_bytes(row)[..used]);
                    for (o, b) in out.chunks_exact_mut(QK).zip(blocks) {
                        for (o, &q) in o.iter_mut().zip(&b.qs) {
                            *o = q as i16;
                        }
                    }
                }
            });
        } else {
            self.q16.clear();
        }
        self.widen_scales(k.wants_group_offsets());
    }

    /// Fills the per-block values of [`ActMeta`] from the quantized rows (the group offsets
    /// only when `offsets` is set: a tier whose kernels read them,
    /// `Kernels::wants_group_offsets`).
    fn widen_scales(&mut self, offsets: bool) {
        let nb = self.cols / QK;
        let (mut sd, mut ss, mut sums) = (
            std::mem::take(&mut self.scales_d),
            std::mem::take(&mut self.scales_s),
            std::mem::take(&mut self.sums),
        );
        let (mut offs, mut offs128) = (
            std::mem::take(&mut self.offsets16),
            std::mem::take(&mut self.offsets128),
        );
        sd.clear();
        ss.clear();
        sums.clear();
        offs.clear();
        offs128.clear();
        for r in 0..self.rows {
            match self.format {
                ActFormat::Q8_0 => {
                    let blocks: &[BlockQ8_0] = cast_ref(self.row(r));
                    sd.extend(blocks.iter().map(|b| f16_to_f32(b.d)));
                    sums.extend(
                        blocks
                            .iter()
                            .map(|b| b.qs.iter().map(|&q| q as i32).sum::<i32>()),
                    );
                    if offsets {
                        let groups = blocks.iter().flat_map(|b| {
                            b.qs.chunks_exact(4)
                                .map(|g| g.iter().map(|&q| q as i32).sum::<i32>())
                        });
                        for g in groups {
                            offs.push(-16 * g);
                            offs128.push(-128 * g);
                        }
                    }
                }
                ActFormat::Q8_1 => {
                    let blocks: &[BlockQ8_1] = cast_ref(self.row(r));
                    sd.extend(blocks.iter().map(|b| f16_to_f32(b.d)));
                    ss.extend(blocks.iter().map(|b| f16_to_f32(b.s)));
                }
                _ => break,
            }
        }
        debug_assert!(sd.is_empty() || sd.len() == self.rows * nb);
        self.scales_d = sd;
        self.scales_s = ss;
        self.sums = sums;
        self.offsets16 = offs;
        self.offsets128 = offs128;
    }

    /// Row `r`'s per-block scales and sums (Q8_0/Q8_1 only; empty slices for the values a
    /// format or tier does not compute). Panics if `r` is not one of the quantized rows.
    pub fn row_meta(&self, r: usize) -> ActMeta<'_> {
        assert!(r < self.rows, "row {r} of {} quantized rows", self.rows);
        let nb = self.cols / QK;
        // Each list is empty (not computed) or holds `per_block` values per block of every row.
        fn rows_of<T>(v: &[T], per_block: usize, r: usize, nb: usize) -> &[T] {
            if v.is_empty() {
                return &[];
            }
            v.get(per_block * r * nb..per_block * (r + 1) * nb)
                .expect("per-block values of every quantized row (QuantActs::widen_scales)")
        }
        ActMeta {
            d: rows_of(&self.scales_d, 1, r, nb),
            s: rows_of(&self.scales_s, 1, r, nb),
            sum: rows_of(&self.sums, 1, r, nb),
            offsets16: rows_of(&self.offsets16, 8, r, nb),
            offsets128: rows_of(&self.offsets128, 8, r, nb),
            q16: rows_of(&self.q16, QK, r, nb),
        }
    }

    /// Activation rows `toks` of a float format as f32, contiguous (each value exactly the
    /// rounded one the single-row dots widen).
    pub fn wide_rows(&self, toks: std::ops::Range<usize>) -> &[f32] {
        assert!(
            matches!(
                self.format,
                ActFormat::F16 | ActFormat::Bf16 | ActFormat::F32
            ),
            "f32 rows exist for the float formats only"
        );
        &self.wide.as_slice()[toks.start * self.cols..toks.end * self.cols]
    }

    /// Row `r`'s encoded bytes (whole blocks; f16/bf16/f32 values).
    pub fn row(&self, r: usize) -> &[u8] {
        let used = self.format.row_bytes(self.cols);
        let start = r * self.row_bytes;
        &words_bytes(&self.buf)[start..start + used]
    }
}

/// Activation rows per chunk when per-row work (normalisation, quantization) of `rows` rows is
/// split across `threads`: an even share, at least 8 rows (a decode batch of up to 8 stays one
/// chunk, run inline: a pool region costs more than its work) and at most 32 (prefill gets
/// enough chunks to even out the threads). Batch-16 decode: 2 chunks.
// `#[inline]` for the kernels' sake: as an out-of-line item of this module it reshuffled the
// crate's codegen units, and the AVX2 Q4_0 tile kernel came out with other register
// allocation and spills (+3.5% instructions at 16 rows in the perf gate, same source).
#[inline]
pub fn act_row_chunk(rows: usize, threads: usize) -> usize {
    rows.div_ceil(threads.max(1)).clamp(8, 32)
}

/// Encodes one activation row `x` into `bytes` (whole blocks, or f16/bf16/f32 values).
fn encode_row(f: ActFormat, k: &Kernels, x: &[f32], bytes: &mut [u8]) {
    match f {
        ActFormat::Q8_0 => k.quantize_q8_0(x, &mut cast_mut(bytes)[..x.len() / QK]),
        ActFormat::Q8_1 => k.quantize_q8_1(x, &mut cast_mut(bytes)[..x.len() / QK]),
        ActFormat::Q8K => k.quantize_q8k(x, &mut cast_mut(bytes)[..x.len() / QK_K]),
        ActFormat::F16 => {
            // `half`'s slice conversions: F16C 8 at a time where the CPU has it, the same
            // round-to-nearest-even bits as `f32_to_f16` per element.
            use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
            cast_mut::<u16>(bytes)[..x.len()]
                .reinterpret_cast_mut::<half::f16>()
                .convert_from_f32_slice(x);
        }
        ActFormat::Bf16 => {
            for (o, &v) in cast_mut::<u16>(bytes).iter_mut().zip(x) {
                *o = f32_to_bf16(v);
            }
        }
        ActFormat::F32 => cast_mut::<f32>(bytes)[..x.len()].copy_from_slice(x),
    }
}

/// A float format's encoded row (`bytes`) widened to f32 into `out` (nothing for the block
/// formats).
fn widen_row(f: ActFormat, bytes: &[u8], out: &mut [f32]) {
    match f {
        ActFormat::F16 => {
            use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
            cast_ref::<u16>(bytes)[..out.len()]
                .reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(out);
        }
        ActFormat::Bf16 => {
            for (o, &h) in out.iter_mut().zip(cast_ref::<u16>(bytes)) {
                *o = bf16_to_f32(h);
            }
        }
        ActFormat::F32 => out.copy_from_slice(&cast_ref::<f32>(bytes)[..out.len()]),
        ActFormat::Q8_0 | ActFormat::Q8_1 | ActFormat::Q8K => {}
    }
}

/// `f(first_row, rows)` over `data` (rows of `width`) in chunks of `chunk` rows: on `pool`
/// ([`ThreadPool::for_rows`]), or in order on the calling thread.
fn rows_on<T: Send>(
    pool: Option<&ThreadPool>,
    data: &mut [T],
    width: usize,
    chunk: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    if data.is_empty() {
        return; // no rows, or empty ones (`width` 0)
    }
    match pool {
        Some(p) => p.for_rows(data, width, chunk, f),
        None => {
            for (c, part) in data.chunks_mut(width * chunk).enumerate() {
                f(c * chunk, part)
            }
        }
    }
}

/// A row of `QuantActs`' u64 storage as bytes.
fn bytes_of(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 storage viewed as bytes: same memory, any bit pattern valid, alignment 1.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

/// [`bytes_of`], read-only.
fn words_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: as in `bytes_of`.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) }
}

fn cast_mut<T: ActBlock>(bytes: &mut [u8]) -> &mut [T] {
    let n = bytes.len() / std::mem::size_of::<T>();
    debug_assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    // SAFETY: rows start on 8-byte boundaries (QuantActs layout); T is POD (ActBlock).
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), n) }
}

fn cast_ref<T: ActBlock>(bytes: &[u8]) -> &[T] {
    let n = bytes.len() / std::mem::size_of::<T>();
    debug_assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    // SAFETY: as in cast_mut.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), n) }
}

/// POD activation element types stored in [`QuantActs`].
///
/// # Safety
/// Implementors are `#[repr(C)]` plain data valid for any bit pattern, alignment <= 8.
unsafe trait ActBlock: Copy {}
unsafe impl ActBlock for BlockQ8_0 {}
unsafe impl ActBlock for BlockQ8_1 {}
unsafe impl ActBlock for BlockQ8K {}
unsafe impl ActBlock for u16 {}
unsafe impl ActBlock for f32 {}

/// How far ahead of the row being multiplied the weight stream is prefetched.
const PREFETCH_ROWS_AHEAD: usize = 8;

/// Activation rows per pass over a tile range: keeps the activations of one pass in L2 beside
/// the weight tiles (64 rows of a 1536-wide Q8_1 input are 110 KiB).
const ACT_BLOCK: usize = 64;

/// A 2-D weight matrix: `rows` rows of `cols` elements, as GGUF encodes it (row-major, `data`)
/// and, for the 32-element block formats, repacked into interleaved tiles that the products
/// read instead (`data` then serves only single-row look-ups such as embeddings).
#[derive(Clone)]
pub struct QMatrix<'a> {
    /// The GGUF element type.
    pub dtype: GgmlType,
    /// Weight rows (output features).
    pub rows: usize,
    /// Elements per row (input features).
    pub cols: usize,
    /// The rows as GGUF encodes them (in the mmap).
    pub data: &'a [u8],
    row_bytes: usize,
    tiles: Option<Arc<Tiles>>,
}

impl<'a> QMatrix<'a> {
    /// Checks `data` (`rows` rows of `cols` elements of `dtype`: length, alignment, a type
    /// with kernels) and repacks the tiled formats; errors name tensor `name`.
    pub fn new(
        name: &str,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self> {
        if ActFormat::for_weights(dtype).is_none() {
            return Err(EngineError::UnsupportedTensorType {
                name: name.into(),
                dtype: dtype.name(),
            });
        }
        let row_bytes = dtype.bytes_for(cols, name)?;
        if data.len() != row_bytes * rows {
            return Err(EngineError::BadTensor {
                name: name.into(),
                reason: format!("expected {} bytes, found {}", row_bytes * rows, data.len()),
            });
        }
        let align = match dtype {
            GgmlType::F32 => 4,
            _ => 2,
        };
        if !(data.as_ptr() as usize).is_multiple_of(align) {
            return Err(EngineError::BadTensor {
                name: name.into(),
                reason: "data is misaligned".into(),
            });
        }
        let mut m = Self {
            dtype,
            rows,
            cols,
            data,
            row_bytes,
            tiles: None,
        };
        m.tiles = m.repack().map(Arc::new);
        Ok(m)
    }

    /// The interleaved tiles of a block format (None for the float formats).
    fn repack(&self) -> Option<Tiles> {
        use repack::Tiled;
        fn pack<T: Tiled>(m: &QMatrix<'_>) -> Tiles {
            Tiles::pack::<T>(m.rows, m.cols / T::ELEMS, |r| cast_weights(m.row_bytes(r)))
        }
        Some(match self.dtype {
            GgmlType::Q4_0 => pack::<TileQ4_0>(self),
            GgmlType::Q4_1 => pack::<TileQ4_1>(self),
            GgmlType::Q5_0 => pack::<TileQ5_0>(self),
            GgmlType::Q5_1 => pack::<TileQ5_1>(self),
            GgmlType::Q8_0 => pack::<TileQ8_0>(self),
            GgmlType::Iq4Nl => pack::<TileIq4Nl>(self),
            GgmlType::Q4K => pack::<TileQ4K>(self),
            GgmlType::Q5K => pack::<TileQ5K>(self),
            GgmlType::Q6K => pack::<TileQ6K>(self),
            GgmlType::Iq4Xs => pack::<TileIq4Xs>(self),
            GgmlType::Q2K => pack::<TileQ2K>(self),
            GgmlType::Q3K => pack::<TileQ3K>(self),
            _ => return None,
        })
    }

    /// Heap bytes of the repacked tiles (0 for a matrix read from the mmap).
    pub fn repacked_bytes(&self) -> usize {
        self.tiles.as_ref().map_or(0, |t| t.bytes())
    }

    /// Whether two handles share one matrix (a tied output embedding).
    pub fn same_as(&self, other: &QMatrix<'_>) -> bool {
        std::ptr::eq(self.data, other.data)
    }

    /// The activation encoding this matrix multiplies.
    pub fn act_format(&self) -> ActFormat {
        ActFormat::for_weights(self.dtype)
            .expect("QMatrix::new refuses weight types without an activation format")
    }

    /// Weight row `r`'s bytes in the GGUF encoding.
    pub fn row_bytes(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// The products of the weight rows in `rows` with every activation row: `out(t, r, v)`
    /// receives `v[i] = dot(weight row r + i, activation row t)` for a run of consecutive rows
    /// (every (t, r) of the ranges exactly once).
    pub fn matmul_rows(
        &self,
        k: &Kernels,
        acts: &QuantActs,
        rows: std::ops::Range<usize>,
        out: &mut dyn FnMut(usize, usize, &[f32]),
    ) {
        self.matmul_block(k, acts, rows, 0..acts.rows, out);
    }

    /// [`Self::matmul_rows`] for the activation rows `toks` only: one block of a 2-D split of a
    /// large product across threads. Every kernel's bits are independent of how the activation
    /// rows are grouped, so any split gives the same outputs.
    pub fn matmul_block(
        &self,
        k: &Kernels,
        acts: &QuantActs,
        rows: std::ops::Range<usize>,
        toks: std::ops::Range<usize>,
        out: &mut dyn FnMut(usize, usize, &[f32]),
    ) {
        assert!(toks.end <= acts.rows, "activation rows out of range");
        // Reading activations of another format would be garbage, not an error: refuse loudly.
        assert_eq!(
            acts.format,
            self.act_format(),
            "activation format of the matrix"
        );
        let t2 = toks.clone();
        match self.dtype {
            GgmlType::Q4_0 => self.tiled(k.tiles::<TileQ4_0>(), acts, rows, t2, out),
            GgmlType::Q4_1 => self.tiled(k.tiles::<TileQ4_1>(), acts, rows, t2, out),
            GgmlType::Q5_0 => self.tiled(k.tiles::<TileQ5_0>(), acts, rows, t2, out),
            GgmlType::Q5_1 => self.tiled(k.tiles::<TileQ5_1>(), acts, rows, t2, out),
            GgmlType::Q8_0 => self.tiled(k.tiles::<TileQ8_0>(), acts, rows, t2, out),
            GgmlType::Iq4Nl => self.tiled(k.tiles::<TileIq4Nl>(), acts, rows, t2, out),
            GgmlType::Q2K => self.tiled(k.tiles::<TileQ2K>(), acts, rows, t2, out),
            GgmlType::Q3K => self.tiled(k.tiles::<TileQ3K>(), acts, rows, t2, out),
            GgmlType::Q4K => self.tiled(k.tiles::<TileQ4K>(), acts, rows, t2, out),
            GgmlType::Q5K => self.tiled(k.tiles::<TileQ5K>(), acts, rows, t2, out),
            GgmlType::Q6K => self.tiled(k.tiles::<TileQ6K>(), acts, rows, t2, out),
            GgmlType::Iq4Xs => self.tiled(k.tiles::<TileIq4Xs>(), acts, rows, t2, out),
            GgmlType::F16 => self.float(
                |w, a| k.dot_f16_f16(w, a),
                |w, a, n, o| k.gemm_f16(w, a, n, o),
                acts,
                rows,
                toks,
                out,
            ),
            GgmlType::Bf16 => self.float(
                |w, a| k.dot_bf16(w, a),
                |w, a, n, o| k.gemm_bf16(w, a, n, o),
                acts,
                rows,
                toks,
                out,
            ),
            GgmlType::F32 => self.float(
                |w, a| k.dot_f32(w, a),
                |w, a, n, o| k.gemm_f32(w, a, n, o),
                acts,
                rows,
                toks,
                out,
            ),
            GgmlType::Other(_) => unreachable!("QMatrix::new refuses types without kernels"),
        }
    }

    /// The float formats' product: one activation row (single-stream decode) through the
    /// one-row dot, streaming the weights with prefetch; more through the format's GEMM on the
    /// f32 activation rows, whose outputs come per activation row for all of `rows`.
    fn float<W: PodBlock, A: ActBlock>(
        &self,
        dot: impl Fn(&[W], &[A]) -> f32,
        gemm: impl Fn(&[W], &[f32], usize, &mut [f32]),
        acts: &QuantActs,
        rows: std::ops::Range<usize>,
        toks: std::ops::Range<usize>,
        out: &mut dyn FnMut(usize, usize, &[f32]),
    ) {
        if toks.len() == 1 {
            let a: &[A] = cast_ref(acts.row(toks.start));
            for r in rows {
                if acts.rows == 1 {
                    self.prefetch_row(r + PREFETCH_ROWS_AHEAD);
                }
                out(toks.start, r, &[dot(cast_weights(self.row_bytes(r)), a)]);
            }
            return;
        }
        let w: &[W] =
            cast_weights(&self.data[rows.start * self.row_bytes..rows.end * self.row_bytes]);
        let mut v = vec![0f32; rows.len() * toks.len()];
        gemm(w, acts.wide_rows(toks.clone()), self.cols, &mut v);
        for (t, row) in toks.zip(v.chunks_exact(rows.len().max(1))) {
            out(t, rows.start, row);
        }
    }

    /// The tiled product: for each block of [`ACT_BLOCK`] activation rows of `toks`, each tile
    /// row (8 weight rows) against 16 or 4 activation rows per call, leftovers one by one; with
    /// `pair` kernels (AVX-512), two tile rows per call. The same bits any way. The tile rows of
    /// `rows` are computed whole; outputs outside `rows` (of a range that does not start or end
    /// on a multiple of 8) are dropped.
    fn tiled<T: repack::Tiled, A: ActBlock>(
        &self,
        kernels: &dispatch::TileKernels<T, A>,
        acts: &QuantActs,
        rows: std::ops::Range<usize>,
        toks: std::ops::Range<usize>,
        out: &mut dyn FnMut(usize, usize, &[f32]),
    ) {
        let tiles = self
            .tiles
            .as_deref()
            .expect("the tiled formats are repacked in QMatrix::new");
        let (f1, f4, f16, pair) = (kernels.x1, kernels.x4, kernels.x16, kernels.pair);
        let arow = |t: usize| -> &[A] { cast_ref(acts.row(t)) };
        let tile_rows = rows.start / TILE_ROWS..rows.end.div_ceil(TILE_ROWS);
        // Tile row `rt`'s 8 outputs for activation row t.
        let mut emit = |t: usize, rt: usize, v: &[f32; TILE_ROWS]| {
            let r0 = (rt * TILE_ROWS).max(rows.start);
            let r1 = (rt * TILE_ROWS + TILE_ROWS).min(rows.end);
            out(t, r0, &v[r0 - rt * TILE_ROWS..r1 - rt * TILE_ROWS]);
        };
        let prefetch_tile = |rt: usize| {
            if rt < tiles.tile_rows {
                prefetch(tiles.tile_row::<T>(rt));
            }
        };
        for a0 in toks.clone().step_by(ACT_BLOCK) {
            let a1 = (a0 + ACT_BLOCK).min(toks.end);
            // The block's rows and per-block values, looked up once for all tile rows.
            let ys: Vec<&[A]> = (a0..a1).map(arow).collect();
            let ms: Vec<ActMeta<'_>> = (a0..a1).map(|t| acts.row_meta(t)).collect();
            let n = a1 - a0;
            let mut rt = tile_rows.start;
            while rt < tile_rows.end {
                let w = tiles.tile_row::<T>(rt);
                let mut j = 0;
                if let Some(p) = pair.filter(|_| rt + 1 < tile_rows.end && n >= 4) {
                    let w1 = tiles.tile_row::<T>(rt + 1);
                    while j + 16 <= n {
                        let (y, m) = rows_at::<A, 16>(&ys, &ms, j);
                        for (i, v) in p.x16.mul(w, w1, y, m).iter().enumerate() {
                            let (halves, _) = v.as_chunks::<TILE_ROWS>();
                            emit(a0 + j + i, rt, &halves[0]);
                            emit(a0 + j + i, rt + 1, &halves[1]);
                        }
                        j += 16;
                    }
                    while j + 4 <= n {
                        let (y, m) = rows_at::<A, 4>(&ys, &ms, j);
                        for (i, v) in p.x4.mul(w, w1, y, m).iter().enumerate() {
                            let (halves, _) = v.as_chunks::<TILE_ROWS>();
                            emit(a0 + j + i, rt, &halves[0]);
                            emit(a0 + j + i, rt + 1, &halves[1]);
                        }
                        j += 4;
                    }
                    for j in j..n {
                        emit(a0 + j, rt, &f1.mul(w, &[ys[j]], &[ms[j]])[0]);
                        emit(a0 + j, rt + 1, &f1.mul(w1, &[ys[j]], &[ms[j]])[0]);
                    }
                    rt += 2;
                    continue;
                }
                // The next tile row streams in while this one is multiplied.
                prefetch_tile(rt + 1);
                if let Some(f16) = f16 {
                    while j + 16 <= n {
                        let (y, m) = rows_at::<A, 16>(&ys, &ms, j);
                        for (i, v) in f16.mul(w, y, m).iter().enumerate() {
                            emit(a0 + j + i, rt, v);
                        }
                        j += 16;
                    }
                }
                while j + 4 <= n {
                    let (y, m) = rows_at::<A, 4>(&ys, &ms, j);
                    for (i, v) in f4.mul(w, y, m).iter().enumerate() {
                        emit(a0 + j + i, rt, v);
                    }
                    j += 4;
                }
                for j in j..n {
                    emit(a0 + j, rt, &f1.mul(w, &[ys[j]], &[ms[j]])[0]);
                }
                rt += 1;
            }
        }
    }

    /// Hints the cache to start loading weight row `r` (ignored past the end). Single-stream
    /// decode is bound by memory latency, not arithmetic: this keeps several rows in flight.
    #[inline(always)]
    fn prefetch_row(&self, r: usize) {
        if r < self.rows {
            prefetch(self.row_bytes(r));
        }
    }

    /// Dequantizes row `r` into `out` (embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let b = self.row_bytes(r);
        match self.dtype {
            GgmlType::Q4_0 => scalar::dequantize_q4_0(cast_weights(b), out),
            GgmlType::Q4_1 => scalar::dequantize_q4_1(cast_weights(b), out),
            GgmlType::Q5_0 => scalar::dequantize_q5_0(cast_weights(b), out),
            GgmlType::Q5_1 => scalar::dequantize_q5_1(cast_weights(b), out),
            GgmlType::Q8_0 => scalar::dequantize_q8_0(cast_weights(b), out),
            GgmlType::Iq4Nl => scalar::dequantize_iq4nl(cast_weights(b), out),
            GgmlType::Q2K => kquants::dequantize_q2k(cast_weights(b), out),
            GgmlType::Q3K => kquants::dequantize_q3k(cast_weights(b), out),
            GgmlType::Q4K => kquants::dequantize_q4k(cast_weights(b), out),
            GgmlType::Q5K => kquants::dequantize_q5k(cast_weights(b), out),
            GgmlType::Q6K => kquants::dequantize_q6k(cast_weights(b), out),
            GgmlType::Iq4Xs => kquants::dequantize_iq4xs(cast_weights(b), out),
            GgmlType::Bf16 => {
                for (o, &v) in out.iter_mut().zip(cast_weights::<u16>(b)) {
                    *o = bf16_to_f32(v);
                }
            }
            GgmlType::F16 => {
                for (o, &v) in out.iter_mut().zip(cast_weights::<u16>(b)) {
                    *o = f16_to_f32(v);
                }
            }
            GgmlType::F32 => out.copy_from_slice(cast_weights::<f32>(b)),
            GgmlType::Other(_) => unreachable!("QMatrix::new refuses types without kernels"),
        }
    }
}

/// Hints the cache to start loading `data` (every 64-byte line).
#[inline(always)]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(data);
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetch never faults and SSE is part of the x86_64 baseline; the address
            // is inside `data` anyway.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    data.as_ptr().cast::<i8>().add(off),
                )
            };
        }
    }
}

/// Activation rows `j..j + N` of a block, with their per-block values, as the tile kernels take
/// them: borrowed in place (copying 16 rows' metadata per call, by value, cost 5-7% of batched
/// decode in memmoves).
fn rows_at<'s, 'a, A, const N: usize>(
    ys: &'s [&'a [A]],
    ms: &'s [ActMeta<'a>],
    j: usize,
) -> (&'s [&'a [A]; N], &'s [ActMeta<'a>; N]) {
    let y = ys[j..j + N].try_into().expect("N activation rows at j");
    let m = ms[j..j + N].try_into().expect("N rows' metadata at j");
    (y, m)
}

fn cast_weights<T: PodBlock>(b: &[u8]) -> &[T] {
    cast_blocks(b).expect("weight rows are whole, aligned blocks (checked in QMatrix::new)")
}
