//! A snapshot of the scheduler's state and counters, refreshed by the engine thread after every
//! step and read by metrics, heartbeats and tests.

use rill_engine::KvStats;

use crate::controller::ControllerState;
use crate::memory::PressureLevel;
use crate::request::{ErrorCode, FinishReason};
use crate::speculative::MAX_DRAFT_LIMIT;

/// The scheduler's state (gauges) and cumulative counters since start.
#[derive(Debug, Clone, Default)]
pub struct SchedulerStats {
    /// Sequences in the running batch.
    pub running: usize,
    /// Requests waiting for admission (including preempted ones).
    pub waiting: usize,
    /// The batch controller's current limits and fitted step-time model.
    pub controller: ControllerState,
    /// Memory pressure level at the last admission check.
    pub pressure: PressureLevel,
    /// KV block pool usage (blocks total, free, cached) when the snapshot was taken.
    pub kv: KvStats,
    /// Process RSS in bytes at the last reading (0 where unknown).
    pub rss_bytes: u64,
    /// Forward steps run.
    pub steps: u64,
    /// Duration of the last step's forward pass, in ms.
    pub last_step_ms: f64,
    /// Decode rows (sequences sampling one token) in the last step.
    pub last_decode_rows: usize,
    /// Prompt tokens prefilled in the last step.
    pub last_prefill_tokens: usize,
    /// Prompt (and recomputed) tokens run through the model.
    pub prefill_tokens: u64,
    /// Prompt tokens served from the prefix cache instead.
    pub prefix_hit_tokens: u64,
    /// Tokens sampled.
    pub generated_tokens: u64,
    /// Sequences preempted for memory (their KV freed, to be recomputed).
    pub preemptions: u64,
    /// Requests admitted into the running batch (each counted once, re-admissions after
    /// preemption excluded).
    pub admitted: u64,
    /// Requests ended normally, by reason (stop, length, cancelled).
    pub finished_stop: u64,
    /// Requests that reached `max_tokens`.
    pub finished_length: u64,
    /// Requests cancelled by their client.
    pub cancelled: u64,
    /// Requests ended by an error, by code (in `ErrorCode::ALL` order).
    pub errors: [u64; 5],
    /// Submissions rejected: queue full, or not fitting at all.
    pub rejected_overload: u64,
    /// Submissions rejected by [`check`](crate::SchedulerHandle::check): invalid or too long.
    pub rejected_invalid: u64,
    /// Completions per second, smoothed (drives the retry-after estimate).
    pub completion_rate: f64,
    /// Speculative decoding: draft tokens verified, and accepted.
    pub draft_tokens: u64,
    /// Draft tokens accepted (matched the sampled token).
    pub accepted_tokens: u64,
    /// Verified drafts by accepted tokens: `accepted_hist[n]` drafts had exactly `n` of their
    /// tokens accepted (n up to [`crate::speculative::MAX_DRAFT_LIMIT`]).
    pub accepted_hist: [u64; MAX_DRAFT_LIMIT + 1],
    /// Draft rows in the last step.
    pub last_draft_rows: usize,
}

impl SchedulerStats {
    /// Requests ended with `reason` so far.
    pub fn finished(&self, reason: FinishReason) -> u64 {
        match reason {
            FinishReason::Stop => self.finished_stop,
            FinishReason::Length => self.finished_length,
            FinishReason::Cancelled => self.cancelled,
        }
    }

    /// Requests ended by error `code` so far.
    pub fn errors_of(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.errors[i])
    }

    pub(crate) fn count_error(&mut self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i] += 1;
        }
    }

    pub(crate) fn count_draft(&mut self, drafted: usize, accepted: usize) {
        self.draft_tokens += drafted as u64;
        self.accepted_tokens += accepted as u64;
        self.accepted_hist[accepted.min(MAX_DRAFT_LIMIT)] += 1;
    }

    pub(crate) fn count_finish(&mut self, reason: FinishReason) {
        match reason {
            FinishReason::Stop => self.finished_stop += 1,
            FinishReason::Length => self.finished_length += 1,
            FinishReason::Cancelled => self.cancelled += 1,
        }
    }
}
