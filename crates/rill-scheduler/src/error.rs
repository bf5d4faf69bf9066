//! Why a submission was refused, or the scheduler could not start.

use std::time::Duration;

use thiserror::Error;

/// A submission refused before it reached the engine thread.
#[derive(Debug, Error)]
pub enum SubmitError {
    #[error("server overloaded: {waiting} requests are waiting; retry after {} s", retry_after.as_secs())]
    Overloaded {
        waiting: usize,
        retry_after: Duration,
    },
    #[error("prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the {limit}-token limit of {what}")]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        limit: usize,
        what: &'static str,
    },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid `{field}`: {message}")]
    InvalidParameter { field: String, message: String },
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// The scheduler could not start.
#[derive(Debug, Error)]
pub enum SchedulerError {
    #[error("invalid scheduler setting `{key}`: {message}")]
    Config { key: String, message: String },
    #[error("cannot start the engine thread: {0}")]
    Spawn(#[source] std::io::Error),
}
