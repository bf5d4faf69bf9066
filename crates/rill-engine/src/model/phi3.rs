//! Phi-3 (mini, 4k context): llama blocks with fused projections (`attn_qkv` holds Q, K, V;
//! `ffn_up` holds gate and up), neox RoPE, and queries scaled by 1/sqrt(head_dim) before
//! attention, as llama.cpp's `phi3` graph builds them (it runs Phi-3's sliding window as global
//! attention, and so does rill). LongRoPE files (`rope_factors_long.weight`, the 128k models)
//! are refused.

use super::decoder::Features;
use super::{hparams, llama, ModelConfig, RopeMode};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// The Phi-3 hyper-parameters and features of `g`.
pub(super) fn describe(g: &GgufFile) -> Result<(ModelConfig, Features)> {
    if g.tensors.contains_key("rope_factors_long.weight") {
        return Err(EngineError::BadTensor {
            name: "rope_factors_long.weight".into(),
            reason: "LongRoPE (Phi-3 128k) is not supported".into(),
        });
    }
    let cfg = hparams::base_config(g, "phi3")?;
    let query_scale = 1.0 / (cfg.head_dim as f32).sqrt();
    Ok((
        cfg,
        Features {
            rope: RopeMode::Neox,
            query_scale: Some(query_scale),
            ..llama::features()
        },
    ))
}
