//! Qwen 2 / 2.5 (biases on the Q/K/V projections) and Qwen 3 (per-head QK-norm, no biases):
//! llama blocks with neox RoPE and SwiGLU, as llama.cpp's `qwen2` and `qwen3` graphs build them.

use super::decoder::Features;
use super::{hparams, llama, ModelConfig, RopeMode};
use crate::error::Result;
use crate::gguf::GgufFile;

/// The Qwen 2 hyper-parameters and features of `g`.
pub(super) fn describe_qwen2(g: &GgufFile) -> Result<(ModelConfig, Features)> {
    Ok((
        hparams::base_config(g, "qwen2")?,
        Features {
            rope: RopeMode::Neox,
            qkv_bias: true,
            ..llama::features()
        },
    ))
}

/// The Qwen 3 hyper-parameters and features of `g`.
pub(super) fn describe_qwen3(g: &GgufFile) -> Result<(ModelConfig, Features)> {
    Ok((
        hparams::base_config(g, "qwen3")?,
        Features {
            rope: RopeMode::Neox,
            qk_norm: true,
            ..llama::features()
        },
    ))
}
