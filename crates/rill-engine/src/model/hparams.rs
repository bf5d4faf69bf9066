//! The hyper-parameter keys every architecture shares (`{arch}.block_count`,
//! `{arch}.attention.head_count`, RoPE base and scaling, ...), read and checked once; the
//! architecture modules add what is theirs (windows, local RoPE bases).

use super::{LayerAttention, ModelConfig};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// The largest head dimension the attention kernels take.
const MAX_HEAD_DIM: usize = 256;

/// Reads the shared keys of `arch`; every layer starts as global attention at the file's RoPE
/// base and scaling.
pub(super) fn base_config(g: &GgufFile, arch: &str) -> Result<ModelConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    let bad = |k: &str, reason: String| EngineError::BadMetadata {
        key: key(k),
        reason,
    };
    let n_layers = g.req_u64(&key("block_count"))? as usize;
    let dim = g.req_u64(&key("embedding_length"))? as usize;
    let n_heads = g.req_u64(&key("attention.head_count"))? as usize;
    let n_kv_heads = g
        .opt_u64(&key("attention.head_count_kv"))?
        .map_or(n_heads, |v| v as usize);
    let ffn_dim = g.req_u64(&key("feed_forward_length"))? as usize;
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(bad(
            "attention.head_count",
            format!("{n_heads} heads are not a multiple of {n_kv_heads} kv heads"),
        ));
    }
    let head_dim = match g.opt_u64(&key("attention.key_length"))? {
        Some(v) => v as usize,
        None if dim.is_multiple_of(n_heads) => dim / n_heads,
        None => {
            return Err(bad(
                "attention.head_count",
                format!("{n_heads} heads do not divide dim {dim}"),
            ))
        }
    };
    if let Some(v) = g.opt_u64(&key("attention.value_length"))? {
        if v as usize != head_dim {
            return Err(bad(
                "attention.value_length",
                format!("{v} differs from the key length {head_dim} (not supported)"),
            ));
        }
    }
    if head_dim == 0 || head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
        return Err(bad(
            "attention.key_length",
            format!("head dim {head_dim} (supported: even, at most {MAX_HEAD_DIM})"),
        ));
    }
    let rope_dim = g
        .opt_u64(&key("rope.dimension_count"))?
        .map_or(head_dim, |v| v as usize);
    if rope_dim % 2 != 0 || rope_dim > head_dim {
        return Err(bad(
            "rope.dimension_count",
            format!("rope dim {rope_dim} with head dim {head_dim}"),
        ));
    }
    let rope_base = g.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let rope_freq_scale = rope_freq_scale(g, arch)?;
    let tok = g.tensor("token_embd.weight")?;
    let vocab_size = match tok.dims[..] {
        [_, rows] => rows,
        _ => {
            return Err(EngineError::BadTensor {
                name: tok.name.clone(),
                reason: format!("expected 2 dimensions, found {}", tok.dims.len()),
            })
        }
    };
    Ok(ModelConfig {
        architecture: arch.into(),
        name: g
            .get("general.name")
            .and_then(|v| v.as_str())
            .unwrap_or("unnamed")
            .to_string(),
        n_layers,
        dim,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim,
        vocab_size,
        context_length: g.opt_u64(&key("context_length"))?.unwrap_or(2048) as usize,
        rope_base,
        rope_dim,
        norm_eps: g
            .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5),
        layers: vec![
            LayerAttention {
                window: None,
                rope_base,
                rope_freq_scale,
            };
            n_layers
        ],
    })
}

/// The RoPE angle multiplier: 1, or 1 / factor for linear scaling (`rope.scaling.type` linear
/// with `rope.scaling.factor`, or the older `rope.scale_linear`). Other scaling types change
/// the arithmetic in ways rill does not implement, so they are refused.
fn rope_freq_scale(g: &GgufFile, arch: &str) -> Result<f32> {
    let key = |k: &str| format!("{arch}.{k}");
    let ty = match g.get(&key("rope.scaling.type")) {
        None => None,
        Some(v) => Some(v.as_str().ok_or_else(|| EngineError::BadMetadata {
            key: key("rope.scaling.type"),
            reason: "expected a string".into(),
        })?),
    };
    let factor = match ty {
        None | Some("none") => g.opt_f32(&key("rope.scale_linear"))?,
        Some("linear") => g.opt_f32(&key("rope.scaling.factor"))?,
        Some(other) => {
            return Err(EngineError::BadMetadata {
                key: key("rope.scaling.type"),
                reason: format!(
                    "RoPE scaling `{other}` is not supported (supported: none, linear)"
                ),
            })
        }
    };
    Ok(match factor {
        Some(f) if f > 0.0 && f != 1.0 => 1.0 / f,
        _ => 1.0,
    })
}
