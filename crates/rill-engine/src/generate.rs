//! Single-sequence generation on an [`Engine`]: prefill in chunks, then decode with a sampler and
//! the incremental detokenizer. Used by `rill generate`, tests and the engine benchmark; the
//! scheduler runs many of these interleaved instead.

use std::time::{Duration, Instant};

use crate::detokenizer::Detokenizer;
use crate::engine::{Engine, StepItem};
use crate::error::Result;
use crate::kv_cache::SeqId;
use crate::sampler::{SampledToken, Sampler, SamplingParams};

/// How [`generate`] runs.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// How tokens are picked.
    pub sampling: SamplingParams,
    /// Text that ends generation (not included in the output).
    pub stop: Vec<String>,
    /// Prompt tokens per prefill step.
    pub prefill_chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            prefill_chunk: 512,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// max_tokens or the context length.
    Length,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated tokens (a stop token included).
    pub tokens: Vec<SampledToken>,
    /// The generated text, up to any stop sequence.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Time to the first generated token.
    pub ttft: Duration,
    /// Time for the whole generation.
    pub total: Duration,
}

static NEXT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 40);

/// Generates from prompt ids, calling `on_text` with each released piece of text.
pub fn generate(
    engine: &mut Engine,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let start = Instant::now();
    let seq = SeqId(NEXT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    engine.add_sequence(seq)?;
    let result = run(engine, seq, prompt, opts, &mut on_text, start);
    engine.free_sequence(seq);
    result
}

fn run(
    engine: &mut Engine,
    seq: SeqId,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut impl FnMut(&str),
    start: Instant,
) -> Result<Generation> {
    let mut sampler = Sampler::new(opts.sampling.clone());
    sampler.accept(prompt);
    let mut detok = Detokenizer::new(opts.stop.clone());
    let n_ctx = engine.config().context_length;
    let chunk = opts.prefill_chunk.max(1);
    let mut logits = Vec::new();
    for (i, part) in prompt.chunks(chunk).enumerate() {
        let last = (i + 1) * chunk >= prompt.len();
        let out = engine.step(&[StepItem {
            seq,
            tokens: part,
            logits: usize::from(last),
        }])?;
        if last {
            logits = out.row(0).to_vec();
        }
    }
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut ttft = Duration::ZERO;
    let mut finish = FinishReason::Length;
    while tokens.len() < opts.max_tokens {
        let tok = sampler.sample(&logits);
        if tokens.is_empty() {
            ttft = start.elapsed();
        }
        let id = tok.id;
        tokens.push(tok);
        sampler.accept(&[id]);
        if engine.tokenizer.is_stop(id) && !opts.sampling.ignore_eos {
            finish = FinishReason::Stop;
            break;
        }
        let rel = detok.push(engine.tokenizer.token_bytes(id));
        if !rel.text.is_empty() {
            on_text(&rel.text);
            text.push_str(&rel.text);
        }
        if rel.stopped.is_some() {
            finish = FinishReason::Stop;
            break;
        }
        if tokens.len() >= opts.max_tokens || seq_len(engine, seq) + 1 > n_ctx {
            break;
        }
        let out = engine.step(&[StepItem {
            seq,
            tokens: &[id],
            logits: 1,
        }])?;
        logits.clear();
        logits.extend_from_slice(out.row(0));
    }
    let rest = detok.flush();
    if !rest.is_empty() {
        on_text(&rest);
        text.push_str(&rest);
    }
    Ok(Generation {
        tokens,
        text,
        finish,
        prompt_tokens: prompt.len(),
        ttft,
        total: start.elapsed(),
    })
}

/// The length of `seq`, which [`generate`] added and frees only after [`run`] returns.
fn seq_len(engine: &Engine, seq: SeqId) -> usize {
    engine
        .seq_len(seq)
        .expect("generate's sequence lives until run returns")
}
