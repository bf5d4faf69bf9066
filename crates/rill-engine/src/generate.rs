//! Single-sequence generation on an [`Engine`]: prefill in chunks, then decode with a sampler and
//! the incremental detokenizer. Used by `rill generate`, tests and the engine benchmark; the
//! scheduler runs many of these interleaved instead.

use std::time::{Duration, Instant};

use crate::detokenizer::Detokenizer;
use crate::engine::{Engine, StepItem};
use crate::error::Result;
use crate::kv_cache::SeqId;
use crate::sampler::{SampledToken, Sampler, SamplingParams};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// max_tokens or the context length.
    Length,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<SampledToken>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub ttft: Duration,
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
        if tokens.len() >= opts.max_tokens || engine.seq_len(seq).unwrap_or(0) + 1 > n_ctx {
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
