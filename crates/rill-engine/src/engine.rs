//! The engine: a loaded model, its tokenizer and chat template, the KV block pool, the compute
//! pool, and [`Engine::step`], which runs one batched forward pass over any mix of decode tokens
//! and prefill chunks of many sequences. It knows nothing about requests or clients: the
//! scheduler drives it from its own thread.

use std::path::Path;
use std::sync::Arc;

use crate::chat_template::ChatTemplate;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{BlockId, KvCache, KvStats, KvType, SeqId, BLOCK_TOKENS};
use crate::model::{ForwardBatch, ForwardCtx, Model, ModelConfig, Workspace};
use crate::quant::Kernels;
use crate::threadpool::ThreadPool;
use crate::tokenizer::Tokenizer;

/// How to size the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Compute threads including the engine thread (0: one per physical core).
    pub threads: usize,
    /// KV cache capacity in tokens (rounded up to whole blocks); 0: from `kv_bytes`.
    pub kv_tokens: usize,
    /// KV cache capacity in bytes, used when `kv_tokens` is 0; both 0: the context length.
    pub kv_bytes: usize,
    /// Force a kernel tier by name (`scalar`, `avx2`, `avx512`); None: best available.
    pub kernels: Option<String>,
    /// A chat template (Jinja source) replacing the model's `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// The element format of the KV cache (`kv_bytes` buys tokens in this format).
    pub kv_type: KvType,
}

/// One sequence's share of a step: `tokens` are appended at the sequence's current length.
#[derive(Debug, Clone)]
pub struct StepItem<'a> {
    /// The sequence (added with [`Engine::add_sequence`]).
    pub seq: SeqId,
    /// Token ids to append and compute.
    pub tokens: &'a [u32],
    /// Return logits for the last `logits` tokens of this item (0: none; 1: the next-token
    /// distribution; more: one row per position, as speculative verification needs).
    pub logits: usize,
}

/// A loaded model ready to run steps (see the module doc).
pub struct Engine {
    model: Model,
    /// Shared so request handlers can tokenize while the engine thread runs.
    pub tokenizer: Arc<Tokenizer>,
    /// The model's chat template (or the configured one).
    pub chat_template: Arc<ChatTemplate>,
    kv: KvCache,
    pool: ThreadPool,
    kernels: Kernels,
    ws: Workspace,
    logits: Vec<f32>,
}

impl Engine {
    /// Loads a GGUF model and sizes the KV cache, thread pool and kernels by `cfg`.
    pub fn load(path: &Path, cfg: &EngineConfig) -> Result<Self> {
        let gguf = GgufFile::open(path)?;
        let model = Model::load(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        if tokenizer.vocab_size() < model.config().vocab_size {
            return Err(EngineError::BadMetadata {
                key: "tokenizer.ggml.tokens".into(),
                reason: format!(
                    "{} tokens for an embedding of {} rows",
                    tokenizer.vocab_size(),
                    model.config().vocab_size
                ),
            });
        }
        let tok_text = |id: Option<u32>| {
            id.map(|i| String::from_utf8_lossy(tokenizer.token_bytes(i)).into_owned())
                .unwrap_or_default()
        };
        let chat_template = ChatTemplate::new(
            cfg.chat_template
                .as_deref()
                .or(tokenizer.chat_template.as_deref()),
            &tok_text(tokenizer.bos_id),
            &tok_text(tokenizer.eos_id),
        )?;
        let kernels = match &cfg.kernels {
            Some(name) => Kernels::by_name(name).ok_or_else(|| {
                EngineError::InvalidInput(format!(
                    "kernel set `{name}` is not supported on this CPU (try scalar, avx2, avx-vnni, avx512)"
                ))
            })?,
            None => Kernels::detect(),
        };
        let threads = if cfg.threads == 0 {
            crate::sysinfo::physical_cores()
        } else {
            cfg.threads
        };
        let layout = model.config().kv_layout(cfg.kv_type);
        let kv_tokens = if cfg.kv_tokens > 0 {
            cfg.kv_tokens
        } else if cfg.kv_bytes > 0 {
            (cfg.kv_bytes / (layout.bytes_per_block() / BLOCK_TOKENS)).max(BLOCK_TOKENS)
        } else {
            model.config().context_length
        };
        let windows: Vec<Option<usize>> = model.config().layers.iter().map(|l| l.window).collect();
        let kv = KvCache::new(layout, &windows, kv_tokens.div_ceil(BLOCK_TOKENS))?;
        Ok(Self {
            model,
            tokenizer: Arc::new(tokenizer),
            chat_template: Arc::new(chat_template),
            kv,
            pool: ThreadPool::new(threads),
            kernels,
            ws: Workspace::new(),
            logits: Vec::new(),
        })
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// The kernel set the forward pass runs on.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Compute threads, the engine thread included.
    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Times the compute pool fell back to single-threaded regions because of CPU contention.
    pub fn contention_fallbacks(&self) -> u64 {
        self.pool.solo_spells()
    }

    /// Bytes of the weight tensors in the file.
    pub fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// Heap bytes of the weights repacked into tiles at load.
    pub fn repacked_bytes(&self) -> usize {
        self.model.repacked_bytes()
    }

    /// KV block pool usage.
    pub fn kv_stats(&self) -> KvStats {
        self.kv.stats()
    }

    /// Starts an empty sequence (fails if `seq` exists).
    pub fn add_sequence(&mut self, seq: SeqId) -> Result<()> {
        self.kv.add_sequence(seq)
    }

    /// Frees a sequence and its KV blocks (idempotent).
    pub fn free_sequence(&mut self, seq: SeqId) {
        self.kv.free_sequence(seq)
    }

    /// Tokens in the KV cache of `seq`; None if it does not exist.
    pub fn seq_len(&self, seq: SeqId) -> Option<usize> {
        self.kv.seq_len(seq)
    }

    /// Attaches the longest cached prefix of `tokens` to a new, empty sequence (prefix sharing);
    /// returns how many tokens it covers: the caller computes only `tokens[returned..]`.
    pub fn attach_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize> {
        self.kv.attach_prefix(seq, tokens)
    }

    /// KV blocks `seq` needs beyond what it holds to take `new_tokens` more.
    pub fn blocks_needed(&self, seq: SeqId, new_tokens: usize) -> usize {
        self.kv.blocks_needed(seq, new_tokens)
    }

    /// Drops every prefix-cache block no sequence holds.
    pub fn clear_prefix_cache(&mut self) {
        self.kv.clear_prefix_cache()
    }

    /// Drops the last tokens of a sequence (speculative rollback, recompute after preemption).
    pub fn truncate_sequence(&mut self, seq: SeqId, len: usize) -> Result<()> {
        self.kv.truncate(seq, len)
    }

    /// Runs one batched forward pass. Returns `logits` rows of `vocab_size` logits per item, in
    /// item and position order. All-or-nothing: on error no sequence changed.
    pub fn step(&mut self, items: &[StepItem<'_>]) -> Result<StepLogits<'_>> {
        let n_ctx = self.model.config().context_length;
        let vocab = self.model.config().vocab_size;
        let mut needed = 0;
        for (i, it) in items.iter().enumerate() {
            let len = self
                .kv
                .seq_len(it.seq)
                .ok_or(EngineError::UnknownSequence(it.seq.0))?;
            if it.logits > it.tokens.len() {
                return Err(EngineError::InvalidInput(format!(
                    "step item for sequence {} asks logits for {} of its {} tokens",
                    it.seq.0,
                    it.logits,
                    it.tokens.len()
                )));
            }
            if it.tokens.is_empty() {
                return Err(EngineError::InvalidInput(format!(
                    "step item for sequence {} has no tokens",
                    it.seq.0
                )));
            }
            if items[..i].iter().any(|o| o.seq == it.seq) {
                return Err(EngineError::InvalidInput(format!(
                    "sequence {} appears twice in one step",
                    it.seq.0
                )));
            }
            if let Some(&bad) = it.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(EngineError::BadToken(bad));
            }
            if len + it.tokens.len() > n_ctx {
                return Err(EngineError::ContextOverflow {
                    seq: it.seq.0,
                    n_ctx,
                });
            }
            needed += self.kv.blocks_needed(it.seq, it.tokens.len());
        }
        let free = self.kv.stats().available_blocks();
        if needed > free {
            return Err(EngineError::OutOfBlocks { needed, free });
        }
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut table_of_token = Vec::new();
        let mut logit_rows = Vec::new();
        let mut tables: Vec<Vec<BlockId>> = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let start = self.kv.extend(it.seq, it.tokens)?;
            tables.push(
                self.kv
                    .block_table(it.seq)
                    .expect("a sequence that `extend` just grew has a block table")
                    .to_vec(),
            );
            for (j, &t) in it.tokens.iter().enumerate() {
                tokens.push(t);
                positions.push(start + j);
                table_of_token.push(i);
            }
            logit_rows.extend(tokens.len() - it.logits..tokens.len());
        }
        let token_tables: Vec<&[BlockId]> = table_of_token
            .iter()
            .map(|&i| tables[i].as_slice())
            .collect();
        let batch = ForwardBatch {
            tokens: &tokens,
            positions: &positions,
            tables: &token_tables,
            logit_rows: &logit_rows,
        };
        let ctx = ForwardCtx {
            pool: &self.pool,
            kernels: &self.kernels,
        };
        self.model
            .forward(&ctx, &mut self.ws, &batch, &mut self.kv, &mut self.logits);
        Ok(StepLogits {
            data: &self.logits,
            vocab,
        })
    }
}

/// Logit rows returned by a step.
pub struct StepLogits<'a> {
    data: &'a [f32],
    vocab: usize,
}

impl<'a> StepLogits<'a> {
    /// Rows of `vocab` logits laid out one after another (for backends other than [`Engine`]).
    pub fn new(data: &'a [f32], vocab: usize) -> Self {
        assert!(
            vocab > 0 && data.len().is_multiple_of(vocab),
            "logit rows: {} values are not whole rows of {vocab}",
            data.len()
        );
        Self { data, vocab }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Row `i`: the logits of one position (in item and position order).
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }
}
