//! Model architectures. Each architecture is a sibling module that turns GGUF tensors into its
//! weights and implements the batched forward pass over the paged KV cache; [`Model`] is the
//! closed set the engine dispatches on.

pub mod llama;
mod ops;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{BlockId, KvCache, KvLayout};
use crate::quant::Kernels;
use crate::threadpool::ThreadPool;

/// Hyper-parameters shared by the decoder-only transformers rill runs.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: String,
    pub name: String,
    pub n_layers: usize,
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rope_dim: usize,
    pub norm_eps: f32,
}

impl ModelConfig {
    pub fn kv_layout(&self) -> KvLayout {
        KvLayout {
            n_layers: self.n_layers,
            kv_dim: self.n_kv_heads * self.head_dim,
        }
    }
}

/// One step's worth of tokens, flattened across sequences.
pub struct ForwardBatch<'a> {
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
    pub pool: &'a ThreadPool,
    pub kernels: &'a Kernels,
}

pub enum Model {
    Llama(llama::Llama),
}

impl Model {
    pub fn load(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.req_str("general.architecture")?;
        match arch {
            "llama" => Ok(Model::Llama(llama::Llama::load(gguf)?)),
            other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Llama(m) => &m.cfg,
        }
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
        match self {
            Model::Llama(m) => m.forward(ctx, ws, batch, kv, logits),
        }
    }

    /// Bytes of weights (the mmap'd tensors).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Model::Llama(m) => m.weight_bytes(),
        }
    }

    /// Heap bytes of the weights repacked at load (they replace their mmap'd pages, which
    /// are released from the resident set).
    pub fn repacked_bytes(&self) -> usize {
        match self {
            Model::Llama(m) => m.repacked_bytes(),
        }
    }
}

pub use ops::Workspace;
