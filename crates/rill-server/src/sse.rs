//! Server-sent events for `/v1/chat/completions` and `/v1/completions` with `stream: true`, and
//! for `GET /v1/streams/{id}` (resume): the SSE side of [`crate::relay`]. Every event carries
//! `id: STREAM:INDEX`; a `: keep-alive` comment goes out when nothing else has for
//! `keepalive_s` (with the queue position while the request waits). A plain stream relays the
//! scheduler's events straight to the socket ([`SseSink`]); a resumable one relays them into a
//! buffer ([`crate::relay::BufferSink`]) that followers (the first response, later resumes)
//! read from ([`SseOut`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use rill_scheduler::{ErrorCode, Event};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::openai::Renderer;
use crate::protocol::sse::{event, keepalive, SsePayload};
use crate::protocol::ApiError;
use crate::relay::{self, BufferSink, Choices, FollowSink, Frames, Gone, Sink};
use crate::resume::{Follower, Resumable, StreamBuffer, StreamEntry};
use crate::state::SharedState;

/// An SSE response around a channel of already-framed events (also used by the dashboard).
pub(crate) fn event_stream(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The SSE response of a generation stream: [`event_stream`] plus its id header.
fn response(stream_id: &str, rx: mpsc::Receiver<Bytes>) -> Response {
    let mut r = event_stream(rx);
    if let Ok(v) = HeaderValue::from_str(stream_id) {
        r.headers_mut().insert("x-rill-stream-id", v);
    }
    r
}

/// One SSE response's channel: numbered events and keep-alives to the socket.
pub struct SseOut {
    tx: mpsc::Sender<Bytes>,
    stream_id: String,
    keepalive: Duration,
}

impl SseOut {
    async fn send(&self, b: Bytes) -> Result<(), Gone> {
        self.tx.send(b).await.map_err(|_| Gone)
    }
}

impl FollowSink<Arc<str>> for SseOut {
    async fn send(&mut self, idx: u64, data: &Arc<str>) -> Result<(), Gone> {
        SseOut::send(self, event(&self.stream_id, idx, data)).await
    }

    async fn gone(&self) {
        self.tx.closed().await
    }

    async fn expired(&mut self, cursor: Option<u64>) {
        let e = ApiError::from_event(
            ErrorCode::SlowConsumer,
            "the client fell behind the stream's replay buffer",
        );
        let next = cursor.map_or(0, |c| c + 1);
        let data = SsePayload::error(&e).to_data();
        if SseOut::send(self, event(&self.stream_id, next, &data))
            .await
            .is_ok()
        {
            let done = SsePayload::Done.to_data();
            let _ = SseOut::send(self, event(&self.stream_id, next + 1, &done)).await;
        }
    }

    fn keepalive_period(&self) -> Option<Duration> {
        Some(self.keepalive)
    }

    async fn keepalive(&mut self) -> Result<(), Gone> {
        SseOut::send(self, keepalive(None)).await
    }
}

/// A plain stream: each event rendered and written to the socket.
struct SseSink {
    out: SseOut,
    renderer: Renderer,
    idx: u64,
}

impl Sink for SseSink {
    async fn deliver(&mut self, choice: usize, ev: &Event) -> Result<(), Gone> {
        for payload in self.renderer.stream_event(choice, ev) {
            let e = event(&self.out.stream_id, self.idx, &payload.to_data());
            self.out.send(e).await?;
            self.idx += 1;
        }
        Ok(())
    }

    async fn gone(&self) {
        self.out.tx.closed().await
    }

    fn idle_period(&self) -> Duration {
        self.out.keepalive
    }

    async fn idle(&mut self, queue_position: Option<usize>) -> Result<(), Gone> {
        self.out.send(keepalive(queue_position)).await
    }

    async fn finish(&mut self) {
        let done = SsePayload::Done.to_data();
        let _ = self
            .out
            .send(event(&self.out.stream_id, self.idx, &done))
            .await;
    }
}

/// A resumable stream's frames: each payload serialized once, shared by every follower.
struct SseFrames(Renderer);

impl Frames for SseFrames {
    type Frame = Arc<str>;

    fn frames(&mut self, choice: usize, ev: &Event, out: &mut Vec<(Option<u64>, Arc<str>)>) {
        out.extend(
            self.0
                .stream_event(choice, ev)
                .iter()
                .map(|p| (None, Arc::from(p.to_data()))),
        );
    }

    fn trailer(&self) -> Option<Arc<str>> {
        Some(Arc::from(SsePayload::Done.to_data()))
    }
}

/// Starts streaming a submitted request.
pub fn respond(
    state: SharedState,
    renderer: Renderer,
    mut stream: Choices,
    resumable: bool,
    owner: Option<String>,
) -> Response {
    let id = renderer.id.clone();
    let span = tracing::info_span!("request", id = %id, stream = true, resumable);
    let (tx, rx) = mpsc::channel(16);
    let out = SseOut {
        tx,
        stream_id: id.clone(),
        keepalive: Duration::from_secs(state.cfg.keepalive_s),
    };
    if resumable {
        let buf = StreamBuffer::<Arc<str>>::new(state.cfg.resume_buffer_events);
        state.streams.insert(
            &id,
            StreamEntry {
                request_ids: stream.ids(),
                resumable: Resumable::Sse(buf.clone()),
                owner,
            },
        );
        // Attached before the generation starts, so its first events wait for this reader.
        let follower = buf.follower();
        let window = Duration::from_secs(state.cfg.resume_window_s);
        let sink = BufferSink::new(SseFrames(renderer), buf, window);
        tokio::spawn(relay::run_resumable(state, id.clone(), stream, sink, None).instrument(span));
        tokio::spawn(follow_to(follower, None, out));
        return response(&id, rx);
    }
    state.streams.insert(
        &id,
        StreamEntry {
            request_ids: stream.ids(),
            resumable: Resumable::No,
            owner,
        },
    );
    let task = {
        let id = id.clone();
        async move {
            let mut sink = SseSink {
                out,
                renderer,
                idx: 0,
            };
            // Dropping `stream` afterwards cancels the request if it is still running.
            relay::relay(&state.metrics, &mut stream, &mut sink, None).await;
            state.streams.remove(&id);
        }
    };
    tokio::spawn(task.instrument(span));
    response(&id, rx)
}

async fn follow_to(follower: Follower<Arc<str>>, cursor: Option<u64>, mut out: SseOut) {
    relay::follow(follower, cursor, &mut out).await;
}

/// A follower of a resumable stream from `cursor` (the last event index the client has).
pub fn follow(
    state: &SharedState,
    id: &str,
    buf: &Arc<StreamBuffer<Arc<str>>>,
    cursor: Option<u64>,
) -> Response {
    let (tx, rx) = mpsc::channel(16);
    let out = SseOut {
        tx,
        stream_id: id.to_string(),
        keepalive: Duration::from_secs(state.cfg.keepalive_s),
    };
    tokio::spawn(follow_to(buf.follower(), cursor, out));
    response(id, rx)
}
