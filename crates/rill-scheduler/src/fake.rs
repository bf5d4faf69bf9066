//! A deterministic [`Backend`] without a model, for testing the scheduler: scheduling,
//! preemption, cancellation, backpressure and the controller under many random interleavings
//! run in seconds instead of hours.
//!
//! Its KV accounting is real (rill's [`KvCache`]: blocks, ref counts, the prefix cache,
//! eviction, rollback), so a leaked block or a wrong prefix is as visible as with the model.
//! Its "forward pass" is a pure function of each sequence's tokens: the next token after a
//! context is [`FakeEngine::next_token`], so a test knows every request's exact output without
//! running anything, and a token lost, repeated or taken from another sequence shows. Token
//! [`FakeEngine::STOP`] ends generation; a context ending in [`FakeEngine::POISON`] yields
//! NaN logits (the scheduler must fail that request alone with `numerical_error`).
//!
//! The fake checks what a real backend relies on, at every call, and records each violation
//! in its [`FakeProbe`] instead of panicking on the engine thread: its context of each
//! sequence must match the KV cache's length, a step must name live sequences once each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rill_engine::kv_cache::{KvCache, KvLayout};
use rill_engine::{
    ChatTemplate, EngineError, KvStats, KvType, SeqId, StepItem, StepLogits, Tokenizer,
};

use crate::backend::Backend;

/// Size and speed of a [`FakeEngine`].
#[derive(Debug, Clone, Copy)]
pub struct FakeConfig {
    /// Tokens in the vocabulary (at least 8).
    pub vocab: usize,
    /// KV block equivalents in the pool.
    pub kv_blocks: usize,
    /// Positions one sequence may hold.
    pub context_length: usize,
    /// Time one step takes, plus `per_row` for each token in it (the controller sees these).
    pub step_time: Duration,
    /// Extra time per token of a step.
    pub per_row: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            vocab: 64,
            kv_blocks: 256,
            context_length: 2048,
            step_time: Duration::ZERO,
            per_row: Duration::ZERO,
        }
    }
}

/// What a [`FakeEngine`] observed, shared with the test that drives it.
#[derive(Debug, Default)]
pub struct FakeProbe {
    steps: AtomicU64,
    rows: AtomicU64,
    max_items: AtomicUsize,
    live: AtomicUsize,
    violations: Mutex<Vec<String>>,
}

impl FakeProbe {
    /// Steps run.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Acquire)
    }

    /// Tokens computed over all steps.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Acquire)
    }

    /// The most sequences one step carried.
    pub fn max_items(&self) -> usize {
        self.max_items.load(Ordering::Acquire)
    }

    /// Sequences registered and not yet freed.
    pub fn live_sequences(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Broken backend invariants seen so far (empty when the scheduler behaved).
    pub fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn violation(&self, what: String) {
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

/// The fake backend. See the module documentation.
pub struct FakeEngine {
    cfg: FakeConfig,
    kv: KvCache,
    contexts: HashMap<SeqId, Vec<u32>>,
    tokenizer: Arc<Tokenizer>,
    chat_template: Arc<ChatTemplate>,
    logits: Vec<f32>,
    probe: Arc<FakeProbe>,
}

impl FakeEngine {
    /// The end-of-sequence token.
    pub const STOP: u32 = 0;
    /// A token after which the logits are NaN.
    pub const POISON: u32 = 1;

    /// A fake engine and the probe that watches it.
    pub fn new(cfg: FakeConfig) -> Result<(Self, Arc<FakeProbe>), EngineError> {
        if cfg.vocab < 8 {
            return Err(EngineError::InvalidInput(format!(
                "a fake vocabulary of {} tokens (at least 8)",
                cfg.vocab
            )));
        }
        let layout = KvLayout {
            n_layers: 1,
            kv_dim: 32,
            head_dim: 32,
            kv_type: KvType::F16,
        };
        let kv = KvCache::new(layout, &[None], cfg.kv_blocks)?;
        let pieces: Vec<String> = (0..cfg.vocab)
            .map(|i| match i as u32 {
                Self::STOP => "</s>".to_string(),
                Self::POISON => "<nan>".to_string(),
                _ => format!("\u{2581}t{i}"),
            })
            .collect();
        let probe = Arc::new(FakeProbe::default());
        Ok((
            Self {
                cfg,
                kv,
                contexts: HashMap::new(),
                tokenizer: Arc::new(Tokenizer::from_pieces(&pieces, vec![Self::STOP])),
                chat_template: Arc::new(ChatTemplate::new(None, "", "")?),
                logits: Vec::new(),
                probe: probe.clone(),
            },
            probe,
        ))
    }

    /// The token the fake model predicts after `context` (never [`Self::POISON`]): a hash of
    /// the last two tokens, [`Self::STOP`] about once in 97.
    pub fn next_token(vocab: usize, context: &[u32]) -> u32 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &t in &context[context.len().saturating_sub(2)..] {
            h = (h ^ u64::from(t)).wrapping_mul(0x0100_0000_01b3);
        }
        h ^= h >> 29;
        if h.is_multiple_of(97) {
            Self::STOP
        } else {
            2 + (h % (vocab as u64 - 2)) as u32
        }
    }

    /// Appends the logits of the context `ctx`'s last position.
    fn push_row(&mut self, ctx_end: &[u32]) {
        let vocab = self.cfg.vocab;
        let start = self.logits.len();
        if ctx_end.last() == Some(&Self::POISON) {
            self.logits.resize(start + vocab, f32::NAN);
            return;
        }
        self.logits.resize(start + vocab, -1.0);
        let next = Self::next_token(vocab, ctx_end) as usize;
        self.logits[start + next] = 1.0;
    }

    fn check_len(&self, seq: SeqId, at: &str) {
        let ours = self.contexts.get(&seq).map(Vec::len);
        let kv = self.kv.seq_len(seq);
        if ours != kv {
            self.probe.violation(format!(
                "{at}: sequence {} holds {ours:?} tokens, the KV cache {kv:?}",
                seq.0
            ));
        }
    }
}

impl Backend for FakeEngine {
    fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    fn chat_template(&self) -> &Arc<ChatTemplate> {
        &self.chat_template
    }

    fn context_length(&self) -> usize {
        self.cfg.context_length
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab
    }

    fn kv_stats(&self) -> KvStats {
        self.kv.stats()
    }

    fn blocks_needed(&self, seq: SeqId, new_tokens: usize) -> usize {
        self.kv.blocks_needed(seq, new_tokens)
    }

    fn seq_len(&self, seq: SeqId) -> Option<usize> {
        self.kv.seq_len(seq)
    }

    fn add_sequence(&mut self, seq: SeqId) -> Result<(), EngineError> {
        if self.contexts.contains_key(&seq) {
            self.probe
                .violation(format!("sequence {} added twice", seq.0));
        }
        self.kv.add_sequence(seq)?;
        self.contexts.insert(seq, Vec::new());
        self.probe
            .live
            .store(self.contexts.len(), Ordering::Release);
        Ok(())
    }

    fn attach_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, EngineError> {
        let n = self.kv.attach_prefix(seq, tokens)?;
        match self.contexts.get_mut(&seq) {
            Some(c) if c.is_empty() => c.extend_from_slice(&tokens[..n]),
            _ => self.probe.violation(format!(
                "a prefix attached to sequence {}, which is unknown or not empty",
                seq.0
            )),
        }
        self.check_len(seq, "attach_prefix");
        Ok(n)
    }

    fn free_sequence(&mut self, seq: SeqId) {
        self.kv.free_sequence(seq);
        self.contexts.remove(&seq);
        self.probe
            .live
            .store(self.contexts.len(), Ordering::Release);
    }

    fn truncate_sequence(&mut self, seq: SeqId, len: usize) -> Result<(), EngineError> {
        self.kv.truncate(seq, len)?;
        if let Some(c) = self.contexts.get_mut(&seq) {
            c.truncate(len);
        }
        self.check_len(seq, "truncate");
        Ok(())
    }

    fn step(&mut self, items: &[StepItem<'_>]) -> Result<StepLogits<'_>, EngineError> {
        let mut needed = 0;
        for (i, it) in items.iter().enumerate() {
            let Some(ctx) = self.contexts.get(&it.seq) else {
                self.probe
                    .violation(format!("step names unknown sequence {}", it.seq.0));
                return Err(EngineError::UnknownSequence(it.seq.0));
            };
            if items[..i].iter().any(|o| o.seq == it.seq) || it.tokens.is_empty() {
                self.probe.violation(format!(
                    "step item for sequence {} is repeated or empty",
                    it.seq.0
                ));
                return Err(EngineError::InvalidInput("bad step item".into()));
            }
            if it.logits > it.tokens.len() || ctx.len() + it.tokens.len() > self.cfg.context_length
            {
                self.probe.violation(format!(
                    "step item for sequence {} overflows its context or asks too many logits",
                    it.seq.0
                ));
                return Err(EngineError::InvalidInput("bad step item".into()));
            }
            if let Some(&bad) = it.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
                return Err(EngineError::BadToken(bad));
            }
            needed += self.kv.blocks_needed(it.seq, it.tokens.len());
        }
        let free = self.kv.stats().available_blocks();
        if needed > free {
            self.probe.violation(format!(
                "a step needing {needed} blocks was planned with {free} available"
            ));
            return Err(EngineError::OutOfBlocks { needed, free });
        }
        self.logits.clear();
        let mut rows = 0;
        for it in items {
            self.kv.extend(it.seq, it.tokens)?;
            let mut ctx = self.contexts.remove(&it.seq).unwrap_or_default();
            ctx.extend_from_slice(it.tokens);
            for k in (0..it.logits).rev() {
                self.push_row(&ctx[..ctx.len() - k]);
            }
            self.contexts.insert(it.seq, ctx);
            self.check_len(it.seq, "step");
            rows += it.tokens.len();
        }
        let delay = self.cfg.step_time + self.cfg.per_row * rows as u32;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.probe.steps.fetch_add(1, Ordering::AcqRel);
        self.probe.rows.fetch_add(rows as u64, Ordering::AcqRel);
        self.probe
            .max_items
            .fetch_max(items.len(), Ordering::AcqRel);
        Ok(StepLogits::new(&self.logits, self.cfg.vocab))
    }
}
