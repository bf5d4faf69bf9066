//! One request's state on the engine thread: its tokens (prompt, then everything generated),
//! how many of them the KV cache holds, its sampler, detokenizer and outbox, and its timings.
//! Preemption only drops the KV cache; everything here survives, so a recomputed sequence
//! resumes its stream exactly where it stopped.

use std::time::Instant;

use rill_engine::{Detokenizer, Sampler, SeqId};

use crate::request::{Timings, Usage};
use crate::speculative::{Acceptance, NgramIndex};
use crate::stream::Outbox;

/// A sequence's speculative-decoding state (None on a sequence that does not speculate).
pub(crate) struct SpecState {
    pub index: NgramIndex,
    pub acceptance: Acceptance,
    /// Draft tokens verified, and accepted, over the request's life.
    pub drafted: u64,
    pub accepted: u64,
    /// Draft tokens accepted in the latest step that verified a draft.
    pub last_accepted: usize,
}

pub(crate) struct Sequence {
    /// The engine's id for this sequence's current KV state (new after each preemption).
    pub seq: SeqId,
    /// Prompt followed by every generated token; the last generated one is not yet in the KV
    /// cache while decoding.
    pub context: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens of `context` in the KV cache.
    pub computed: usize,
    pub max_tokens: usize,
    pub priority: i32,
    /// Submission order (FCFS key, kept across preemptions).
    pub arrival: u64,
    pub sampler: Sampler,
    pub detok: Detokenizer,
    pub outbox: Outbox,
    pub submitted: Instant,
    pub admitted: Option<Instant>,
    /// Admission order into the running batch (newest is preempted first).
    pub started_order: u64,
    pub last_token_at: Option<Instant>,
    pub first_token_at: Option<Instant>,
    /// Gaps between consecutive tokens, in ms.
    pub gaps: Vec<f32>,
    pub preemptions: u32,
    pub cached_tokens: usize,
    pub spec: Option<SpecState>,
    /// The output constraint, if any (see [`ConstraintSlot`]).
    pub constraint: Option<ConstraintSlot>,
}

/// A constrained sequence's matcher and the logit row it masks (kept to reuse its memory).
pub(crate) struct ConstraintSlot {
    pub state: rill_engine::ConstraintState,
    pub row: Vec<f32>,
    /// A lazy constraint before its trigger appeared: nothing is masked or committed yet.
    pub awaiting: Option<Trigger>,
}

/// A lazy constraint's trigger and the output bytes searched for it so far.
pub(crate) struct Trigger {
    pub text: Vec<u8>,
    pub seen: Vec<u8>,
}

impl ConstraintSlot {
    /// Whether the constraint masks this sequence's next token.
    pub fn active(&self) -> bool {
        self.awaiting.is_none()
    }

    /// After `bytes` were generated while awaiting the trigger: when the trigger is now in the
    /// output, the constraint starts there (the output from the trigger on is forced through
    /// it). Err: that output does not fit the constraint.
    pub fn observe(&mut self, bytes: &[u8]) -> Result<(), rill_engine::ConstraintError> {
        let Some(t) = self.awaiting.as_mut() else {
            return Ok(());
        };
        let from = t.seen.len().saturating_sub(t.text.len().saturating_sub(1));
        t.seen.extend_from_slice(bytes);
        let Some(at) = t.seen[from..]
            .windows(t.text.len())
            .position(|w| w == t.text.as_slice())
        else {
            return Ok(());
        };
        let tail = t.seen[from + at..].to_vec();
        self.awaiting = None;
        self.state.force_bytes(&tail)
    }
}

impl Sequence {
    pub fn generated(&self) -> usize {
        self.context.len() - self.prompt_len
    }

    /// Tokens still to run through the model before the next sampling.
    pub fn pending(&self) -> usize {
        self.context.len() - self.computed
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            cached_tokens: self.cached_tokens,
        }
    }

    pub fn timings(&self, now: Instant) -> Timings {
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let mut gaps = self.gaps.clone();
        gaps.sort_by(f32::total_cmp);
        let pct = |p: f64| {
            if gaps.is_empty() {
                0.0
            } else {
                gaps[((gaps.len() as f64 * p).ceil() as usize).clamp(1, gaps.len()) - 1] as f64
            }
        };
        let mean = if gaps.is_empty() {
            0.0
        } else {
            gaps.iter().map(|&g| g as f64).sum::<f64>() / gaps.len() as f64
        };
        let decode_s = match (self.first_token_at, self.last_token_at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let prefill_ms = match (self.admitted, self.first_token_at) {
            (Some(a), Some(f)) => ms(a, f),
            _ => 0.0,
        };
        let computed = self.prompt_len.saturating_sub(self.cached_tokens);
        Timings {
            queue_ms: self
                .admitted
                .map_or(ms(self.submitted, now), |a| ms(self.submitted, a)),
            ttft_ms: self.first_token_at.map_or(0.0, |t| ms(self.submitted, t)),
            prefill_ms,
            prompt_tokens_per_s: if prefill_ms > 0.0 {
                computed as f64 / (prefill_ms / 1e3)
            } else {
                0.0
            },
            itl_mean_ms: mean,
            itl_p50_ms: pct(0.5),
            itl_p95_ms: pct(0.95),
            decode_tokens_per_s: if decode_s > 0.0 {
                self.gaps.len() as f64 / decode_s
            } else {
                0.0
            },
            total_ms: ms(self.submitted, now),
            preemptions: self.preemptions,
            draft_tokens: self.spec.as_ref().map_or(0, |s| s.drafted),
            accepted_tokens: self.spec.as_ref().map_or(0, |s| s.accepted),
        }
    }
}
