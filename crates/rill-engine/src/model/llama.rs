//! The llama architecture (SmolLM2, Llama 2/3, Mistral-style GQA): pre-norm blocks of RMSNorm,
//! rotary attention ("normal" pairs, Llama 3's frequency factors from `rope_freqs.weight`) with
//! grouped KV heads, and a SwiGLU feed-forward network.

use super::decoder::Features;
use super::{hparams, FfnActivation, ModelConfig, RopeMode};
use crate::error::Result;
use crate::gguf::GgufFile;

/// The llama hyper-parameters and features of `g`.
pub(super) fn describe(g: &GgufFile) -> Result<(ModelConfig, Features)> {
    Ok((hparams::base_config(g, "llama")?, features()))
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
