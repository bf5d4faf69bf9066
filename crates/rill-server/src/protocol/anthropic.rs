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
use crate::tools::parser::{CallParser, Piece};
use crate::tools::{self, check_tools, parameters_schema, Choice, Tool, Tools};

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
    /// Client tools (`name`, `description`, `input_schema`); server tools (a `type` other
    /// than `custom`) are refused.
    pub tools: Option<Vec<Value>>,
    /// `{"type": "auto" | "any" | "tool" | "none", "name", "disable_parallel_tool_use"}`.
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

/// A content block of a request: `text`, an assistant's `tool_use` or a user's
/// `tool_result`; other types (`image`, `document`, ...) are refused. Keys that do not
/// change the output (`cache_control`, `citations`) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentBlock {
    /// The block type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The text of a `text` block.
    pub text: Option<String>,
    /// A `tool_use` block's id.
    pub id: Option<String>,
    /// A `tool_use` block's tool.
    pub name: Option<String>,
    /// A `tool_use` block's arguments.
    pub input: Option<Value>,
    /// A `tool_result` block's call.
    pub tool_use_id: Option<String>,
    /// A `tool_result` block's result: a string or text blocks.
    pub content: Option<Box<Content>>,
    /// A `tool_result` that reports a failure.
    pub is_error: Option<bool>,
}

impl Content {
    /// The content as the OpenAI route takes it (text parts are joined the same way there);
    /// `at` is its JSON path, for errors. Only text: the system prompt, a tool result.
    fn to_openai(&self, at: &str) -> Result<Value, ApiError> {
        match self {
            Content::Text(s) => Ok(Value::String(s.clone())),
            Content::Blocks(blocks) => blocks
                .iter()
                .enumerate()
                .map(|(j, b)| text_part(b, &format!("{at}[{j}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
        }
    }

    /// One turn as OpenAI chat messages: a user turn's `tool_result` blocks become `tool`
    /// messages (before the turn's text, as Anthropic orders them), an assistant turn's
    /// `tool_use` blocks its `tool_calls`.
    fn to_openai_turn(&self, role: Role, at: &str) -> Result<Vec<Value>, ApiError> {
        let blocks = match self {
            Content::Text(s) => return Ok(vec![json!({"role": role.as_str(), "content": s})]),
            Content::Blocks(b) => b,
        };
        let mut text = Vec::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let p = format!("{at}[{j}]");
            let need = |v: Option<&String>, key: &str| {
                v.cloned().ok_or_else(|| {
                    ApiError::param(
                        &format!("{p}.{key}"),
                        format!("`{key}` (a string) is required"),
                    )
                })
            };
            match (b.kind.as_deref(), role) {
                (Some("tool_use"), Role::Assistant) => {
                    let input = b.input.clone().unwrap_or_else(|| json!({}));
                    if !input.is_object() {
                        return Err(ApiError::param(
                            &format!("{p}.input"),
                            "`input` must be an object",
                        ));
                    }
                    calls.push(json!({"id": need(b.id.as_ref(), "id")?, "type": "function",
                        "function": {"name": need(b.name.as_ref(), "name")?, "arguments": input.to_string()}}));
                }
                (Some("tool_result"), Role::User) => {
                    let mut content = match b.content.as_deref() {
                        None => String::new(),
                        Some(Content::Text(s)) => s.clone(),
                        Some(c @ Content::Blocks(_)) => c
                            .to_openai(&format!("{p}.content"))?
                            .as_array()
                            .map(|parts| parts.iter().filter_map(|x| x["text"].as_str()).collect())
                            .unwrap_or_default(),
                    };
                    if b.is_error == Some(true) {
                        content.insert_str(0, "Error: ");
                    }
                    results.push(json!({"role": "tool", "tool_call_id": need(b.tool_use_id.as_ref(), "tool_use_id")?, "content": content}));
                }
                (Some(k @ ("tool_use" | "tool_result")), _) => {
                    return Err(ApiError::param(
                        &format!("{p}.type"),
                        format!(
                            "`{k}` blocks belong in {} turns",
                            if k == "tool_use" { "assistant" } else { "user" }
                        ),
                    ))
                }
                _ => text.push(text_part(b, &p)?),
            }
        }
        let mut out = results;
        if !text.is_empty() || !calls.is_empty() || out.is_empty() {
            let mut m = json!({"role": role.as_str(), "content": text});
            if !calls.is_empty() {
                m["tool_calls"] = Value::Array(calls);
            }
            out.push(m);
        }
        Ok(out)
    }
}

/// A `text` block as an OpenAI text part; any other type is refused, naming `at`.
fn text_part(b: &ContentBlock, at: &str) -> Result<Value, ApiError> {
    match b.kind.as_deref() {
        Some("text") => {}
        Some(other) => {
            return Err(ApiError::param(
                &format!("{at}.type"),
                format!("`{other}` content blocks are not supported (text, tool_use, tool_result)"),
            ))
        }
        None => {
            return Err(ApiError::param(
                &format!("{at}.type"),
                "a content block needs a `type`",
            ))
        }
    }
    let text = b
        .text
        .as_ref()
        .ok_or_else(|| ApiError::param(&format!("{at}.text"), "a text block needs `text`"))?;
    Ok(json!({"type": "text", "text": text}))
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
            chat.extend(content.to_openai_turn(role, &format!("messages[{i}].content"))?);
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
        if let Some(t) = self.tools()? {
            body.insert("tools".into(), t.openai_json());
            body.insert(
                "tool_choice".into(),
                match &t.choice {
                    Choice::Auto => json!("auto"),
                    Choice::Required => json!("required"),
                    Choice::Named(n) => json!({"type": "function", "function": {"name": n}}),
                },
            );
            body.insert("parallel_tool_calls".into(), t.parallel.into());
        }
        Ok(body)
    }

    /// `tools` and `tool_choice` in rill's terms (None: no tools, or `tool_choice` `none`).
    pub fn tools(&self) -> Result<Option<Tools>, ApiError> {
        let tools = self
            .tools
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, t)| {
                let at = |k: &str| format!("tools[{i}].{k}");
                let t = t.as_object().ok_or_else(|| {
                    ApiError::param(&format!("tools[{i}]"), "each tool must be an object")
                })?;
                if let Some(k) = t.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
                    return Err(ApiError::param(
                        &at("type"),
                        format!("server tools (`{k}`) are not supported; define client tools with `name` and `input_schema`"),
                    ));
                }
                let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::param(&at("name"), "`name` (a string) is required")
                })?;
                let schema = t.get("input_schema").ok_or_else(|| {
                    ApiError::param(&at("input_schema"), "`input_schema` is required")
                })?;
                Ok(Tool {
                    name: name.to_string(),
                    description: t.get("description").and_then(Value::as_str).map(String::from),
                    parameters: parameters_schema(Some(schema), &at("input_schema"))?,
                    strict: false,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        check_tools(&tools, "tools")?;
        let c = self.tool_choice.as_ref();
        let kind = c.map_or(Some("auto"), |c| c.get("type").and_then(Value::as_str));
        let choice = match kind {
            _ if tools.is_empty() && kind != Some("any") && kind != Some("tool") => None,
            Some("auto") => Some(Choice::Auto),
            Some("any") => Some(Choice::Required),
            Some("none") => None,
            Some("tool") => {
                let name = c
                    .and_then(|c| c.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::param("tool_choice.name", "`{\"type\": \"tool\"}` needs `name`")
                    })?;
                Some(Choice::Named(name.to_string()))
            }
            _ => {
                return Err(ApiError::param(
                    "tool_choice",
                    "`tool_choice.type` must be auto, any, tool or none",
                ))
            }
        };
        let parallel = c
            .and_then(|c| c.get("disable_parallel_tool_use"))
            .and_then(Value::as_bool)
            != Some(true);
        tools::finish(tools, choice, parallel, "tool_choice")
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

/// A content block of a response: text, or a tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseBlock {
    /// `{"type": "text", "text": ...}`.
    Text {
        /// The generated text.
        text: String,
    },
    /// `{"type": "tool_use", "id", "name", "input"}`.
    ToolUse {
        /// `toolu_` and 24 hex digits.
        id: String,
        /// The tool.
        name: String,
        /// Its arguments (`{}` in `content_block_start`, whose deltas then carry them).
        input: Value,
    },
}

impl ResponseBlock {
    /// A text block of `text`.
    pub fn text(text: String) -> Self {
        ResponseBlock::Text { text }
    }
}

/// The Anthropic id of a call the parser named `call_...`.
fn tool_use_id(call_id: &str) -> String {
    format!("toolu_{}", call_id.trim_start_matches("call_"))
}

/// The content blocks of a whole answer: its text (when there is some, or no call), then a
/// `tool_use` block per call (`input` `{}` when a cut call's arguments do not parse). The
/// bool: some call was complete.
pub fn response_blocks(text: &str, tool_calls: bool) -> (Vec<ResponseBlock>, bool) {
    if !tool_calls {
        return (vec![ResponseBlock::text(text.to_string())], false);
    }
    let mut p = CallParser::new();
    p.push(text);
    p.finish();
    let mut blocks = Vec::new();
    if !p.content().trim().is_empty() || p.calls().is_empty() {
        blocks.push(ResponseBlock::text(p.content().to_string()));
    }
    for c in p.calls() {
        blocks.push(ResponseBlock::ToolUse {
            id: tool_use_id(&c.id),
            name: c.name.clone(),
            input: serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({})),
        });
    }
    (blocks, p.completed() > 0)
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
    /// Text and tool-use blocks (none in `message_start`).
    pub content: Vec<ResponseBlock>,
    /// `end_turn`, `max_tokens`, `stop_sequence` or `tool_use` (null in `message_start`).
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
/// documentation for `cancelled`); `called`: the answer ended after complete tool calls.
pub fn stop_reason(
    reason: FinishReason,
    stop: Option<&str>,
    called: bool,
) -> (&'static str, Option<String>) {
    match (reason, stop) {
        (FinishReason::Stop, None) if called => ("tool_use", None),
        (FinishReason::Stop, Some(s)) => ("stop_sequence", Some(s.to_string())),
        (FinishReason::Stop, None) => ("end_turn", None),
        (FinishReason::Length | FinishReason::Cancelled, _) => ("max_tokens", None),
    }
}

/// The `delta` of `content_block_delta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    /// More text of a text block.
    TextDelta {
        /// New text.
        text: String,
    },
    /// More of a `tool_use` block's arguments (JSON text as generated).
    InputJsonDelta {
        /// New JSON text.
        partial_json: String,
    },
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
    /// A content block opens.
    ContentBlockStart {
        /// The block's index in the message.
        index: u32,
        /// An empty text block, or a tool call's id and name.
        content_block: ResponseBlock,
    },
    /// Nothing; also the keep-alive.
    Ping,
    /// More of the open block.
    ContentBlockDelta {
        /// The block's index.
        index: u32,
        /// Text or arguments.
        delta: BlockDelta,
    },
    /// A content block closes.
    ContentBlockStop {
        /// The block's index.
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
}

/// One streamed message's events: which content block is open, and (with tools) the split of
/// the text into text and `tool_use` blocks. Without tools the text block opens with the
/// stream, as Anthropic's does; with tools each block opens when its first piece arrives.
pub struct MessageStream {
    calls: Option<CallParser>,
    /// The open block: its index, and whether it is text.
    open: Option<(u32, bool)>,
    blocks: u32,
}

impl MessageStream {
    /// A stream whose answer may hold tool calls when `tool_calls`.
    pub fn new(tool_calls: bool) -> Self {
        Self {
            calls: tool_calls.then(CallParser::new),
            open: None,
            blocks: 0,
        }
    }

    /// The events that open a stream of message `id` with `input_tokens` prompt tokens.
    pub fn opening(&mut self, id: &str, model: &str, input_tokens: usize) -> Vec<StreamEvent> {
        let mut out = vec![StreamEvent::MessageStart {
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
        }];
        if self.calls.is_none() {
            self.open_block(ResponseBlock::text(String::new()), &mut out);
        }
        out.push(StreamEvent::Ping);
        out
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::ContentBlockStop { index });
        }
    }

    fn open_block(&mut self, block: ResponseBlock, out: &mut Vec<StreamEvent>) {
        self.close(out);
        let text = matches!(block, ResponseBlock::Text { .. });
        out.push(StreamEvent::ContentBlockStart {
            index: self.blocks,
            content_block: block,
        });
        self.open = Some((self.blocks, text));
        self.blocks += 1;
    }

    fn piece(&mut self, p: Piece, out: &mut Vec<StreamEvent>) {
        let delta = match p {
            Piece::Content(text) if text.is_empty() => return,
            Piece::Content(text) => {
                if !matches!(self.open, Some((_, true))) {
                    self.open_block(ResponseBlock::text(String::new()), out);
                }
                BlockDelta::TextDelta { text }
            }
            Piece::Start { id, name, .. } => {
                let block = ResponseBlock::ToolUse {
                    id: tool_use_id(&id),
                    name,
                    input: json!({}),
                };
                return self.open_block(block, out);
            }
            Piece::Arguments { text, .. } => BlockDelta::InputJsonDelta { partial_json: text },
        };
        if let Some((index, _)) = self.open {
            out.push(StreamEvent::ContentBlockDelta { index, delta });
        }
    }

    /// The events a scheduler event turns into (possibly none).
    pub fn events(&mut self, ev: &Event) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        match ev {
            Event::Started { .. } => {}
            Event::Tokens { text, .. } => {
                let pieces = match self.calls.as_mut() {
                    Some(p) => p.push(text),
                    None => vec![Piece::Content(text.clone())],
                };
                for p in pieces {
                    self.piece(p, &mut out);
                }
            }
            Event::Finished {
                reason,
                stop,
                usage,
                ..
            } => {
                let rest = self
                    .calls
                    .as_mut()
                    .map(CallParser::finish)
                    .unwrap_or_default();
                for p in rest {
                    self.piece(p, &mut out);
                }
                if self.blocks == 0 {
                    self.open_block(ResponseBlock::text(String::new()), &mut out);
                }
                self.close(&mut out);
                let called = self.calls.as_ref().is_some_and(|c| c.completed() > 0);
                let (stop_reason, stop_sequence) = stop_reason(*reason, stop.as_deref(), called);
                out.push(StreamEvent::MessageDelta {
                    delta: MessageDelta {
                        stop_reason,
                        stop_sequence,
                    },
                    usage: DeltaUsage {
                        output_tokens: usage.completion_tokens,
                    },
                });
                out.push(StreamEvent::MessageStop);
            }
            Event::Error { code, message, .. } => out.push(StreamEvent::Error {
                error: error_detail(&ApiError::from_event(*code, message)),
            }),
        }
        out
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
