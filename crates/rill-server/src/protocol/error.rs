//! The one error type of the wire: every failure rill reports, before a stream starts (an HTTP
//! status with OpenAI's error JSON) or after (an SSE error event, a WebSocket `error` frame),
//! is an [`ApiError`] of an [`ErrorKind`], and the kind alone decides the HTTP status, OpenAI's
//! `type`, the stable `code` and whether the client may retry (`recoverable`). The scheduler's
//! typed [`SubmitError`] and [`ErrorCode`] convert here, at the edge, and nowhere else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rill_scheduler::{ErrorCode, SubmitError};
use serde::Serialize;
use utoipa::ToSchema;

/// What went wrong, as clients can rely on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request as a whole is malformed (not JSON, not an object, unreadable body).
    InvalidRequest,
    /// A parameter has a wrong type or value (the error names it in `param`).
    InvalidValue,
    /// Prompt plus `max_tokens` exceed what one sequence may hold.
    ContextLengthExceeded,
    /// A WebSocket frame is malformed or of an unknown type.
    InvalidMessage,
    /// A WebSocket generation with this id is already running on the connection.
    DuplicateId,
    /// Missing or wrong API key.
    Unauthorized,
    /// No such route, stream or generation.
    NotFound,
    /// The events a resume asks for are no longer buffered.
    StreamExpired,
    /// The request body exceeds `max_body_bytes`.
    BodyTooLarge,
    /// The API key's request or token budget is spent for now.
    RateLimited,
    /// The waiting queue is full.
    Overloaded,
    /// The server is not ready (still loading).
    NotReady,
    /// The server is shutting down: resubmit (to another replica).
    ServerShutdown,
    /// The client did not read its stream fast enough.
    SlowConsumer,
    /// The request was preempted for memory more often than allowed.
    PreemptedTooOften,
    /// The model produced NaN or infinite logits.
    NumericalError,
    /// A bug or an engine failure.
    Internal,
}

impl ErrorKind {
    /// Every kind (for tests and documentation).
    pub const ALL: [ErrorKind; 17] = [
        ErrorKind::InvalidRequest,
        ErrorKind::InvalidValue,
        ErrorKind::ContextLengthExceeded,
        ErrorKind::InvalidMessage,
        ErrorKind::DuplicateId,
        ErrorKind::Unauthorized,
        ErrorKind::NotFound,
        ErrorKind::StreamExpired,
        ErrorKind::BodyTooLarge,
        ErrorKind::RateLimited,
        ErrorKind::Overloaded,
        ErrorKind::NotReady,
        ErrorKind::ServerShutdown,
        ErrorKind::SlowConsumer,
        ErrorKind::PreemptedTooOften,
        ErrorKind::NumericalError,
        ErrorKind::Internal,
    ];

    /// The stable machine-readable code (`error.code` on every transport).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::InvalidValue => "invalid_value",
            ErrorKind::ContextLengthExceeded => "context_length_exceeded",
            ErrorKind::InvalidMessage => "invalid_message",
            ErrorKind::DuplicateId => "duplicate_id",
            ErrorKind::Unauthorized => "invalid_api_key",
            ErrorKind::NotFound => "not_found",
            ErrorKind::StreamExpired => "stream_expired",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            ErrorKind::Overloaded => "server_overloaded",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::ServerShutdown => "server_shutdown",
            ErrorKind::SlowConsumer => "slow_consumer",
            ErrorKind::PreemptedTooOften => "preempted_too_often",
            ErrorKind::NumericalError => "numerical_error",
            ErrorKind::Internal => "internal",
        }
    }

    /// The HTTP status of a response that fails with this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::InvalidValue
            | ErrorKind::ContextLengthExceeded
            | ErrorKind::InvalidMessage => StatusCode::BAD_REQUEST,
            ErrorKind::DuplicateId => StatusCode::CONFLICT,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::StreamExpired => StatusCode::GONE,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RateLimited | ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::NotReady | ErrorKind::ServerShutdown | ErrorKind::PreemptedTooOften => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::SlowConsumer | ErrorKind::NumericalError | ErrorKind::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// OpenAI's error `type`.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::InvalidValue
            | ErrorKind::ContextLengthExceeded
            | ErrorKind::InvalidMessage
            | ErrorKind::DuplicateId
            | ErrorKind::NotFound
            | ErrorKind::StreamExpired
            | ErrorKind::BodyTooLarge => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Overloaded
            | ErrorKind::NotReady
            | ErrorKind::ServerShutdown
            | ErrorKind::SlowConsumer
            | ErrorKind::PreemptedTooOften
            | ErrorKind::NumericalError
            | ErrorKind::Internal => "server_error",
        }
    }

    /// Whether the same or a corrected request may succeed if sent again (later, or to another
    /// replica); false: retrying as is cannot help.
    pub fn recoverable(self) -> bool {
        !matches!(
            self,
            ErrorKind::Unauthorized
                | ErrorKind::NotFound
                | ErrorKind::StreamExpired
                | ErrorKind::NumericalError
                | ErrorKind::Internal
        )
    }
}

impl From<ErrorCode> for ErrorKind {
    fn from(c: ErrorCode) -> Self {
        match c {
            ErrorCode::SlowConsumer => ErrorKind::SlowConsumer,
            ErrorCode::PreemptedTooOften => ErrorKind::PreemptedTooOften,
            ErrorCode::NumericalError => ErrorKind::NumericalError,
            ErrorCode::ServerShutdown => ErrorKind::ServerShutdown,
            ErrorCode::Internal => ErrorKind::Internal,
        }
    }
}

/// A failure on its way to a client: its kind, a human-readable message, the parameter it is
/// about and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// For people: what happened and what to do.
    pub message: String,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After` over HTTP).
    pub retry_after_s: Option<u64>,
}

/// OpenAI's error object, the body of `{"error": ...}` on every transport; WebSocket frames
/// add `recoverable` and `retry_after_s`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// For people.
    pub message: String,
    /// OpenAI's error type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The stable code ([`ErrorKind::code`]).
    pub code: &'static str,
    /// The parameter at fault.
    pub param: Option<String>,
    /// Whether a retry can succeed.
    pub recoverable: bool,
    /// When to retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

/// `{"error": {...}}`: an HTTP error body and the payload of an SSE error event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let retry_after_s = match kind {
            ErrorKind::NotReady | ErrorKind::ServerShutdown => Some(5),
            _ => None,
        };
        Self {
            kind,
            message: message.into(),
            param: None,
            retry_after_s,
        }
    }

    /// Names the parameter at fault.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    /// Sets when to retry.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// 400 `invalid_value` naming the offending parameter.
    pub fn param(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidValue, message).with_param(param)
    }

    /// 400 `invalid_request`: the request as a whole is malformed.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// 410 `stream_expired`.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::StreamExpired, message)
    }

    /// 401 `invalid_api_key`.
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorKind::Unauthorized,
            "missing or invalid API key (send `Authorization: Bearer KEY` or `x-api-key: KEY`)",
        )
    }

    /// 413 `body_too_large`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            ErrorKind::BodyTooLarge,
            format!("request body exceeds the {limit}-byte limit"),
        )
    }

    /// 429 `rate_limit_exceeded`, retry after `retry_after_s`.
    pub fn rate_limited(what: &str, retry_after_s: u64) -> Self {
        Self::new(
            ErrorKind::RateLimited,
            format!("rate limit exceeded: {what}"),
        )
        .retry_after(retry_after_s)
    }

    /// 503 `not_ready`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotReady, message)
    }

    /// 503 `server_shutdown`.
    pub fn shutting_down() -> Self {
        Self::new(ErrorKind::ServerShutdown, "the server is shutting down")
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// A failure the scheduler reported after the request started.
    pub fn from_event(code: ErrorCode, message: &str) -> Self {
        Self::new(code.into(), message)
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The error object.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            message: self.message.clone(),
            kind: self.kind.openai_type(),
            code: self.kind.code(),
            param: self.param.clone(),
            recoverable: self.kind.recoverable(),
            retry_after_s: self.retry_after_s,
        }
    }

    /// `{"error": {...}}`.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope { error: self.body() }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let msg = e.to_string();
        match e {
            SubmitError::Overloaded { retry_after, .. } => {
                Self::new(ErrorKind::Overloaded, msg).retry_after(retry_after.as_secs().max(1))
            }
            SubmitError::TooLong { .. } => {
                Self::new(ErrorKind::ContextLengthExceeded, msg).with_param("max_tokens")
            }
            SubmitError::EmptyPrompt | SubmitError::BadToken(_) => Self::param("prompt", msg),
            SubmitError::InvalidParameter { field, .. } => Self::param(&field, msg),
            SubmitError::ShuttingDown => Self::new(ErrorKind::ServerShutdown, msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.kind.status(), axum::Json(self.envelope())).into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_distinct_code_and_a_client_or_server_status() {
        let mut codes: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        for k in ErrorKind::ALL {
            let s = k.status();
            assert!(s.is_client_error() || s.is_server_error(), "{k:?}: {s}");
            // OpenAI's types: client faults are invalid_request_error or more specific.
            assert_eq!(
                k.openai_type() == "server_error",
                s.is_server_error() || k == ErrorKind::Overloaded,
                "{k:?}"
            );
        }
    }

    #[test]
    fn scheduler_codes_keep_their_names_on_the_wire() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorKind::from(c).code(), c.as_str());
        }
    }
}
