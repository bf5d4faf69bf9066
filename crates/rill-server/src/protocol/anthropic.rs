//! Anthropic's Messages API on the wire: the request body ([`MessagesRequest`], typed, a wrong
//! type named by its JSON path), the response message, the SSE stream events, and the error
//! shape with Anthropic's error `type` of every [`ErrorKind`] (the HTTP status stays
//! [`ErrorKind::status`]). The handlers that serve it are [`crate::anthropic`].

use std::fmt;

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rill_scheduler::{Event, FinishReason};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::params;
use crate::protocol::{ApiError, ErrorKind};

// ---------------------------------------------------------------------------------------------
// Requests

/// The body of `POST /v1/messages` (and of `POST /v1/messages/count_tokens`, which does not
/// need `max_tokens`). Unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct MessagesRequest {
    /// The model asked for (any string: the served model answers, and is named in responses).
    pub model: Option<String>,
    /// The system prompt, a string or text blocks: rendered as the first message.
    pub system: Option<Content>,
    /// The conversation: `user` and `assistant` turns, the last one `user` (required).
    pub messages: Option<Vec<InputMessage>>,
    /// Tokens to generate at most (required by `/v1/messages`, at least 1).
    pub max_tokens: Option<u64>,
    /// Strings that end the generation (not included in the text); the one met is returned.
    pub stop_sequences: Option<Vec<String>>,
    /// Sampling temperature, 0 to 1 (default 1; 0 is greedy).
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, (0, 1].
    pub top_p: Option<f64>,
    /// Sample among the `top_k` most likely tokens only (0: no limit).
    pub top_k: Option<u64>,
    /// Answer with Anthropic's SSE events instead of one JSON message (default false).
    pub stream: Option<bool>,
    /// Accepted and ignored (it does not change the output).
    pub metadata: Option<Metadata>,
    /// Accepted and ignored (one tier here).
    pub service_tier: Option<String>,
    /// Refused when non-empty: tool calling is not implemented yet.
    pub tools: Option<Vec<Value>>,
    /// Refused unless `auto` or `none` (which, without tools, change nothing).
    pub tool_choice: Option<Value>,
    /// Refused unless `{"type": "disabled"}`: extended thinking is not implemented.
    pub thinking: Option<Value>,
    /// Refused when non-empty: MCP servers are not implemented.
    pub mcp_servers: Option<Vec<Value>>,
    /// Refused when set: code-execution containers are not implemented.
    pub container: Option<Value>,
}

/// `metadata`: accepted and ignored.
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    /// An opaque id of the end user.
    pub user_id: Option<String>,
}

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The person (or program) asking.
    User,
    /// The model.
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of `messages`.
#[derive(Debug, Deserialize)]
pub struct InputMessage {
    /// `user` or `assistant` (required).
    pub role: Option<Role>,
    /// A string or content blocks (required).
    pub content: Option<Content>,
}

/// A turn's (or the system prompt's) content: a string, or an array of content blocks.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content blocks (only `text` blocks are served).
    Blocks(Vec<ContentBlock>),
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content blocks")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content::Text(s.to_string()))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Content, E> {
                Ok(Content::Text(s))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut blocks = Vec::new();
                while let Some(b) = seq.next_element()? {
                    blocks.push(b);
                }
                Ok(Content::Blocks(blocks))
            }
        }
        d.deserialize_any(V)
    }
}

/// A content block of a request. Only `{"type": "text", "text": ...}` is served; other keys
/// of a text block (`cache_control`, `citations`) do not change the output and are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentBlock {
    /// The block type (`text`; anything else is refused).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The text of a `text` block.
    pub text: Option<String>,
}

impl Content {
    /// The content as the OpenAI route takes it (text parts are joined the same way there);
    /// `at` is its JSON path, for errors.
    fn to_openai(&self, at: &str) -> Result<Value, ApiError> {
        match self {
            Content::Text(s) => Ok(Value::String(s.clone())),
            Content::Blocks(blocks) => blocks
                .iter()
                .enumerate()
                .map(|(j, b)| {
                    let p = format!("{at}[{j}]");
                    match b.kind.as_deref() {
                        Some("text") => {}
                        Some(other) => {
                            return Err(ApiError::param(
                                &format!("{p}.type"),
                                format!(
                                    "`{other}` content blocks are not supported (only `text`; \
                                     tool_use and tool_result come with tool calling)"
                                ),
                            ))
                        }
                        None => {
                            return Err(ApiError::param(
                                &format!("{p}.type"),
                                "a content block needs a `type`",
                            ))
                        }
                    }
                    let text = b.text.as_ref().ok_or_else(|| {
                        ApiError::param(&format!("{p}.text"), "a text block needs `text`")
                    })?;
                    Ok(json!({"type": "text", "text": text}))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
        }
    }
}

impl MessagesRequest {
    /// Parses a request body. A malformed body is an `invalid_request`; a field of the wrong
    /// type an `invalid_value` naming its path.
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let v = Value::Object(params::parse_body(body)?);
        serde_path_to_error::deserialize(&v).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                ApiError::invalid(e.inner().to_string())
            } else {
                ApiError::param(&path, e.inner().to_string())
            }
        })
    }

    /// Refuses what is not served, then translates the request into the OpenAI chat body of
    /// [`crate::params::parse`] (`system` first). `max_tokens` is required when `generate`.
    pub fn to_chat_body(&self, generate: bool) -> Result<Map<String, Value>, ApiError> {
        self.refuse_unsupported()?;
        let msgs = self
            .messages
            .as_ref()
            .ok_or_else(|| ApiError::param("messages", "`messages` is required"))?;
        if msgs.is_empty() {
            return Err(ApiError::param("messages", "`messages` must not be empty"));
        }
        let mut chat = Vec::with_capacity(msgs.len() + 1);
        if let Some(system) = &self.system {
            chat.push(json!({"role": "system", "content": system.to_openai("system")?}));
        }
        for (i, m) in msgs.iter().enumerate() {
            let role = m.role.ok_or_else(|| {
                ApiError::param(&format!("messages[{i}].role"), "`role` is required")
            })?;
            let content = m.content.as_ref().ok_or_else(|| {
                ApiError::param(&format!("messages[{i}].content"), "`content` is required")
            })?;
            let content = content.to_openai(&format!("messages[{i}].content"))?;
            chat.push(json!({"role": role.as_str(), "content": content}));
        }
        let last = msgs.len() - 1;
        if msgs[last].role == Some(Role::Assistant) {
            return Err(ApiError::param(
                &format!("messages[{last}].role"),
                "a final `assistant` turn (prefill) is not supported: end with a `user` turn",
            ));
        }
        let mut body = Map::new();
        if let Some(m) = &self.model {
            body.insert("model".into(), Value::String(m.clone()));
        }
        body.insert("messages".into(), Value::Array(chat));
        match self.max_tokens {
            Some(0) => return Err(ApiError::param("max_tokens", "must be at least 1")),
            Some(n) => {
                body.insert("max_tokens".into(), n.into());
            }
            None if generate => {
                return Err(ApiError::param("max_tokens", "`max_tokens` is required"))
            }
            None => {}
        }
        if let Some(t) = self.temperature {
            if !(0.0..=1.0).contains(&t) {
                return Err(ApiError::param(
                    "temperature",
                    format!("{t} is out of range [0, 1]"),
                ));
            }
            body.insert("temperature".into(), t.into());
        }
        if let Some(p) = self.top_p {
            body.insert("top_p".into(), p.into());
        }
        if let Some(k) = self.top_k {
            body.insert("top_k".into(), k.into());
        }
        Ok(body)
    }

    /// The stop strings, each non-empty.
    pub fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = self.stop_sequences.clone().unwrap_or_default();
        if let Some(i) = stops.iter().position(String::is_empty) {
            return Err(ApiError::param(
                &format!("stop_sequences[{i}]"),
                "stop sequences must not be empty",
            ));
        }
        Ok(stops)
    }

    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        let kind = |v: &Value| v.get("type").and_then(Value::as_str).map(String::from);
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::param("tools", "tool use is not supported yet"));
        }
        if let Some(c) = &self.tool_choice {
            if !matches!(kind(c).as_deref(), Some("auto" | "none")) {
                return Err(ApiError::param(
                    "tool_choice",
                    "tool use is not supported yet (only `auto` and `none`, without tools)",
                ));
            }
        }
        if let Some(t) = &self.thinking {
            if kind(t).as_deref() != Some("disabled") {
                return Err(ApiError::param(
                    "thinking",
                    "extended thinking is not supported (only `{\"type\": \"disabled\"}`)",
                ));
            }
        }
        if self.mcp_servers.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::param(
                "mcp_servers",
                "MCP servers are not supported",
            ));
        }
        if self.container.is_some() {
            return Err(ApiError::param("container", "containers are not supported"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Responses and stream events

/// `usage` of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MessageUsage {
    /// Tokens of the rendered prompt.
    pub input_tokens: usize,
    /// Tokens generated (the end-of-sequence token included).
    pub output_tokens: usize,
}

/// A content block of a response: `{"type": "text", "text": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TextBlock {
    /// Always `text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The generated text.
    pub text: String,
}

impl TextBlock {
    /// A text block of `text`.
    pub fn new(text: String) -> Self {
        Self { kind: "text", text }
    }
}

/// A whole message (`type: "message"`): the non-streamed response, and with empty content
/// and no stop reason the `message` of `message_start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageResponse {
    /// `msg_...`, also the stream id (`X-Rill-Stream-Id`).
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `assistant`.
    pub role: &'static str,
    /// The served model's name.
    pub model: String,
    /// One text block (none in `message_start`).
    pub content: Vec<TextBlock>,
    /// `end_turn`, `max_tokens` or `stop_sequence` (null in `message_start`).
    pub stop_reason: Option<&'static str>,
    /// The stop sequence that ended the generation, if one did.
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: MessageUsage,
}

/// `{"input_tokens": N}`: the answer of `count_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenCount {
    /// Tokens of the rendered prompt (what `message_start` reports as `input_tokens`).
    pub input_tokens: usize,
}

/// Anthropic's `stop_reason` and `stop_sequence` for how a generation ended (see the module
/// documentation for `cancelled`).
pub fn stop_reason(reason: FinishReason, stop: Option<&str>) -> (&'static str, Option<String>) {
    match (reason, stop) {
        (FinishReason::Stop, Some(s)) => ("stop_sequence", Some(s.to_string())),
        (FinishReason::Stop, None) => ("end_turn", None),
        (FinishReason::Length | FinishReason::Cancelled, _) => ("max_tokens", None),
    }
}

/// A `text_delta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TextDelta {
    /// Always `text_delta`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// New text.
    pub text: String,
}

/// The `delta` of `message_delta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageDelta {
    /// Why the generation ended.
    pub stop_reason: &'static str,
    /// The stop sequence met, if any.
    pub stop_sequence: Option<String>,
}

/// The `usage` of `message_delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeltaUsage {
    /// Tokens generated.
    pub output_tokens: usize,
}

/// The error object: `type` (see [`error_type`]) and `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    /// Anthropic's error type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// For people; starts with the parameter's path when one is at fault.
    pub message: String,
}

/// `{"type": "error", "error": {...}}`: an error response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorResponse {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The error.
    pub error: ErrorDetail,
}

/// One event of a streamed message; its `type` is also the SSE `event:` name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// First: the message with no content yet and `usage.input_tokens`.
    MessageStart {
        /// The message so far.
        message: MessageResponse,
    },
    /// The text block opens.
    ContentBlockStart {
        /// Always 0 (one block).
        index: u32,
        /// An empty text block.
        content_block: TextBlock,
    },
    /// Nothing; also the keep-alive.
    Ping,
    /// New text.
    ContentBlockDelta {
        /// Always 0.
        index: u32,
        /// The text.
        delta: TextDelta,
    },
    /// The text block closes.
    ContentBlockStop {
        /// Always 0.
        index: u32,
    },
    /// The stop reason and output token count.
    MessageDelta {
        /// Stop reason and sequence.
        delta: MessageDelta,
        /// Output tokens.
        usage: DeltaUsage,
    },
    /// Last.
    MessageStop,
    /// The generation failed after the stream began (the stream ends here).
    Error {
        /// What went wrong.
        error: ErrorDetail,
    },
}

impl StreamEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::Ping => "ping",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Error { .. } => "error",
        }
    }

    /// `event: NAME` and `data: JSON`, one SSE event.
    pub fn to_sse(&self) -> Bytes {
        // Plain structs of strings and numbers always serialize.
        let data = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","error":{{"type":"api_error","message":"{e}"}}}}"#)
        });
        Bytes::from(format!("event: {}\ndata: {data}\n\n", self.name()))
    }

    /// The events that open a stream of message `id` with `input_tokens` prompt tokens.
    pub fn opening(id: &str, model: &str, input_tokens: usize) -> [StreamEvent; 3] {
        [
            StreamEvent::MessageStart {
                message: MessageResponse {
                    id: id.to_string(),
                    kind: "message",
                    role: "assistant",
                    model: model.to_string(),
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage: MessageUsage {
                        input_tokens,
                        output_tokens: 0,
                    },
                },
            },
            StreamEvent::ContentBlockStart {
                index: 0,
                content_block: TextBlock::new(String::new()),
            },
            StreamEvent::Ping,
        ]
    }

    /// The events a scheduler event turns into (possibly none).
    pub fn from_event(ev: &Event) -> Vec<StreamEvent> {
        match ev {
            Event::Started { .. } => Vec::new(),
            Event::Tokens { text, .. } if text.is_empty() => Vec::new(),
            Event::Tokens { text, .. } => vec![StreamEvent::ContentBlockDelta {
                index: 0,
                delta: TextDelta {
                    kind: "text_delta",
                    text: text.clone(),
                },
            }],
            Event::Finished {
                reason,
                stop,
                usage,
                ..
            } => {
                let (stop_reason, stop_sequence) = stop_reason(*reason, stop.as_deref());
                vec![
                    StreamEvent::ContentBlockStop { index: 0 },
                    StreamEvent::MessageDelta {
                        delta: MessageDelta {
                            stop_reason,
                            stop_sequence,
                        },
                        usage: DeltaUsage {
                            output_tokens: usage.completion_tokens,
                        },
                    },
                    StreamEvent::MessageStop,
                ]
            }
            Event::Error { code, message, .. } => vec![StreamEvent::Error {
                error: error_detail(&ApiError::from_event(*code, message)),
            }],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Anthropic's error `type` of every error kind (the HTTP status stays
/// [`ErrorKind::status`]).
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest
        | ErrorKind::InvalidValue
        | ErrorKind::ContextLengthExceeded
        | ErrorKind::InvalidMessage
        | ErrorKind::DuplicateId => "invalid_request_error",
        ErrorKind::Unauthorized => "authentication_error",
        ErrorKind::NotFound | ErrorKind::StreamExpired => "not_found_error",
        ErrorKind::BodyTooLarge => "request_too_large",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Overloaded
        | ErrorKind::NotReady
        | ErrorKind::ServerShutdown
        | ErrorKind::PreemptedTooOften => "overloaded_error",
        ErrorKind::SlowConsumer | ErrorKind::NumericalError | ErrorKind::Internal => "api_error",
    }
}

/// The error object of `e`; its message starts with the parameter's path when one is named.
pub fn error_detail(e: &ApiError) -> ErrorDetail {
    let message = match &e.param {
        Some(p) if !e.message.starts_with(p.as_str()) => format!("{p}: {}", e.message),
        _ => e.message.clone(),
    };
    ErrorDetail {
        kind: error_type(e.kind),
        message,
    }
}

/// The HTTP response of `e` in Anthropic's shape (with `Retry-After` where a retry should
/// wait).
pub fn error_response(e: &ApiError) -> Response {
    let body = ErrorResponse {
        kind: "error",
        error: error_detail(e),
    };
    let mut r = (e.kind.status(), Json(body)).into_response();
    if let Some(s) = e.retry_after_s {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}
