//! What goes into the scheduler (a [`Request`]) and what comes out of it (a stream of
//! [`Event`]s ending in exactly one terminal event: `Finished` or `Error`).

use std::time::{Duration, Instant};

use rill_engine::{ConstraintState, SampledToken, SamplingParams};

/// Scheduler-assigned id of a request, unique for the life of the process.
pub type RequestId = u64;

/// A generation request: prompt token ids and how to generate.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids (non-empty, each below the vocabulary size).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (the end-of-sequence token included).
    pub max_tokens: usize,
    /// How each token is picked (temperature, top-k/p, penalties, seed, logprobs).
    pub sampling: SamplingParams,
    /// Stop sequences: generation ends before any of them, which never reach the stream.
    pub stop: Vec<String>,
    /// Higher runs first; equal priorities are first come, first served.
    pub priority: i32,
    /// May draft tokens speculatively when the server has speculation on (the output is the
    /// same either way; false only trades speed for nothing, e.g. to measure).
    pub speculative: bool,
    /// What the output must match (JSON schema, grammar, regex): each step's logits are
    /// masked to the tokens it allows, and the generation stops when it is complete. A
    /// constrained request speculates like any other: drafts are trimmed to what the
    /// constraint allows, and each verified position is masked before it is sampled.
    pub constraint: Option<Constrained>,
}

/// A request's compiled constraint ([`ConstraintState`] at the start of the output, or of its
/// trigger).
#[derive(Clone)]
pub struct Constrained {
    /// The compiled constraint.
    pub state: Box<ConstraintState>,
    /// A lazy constraint's trigger: the output is free until this text appears in it; from
    /// then on the constraint holds, starting at the trigger's first byte (tool calls with
    /// `tool_choice: "auto"` start at `<tool_call>`). None: it holds from the first token.
    pub trigger: Option<String>,
}

impl Constrained {
    /// A constraint on the whole output.
    pub fn new(state: ConstraintState) -> Self {
        Self {
            state: Box::new(state),
            trigger: None,
        }
    }

    /// A constraint that starts where `trigger` first appears in the output.
    pub fn lazy(state: ConstraintState, trigger: impl Into<String>) -> Self {
        Self {
            state: Box::new(state),
            trigger: Some(trigger.into()),
        }
    }
}

impl std::fmt::Debug for Constrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrained")
            .field("trigger", &self.trigger)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A greedy request with defaults for everything else.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            priority: 0,
            speculative: true,
            constraint: None,
        }
    }
}

/// Why a generation ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Cancelled by the client.
    Cancelled,
}

impl FinishReason {
    /// The wire name: `"stop"`, `"length"` or `"cancelled"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Stable codes of failures after a request was accepted (they go on the wire as-is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The consumer did not read its stream fast enough.
    SlowConsumer,
    /// Preempted for memory more often than the configured bound.
    PreemptedTooOften,
    /// NaN or infinity in the logits.
    NumericalError,
    /// The server shut down before the generation ended.
    ServerShutdown,
    /// A bug or an engine failure.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order (e.g. to pre-register a metric per code).
    pub const ALL: [ErrorCode; 5] = [
        ErrorCode::SlowConsumer,
        ErrorCode::PreemptedTooOften,
        ErrorCode::NumericalError,
        ErrorCode::ServerShutdown,
        ErrorCode::Internal,
    ];

    /// The wire name in snake_case (e.g. `"slow_consumer"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::PreemptedTooOften => "preempted_too_often",
            ErrorCode::NumericalError => "numerical_error",
            ErrorCode::ServerShutdown => "server_shutdown",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated so far (the end-of-sequence token included).
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

/// The request's own latency summary, measured on the engine thread.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Submission to admission into the running batch.
    pub queue_ms: f64,
    /// Submission to the first generated token.
    pub ttft_ms: f64,
    /// Admission to the first token: the prompt's prefill (including any wait between chunks).
    pub prefill_ms: f64,
    /// Prompt tokens computed (not served from the prefix cache) per second of `prefill_ms`.
    pub prompt_tokens_per_s: f64,
    /// Mean, median and 95th percentile gap between consecutive tokens.
    pub itl_mean_ms: f64,
    /// Median gap between consecutive tokens, in ms.
    pub itl_p50_ms: f64,
    /// 95th percentile gap between consecutive tokens, in ms.
    pub itl_p95_ms: f64,
    /// Generated tokens per second after the first one.
    pub decode_tokens_per_s: f64,
    /// Submission to the end.
    pub total_ms: f64,
    /// Times this request was preempted (and recomputed).
    pub preemptions: u32,
    /// Draft tokens verified for this request, and how many of them were accepted.
    pub draft_tokens: u64,
    /// Draft tokens that matched the sampled token and were kept.
    pub accepted_tokens: u64,
}

/// One message of a request's stream.
#[derive(Debug, Clone)]
pub enum Event {
    /// The request entered the running batch after waiting in the queue.
    Started {
        /// Time from submission to admission.
        queue_time: Duration,
        /// Prompt tokens reused from the prefix cache.
        cached_tokens: usize,
    },
    /// New tokens and the text they released. When the consumer lags, several steps' tokens are
    /// coalesced into one event. `text` may be empty (text held back for a possible stop
    /// sequence or an incomplete UTF-8 character) and `tokens` may be empty (a final flush).
    Tokens {
        /// The sampled tokens, in order, with logprobs when asked for.
        tokens: Vec<SampledToken>,
        /// UTF-8 text these tokens released (possibly including text held back earlier).
        text: String,
        /// When the last of these tokens was sampled (for send-lag metrics).
        sampled_at: Instant,
    },
    /// Terminal: the generation ended normally.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// The stop sequence that ended it, if any.
        stop: Option<String>,
        /// Final token counts.
        usage: Usage,
        /// The request's latency summary.
        timings: Timings,
    },
    /// Terminal: the generation failed.
    Error {
        /// Stable failure code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// Token counts up to the failure.
        usage: Usage,
    },
}

impl Event {
    /// Whether this is the stream's last event (`Finished` or `Error`).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Finished { .. } | Event::Error { .. })
    }
}
