//! GGUF files: the header, the metadata key/value store and the tensor directory, read from an
//! mmap without copying tensor data. Every read is bounds-checked: a truncated or corrupt file
//! yields [`EngineError`], never a panic.

mod reader;
mod value;

pub use reader::{GgufFile, TensorInfo, MAX_ARRAY_DEPTH};
pub use value::Value;

use crate::error::EngineError;

/// Tensor element types as numbered by ggml. Only the ones rill can compute with are named;
/// others are kept as their raw number so the error can say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// [`crate::quant::blocks::BlockQ4_0`].
    Q4_0,
    /// [`crate::quant::blocks::BlockQ4_1`].
    Q4_1,
    /// [`crate::quant::blocks::BlockQ5_0`].
    Q5_0,
    /// [`crate::quant::blocks::BlockQ5_1`].
    Q5_1,
    /// [`crate::quant::blocks::BlockQ8_0`].
    Q8_0,
    /// Q2_K, [`crate::quant::blocks::BlockQ2K`].
    Q2K,
    /// Q3_K, [`crate::quant::blocks::BlockQ3K`].
    Q3K,
    /// Q4_K, [`crate::quant::blocks::BlockQ4K`].
    Q4K,
    /// Q5_K, [`crate::quant::blocks::BlockQ5K`].
    Q5K,
    /// Q6_K, [`crate::quant::blocks::BlockQ6K`].
    Q6K,
    /// IQ4_NL, [`crate::quant::blocks::BlockIq4Nl`].
    Iq4Nl,
    /// IQ4_XS, [`crate::quant::blocks::BlockIq4Xs`].
    Iq4Xs,
    /// bfloat16.
    Bf16,
    /// Any other ggml type, by number.
    Other(u32),
}

impl GgmlType {
    /// The type ggml numbers `v`.
    pub fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            20 => Self::Iq4Nl,
            23 => Self::Iq4Xs,
            30 => Self::Bf16,
            o => Self::Other(o),
        }
    }

    /// (elements per block, bytes per block), or None for a type whose layout we do not know.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Iq4Nl => (32, 18),
            Self::Iq4Xs => (256, 136),
            Self::Bf16 => (1, 2),
            Self::Other(_) => return None,
        })
    }

    /// ggml's own name for the type (`Q4_K`, `IQ2_XS`, ...), so errors name what a user sees
    /// in llama.cpp's tools.
    pub fn name(self) -> String {
        let known = match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Iq4Nl => "IQ4_NL",
            Self::Iq4Xs => "IQ4_XS",
            Self::Bf16 => "BF16",
            Self::Other(v) => {
                return match v {
                    9 => "Q8_1",
                    15 => "Q8_K",
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    39 => "MXFP4",
                    _ => return format!("ggml type {v}"),
                }
                .to_string()
            }
        };
        known.to_string()
    }

    /// Bytes used by `n` elements, checking divisibility by the block size.
    pub fn bytes_for(self, n: usize, tensor: &str) -> Result<usize, EngineError> {
        let (bs, bb) = self
            .block_layout()
            .ok_or_else(|| EngineError::UnsupportedTensorType {
                name: tensor.to_string(),
                dtype: self.name(),
            })?;
        if !n.is_multiple_of(bs) {
            return Err(EngineError::BadTensor {
                name: tensor.to_string(),
                reason: format!("{n} elements is not a multiple of the {self:?} block size {bs}"),
            });
        }
        Ok(n / bs * bb)
    }
}
