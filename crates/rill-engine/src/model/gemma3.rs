//! Gemma 3: embeddings scaled by sqrt(dim), QK-norm, RMSNorm before and after attention and the
//! FFN, a GeGLU (tanh GELU) feed-forward network, neox RoPE, and interleaved sliding-window
//! (local) and global attention layers with their own RoPE bases. The output embedding is tied
//! to the token embedding. Settings follow llama.cpp's `gemma3` loader, which the GGUF files are
//! written for: the window from `gemma3.attention.sliding_window`, every
//! `sliding_window_pattern`-th layer (default 6) global, the local base from
//! `gemma3.rope.freq_base_swa` (default 10000), linear RoPE scaling on global layers only, and
//! queries scaled by 1/sqrt(head_dim) (1/sqrt(dim/heads) for the 62-layer 27B) before attention.

use super::decoder::Features;
use super::{hparams, FfnActivation, ModelConfig, RopeMode};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// llama.cpp's default local (sliding-window) RoPE base.
const LOCAL_ROPE_BASE: f32 = 10000.0;
/// llama.cpp's default layer pattern: 5 local layers, then a global one.
const SWA_PATTERN: usize = 6;

/// Layer i is local unless it is the last of each group of `n` (llama.cpp's
/// `set_swa_pattern`; 0: every layer local).
fn periodic(n: usize, n_layers: usize) -> Vec<bool> {
    (0..n_layers).map(|i| n == 0 || i % n < n - 1).collect()
}

/// The Gemma 3 hyper-parameters and features of `g`.
pub(super) fn describe(g: &GgufFile) -> Result<(ModelConfig, Features)> {
    let a = "gemma3";
    let mut cfg = hparams::base_config(g, a)?;
    let window = g
        .opt_u64(&format!("{a}.attention.sliding_window"))?
        .filter(|&w| w > 0)
        .map(|w| w as usize);
    if let Some(w) = window {
        let local_base = g
            .opt_f32(&format!("{a}.rope.freq_base_swa"))?
            .unwrap_or(LOCAL_ROPE_BASE);
        let pattern_key = format!("{a}.attention.sliding_window_pattern");
        let n_layers = cfg.n_layers;
        // Either one flag per layer (true: sliding window) or a period n (every n-th global).
        let local: Vec<bool> = match g.get(&pattern_key) {
            None => periodic(SWA_PATTERN, n_layers),
            Some(v) => match (v.as_u64(), v.as_array()) {
                (Some(n), _) => periodic(n as usize, n_layers),
                (None, Some(flags)) if flags.len() == n_layers => flags
                    .iter()
                    .map(|f| f.as_bool())
                    .collect::<Option<Vec<bool>>>()
                    .ok_or_else(|| EngineError::BadMetadata {
                        key: pattern_key.clone(),
                        reason: "expected booleans".into(),
                    })?,
                _ => {
                    return Err(EngineError::BadMetadata {
                        key: pattern_key,
                        reason: format!("expected an integer or {n_layers} booleans"),
                    })
                }
            },
        };
        for (l, _) in cfg
            .layers
            .iter_mut()
            .zip(&local)
            .filter(|(_, &is_local)| is_local)
        {
            l.window = Some(w);
            l.rope_base = local_base;
            l.rope_freq_scale = 1.0;
        }
    }
    let query_scale = if cfg.n_layers == 62 {
        1.0 / ((cfg.dim / cfg.n_heads) as f32).sqrt()
    } else {
        1.0 / (cfg.head_dim as f32).sqrt()
    };
    let softcap = g
        .opt_f32(&format!("{a}.final_logit_softcapping"))?
        .filter(|&c| c > 0.0);
    let embed_scale = (cfg.dim as f32).sqrt();
    Ok((
        cfg,
        Features {
            rope: RopeMode::Neox,
            activation: FfnActivation::GeluGlu,
            embed_scale: Some(embed_scale),
            query_scale: Some(query_scale),
            qk_norm: true,
            qkv_bias: false,
            post_norms: true,
            logit_softcap: softcap,
        },
    ))
}
