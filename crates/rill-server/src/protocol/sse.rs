//! Server-sent events on the wire: what one event of a generation stream carries
//! ([`SsePayload`]: an OpenAI chunk, an error, or `[DONE]`) and how events are framed
//! (`id: STREAM:INDEX` + `data:`, `: keep-alive` comments with the queue position).

use axum::body::Bytes;
use serde::Serialize;

use super::error::{ApiError, ErrorEnvelope};
use super::openai::Chunk;

/// The data of one event of a generation stream.
#[derive(Debug, Clone)]
pub enum SsePayload {
    /// An OpenAI chunk.
    Chunk(Box<Chunk>),
    /// The stream failed: `{"error": {...}}`, then `[DONE]`.
    Error(Box<ErrorEnvelope>),
    /// The end of the stream.
    Done,
}

impl SsePayload {
    /// The error event of `e`.
    pub fn error(e: &ApiError) -> Self {
        SsePayload::Error(Box::new(e.envelope()))
    }

    /// The `data:` text.
    pub fn to_data(&self) -> String {
        fn json(v: &impl Serialize) -> String {
            // Plain structs of strings and numbers always serialize.
            serde_json::to_string(v).unwrap_or_else(|e| {
                format!(
                    r#"{{"error":{{"message":"{e}","type":"server_error","code":"internal"}}}}"#
                )
            })
        }
        match self {
            SsePayload::Chunk(c) => json(c),
            SsePayload::Error(e) => json(e),
            SsePayload::Done => "[DONE]".to_string(),
        }
    }
}

/// One event: `id: STREAM:INDEX` and its data.
pub fn event(stream_id: &str, idx: u64, data: &str) -> Bytes {
    Bytes::from(format!("id: {stream_id}:{idx}\ndata: {data}\n\n"))
}

/// A keep-alive comment, with the queue position while the request waits.
pub fn keepalive(position: Option<usize>) -> Bytes {
    match position {
        Some(p) => Bytes::from(format!(": keep-alive queue_position={p}\n\n")),
        None => Bytes::from_static(b": keep-alive\n\n"),
    }
}
