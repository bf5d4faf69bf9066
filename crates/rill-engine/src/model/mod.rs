//! Model architectures. Every supported architecture is the one decoder-only transformer of
//! [`decoder`] with its own hyper-parameters and [`decoder::Features`]; each has a sibling module
//! that reads them from the GGUF metadata (`llama`, `gemma3`, `qwen`, `phi3`), and [`Model::load`] is the one
//! place that dispatches on `general.architecture`.

pub mod decoder;
mod gemma3;
mod hparams;
mod llama;
mod ops;
mod phi3;
mod qwen;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{BlockId, KvCache, KvLayout, KvType};
use crate::quant::Kernels;
use crate::threadpool::ThreadPool;

/// The architectures [`Model::load`] accepts (`general.architecture`).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3", "qwen2", "qwen3", "phi3"];

/// How the rotary embedding pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs (2i, 2i+1): llama.
    Normal,
    /// Pairs (i, i + n/2): Gemma, Qwen, Phi-3 (llama.cpp's NEOX).
    Neox,
}

/// The gated feed-forward activation: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnActivation {
    /// SiLU (SwiGLU): llama, Qwen, Phi-3.
    SiluGlu,
    /// tanh-approximated GELU (GeGLU): Gemma.
    GeluGlu,
}

/// The attention settings of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerAttention {
    /// Sliding window in tokens (the query itself included); None: global attention.
    pub window: Option<usize>,
    /// RoPE base of this layer.
    pub rope_base: f32,
    /// Angles are multiplied by this (linear RoPE scaling: 1 / factor; 1 for none).
    pub rope_freq_scale: f32,
}

/// Hyper-parameters of a decoder-only transformer, as read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name` (`unnamed` without one).
    pub name: String,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Embedding width.
    pub dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Feed-forward hidden width.
    pub ffn_dim: usize,
    /// Rows of the token embedding.
    pub vocab_size: usize,
    /// Positions a sequence may reach (`{arch}.context_length`, 2048 without it).
    pub context_length: usize,
    /// RoPE base of the global-attention layers (`{arch}.rope.freq_base`).
    pub rope_base: f32,
    /// Dimensions of each head that RoPE rotates.
    pub rope_dim: usize,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Per layer: window and RoPE parameters.
    pub layers: Vec<LayerAttention>,
}

impl ModelConfig {
    /// The KV cache's geometry for this model with keys and values stored as `kv_type`.
    pub fn kv_layout(&self, kv_type: KvType) -> KvLayout {
        KvLayout {
            n_layers: self.n_layers,
            kv_dim: self.n_kv_heads * self.head_dim,
            head_dim: self.head_dim,
            kv_type,
        }
    }
}

/// One step's worth of tokens, flattened across sequences.
pub struct ForwardBatch<'a> {
    /// Every token of the step.
    pub tokens: &'a [u32],
    /// Position of each token in its sequence.
    pub positions: &'a [usize],
    /// Block table of each token's sequence (already extended to cover its position).
    pub tables: &'a [&'a [BlockId]],
    /// Indices (into `tokens`) of the tokens whose logits are wanted, in output order.
    pub logit_rows: &'a [usize],
}

/// Everything a forward pass needs besides the weights.
pub struct ForwardCtx<'a> {
    /// The compute threads.
    pub pool: &'a ThreadPool,
    /// The kernel tier.
    pub kernels: &'a Kernels,
}

/// A loaded model.
pub struct Model(decoder::Decoder);

impl Model {
    /// The model's configuration from the file's metadata alone (no weights are read): what
    /// `rill info` sizes the KV cache with.
    pub fn describe(gguf: &GgufFile) -> Result<ModelConfig> {
        Ok(Self::describe_arch(gguf)?.0)
    }

    /// Reads the configuration and weights of any supported architecture.
    pub fn load(gguf: &GgufFile) -> Result<Self> {
        let (cfg, features) = Self::describe_arch(gguf)?;
        Ok(Model(decoder::Decoder::load(gguf, cfg, features)?))
    }

    /// Architecture dispatch: the one place that maps `general.architecture` to a model.
    fn describe_arch(gguf: &GgufFile) -> Result<(ModelConfig, decoder::Features)> {
        let arch = gguf.req_str("general.architecture")?;
        Ok(match arch {
            "llama" => llama::describe(gguf)?,
            "gemma3" => gemma3::describe(gguf)?,
            "qwen2" => qwen::describe_qwen2(gguf)?,
            "qwen3" => qwen::describe_qwen3(gguf)?,
            "phi3" => phi3::describe(gguf)?,
            other => return Err(EngineError::UnsupportedArchitecture(other.to_string())),
        })
    }

    /// Hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.0.cfg
    }

    /// Runs the batch, writing K/V into `kv`, and fills `logits` with one row of
    /// `vocab_size` per entry of `batch.logit_rows`.
    pub fn forward(
        &self,
        ctx: &ForwardCtx<'_>,
        ws: &mut Workspace,
        batch: &ForwardBatch<'_>,
        kv: &mut KvCache,
        logits: &mut Vec<f32>,
    ) {
        self.0.forward(ctx, ws, batch, kv, logits)
    }

    /// Bytes of weights (the mmap'd tensors).
    pub fn weight_bytes(&self) -> usize {
        self.0.weight_bytes()
    }

    /// Heap bytes of the weights repacked at load (they replace their mmap'd pages, which
    /// are released from the resident set).
    pub fn repacked_bytes(&self) -> usize {
        self.0.repacked_bytes()
    }
}

pub use ops::Workspace;
