//! The WebSocket protocol's frames (SPEC §5) as types: what clients send ([`ClientFrame`]:
//! `generate`, `cancel`, `resume`, `ping`) and what the server sends ([`ServerFrame`]:
//! `queued`, `token`, `complete`, `error`, `pong`), tagged by `type`, the same in JSON text
//! frames and MessagePack binary frames.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{ApiError, ErrorBody, ErrorKind};
use super::openai::UsageBody;

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Start a generation.
    Generate(GenerateFrame),
    /// Cancel a running generation (it ends with `finish_reason: "cancelled"`).
    Cancel {
        /// The generation's id.
        id: String,
    },
    /// Follow a resumable generation from any connection, after a token position.
    Resume {
        /// The generation's id.
        id: String,
        /// The last position the client has (absent or negative: from the start).
        #[serde(default)]
        after_position: Option<i64>,
    },
    /// Answered with `pong`, echoing `ts`.
    Ping {
        /// Anything; echoed back.
        #[serde(default)]
        ts: Option<Value>,
    },
}

/// A `generate` frame: the request is OpenAI's body, in `params` and at the top level.
#[derive(Debug, Deserialize)]
pub struct GenerateFrame {
    /// Client-chosen id, unique among the connection's running generations.
    pub id: String,
    /// Keep generating after the connection closes, for `resume`.
    #[serde(default)]
    pub resumable: bool,
    /// OpenAI request fields.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Every other field; `prompt`, `messages`, `max_tokens`, `stop`, `priority`, `tools`,
    /// `tool_choice`, `parallel_tool_calls` and `response_format` here override `params`.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl GenerateFrame {
    /// Fields taken from the top level of the frame (over `params`).
    const TOP_LEVEL: [&'static str; 9] = [
        "prompt",
        "messages",
        "max_tokens",
        "stop",
        "priority",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    ];

    /// The OpenAI request body the frame describes.
    pub fn body(&self) -> Map<String, Value> {
        let mut body = self.params.clone();
        for k in Self::TOP_LEVEL {
            if let Some(v) = self.fields.get(k) {
                body.insert(k.to_string(), v.clone());
            }
        }
        body
    }
}

/// A frame the client sent, decoded; the error names what was wrong (`invalid_message`) and
/// carries the frame's `id` when it had one.
pub fn decode(value: Result<Value, String>) -> Result<ClientFrame, (Option<String>, ApiError)> {
    let invalid = |m: String| ApiError::new(ErrorKind::InvalidMessage, m);
    let value = value.map_err(|m| (None, invalid(m)))?;
    let id = value.get("id").and_then(Value::as_str).map(String::from);
    if !value.is_object() {
        return Err((None, invalid("a frame must be an object".into())));
    }
    serde_json::from_value(value).map_err(|e| {
        (
            id,
            invalid(format!(
                "invalid frame: {e} (types: generate, cancel, resume, ping; each but ping needs \
                 an `id` string)"
            )),
        )
    })
}

/// A frame to the client.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The generation waits for admission at `position` (1-based).
    Queued {
        /// The generation's id.
        id: String,
        /// Position in the waiting queue.
        position: usize,
    },
    /// New tokens.
    Token(TokenFrame),
    /// A piece of a tool call (a generation with `tools`): the first of each call carries its
    /// `call_id` and `name`, the next ones more `arguments` (JSON text as generated).
    ToolCall(ToolCallFrame),
    /// The generation ended normally.
    Complete(CompleteFrame),
    /// A failure: of one generation (`id`) or of a frame the server could not take.
    Error {
        /// The generation or frame it concerns, if known.
        id: Option<String>,
        /// What went wrong.
        error: ErrorBody,
    },
    /// The answer to `ping`.
    Pong {
        /// The ping's `ts`, echoed.
        #[serde(skip_serializing_if = "Option::is_none")]
        ts: Option<Value>,
    },
}

impl ServerFrame {
    /// An `error` frame.
    pub fn error(id: Option<&str>, e: &ApiError) -> Self {
        ServerFrame::Error {
            id: id.map(String::from),
            error: e.body(),
        }
    }
}

/// One token of a `token` frame.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// Token id (null for text released without a token, e.g. held-back text at the end).
    pub id: Option<u32>,
    /// The text it released (may be empty while a multi-byte character is incomplete).
    pub text: String,
    /// Position in the generation, from 0.
    pub position: u64,
    /// Milliseconds since the previous frame (0 for the later tokens of a coalesced frame).
    pub latency_ms: f64,
}

/// A `token` frame: one `token`, or several coalesced `tokens` and their joined `text`.
#[derive(Debug, Clone, Serialize)]
pub struct TokenFrame {
    /// The generation's id.
    pub id: String,
    /// The token, when the frame carries one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenInfo>,
    /// The tokens, when a slow reader's tokens were coalesced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<TokenInfo>>,
    /// The coalesced tokens' text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A `tool_call` frame.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallFrame {
    /// The generation's id.
    pub id: String,
    /// The call's index in the answer.
    pub index: usize,
    /// `call_...` (first piece of a call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// The function (first piece of a call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments.
    pub arguments: String,
}

/// A `complete` frame.
#[derive(Debug, Clone, Serialize)]
pub struct CompleteFrame {
    /// The generation's id.
    pub id: String,
    /// `stop`, `length`, `cancelled`, or `tool_calls` (it ended after complete tool calls).
    pub finish_reason: &'static str,
    /// Token counts.
    pub usage: UsageBody,
    /// Latency summary.
    pub summary: Summary,
}

/// The latency summary of a `complete` frame.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Tokens generated.
    pub total_tokens: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Submission to first token.
    pub ttft_ms: f64,
    /// Submission to admission.
    pub queue_ms: f64,
    /// Mean gap between tokens.
    pub average_token_latency_ms: f64,
    /// p95 gap between tokens.
    pub p95_token_latency_ms: f64,
    /// Decode speed.
    pub tokens_per_second: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_decode_by_type_and_name_what_is_wrong() {
        let g = decode(Ok(json!({"type": "generate", "id": "a", "prompt": "hi",
            "params": {"max_tokens": 3, "prompt": "no"}, "resumable": true})))
        .unwrap();
        let ClientFrame::Generate(g) = g else {
            panic!("not generate")
        };
        assert!(g.resumable);
        assert_eq!(g.body()["prompt"], "hi");
        assert_eq!(g.body()["max_tokens"], 3);
        let (id, e) = decode(Ok(json!({"type": "generate"}))).unwrap_err();
        assert_eq!((id, e.code()), (None, "invalid_message"));
        assert!(e.message.contains("id"), "{}", e.message);
        let (id, e) = decode(Ok(json!({"type": "dance", "id": "x"}))).unwrap_err();
        assert_eq!(id.as_deref(), Some("x"));
        assert!(e.message.contains("dance"), "{}", e.message);
        assert!(decode(Ok(json!([1]))).is_err());
    }

    #[test]
    fn server_frames_keep_the_spec_shapes() {
        let t = serde_json::to_value(ServerFrame::Token(TokenFrame {
            id: "g".into(),
            token: Some(TokenInfo {
                id: Some(5),
                text: "x".into(),
                position: 0,
                latency_ms: 1.0,
            }),
            tokens: None,
            text: None,
        }))
        .unwrap();
        assert_eq!(
            t,
            json!({"type": "token", "id": "g", "token": {"id": 5, "text": "x", "position": 0, "latency_ms": 1.0}})
        );
        let p = serde_json::to_value(ServerFrame::Pong { ts: None }).unwrap();
        assert_eq!(p, json!({"type": "pong"}));
        let e = ApiError::param("temperature", "too hot");
        let f = serde_json::to_value(ServerFrame::error(Some("g"), &e)).unwrap();
        assert_eq!(f["error"]["code"], "invalid_value");
        assert_eq!(f["error"]["param"], "temperature");
        assert_eq!(f["error"]["recoverable"], true);
        let b = rmp_serde::to_vec_named(&ServerFrame::error(None, &e)).unwrap();
        let back: Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(back["type"], "error");
    }
}
