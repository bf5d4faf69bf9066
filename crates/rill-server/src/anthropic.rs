//! Anthropic's Messages API, text and client tools: `POST /v1/messages` (one JSON message, or
//! with `stream: true` Anthropic's SSE event sequence) and `POST /v1/messages/count_tokens`.
//!
//! **Requests** are typed ([`MessagesRequest`]); a wrong type names its JSON path
//! (`messages[2].content[0].text`). The request becomes the OpenAI chat body that
//! [`crate::params::parse`] takes (`system` as the first message, the turns after it), so the
//! prompt goes through the model's chat template exactly as on `/v1/chat/completions`, with
//! the same limits; `stop_sequences` then go to the scheduler as stop strings. **Tools**
//! (`name`, `description`, `input_schema`) and `tool_choice` (`auto`, `any`, `tool`, `none`,
//! `disable_parallel_tool_use`) become [`crate::tools`]' terms; `tool_use` blocks of assistant
//! turns become the turn's tool calls and `tool_result` blocks of user turns `tool` messages, so
//! tools reach the model exactly as on the OpenAI route, and the answer's calls come back as
//! `tool_use` blocks (`input_json_delta` when streamed) with `stop_reason: "tool_use"`. Fields
//! that would change the output and are not implemented are refused with a 400 naming the
//! field, never ignored: server tools (a tool `type` other than `custom`), `thinking` (other
//! than `disabled`), `mcp_servers`, `container`, content blocks other than `text`, `tool_use`
//! and `tool_result` (`image`, `document`, ...) and a final `assistant` turn (prefill).
//! `metadata` and `service_tier` are accepted and ignored (they do not change the output), as
//! are unknown fields and the `anthropic-version` header.
//!
//! **Stop reasons**: end of sequence → `end_turn`; a stop sequence → `stop_sequence` (with the
//! string in `stop_sequence`); `max_tokens` reached → `max_tokens`. A generation cancelled by
//! `DELETE /v1/streams/{id}` ends normally with `max_tokens`: Anthropic has no "cancelled"
//! reason, and `max_tokens` is the one every client already handles as "the answer was cut
//! short before the model ended its turn".
//!
//! **Streams** relay the scheduler's events through [`crate::relay::relay`] with a [`Sink`] that
//! writes (through [`MessageStream`]) `message_start` (usage.input_tokens = the prompt's
//! tokens), `content_block_start` (index 0, text; with tools each block opens when it begins),
//! `ping`, a `content_block_delta` (`text_delta`, `input_json_delta`) per token event,
//! `content_block_stop`, `message_delta` (stop reason, `usage.output_tokens`) and
//! `message_stop`; a failure after the stream began is one `event: error` with Anthropic's
//! error JSON, and quiet periods get `event: ping` every `keepalive_s`. Every stream and
//! response is registered under its `msg_...` id (`X-Rill-Stream-Id`), so
//! `DELETE /v1/streams/{id}` cancels it; it is not resumable.
//!
//! **Errors** have Anthropic's shape (`{"type":"error","error":{"type","message"}}`) and the
//! HTTP status [`ErrorKind::status`] gives; the Anthropic `type` of every kind is
//! [`error_type`]. A message about one parameter starts with its path.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rill_scheduler::{Event, FinishReason, Usage};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::http::ApiKey;
use crate::params::{self, GenParams, Kind};
use crate::protocol::anthropic::*;
use crate::protocol::ApiError;
use crate::relay::{relay, Choices, Gone, Relayed, Sink};
use crate::resume::{Resumable, StreamEntry};
use crate::state::SharedState;

// ---------------------------------------------------------------------------------------------
// Sinks

/// A streamed message: each scheduler event written as Anthropic SSE events.
struct StreamSink {
    tx: mpsc::Sender<Bytes>,
    keepalive: Duration,
    events: MessageStream,
}

impl StreamSink {
    async fn send(&self, ev: &StreamEvent) -> Result<(), Gone> {
        self.tx.send(ev.to_sse()).await.map_err(|_| Gone)
    }
}

impl Sink for StreamSink {
    async fn deliver(&mut self, _: usize, ev: &Event) -> Result<(), Gone> {
        for e in self.events.events(ev) {
            self.send(&e).await?;
        }
        Ok(())
    }

    async fn gone(&self) {
        self.tx.closed().await
    }

    fn idle_period(&self) -> Duration {
        self.keepalive
    }

    async fn idle(&mut self, _: Option<usize>) -> Result<(), Gone> {
        self.send(&StreamEvent::Ping).await
    }
}

/// A non-streamed message: absorbs every event.
#[derive(Default)]
struct Collector {
    text: String,
    finish: Option<(FinishReason, Option<String>, Usage)>,
    error: Option<ApiError>,
}

impl Sink for Collector {
    fn streams(&self) -> bool {
        false
    }

    async fn deliver(&mut self, _: usize, ev: &Event) -> Result<(), Gone> {
        match ev {
            Event::Tokens { text, .. } => self.text.push_str(text),
            Event::Finished {
                reason,
                stop,
                usage,
                ..
            } => self.finish = Some((*reason, stop.clone(), *usage)),
            Event::Error { code, message, .. } => {
                self.error = Some(ApiError::from_event(*code, message))
            }
            Event::Started { .. } => {}
        }
        Ok(())
    }

    async fn gone(&self) {
        // The client's connection owns this future: when it goes, the relay is dropped.
        std::future::pending().await
    }

    fn idle_period(&self) -> Duration {
        Duration::from_secs(3600)
    }

    async fn idle(&mut self, _: Option<usize>) -> Result<(), Gone> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

fn new_message_id() -> String {
    format!("msg_{:024x}", rand::random::<u128>() & ((1u128 << 96) - 1))
}

fn read_body(state: &SharedState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.cfg.max_body_bytes)
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })
}

/// Parses and checks a body, and renders and tokenizes its prompt as the OpenAI chat route
/// does (off the async executor: large prompts are CPU work).
async fn prepare(
    state: &SharedState,
    body: Result<Bytes, BytesRejection>,
    generate: bool,
) -> Result<(MessagesRequest, GenParams), ApiError> {
    let body = read_body(state, body)?;
    if !state.is_ready() {
        return Err(ApiError::shutting_down());
    }
    let req = MessagesRequest::from_json(&body)?;
    let chat = req.to_chat_body(generate)?;
    let stops = req.stops()?;
    let (h, limits) = (state.sched.clone(), params::RequestLimits::of(&state.cfg));
    let mut p = tokio::task::spawn_blocking(move || params::parse(Kind::Chat, &chat, &h, limits))
        .await
        .map_err(|e| ApiError::internal(format!("request parsing failed: {e}")))??;
    p.request.stop = stops;
    Ok((req, p))
}

/// Answers with `r`, or with `e` in Anthropic's shape (counted as a rejection).
fn answer(state: &SharedState, r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| {
        state.metrics.on_rejected(e.code());
        error_response(&e)
    })
}

/// `POST /v1/messages`: Anthropic's Messages API (text content).
pub async fn messages(
    State(state): State<SharedState>,
    Extension(key): Extension<ApiKey>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = messages_inner(&state, key, body).await;
    answer(&state, r)
}

async fn messages_inner(
    state: &SharedState,
    key: ApiKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (req, p) = prepare(state, body, true).await?;
    let input_tokens = p.request.prompt.len();
    state.charge(&key.0, input_tokens + p.request.max_tokens)?;
    let mut stream = Choices::one(state.sched.submit(p.request)?);
    let id = format!("{}.{}", new_message_id(), state.replica);
    state.streams.insert(
        &id,
        StreamEntry {
            request_ids: stream.ids(),
            resumable: Resumable::No,
            owner: Some(key.0),
        },
    );
    let model = state.model_id.clone();
    let with_id = |mut r: Response| {
        if let Ok(v) = HeaderValue::from_str(&id) {
            r.headers_mut().insert("x-rill-stream-id", v);
        }
        r
    };
    if req.stream.unwrap_or(false) {
        let span = tracing::info_span!("request", id = %id, stream = true, api = "anthropic");
        let (tx, rx) = mpsc::channel(16);
        let mut sink = StreamSink {
            tx,
            keepalive: Duration::from_secs(state.cfg.keepalive_s),
            events: MessageStream::new(p.tool_calls),
        };
        let (state, sid) = (state.clone(), id.clone());
        let task = async move {
            let mut open = true;
            for e in sink.events.opening(&sid, &model, input_tokens) {
                if sink.send(&e).await.is_err() {
                    open = false;
                    break;
                }
            }
            if open {
                // Dropping `stream` afterwards cancels the request if it is still running.
                relay(&state.metrics, &mut stream, &mut sink, None).await;
            }
            state.streams.remove(&sid);
        };
        tokio::spawn(task.instrument(span));
        return Ok(with_id(crate::sse::event_stream(rx)));
    }
    // Dropping this future (client gone) drops `stream`, which cancels the request.
    let span = tracing::info_span!("request", id = %id, stream = false, api = "anthropic");
    let mut c = Collector::default();
    let relayed = relay(&state.metrics, &mut stream, &mut c, None)
        .instrument(span)
        .await;
    state.streams.remove(&id);
    // A failure after the request started is not a rejection: answered, not counted as one.
    if let Some(e) = c.error {
        return Ok(with_id(error_response(&e)));
    }
    let (reason, stop, usage) = match (relayed, c.finish) {
        (Relayed::Ended, Some(f)) => f,
        _ => {
            return Ok(error_response(&ApiError::internal(
                "the generation ended without a result",
            )))
        }
    };
    let (content, called) = response_blocks(&c.text, p.tool_calls);
    let (stop_reason, stop_sequence) = stop_reason(reason, stop.as_deref(), called);
    let msg = MessageResponse {
        id: id.clone(),
        kind: "message",
        role: "assistant",
        model,
        content,
        stop_reason: Some(stop_reason),
        stop_sequence,
        usage: MessageUsage {
            input_tokens,
            output_tokens: usage.completion_tokens,
        },
    };
    Ok(with_id(Json(msg).into_response()))
}

/// `POST /v1/messages/count_tokens`: the tokens of the rendered prompt, `{"input_tokens": N}`
/// (the same body; `max_tokens` not needed). Generates nothing, so it is not rate-limited.
pub async fn count_tokens(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = prepare(&state, body, false).await.map(|(_, p)| {
        Json(TokenCount {
            input_tokens: p.request.prompt.len(),
        })
        .into_response()
    });
    answer(&state, r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::protocol::ErrorKind;
    use serde_json::{json, Value};

    fn err(body: Value) -> ApiError {
        let req = MessagesRequest::from_json(body.to_string().as_bytes());
        match req {
            Err(e) => e,
            Ok(r) => r
                .to_chat_body(true)
                .and_then(|_| r.stops().map(|_| ()))
                .unwrap_err(),
        }
    }

    fn param(body: Value) -> String {
        err(body).param.unwrap_or_default()
    }

    #[test]
    fn a_request_becomes_the_openai_chat_body_with_system_first() {
        let r = MessagesRequest::from_json(
            json!({"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "Be brief."}],
                   "messages": [{"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": [{"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}]},
                                {"role": "user", "content": "Bye"}],
                   "temperature": 0.5, "top_k": 3, "metadata": {"user_id": "u"}, "tools": [],
                   "thinking": {"type": "disabled"}, "stop_sequences": ["\n\n"]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let b = r.to_chat_body(true).unwrap();
        assert_eq!(
            Value::Object(b),
            json!({"model": "m", "max_tokens": 5, "temperature": 0.5, "top_k": 3, "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "user", "content": "Bye"}]})
        );
        assert_eq!(r.stops().unwrap(), vec!["\n\n".to_string()]);
    }

    #[test]
    fn what_is_not_served_is_refused_naming_the_field() {
        let user = json!({"role": "user", "content": "Hi"});
        let m = |extra: Value| {
            let mut b = json!({"max_tokens": 4, "messages": [user.clone()]});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        assert_eq!(param(json!({"messages": [user.clone()]})), "max_tokens");
        assert_eq!(param(m(json!({"max_tokens": 0}))), "max_tokens");
        assert_eq!(param(m(json!({"max_tokens": "4"}))), "max_tokens");
        assert_eq!(param(m(json!({"temperature": 1.5}))), "temperature");
        assert_eq!(
            param(m(json!({"tools": [{"name": "x"}]}))),
            "tools[0].input_schema"
        );
        assert_eq!(
            param(m(
                json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]})
            )),
            "tools[0].type"
        );
        let schema = json!({"type": "object"});
        assert_eq!(
            param(m(
                json!({"tools": [{"name": "x", "input_schema": schema}], "tool_choice": {"type": "tool", "name": "y"}})
            )),
            "tool_choice"
        );
        assert_eq!(
            param(m(json!({"tool_choice": {"type": "any"}}))),
            "tool_choice"
        );
        assert_eq!(
            param(m(
                json!({"thinking": {"type": "enabled", "budget_tokens": 1024}})
            )),
            "thinking"
        );
        assert_eq!(
            param(m(json!({"stop_sequences": ["a", ""]}))),
            "stop_sequences[1]"
        );
        assert_eq!(param(m(json!({"stop_sequences": "a"}))), "stop_sequences");
        assert_eq!(param(m(json!({"metadata": 5}))), "metadata");
        assert_eq!(param(m(json!({"messages": []}))), "messages");
        assert_eq!(
            param(m(json!({"messages": [{"role": "system", "content": "x"}]}))),
            "messages[0].role"
        );
        assert_eq!(
            param(m(
                json!({"messages": [user.clone(), {"role": "assistant", "content": "x"}]})
            )),
            "messages[1].role"
        );
        let blocks = |b: Value| {
            m(
                json!({"messages": [user.clone(), {"role": "assistant", "content": "ok"}, {"role": "user", "content": b}]}),
            )
        };
        assert_eq!(
            param(blocks(
                json!([{"type": "text", "text": "a"}, {"type": "image", "source": {}}])
            )),
            "messages[2].content[1].type"
        );
        assert_eq!(
            param(m(
                json!({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}, user.clone()]})
            )),
            "messages[0].content[0].type"
        );
        assert_eq!(
            param(blocks(json!([{"type": "tool_result", "content": "r"}]))),
            "messages[2].content[0].tool_use_id"
        );
        assert_eq!(
            param(blocks(json!([{"type": "text", "text": 5}]))),
            "messages[2].content[0].text"
        );
        assert_eq!(
            param(blocks(json!([{"type": "text"}]))),
            "messages[2].content[0].text"
        );
        assert_eq!(param(blocks(json!(7))), "messages[2].content");
        assert_eq!(
            param(m(json!({"system": [{"type": "document"}]}))),
            "system[0].type"
        );
        let e = err(m(json!({"tools": [{"name": "x"}]})));
        assert_eq!(e.kind.status(), 400);
        let d = error_detail(&e);
        assert_eq!(d.kind, "invalid_request_error");
        assert!(
            d.message.starts_with("tools[0].input_schema: "),
            "{}",
            d.message
        );
        assert_eq!(err(json!([1])).kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn tool_turns_become_openai_tool_messages() {
        let r = MessagesRequest::from_json(
            json!({"max_tokens": 5,
                   "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
                   "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                   "messages": [{"role": "user", "content": "Weather in Paris?"},
                                {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21C"}]}, {"type": "text", "text": "And?"}]}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let b = Value::Object(r.to_chat_body(true).unwrap());
        assert_eq!(b["tool_choice"], json!("required"));
        assert_eq!(b["parallel_tool_calls"], json!(false));
        assert_eq!(b["tools"][0]["function"]["name"], json!("get_weather"));
        assert_eq!(
            b["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."}],
                 "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"},
                {"role": "user", "content": [{"type": "text", "text": "And?"}]}])
        );
    }

    #[test]
    fn a_tool_answer_streams_as_tool_use_blocks() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let mut stream = MessageStream::new(true);
        let mut evs = stream.opening("msg_1", "m", 3);
        for piece in [&text[..20], &text[20..50], &text[50..]] {
            evs.extend(stream.events(&Event::Tokens {
                tokens: Vec::new(),
                text: piece.to_string(),
                sampled_at: std::time::Instant::now(),
            }));
        }
        evs.extend(stream.events(&Event::Finished {
            reason: FinishReason::Stop,
            stop: None,
            usage: Usage::default(),
            timings: Default::default(),
        }));
        let names: Vec<_> = evs.iter().map(StreamEvent::name).collect();
        assert_eq!(names[..3], ["message_start", "ping", "content_block_start"]);
        assert_eq!(
            names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        let json: String = evs
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ContentBlockDelta {
                    index: 0,
                    delta: BlockDelta::InputJsonDelta { partial_json },
                } => Some(partial_json.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(json, "{\"city\": \"Paris\"}");
        let v = serde_json::to_value(&evs[2]).unwrap();
        assert_eq!(v["content_block"]["type"], json!("tool_use"));
        assert_eq!(v["content_block"]["name"], json!("get_weather"));
        assert!(v["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_"));
        let delta = serde_json::to_value(&evs[evs.len() - 2]).unwrap();
        assert_eq!(delta["delta"]["stop_reason"], json!("tool_use"));
        let (blocks, called) = response_blocks(text, true);
        assert!(called);
        assert_eq!(
            serde_json::to_value(&blocks).unwrap()[0]["input"],
            json!({"city": "Paris"})
        );
    }

    #[test]
    fn every_error_kind_has_an_anthropic_type() {
        let known = [
            "invalid_request_error",
            "authentication_error",
            "not_found_error",
            "request_too_large",
            "rate_limit_error",
            "overloaded_error",
            "api_error",
        ];
        for k in ErrorKind::ALL {
            assert!(known.contains(&error_type(k)), "{k:?}");
            // Client faults are never api_error; server faults never invalid_request_error.
            if k.status().is_server_error() {
                assert!(
                    matches!(error_type(k), "api_error" | "overloaded_error"),
                    "{k:?}"
                );
            }
        }
    }

    #[test]
    fn finish_reasons_map_to_stop_reasons_and_stream_events() {
        assert_eq!(
            stop_reason(FinishReason::Stop, None, false),
            ("end_turn", None)
        );
        assert_eq!(
            stop_reason(FinishReason::Stop, Some("##"), false),
            ("stop_sequence", Some("##".into()))
        );
        assert_eq!(stop_reason(FinishReason::Stop, None, true).0, "tool_use");
        assert_eq!(
            stop_reason(FinishReason::Length, None, true).0,
            "max_tokens"
        );
        assert_eq!(
            stop_reason(FinishReason::Cancelled, None, false).0,
            "max_tokens"
        );
        let mut stream = MessageStream::new(false);
        let open = stream.opening("msg_1", "m", 12);
        let evs = stream.events(&Event::Finished {
            reason: FinishReason::Stop,
            stop: None,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 7,
                cached_tokens: 0,
            },
            timings: Default::default(),
        });
        let names: Vec<_> = evs.iter().map(StreamEvent::name).collect();
        assert_eq!(
            names,
            ["content_block_stop", "message_delta", "message_stop"]
        );
        assert_eq!(
            serde_json::to_value(&evs[1]).unwrap(),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}})
        );
        assert_eq!(
            String::from_utf8(open[2].to_sse().to_vec()).unwrap(),
            "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        );
        assert_eq!(
            serde_json::to_value(&open[0]).unwrap()["message"]["usage"],
            json!({"input_tokens": 12, "output_tokens": 0})
        );
    }
}
