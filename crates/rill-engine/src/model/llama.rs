//! The llama architecture (SmolLM2, Llama 2/3, Mistral-style GQA): pre-norm blocks of RMSNorm,
//! rotary attention ("normal" pairs, Llama 3's frequency factors from `rope_freqs.weight`) with
//! grouped KV heads, optionally within a sliding window (`llama.attention.sliding_window`), and
//! a SwiGLU feed-forward network.

use super::decoder::Features;
use super::{hparams, FfnActivation, ModelConfig, RopeMode};
use crate::error::Result;
use crate::gguf::GgufFile;

/// The llama hyper-parameters and features of `g`.
pub(super) fn describe(g: &GgufFile) -> Result<(ModelConfig, Features)> {
    let mut cfg = hparams::base_config(g, "llama")?;
    // Mistral-7B-v0.1-style files: every layer attends to the last `sliding_window` positions.
    // llama.cpp's llama graph ignores the key (its converter does not write it for Mistral);
    // rill honours what the file says, so the two agree up to the window.
    if let Some(w) = g
        .opt_u64("llama.attention.sliding_window")?
        .filter(|&w| w > 0)
    {
        for layer in &mut cfg.layers {
            layer.window = Some(w as usize);
        }
    }
    Ok((cfg, features()))
}

/// The plain llama block, which the other architectures depart from.
pub(super) fn features() -> Features {
    Features {
        rope: RopeMode::Normal,
        activation: FfnActivation::SiluGlu,
        embed_scale: None,
        query_scale: None,
        qk_norm: false,
        qkv_bias: false,
        post_norms: false,
        logit_softcap: None,
    }
}
