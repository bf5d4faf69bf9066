//! The WebSocket protocol at `/v1/ws` (SPEC §5; frames in [`crate::protocol::ws`]): several
//! generations per connection, each keyed by a client-chosen `id`. JSON text frames by
//! default; MessagePack binary frames when the client offers the `rill.msgpack` subprotocol
//! (`rill.json` names the default explicitly).
//!
//! A `token` frame carries one `token`, or `tokens` plus the joined `text` when a slow
//! reader's tokens were coalesced. A malformed frame gets an `error` frame (`recoverable:
//! true`) and the connection stays usable. Each generation is relayed ([`crate::relay`])
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
use rill_scheduler::{ErrorCode, Event, FinishReason};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::http::ApiKey;
use crate::params::{self, Kind};
use crate::protocol::openai::UsageBody;
use crate::protocol::ws::{
    decode, ClientFrame, CompleteFrame, GenerateFrame, ServerFrame, Summary, TokenFrame, TokenInfo,
    ToolCallFrame,
};
use crate::protocol::{ApiError, ErrorKind};
use crate::relay::{self, BufferSink, Choices, FollowSink, Frames, Gone, Sink};
use crate::resume::{Follower, Resumable, StreamBuffer, StreamEntry};
use crate::state::SharedState;
use crate::tools::parser::{CallParser, Piece};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    MsgPack,
}

/// The connection's outbox: frames on their way to the socket's writer task.
type Outbox = mpsc::Sender<Arc<ServerFrame>>;

/// `GET /v1/ws`: upgrades to the protocol.
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

async fn send_error(out: &Outbox, id: Option<&str>, e: &ApiError) {
    let _ = out.send(Arc::new(ServerFrame::error(id, e))).await;
}

/// One generation (or resume) running on the connection.
struct Running {
    cancel: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn encode(enc: Encoding, f: &ServerFrame) -> Option<Message> {
    match enc {
        Encoding::Json => serde_json::to_string(f)
            .ok()
            .map(|s| Message::Text(s.into())),
        Encoding::MsgPack => rmp_serde::to_vec_named(f)
            .ok()
            .map(|b| Message::Binary(b.into())),
    }
}

async fn connection(state: SharedState, key: ApiKey, socket: WebSocket, enc: Encoding) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Arc<ServerFrame>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            let Some(msg) = encode(enc, &f) else { continue };
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
                match decode(value) {
                    Ok(ClientFrame::Generate(g)) if stopping => {
                        send_error(&out, Some(&g.id), &ApiError::shutting_down()).await;
                    }
                    Ok(frame) => handle_frame(&state, &key, frame, &out, &mut gens).await,
                    Err((id, e)) => send_error(&out, id.as_deref(), &e).await,
                }
            }
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)), if stopping => {}
        }
    }
    // A plain generation's task owns its request stream: aborting it cancels the request. A
    // resumable generation runs in its own task; aborting here only detaches this connection.
    for (_, g) in gens.drain() {
        g.task.abort();
    }
    drop(out);
    let _ = writer.await;
}

async fn handle_frame(
    state: &SharedState,
    key: &ApiKey,
    frame: ClientFrame,
    out: &Outbox,
    gens: &mut HashMap<String, Running>,
) {
    match frame {
        ClientFrame::Ping { ts } => {
            let _ = out.send(Arc::new(ServerFrame::Pong { ts })).await;
        }
        ClientFrame::Generate(g) => {
            if gens.contains_key(&g.id) {
                let e = ApiError::new(
                    ErrorKind::DuplicateId,
                    "a generation with this id is running",
                );
                send_error(out, Some(&g.id), &e).await;
                return;
            }
            let (tx, rx) = oneshot::channel();
            let id = g.id.clone();
            let span = tracing::info_span!("request", ws_id = %id, stream = true);
            let task = tokio::spawn(
                generate(state.clone(), key.clone(), g, out.clone(), rx).instrument(span),
            );
            gens.insert(
                id,
                Running {
                    cancel: Some(tx),
                    task,
                },
            );
        }
        ClientFrame::Cancel { id } => {
            if let Some(g) = gens.get_mut(&id) {
                if let Some(c) = g.cancel.take() {
                    let _ = c.send(());
                }
            } else if let Some(e) = state.streams.get(&ws_key(key, &id)) {
                for &r in &e.request_ids {
                    state.sched.cancel(r);
                }
            } else {
                let e = ApiError::not_found("no running generation with this id");
                send_error(out, Some(&id), &e).await;
            }
        }
        ClientFrame::Resume { id, after_position } => {
            let buf = state
                .streams
                .get(&ws_key(key, &id))
                .and_then(|e| match &e.resumable {
                    Resumable::Ws(b) => Some(b.clone()),
                    _ => None,
                });
            let Some(buf) = buf else {
                let e = ApiError::not_found(
                    "no resumable generation with this id (unknown, not resumable, or its window is over)",
                );
                send_error(out, Some(&id), &e).await;
                return;
            };
            let cursor = match after_position {
                Some(p) if p >= 0 => buf.cursor_for_position(p as u64),
                _ => Ok(None),
            };
            match cursor {
                Ok(c) => {
                    let follower = buf.follower();
                    let mut wout = WsOut {
                        id: id.clone(),
                        out: out.clone(),
                    };
                    let task =
                        tokio::spawn(async move { relay::follow(follower, c, &mut wout).await });
                    gens.insert(id, Running { cancel: None, task });
                }
                Err(crate::resume::Expired) => {
                    let e = ApiError::gone("those tokens are no longer buffered");
                    send_error(out, Some(&id), &e).await;
                }
            }
        }
    }
}

/// Registry key of a resumable WebSocket generation (scoped to its API key).
fn ws_key(key: &ApiKey, id: &str) -> String {
    format!("ws:{}:{id}", key.0)
}

/// Turns one generation's scheduler events into frames.
struct WsRender {
    id: String,
    position: u64,
    last: Instant,
    /// One frame per token (resumable streams: exact positions to resume from).
    split: bool,
    /// With tools: token frames carry the content, `tool_call` frames the calls.
    calls: Option<CallParser>,
}

impl WsRender {
    fn new(id: String, split: bool, tool_calls: bool) -> Self {
        Self {
            id,
            position: 0,
            last: Instant::now(),
            split,
            calls: tool_calls.then(CallParser::new),
        }
    }

    /// Splits `pieces` into their content (returned) and `tool_call` frames at `position`.
    fn tool_frames(
        &self,
        pieces: Vec<Piece>,
        position: u64,
        out: &mut Vec<(Option<u64>, Arc<ServerFrame>)>,
    ) -> String {
        let mut content = String::new();
        for p in pieces {
            let (index, call_id, name, arguments) = match p {
                Piece::Content(t) => {
                    content.push_str(&t);
                    continue;
                }
                Piece::Start { index, id, name } => (index, Some(id), Some(name), String::new()),
                Piece::Arguments { index, text } => (index, None, None, text),
            };
            let f = ServerFrame::ToolCall(ToolCallFrame {
                id: self.id.clone(),
                index,
                call_id,
                name,
                arguments,
            });
            out.push((Some(position), Arc::new(f)));
        }
        content
    }

    fn token_frame(&self, token: TokenInfo) -> ServerFrame {
        ServerFrame::Token(TokenFrame {
            id: self.id.clone(),
            token: Some(token),
            tokens: None,
            text: None,
        })
    }

    /// The frames of an event, each with the token position it ends at.
    fn frames(&mut self, ev: &Event, out: &mut Vec<(Option<u64>, Arc<ServerFrame>)>) {
        match ev {
            Event::Started { .. } => {}
            Event::Tokens { tokens, text, .. } => {
                let mut calls = Vec::new();
                let content;
                let text = match self.calls.as_mut() {
                    Some(p) => {
                        let pieces = p.push(text);
                        let at = (self.position + tokens.len() as u64).saturating_sub(1);
                        content = self.tool_frames(pieces, at, &mut calls);
                        &content
                    }
                    None => text,
                };
                self.frames_of_tokens(tokens, text, out);
                out.append(&mut calls);
            }
            Event::Finished {
                reason,
                usage,
                timings,
                ..
            } => {
                let mut called = false;
                if let Some(mut p) = self.calls.take() {
                    let rest = p.finish();
                    let mut calls = Vec::new();
                    let content = self.tool_frames(rest, self.position, &mut calls);
                    self.frames_of_tokens(&[], &content, out);
                    out.append(&mut calls);
                    called = p.completed() > 0;
                }
                let finish_reason = match reason {
                    FinishReason::Stop if called => "tool_calls",
                    r => r.as_str(),
                };
                let f = ServerFrame::Complete(CompleteFrame {
                    id: self.id.clone(),
                    finish_reason,
                    usage: UsageBody::from(usage),
                    summary: Summary {
                        total_tokens: usage.completion_tokens,
                        prompt_tokens: usage.prompt_tokens,
                        ttft_ms: timings.ttft_ms,
                        queue_ms: timings.queue_ms,
                        average_token_latency_ms: timings.itl_mean_ms,
                        p95_token_latency_ms: timings.itl_p95_ms,
                        tokens_per_second: timings.decode_tokens_per_s,
                    },
                });
                out.push((Some(u64::MAX), Arc::new(f)));
            }
            Event::Error { code, message, .. } => {
                let e = ApiError::from_event(*code, message);
                out.push((
                    Some(u64::MAX),
                    Arc::new(ServerFrame::error(Some(&self.id), &e)),
                ));
            }
        }
    }

    /// The token frames of `tokens` releasing `text` (a frame of text alone without tokens).
    fn frames_of_tokens(
        &mut self,
        tokens: &[rill_engine::SampledToken],
        text: &str,
        out: &mut Vec<(Option<u64>, Arc<ServerFrame>)>,
    ) {
        let now = Instant::now();
        let latency = now.duration_since(self.last).as_secs_f64() * 1e3;
        self.last = now;
        if tokens.is_empty() {
            if !text.is_empty() {
                let t = TokenInfo {
                    id: None,
                    text: text.to_string(),
                    position: self.position,
                    latency_ms: 0.0,
                };
                out.push((Some(self.position), Arc::new(self.token_frame(t))));
            }
            return;
        }
        let n = tokens.len();
        let first = self.position;
        let items: Vec<TokenInfo> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| TokenInfo {
                id: Some(t.id),
                text: if i + 1 == n {
                    text.to_string()
                } else {
                    String::new()
                },
                position: first + i as u64,
                latency_ms: if i == 0 { latency } else { 0.0 },
            })
            .collect();
        self.position += n as u64;
        if n == 1 || self.split {
            for t in items {
                let p = t.position;
                out.push((Some(p), Arc::new(self.token_frame(t))));
            }
        } else {
            let f = ServerFrame::Token(TokenFrame {
                id: self.id.clone(),
                token: None,
                tokens: Some(items),
                text: Some(text.to_string()),
            });
            out.push((Some(first + n as u64 - 1), Arc::new(f)));
        }
    }
}

impl Frames for WsRender {
    type Frame = Arc<ServerFrame>;

    fn frames(&mut self, _: usize, ev: &Event, out: &mut Vec<(Option<u64>, Arc<ServerFrame>)>) {
        WsRender::frames(self, ev, out)
    }
}

/// A plain generation: frames straight into the connection's outbox, and `queued` frames
/// while it waits.
struct WsSink {
    out: Outbox,
    render: WsRender,
    last_position: Option<usize>,
    scratch: Vec<(Option<u64>, Arc<ServerFrame>)>,
}

impl Sink for WsSink {
    async fn deliver(&mut self, _: usize, ev: &Event) -> Result<(), Gone> {
        self.render.frames(ev, &mut self.scratch);
        for (_, f) in self.scratch.drain(..) {
            self.out.send(f).await.map_err(|_| Gone)?;
        }
        Ok(())
    }

    async fn gone(&self) {
        self.out.closed().await
    }

    fn idle_period(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn idle(&mut self, queue_position: Option<usize>) -> Result<(), Gone> {
        if let Some(position) = queue_position.filter(|&p| Some(p) != self.last_position) {
            self.last_position = Some(position);
            let f = ServerFrame::Queued {
                id: self.render.id.clone(),
                position,
            };
            self.out.send(Arc::new(f)).await.map_err(|_| Gone)?;
        }
        Ok(())
    }
}

/// A connection following a resumable generation.
struct WsOut {
    id: String,
    out: Outbox,
}

impl FollowSink<Arc<ServerFrame>> for WsOut {
    async fn send(&mut self, _: u64, frame: &Arc<ServerFrame>) -> Result<(), Gone> {
        self.out.send(frame.clone()).await.map_err(|_| Gone)
    }

    async fn gone(&self) {
        self.out.closed().await
    }

    async fn expired(&mut self, _: Option<u64>) {
        let e = ApiError::from_event(
            ErrorCode::SlowConsumer,
            "the client fell behind the replay buffer",
        );
        send_error(&self.out, Some(&self.id), &e).await;
    }
}

async fn generate(
    state: SharedState,
    key: ApiKey,
    frame: GenerateFrame,
    out: Outbox,
    cancel: oneshot::Receiver<()>,
) {
    let id = frame.id.clone();
    let body = frame.body();
    let kind = if body.contains_key("messages") {
        Kind::Chat
    } else {
        Kind::Completion
    };
    let (h, limits) = (state.sched.clone(), params::RequestLimits::of(&state.cfg));
    let parsed = tokio::task::spawn_blocking(move || params::parse(kind, &body, &h, limits)).await;
    let p = match parsed {
        Ok(Ok(p)) if p.n > 1 => {
            let e = ApiError::param(
                "n",
                "a WebSocket generation has one choice: send one `generate` per choice (n > 1 is served on /v1/chat/completions and /v1/completions)",
            );
            return send_error(&out, Some(&id), &e).await;
        }
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return send_error(&out, Some(&id), &e).await,
        Err(_) => {
            let e = ApiError::internal("request parsing failed");
            return send_error(&out, Some(&id), &e).await;
        }
    };
    if let Err(e) = state.charge(&key.0, p.request.prompt.len() + p.request.max_tokens) {
        return send_error(&out, Some(&id), &e).await;
    }
    let mut stream = match state.sched.submit(p.request) {
        Ok(s) => Choices::one(s),
        Err(e) => return send_error(&out, Some(&id), &ApiError::from(e)).await,
    };
    if frame.resumable {
        let buf = StreamBuffer::<Arc<ServerFrame>>::new(state.cfg.resume_buffer_events);
        let rkey = ws_key(&key, &id);
        state.streams.insert(
            &rkey,
            StreamEntry {
                request_ids: stream.ids(),
                resumable: Resumable::Ws(buf.clone()),
                owner: Some(key.0.clone()),
            },
        );
        let follower: Follower<Arc<ServerFrame>> = buf.follower();
        let window = Duration::from_secs(state.cfg.resume_window_s);
        let sink = BufferSink::new(WsRender::new(id.clone(), true, p.tool_calls), buf, window);
        tokio::spawn(relay::run_resumable(
            state,
            rkey,
            stream,
            sink,
            Some(cancel),
        ));
        let mut wout = WsOut { id, out };
        relay::follow(follower, None, &mut wout).await;
        return;
    }
    let mut sink = WsSink {
        out,
        render: WsRender::new(id, false, p.tool_calls),
        last_position: None,
        scratch: Vec::new(),
    };
    // Returning drops `stream`: the request is cancelled if the connection went away.
    relay::relay(&state.metrics, &mut stream, &mut sink, Some(cancel)).await;
}
