//! Quantized tensors and the products the model runs on them.
//!
//! A weight matrix ([`QMatrix`]) stays in the mmap in its GGUF encoding. Activations are
//! quantized once per step into the 8-bit block type ggml pairs with that weight type
//! ([`ActFormat`]), then every weight row is dotted with every activation row of the batch while
//! the row is hot in L1: each weight block is read from memory once per step, whatever the batch.

pub mod blocks;
pub mod dispatch;
pub mod kquants;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
pub mod x86_kquants;

use blocks::*;
pub use dispatch::{KernelTier, Kernels};

use crate::error::{EngineError, Result};
use crate::gguf::GgmlType;

/// The activation encoding a weight type's dot product consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActFormat {
    Q8_0,
    Q8_1,
    Q8K,
    F16,
    Bf16,
    F32,
}

impl ActFormat {
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
    pub format: ActFormat,
    pub rows: usize,
    pub cols: usize,
    row_bytes: usize,
    buf: Vec<u64>,
    /// Per row, per block: the block scale `d` (and for Q8_1 the sum term `s`) already
    /// widened to f32, so batched kernels do not convert them once per weight row.
    scales_d: Vec<f32>,
    scales_s: Vec<f32>,
}

impl QuantActs {
    pub fn new(format: ActFormat) -> Self {
        Self {
            format,
            rows: 0,
            cols: 0,
            row_bytes: 0,
            buf: Vec::new(),
            scales_d: Vec::new(),
            scales_s: Vec::new(),
        }
    }

    /// Quantizes `rows` rows of `cols` floats from `x` (row-major), reusing the buffer.
    pub fn quantize(&mut self, k: &Kernels, x: &[f32], rows: usize, cols: usize) {
        debug_assert_eq!(x.len(), rows * cols);
        debug_assert_eq!(cols % self.format.block_elems(), 0);
        // Round rows up to whole u64 words so every row starts aligned.
        self.row_bytes = self.format.row_bytes(cols).div_ceil(8) * 8;
        self.rows = rows;
        self.cols = cols;
        let words = rows * self.row_bytes / 8;
        if self.buf.len() < words {
            self.buf.resize(words, 0);
        }
        for r in 0..rows {
            self.quantize_row(k, r, &x[r * cols..(r + 1) * cols]);
        }
        self.widen_scales();
    }

    fn widen_scales(&mut self) {
        let nb = self.cols / QK;
        let (mut sd, mut ss) = (
            std::mem::take(&mut self.scales_d),
            std::mem::take(&mut self.scales_s),
        );
        sd.clear();
        ss.clear();
        for r in 0..self.rows {
            match self.format {
                ActFormat::Q8_0 => {
                    let blocks: &[BlockQ8_0] = cast_ref(self.row(r));
                    sd.extend(blocks.iter().map(|b| f16_to_f32(b.d)));
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
    }

    /// Row `r`'s block scales as f32 (Q8_0/Q8_1 only; empty otherwise).
    pub fn row_scales(&self, r: usize) -> (&[f32], &[f32]) {
        let nb = self.cols / QK;
        let d = self.scales_d.get(r * nb..(r + 1) * nb).unwrap_or(&[]);
        let s = self.scales_s.get(r * nb..(r + 1) * nb).unwrap_or(&[]);
        (d, s)
    }

    /// Quantizes one range of columns of one row (block-aligned) in place: lets a thread that
    /// produced those columns quantize them without a barrier.
    pub fn quantize_row(&mut self, k: &Kernels, r: usize, x: &[f32]) {
        let f = self.format;
        let bytes = self.row_mut(r);
        match f {
            ActFormat::Q8_0 => (k.quantize_q8_0)(x, cast_mut(bytes)),
            ActFormat::Q8_1 => (k.quantize_q8_1)(x, cast_mut(bytes)),
            ActFormat::Q8K => (k.quantize_q8k)(x, cast_mut(bytes)),
            ActFormat::F16 => {
                for (o, &v) in cast_mut::<u16>(bytes).iter_mut().zip(x) {
                    *o = f32_to_f16(v);
                }
            }
            ActFormat::Bf16 => {
                for (o, &v) in cast_mut::<u16>(bytes).iter_mut().zip(x) {
                    *o = f32_to_bf16(v);
                }
            }
            ActFormat::F32 => cast_mut::<f32>(bytes)[..x.len()].copy_from_slice(x),
        }
    }

    fn row_mut(&mut self, r: usize) -> &mut [u8] {
        let used = self.format.row_bytes(self.cols);
        let start = r * self.row_bytes;
        // SAFETY: u64 storage viewed as bytes; the range lies inside buf (sized in `quantize`).
        let all = unsafe {
            std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast::<u8>(), self.buf.len() * 8)
        };
        &mut all[start..start + used]
    }

    pub fn row(&self, r: usize) -> &[u8] {
        let used = self.format.row_bytes(self.cols);
        let start = r * self.row_bytes;
        // SAFETY: as in row_mut, read-only.
        let all = unsafe {
            std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.buf.len() * 8)
        };
        &all[start..start + used]
    }
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

/// A 2-D weight matrix in its GGUF encoding: `rows` rows of `cols` elements, row-major.
#[derive(Clone, Copy)]
pub struct QMatrix<'a> {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    row_bytes: usize,
}

impl<'a> QMatrix<'a> {
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
        Ok(Self {
            dtype,
            rows,
            cols,
            data,
            row_bytes,
        })
    }

    pub fn act_format(&self) -> ActFormat {
        // Checked in `new`.
        ActFormat::for_weights(self.dtype).unwrap_or(ActFormat::F32)
    }

    pub fn row_bytes(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// out[t * out_stride + (r - rows.start)] = dot(row r, activation row t) for all t, for the
    /// weight rows in `rows`. `out` is this caller's window of the output.
    pub fn matmul_rows(
        &self,
        k: &Kernels,
        acts: &QuantActs,
        rows: std::ops::Range<usize>,
        out: &mut dyn FnMut(usize, usize, f32),
    ) {
        // Reading activations of another format would be garbage, not an error: refuse loudly.
        assert_eq!(
            acts.format,
            self.act_format(),
            "activation format of the matrix"
        );
        macro_rules! run {
            ($wt:ty, $at:ty, $f:expr) => {{
                for r in rows.clone() {
                    let w: &[$wt] = cast_weights(self.row_bytes(r));
                    for t in 0..acts.rows {
                        let a: &[$at] = cast_ref(acts.row(t));
                        out(t, r, $f(w, a));
                    }
                }
            }};
        }
        // The super-block formats: one weight row against 4 activation rows per call, so each
        // block is decoded once for 4 rows; 2-3 leftover rows go through one more 4-row call
        // with the last row repeated, a single one (and single-stream decode, which streams
        // the weights with prefetch) through the one-row kernel. Same bits either way.
        macro_rules! quad {
            ($wt:ty, $at:ty, $f1:expr, $f4:expr) => {{
                let arow = |t: usize| -> &[$at] { cast_ref(acts.row(t)) };
                let quads = acts.rows / 4 * 4;
                let left = acts.rows - quads;
                let last = acts.rows.saturating_sub(1);
                for r in rows.clone() {
                    if acts.rows == 1 {
                        self.prefetch_row(r + PREFETCH_ROWS_AHEAD);
                    }
                    let w: &[$wt] = cast_weights(self.row_bytes(r));
                    for t in (0..quads).step_by(4) {
                        let v = $f4(w, [arow(t), arow(t + 1), arow(t + 2), arow(t + 3)]);
                        for (j, &x) in v.iter().enumerate() {
                            out(t + j, r, x);
                        }
                    }
                    if left >= 2 {
                        let ix = [
                            quads,
                            quads + 1,
                            (quads + 2).min(last),
                            (quads + 3).min(last),
                        ];
                        let v = $f4(w, ix.map(arow));
                        for (j, &x) in v.iter().take(left).enumerate() {
                            out(quads + j, r, x);
                        }
                    } else if left == 1 {
                        out(quads, r, $f1(w, arow(quads)));
                    }
                }
            }};
        }
        // The 32-element block formats have blocked kernels:
        // - one activation row: memory-bound, so one sequential weight stream with prefetch
        //   (measured: 63 tok/s single-thread decode vs 54 with 4 interleaved rows);
        // - several: 2 weight rows x 4 activation rows per call, each weight block unpacked once
        //   for 4 activations; 2-3 leftover activations go through one padded 2x4 call, a single
        //   leftover through the one-row kernel.
        macro_rules! blocked {
            ($wt:ty, $at:ty, $f1:expr, $f2x4:expr, $f4x1:expr) => {{
                let wrow = |r: usize| -> &[$wt] { cast_weights(self.row_bytes(r)) };
                let arow = |t: usize| -> &[$at] { cast_ref(acts.row(t)) };
                let mut r = rows.start;
                if acts.rows == 1 {
                    // Single-stream decode: 4 weight rows at a time keep 4 independent FMA
                    // chains in flight (one row's chain is latency-bound), still one
                    // sequential weight stream.
                    while r + 4 <= rows.end {
                        for ahead in 0..4 {
                            self.prefetch_row(r + PREFETCH_ROWS_AHEAD + ahead);
                        }
                        let w = [wrow(r), wrow(r + 1), wrow(r + 2), wrow(r + 3)];
                        let v = $f4x1(w, [arow(0)], [acts.row_scales(0)]);
                        for (i, x) in v.iter().enumerate() {
                            out(0, r + i, x[0]);
                        }
                        r += 4;
                    }
                } else {
                    let quads = acts.rows / 4 * 4;
                    while r + 2 <= rows.end {
                        let w = [wrow(r), wrow(r + 1)];
                        for t in (0..quads).step_by(4) {
                            let sc = |a: usize| acts.row_scales(t + a);
                            let v = $f2x4(
                                w,
                                [arow(t), arow(t + 1), arow(t + 2), arow(t + 3)],
                                [sc(0), sc(1), sc(2), sc(3)],
                            );
                            for (i, row) in v.iter().enumerate() {
                                for (j, &x) in row.iter().enumerate() {
                                    out(t + j, r + i, x);
                                }
                            }
                        }
                        let left = acts.rows - quads;
                        if left >= 2 {
                            // 2 or 3 leftover rows: one more 2x4 call with the last row repeated
                            // beats a single-row dot per leftover (measured: 3 rows 13 ms per
                            // step instead of 17; results are the same bits either way).
                            let last = acts.rows - 1;
                            let t = quads;
                            let ix = [t, t + 1, (t + 2).min(last), (t + 3).min(last)];
                            let v = $f2x4(
                                w,
                                [arow(ix[0]), arow(ix[1]), arow(ix[2]), arow(ix[3])],
                                ix.map(|i| acts.row_scales(i)),
                            );
                            for (i, row) in v.iter().enumerate() {
                                for (j, &x) in row.iter().take(left).enumerate() {
                                    out(t + j, r + i, x);
                                }
                            }
                        } else {
                            for t in quads..acts.rows {
                                for (i, w) in w.iter().enumerate() {
                                    out(t, r + i, $f1(w, arow(t)));
                                }
                            }
                        }
                        r += 2;
                    }
                }
                for r in r..rows.end {
                    self.prefetch_row(r + PREFETCH_ROWS_AHEAD);
                    let w = wrow(r);
                    for t in 0..acts.rows {
                        out(t, r, $f1(w, arow(t)));
                    }
                }
            }};
        }
        match self.dtype {
            GgmlType::Q4_1 => blocked!(
                BlockQ4_1,
                BlockQ8_1,
                k.dot_q4_1_q8_1,
                k.dot2x4_q4_1_q8_1,
                k.dot4x1_q4_1_q8_1
            ),
            GgmlType::Q8_0 => blocked!(
                BlockQ8_0,
                BlockQ8_0,
                k.dot_q8_0_q8_0,
                k.dot2x4_q8_0_q8_0,
                k.dot4x1_q8_0_q8_0
            ),
            GgmlType::Q4_0 => blocked!(
                BlockQ4_0,
                BlockQ8_0,
                k.dot_q4_0_q8_0,
                k.dot2x4_q4_0_q8_0,
                k.dot4x1_q4_0_q8_0
            ),
            GgmlType::Q5_0 => blocked!(
                BlockQ5_0,
                BlockQ8_0,
                k.dot_q5_0_q8_0,
                k.dot2x4_q5_0_q8_0,
                k.dot4x1_q5_0_q8_0
            ),
            GgmlType::Q5_1 => blocked!(
                BlockQ5_1,
                BlockQ8_1,
                k.dot_q5_1_q8_1,
                k.dot2x4_q5_1_q8_1,
                k.dot4x1_q5_1_q8_1
            ),
            GgmlType::Iq4Nl => {
                blocked!(
                    BlockIq4Nl,
                    BlockQ8_0,
                    k.dot_iq4nl_q8_0,
                    k.dot2x4_iq4nl_q8_0,
                    k.dot4x1_iq4nl_q8_0
                )
            }
            GgmlType::Q2K => quad!(BlockQ2K, BlockQ8K, k.dot_q2k_q8k, k.dot4_q2k_q8k),
            GgmlType::Q3K => quad!(BlockQ3K, BlockQ8K, k.dot_q3k_q8k, k.dot4_q3k_q8k),
            GgmlType::Q4K => quad!(BlockQ4K, BlockQ8K, k.dot_q4k_q8k, k.dot4_q4k_q8k),
            GgmlType::Q5K => quad!(BlockQ5K, BlockQ8K, k.dot_q5k_q8k, k.dot4_q5k_q8k),
            GgmlType::Q6K => quad!(BlockQ6K, BlockQ8K, k.dot_q6k_q8k, k.dot4_q6k_q8k),
            GgmlType::Iq4Xs => quad!(BlockIq4Xs, BlockQ8K, k.dot_iq4xs_q8k, k.dot4_iq4xs_q8k),
            GgmlType::F16 => run!(u16, u16, k.dot_f16_f16),
            GgmlType::Bf16 => run!(u16, u16, k.dot_bf16),
            GgmlType::F32 => run!(f32, f32, k.dot_f32),
            GgmlType::Other(_) => {}
        }
    }

    /// Hints the cache to start loading weight row `r` (ignored past the end). Single-stream
    /// decode is bound by memory latency, not arithmetic: this keeps several rows in flight.
    #[inline(always)]
    fn prefetch_row(&self, r: usize) {
        #[cfg(target_arch = "x86_64")]
        if r < self.rows {
            let row = self.row_bytes(r);
            for off in (0..row.len()).step_by(64) {
                // SAFETY: prefetch never faults and SSE is part of the x86_64 baseline; the
                // address is inside the row anyway.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        row.as_ptr().add(off).cast(),
                    )
                };
            }
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
            GgmlType::Other(_) => {}
        }
    }
}

fn cast_weights<T: PodBlock>(b: &[u8]) -> &[T] {
    // Alignment and length were validated in QMatrix::new (row sizes are whole blocks).
    cast_blocks(b).unwrap_or(&[])
}
