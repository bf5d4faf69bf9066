//! The seam between the scheduler and whatever computes: [`Backend`] is every call the engine
//! loop makes (a batched step, KV accounting, sequence lifetime), and nothing about how the
//! forward pass runs. rill's CPU [`Engine`] implements it; [`crate::fake::FakeEngine`] does for
//! tests that exercise scheduling without a model; a GPU backend would plug in here. The
//! types it speaks ([`SeqId`], [`StepItem`], [`StepLogits`], [`KvStats`], [`Tokenizer`]) are
//! the engine's public API, free of kernel types.

use std::sync::Arc;

use rill_engine::{
    ChatTemplate, Engine, EngineError, KvStats, SeqId, StepItem, StepLogits, Tokenizer,
};

/// What the engine loop needs from a model runner. Every method is called from the engine
/// thread only.
pub trait Backend: Send + 'static {
    /// The model's tokenizer (shared with request handlers, which tokenize prompts).
    fn tokenizer(&self) -> &Arc<Tokenizer>;
    /// The model's chat template (shared with request handlers).
    fn chat_template(&self) -> &Arc<ChatTemplate>;
    /// Positions one sequence may hold.
    fn context_length(&self) -> usize;
    /// Logits per row.
    fn vocab_size(&self) -> usize;
    /// The KV block pool's use.
    fn kv_stats(&self) -> KvStats;
    /// KV blocks `seq` needs beyond what it holds to take `new_tokens` more.
    fn blocks_needed(&self, seq: SeqId, new_tokens: usize) -> usize;
    /// Tokens a sequence holds (None: unknown sequence).
    fn seq_len(&self, seq: SeqId) -> Option<usize>;
    /// Registers a new, empty sequence.
    fn add_sequence(&mut self, seq: SeqId) -> Result<(), EngineError>;
    /// Attaches the longest cached prefix of `tokens` to a new sequence; returns the tokens it
    /// covers (the caller computes only the rest).
    fn attach_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, EngineError>;
    /// Frees a sequence and its blocks (idempotent).
    fn free_sequence(&mut self, seq: SeqId);
    /// Drops a sequence's tokens past `len` (speculative rollback).
    fn truncate_sequence(&mut self, seq: SeqId, len: usize) -> Result<(), EngineError>;
    /// One batched forward pass: each item's tokens are appended to its sequence, and the
    /// logits of each item's last `logits` tokens come back in item order. All-or-nothing.
    fn step(&mut self, items: &[StepItem<'_>]) -> Result<StepLogits<'_>, EngineError>;
    /// CPU threads a step keeps busy (decides whether constraint masks can be computed beside
    /// it on a spare core).
    fn compute_threads(&self) -> usize {
        1
    }
}

impl Backend for Engine {
    fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    fn chat_template(&self) -> &Arc<ChatTemplate> {
        &self.chat_template
    }

    fn context_length(&self) -> usize {
        self.config().context_length
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn kv_stats(&self) -> KvStats {
        Engine::kv_stats(self)
    }

    fn blocks_needed(&self, seq: SeqId, new_tokens: usize) -> usize {
        Engine::blocks_needed(self, seq, new_tokens)
    }

    fn seq_len(&self, seq: SeqId) -> Option<usize> {
        Engine::seq_len(self, seq)
    }

    fn add_sequence(&mut self, seq: SeqId) -> Result<(), EngineError> {
        Engine::add_sequence(self, seq)
    }

    fn attach_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, EngineError> {
        Engine::attach_prefix(self, seq, tokens)
    }

    fn free_sequence(&mut self, seq: SeqId) {
        Engine::free_sequence(self, seq)
    }

    fn truncate_sequence(&mut self, seq: SeqId, len: usize) -> Result<(), EngineError> {
        Engine::truncate_sequence(self, seq, len)
    }

    fn compute_threads(&self) -> usize {
        self.threads()
    }

    fn step(&mut self, items: &[StepItem<'_>]) -> Result<StepLogits<'_>, EngineError> {
        Engine::step(self, items)
    }
}
