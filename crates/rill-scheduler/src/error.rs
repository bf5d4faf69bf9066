//! Why a submission was refused, or the scheduler could not start.

use std::time::Duration;

use thiserror::Error;

/// A submission refused before it reached the engine thread.
#[derive(Debug, Error)]
pub enum SubmitError {
    /// The wait queue is at `queue_capacity`.
    #[error("server overloaded: {waiting} requests are waiting; retry after {} s", retry_after.as_secs())]
    Overloaded {
        /// Requests waiting for admission (at least the queue capacity).
        waiting: usize,
        /// When to retry: see [`retry_after`](crate::retry_after) (1 to 60 s).
        retry_after: Duration,
    },
    /// Prompt plus `max_tokens` cannot fit one sequence ([`ModelLimits::max_sequence_tokens`]).
    ///
    /// [`ModelLimits::max_sequence_tokens`]: crate::ModelLimits::max_sequence_tokens
    #[error("prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the {limit}-token limit of {what}")]
    TooLong {
        /// Prompt length in tokens.
        prompt: usize,
        /// The request's `max_tokens`.
        max_tokens: usize,
        /// Most tokens (prompt plus generated) one sequence may hold.
        limit: usize,
        /// What sets the limit: "the model's context length" or "the KV cache".
        what: &'static str,
    },
    /// The prompt has no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A request parameter is out of range (e.g. `max_tokens` 0, a bad sampling setting).
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        /// The parameter's name, as the API spells it.
        field: String,
        /// What is wrong with it and what is allowed.
        message: String,
    },
    /// A prompt token id is not below the model's vocabulary size.
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    /// Shutdown has begun; no new requests are admitted.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// The scheduler could not start.
#[derive(Debug, Error)]
pub enum SchedulerError {
    /// [`SchedulerConfig::validate`](crate::SchedulerConfig::validate) rejected a setting.
    #[error("invalid scheduler setting `{key}`: {message}")]
    Config {
        /// The setting's name (e.g. `max_running`).
        key: String,
        /// The rejected value and what is allowed.
        message: String,
    },
    /// The OS refused to spawn the engine thread.
    #[error("cannot start the engine thread: {0}")]
    Spawn(#[source] std::io::Error),
}
