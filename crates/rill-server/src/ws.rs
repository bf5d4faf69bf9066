//! The WebSocket protocol at `/v1/ws` (SPEC §5): several generations per connection, each keyed
//! by a client-chosen `id`. In: `generate`, `cancel`, `resume`, `ping`. Out: `queued`, `token`,
//! `complete`, `error`, `pong`. JSON text frames by default; MessagePack binary frames when the
//! client offers the `rill.msgpack` subprotocol (`rill.json` names the default explicitly).
//!
//! A `token` frame carries `token: {id, text, position, latency_ms}`, or `tokens: [...]` plus
//! the joined `text` when a slow reader's tokens were coalesced. A malformed frame gets an
//! `error` frame (`recoverable: true`) and the connection stays usable. Each generation writes
//! through the connection's bounded outbox: a reader that does not keep up stalls only its own
//! generations, which the scheduler then coalesces and, past its bound, ends with
//! `slow_consumer`. Closing the socket cancels the connection's generations except resumable
//! ones (`"resumable": true`), which run on for the resume window and can be picked up from
//! any connection with `resume {id, after_position}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use futures_util::{SinkExt, StreamExt};
use rill_scheduler::{Event, RequestStream, SubmitError};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::http::ApiKey;
use crate::params::{self, Kind};
use crate::resume::{Read, Resumable, StreamBuffer, StreamEntry};
use crate::state::SharedState;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    MsgPack,
}

pub async fn upgrade(
    State(state): State<SharedState>,
    Extension(key): Extension<ApiKey>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws
        .protocols(["rill.msgpack", "rill.json"])
        .max_message_size(state.cfg.max_body_bytes);
    let enc = if ws.selected_protocol().is_some_and(|p| p == "rill.msgpack") {
        Encoding::MsgPack
    } else {
        Encoding::Json
    };
    ws.on_upgrade(move |socket| connection(state, key, socket, enc))
}

fn error_frame(id: Option<&str>, code: &str, message: &str, recoverable: bool) -> Value {
    json!({"type": "error", "id": id, "error": {"code": code, "message": message, "recoverable": recoverable}})
}

struct Running {
    cancel: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    resumable: bool,
}

async fn connection(state: SharedState, key: ApiKey, socket: WebSocket, enc: Encoding) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Value>(64);
    let writer = tokio::spawn(async move {
        while let Some(v) = out_rx.recv().await {
            let msg = match enc {
                Encoding::Json => Message::Text(v.to_string().into()),
                Encoding::MsgPack => match rmp_serde::to_vec_named(&v) {
                    Ok(b) => Message::Binary(b.into()),
                    Err(_) => continue,
                },
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut gens: HashMap<String, Running> = HashMap::new();
    let mut shutdown = state.shutdown.subscribe();
    loop {
        gens.retain(|_, g| !g.task.is_finished());
        let stopping = *shutdown.borrow();
        if stopping && gens.is_empty() {
            break;
        }
        tokio::select! {
            msg = incoming.next() => {
                let value = match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(t.as_str())
                        .map_err(|e| format!("malformed JSON frame: {e}")),
                    Some(Ok(Message::Binary(b))) => rmp_serde::from_slice::<Value>(&b)
                        .map_err(|e| format!("malformed MessagePack frame: {e}")),
                    Some(Ok(_)) => continue, // ping/pong are answered by the socket layer
                };
                let frame = match value {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => {
                        let _ = out.send(error_frame(None, "invalid_message", "a frame must be an object", true)).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = out.send(error_frame(None, "invalid_message", &e, true)).await;
                        continue;
                    }
                };
                if stopping && frame.get("type").and_then(Value::as_str) == Some("generate") {
                    let id = frame.get("id").and_then(Value::as_str);
                    let _ = out.send(error_frame(id, "server_shutdown", "the server is shutting down", false)).await;
                    continue;
                }
                handle_frame(&state, &key, frame, &out, &mut gens).await;
            }
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)), if stopping => {}
        }
    }
    for (_, g) in gens.drain() {
        if !g.resumable {
            g.task.abort(); // drops its RequestStream: the scheduler cancels the request
        }
    }
    drop(out);
    let _ = writer.await;
}

async fn handle_frame(
    state: &SharedState,
    key: &ApiKey,
    frame: Map<String, Value>,
    out: &mpsc::Sender<Value>,
    gens: &mut HashMap<String, Running>,
) {
    let kind = frame.get("type").and_then(Value::as_str).unwrap_or("");
    let id = frame.get("id").and_then(Value::as_str).map(String::from);
    match (kind, id) {
        ("ping", _) => {
            let mut pong = json!({"type": "pong"});
            if let Some(ts) = frame.get("ts") {
                pong["ts"] = ts.clone();
            }
            let _ = out.send(pong).await;
        }
        ("generate", Some(id)) => {
            if gens.contains_key(&id) {
                let _ = out
                    .send(error_frame(
                        Some(&id),
                        "duplicate_id",
                        "a generation with this id is running",
                        true,
                    ))
                    .await;
                return;
            }
            let resumable = frame
                .get("resumable")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let (tx, rx) = oneshot::channel();
            let span = tracing::info_span!("request", ws_id = %id, stream = true);
            let task = tokio::spawn(
                generate(
                    state.clone(),
                    key.clone(),
                    id.clone(),
                    frame,
                    out.clone(),
                    rx,
                )
                .instrument(span),
            );
            gens.insert(
                id,
                Running {
                    cancel: Some(tx),
                    task,
                    resumable,
                },
            );
        }
        ("cancel", Some(id)) => {
            if let Some(g) = gens.get_mut(&id) {
                if let Some(c) = g.cancel.take() {
                    let _ = c.send(());
                }
            } else if let Some(e) = state.streams.get(&ws_key(key, &id)) {
                state.sched.cancel(e.request_id);
            } else {
                let _ = out
                    .send(error_frame(
                        Some(&id),
                        "not_found",
                        "no running generation with this id",
                        true,
                    ))
                    .await;
            }
        }
        ("resume", Some(id)) => {
            let after = frame.get("after_position").and_then(Value::as_i64);
            match state
                .streams
                .get(&ws_key(key, &id))
                .map(|e| match &e.resumable {
                    Resumable::Ws(b) => Some(b.clone()),
                    _ => None,
                }) {
                Some(Some(buf)) => {
                    let cursor = match after {
                        None => Ok(None),
                        Some(p) if p < 0 => Ok(None),
                        Some(p) => buf.cursor_for_position(p as u64),
                    };
                    match cursor {
                        Ok(c) => {
                            let task = tokio::spawn(follow(buf, c, out.clone()));
                            gens.insert(
                                id,
                                Running {
                                    cancel: None,
                                    task,
                                    resumable: true,
                                },
                            );
                        }
                        Err(crate::resume::Expired) => {
                            let _ = out
                                .send(error_frame(
                                    Some(&id),
                                    "stream_expired",
                                    "those tokens are no longer buffered",
                                    false,
                                ))
                                .await;
                        }
                    }
                }
                _ => {
                    let _ = out
                        .send(error_frame(
                            Some(&id),
                            "not_found",
                            "no resumable generation with this id (unknown, not resumable, or its window is over)",
                            false,
                        ))
                        .await;
                }
            }
        }
        ("generate" | "cancel" | "resume", None) => {
            let _ = out
                .send(error_frame(
                    None,
                    "invalid_message",
                    "`id` (a string) is required",
                    true,
                ))
                .await;
        }
        (other, _) => {
            let _ = out
                .send(error_frame(
                    None,
                    "invalid_message",
                    &format!("unknown frame type `{other}` (generate, cancel, resume, ping)"),
                    true,
                ))
                .await;
        }
    }
}

/// Registry key of a resumable WebSocket generation (scoped to its API key).
fn ws_key(key: &ApiKey, id: &str) -> String {
    format!("ws:{}:{id}", key.0)
}

/// The OpenAI-style body of a `generate` frame: `params` first, top-level fields over them.
fn body_of(frame: &Map<String, Value>) -> (Kind, Map<String, Value>) {
    let mut body = frame
        .get("params")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for k in ["prompt", "messages", "max_tokens", "stop", "priority"] {
        if let Some(v) = frame.get(k) {
            body.insert(k.to_string(), v.clone());
        }
    }
    let kind = if body.contains_key("messages") {
        Kind::Chat
    } else {
        Kind::Completion
    };
    (kind, body)
}

/// Turns scheduler events into frames.
struct WsRender {
    id: String,
    position: u64,
    last: Instant,
}

impl WsRender {
    fn token(&self, id: Option<u32>, text: &str, position: u64, latency_ms: f64) -> Value {
        json!({"id": id, "text": text, "position": position, "latency_ms": latency_ms})
    }

    /// Frames for an event; `split`: one frame per token (resumable streams, exact positions).
    fn frames(&mut self, ev: &Event, split: bool) -> Vec<(Option<u64>, Value)> {
        match ev {
            Event::Started { .. } => Vec::new(),
            Event::Tokens { tokens, text, .. } => {
                let now = Instant::now();
                let latency = now.duration_since(self.last).as_secs_f64() * 1e3;
                self.last = now;
                if tokens.is_empty() {
                    if text.is_empty() {
                        return Vec::new();
                    }
                    let t = self.token(None, text, self.position, 0.0);
                    return vec![(
                        Some(self.position),
                        json!({"type": "token", "id": self.id, "token": t}),
                    )];
                }
                let n = tokens.len();
                let items: Vec<Value> = tokens
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let piece = if i + 1 == n { text.as_str() } else { "" };
                        self.token(
                            Some(t.id),
                            piece,
                            self.position + i as u64,
                            if i == 0 { latency } else { 0.0 },
                        )
                    })
                    .collect();
                let first = self.position;
                self.position += n as u64;
                if n == 1 || split {
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, t)| {
                            (
                                Some(first + i as u64),
                                json!({"type": "token", "id": self.id, "token": t}),
                            )
                        })
                        .collect()
                } else {
                    vec![(
                        Some(first + n as u64 - 1),
                        json!({"type": "token", "id": self.id, "tokens": items, "text": text}),
                    )]
                }
            }
            Event::Finished {
                reason,
                usage,
                timings,
                ..
            } => vec![(
                Some(u64::MAX),
                json!({
                    "type": "complete",
                    "id": self.id,
                    "finish_reason": reason.as_str(),
                    "usage": crate::openai::usage_json(usage),
                    "summary": {
                        "total_tokens": usage.completion_tokens,
                        "prompt_tokens": usage.prompt_tokens,
                        "ttft_ms": timings.ttft_ms,
                        "queue_ms": timings.queue_ms,
                        "average_token_latency_ms": timings.itl_mean_ms,
                        "p95_token_latency_ms": timings.itl_p95_ms,
                        "tokens_per_second": timings.decode_tokens_per_s,
                    },
                }),
            )],
            Event::Error { code, message, .. } => vec![(
                Some(u64::MAX),
                error_frame(Some(&self.id), code.as_str(), message, false),
            )],
        }
    }
}

fn submit_error_frame(id: &str, e: &SubmitError) -> Value {
    let code = match e {
        SubmitError::Overloaded { .. } => "server_overloaded",
        SubmitError::ShuttingDown => "server_shutdown",
        SubmitError::TooLong { .. } => "context_length_exceeded",
        _ => "invalid_request",
    };
    let mut f = error_frame(Some(id), code, &e.to_string(), true);
    if let SubmitError::Overloaded { retry_after, .. } = e {
        f["error"]["retry_after_s"] = json!(retry_after.as_secs());
    }
    f
}

async fn generate(
    state: SharedState,
    key: ApiKey,
    id: String,
    frame: Map<String, Value>,
    out: mpsc::Sender<Value>,
    mut cancel: oneshot::Receiver<()>,
) {
    let resumable = frame
        .get("resumable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (kind, body) = body_of(&frame);
    let (h, max_prompt) = (state.sched.clone(), state.cfg.max_prompt_tokens);
    let parsed =
        tokio::task::spawn_blocking(move || params::parse(kind, &body, &h, max_prompt)).await;
    let p = match parsed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let mut f = error_frame(
                Some(&id),
                e.code.as_deref().unwrap_or("invalid_request"),
                &e.message,
                true,
            );
            f["error"]["param"] = json!(e.param);
            let _ = out.send(f).await;
            return;
        }
        Err(_) => {
            let _ = out
                .send(error_frame(
                    Some(&id),
                    "internal",
                    "request parsing failed",
                    true,
                ))
                .await;
            return;
        }
    };
    if let Err(e) = state.charge(&key.0, p.request.prompt.len() + p.request.max_tokens) {
        let mut f = error_frame(Some(&id), "rate_limit_exceeded", &e.message, true);
        f["error"]["retry_after_s"] = json!(e.retry_after_s);
        let _ = out.send(f).await;
        return;
    }
    let mut stream = match state.sched.submit(p.request) {
        Ok(s) => s,
        Err(e) => {
            let _ = out.send(submit_error_frame(&id, &e)).await;
            return;
        }
    };
    let render = WsRender {
        id: id.clone(),
        position: 0,
        last: Instant::now(),
    };
    if resumable {
        let buf = StreamBuffer::<Arc<Value>>::new(state.cfg.resume_buffer_events);
        let rkey = ws_key(&key, &id);
        state.streams.insert(
            &rkey,
            StreamEntry {
                request_id: stream.id(),
                resumable: Resumable::Ws(buf.clone()),
                owner: Some(key.0.clone()),
            },
        );
        let follower = tokio::spawn(follow(buf.clone(), None, out.clone()));
        tokio::spawn(pump(state.clone(), rkey, render, stream, buf, cancel));
        let _ = follower.await;
        return;
    }
    let mut render = render;
    let mut cancelled = false;
    let mut last_position = None;
    let mut track = crate::metrics::Track::default();
    loop {
        tokio::select! {
            ev = stream.recv() => {
                let Some(ev) = ev else { break };
                state.metrics.on_event(&mut track, &ev);
                let terminal = ev.is_terminal();
                for (_, f) in render.frames(&ev, false) {
                    if out.send(f).await.is_err() {
                        return; // connection gone: dropping `stream` cancels
                    }
                }
                if let Event::Tokens { sampled_at, .. } = &ev {
                    state.metrics.on_sent(*sampled_at);
                }
                if terminal {
                    break;
                }
            }
            r = &mut cancel, if !cancelled => {
                cancelled = true;
                if r.is_ok() {
                    stream.cancel();
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        // While waiting, tell the client where it stands.
        let pos = stream.queue_position();
        if pos.is_some() && pos != last_position {
            last_position = pos;
            let _ = out
                .send(json!({"type": "queued", "id": id, "position": pos}))
                .await;
        }
    }
}

/// A resumable WebSocket generation: events into the buffer, independent of any connection.
async fn pump(
    state: SharedState,
    rkey: String,
    mut render: WsRender,
    mut stream: RequestStream,
    buf: Arc<StreamBuffer<Arc<Value>>>,
    mut cancel: oneshot::Receiver<()>,
) {
    let window = Duration::from_secs(state.cfg.resume_window_s);
    let mut cancelled = false;
    let mut track = crate::metrics::Track::default();
    loop {
        tokio::select! {
            ev = stream.recv() => {
                let Some(ev) = ev else { break };
                state.metrics.on_event(&mut track, &ev);
                let terminal = ev.is_terminal();
                for (pos, f) in render.frames(&ev, true) {
                    buf.push(pos, Arc::new(f));
                }
                if terminal {
                    break;
                }
            }
            r = &mut cancel, if !cancelled => {
                cancelled = true;
                if r.is_ok() {
                    stream.cancel();
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if buf.detached_for().is_some_and(|d| d > window) {
                    break; // abandoned: dropping `stream` cancels
                }
            }
        }
    }
    buf.finish();
    drop(stream);
    tokio::time::sleep(window).await;
    state.streams.remove(&rkey);
}

/// Forwards a resumable generation's frames after `cursor` to a connection.
async fn follow(buf: Arc<StreamBuffer<Arc<Value>>>, cursor: Option<u64>, out: mpsc::Sender<Value>) {
    buf.attach();
    let mut version = buf.subscribe();
    let mut cursor = cursor;
    loop {
        match buf.read_after(cursor) {
            Read::Frames(frames) => {
                let mut gone = false;
                for f in frames {
                    if out.send((*f.data).clone()).await.is_err() {
                        gone = true;
                        break;
                    }
                    cursor = Some(f.idx);
                }
                if gone {
                    break;
                }
            }
            Read::Done => break,
            Read::Gone => {
                let _ = out
                    .send(error_frame(
                        None,
                        "slow_consumer",
                        "the client fell behind the replay buffer",
                        false,
                    ))
                    .await;
                break;
            }
            Read::Wait => {
                tokio::select! {
                    r = version.changed() => if r.is_err() { break },
                    _ = out.closed() => break,
                }
            }
        }
    }
    buf.detach();
}
