//! Server-sent events for `/v1/chat/completions` and `/v1/completions` with `stream: true`, and
//! for `GET /v1/streams/{id}` (resume). Every event carries `id: STREAM:INDEX`; a `: keep-alive`
//! comment goes out when nothing else has for `keepalive_s` (with the queue position while the
//! request waits). A plain stream's task reads the scheduler and writes to the socket; when the
//! socket is slow it stops reading, so the scheduler coalesces and, past its bound, ends the
//! request with `slow_consumer`. A resumable stream's generation pumps into a buffer that
//! followers (the first response, later resumes) read from.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use rill_scheduler::{Event, RequestStream};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::metrics::Track;
use crate::openai::Renderer;
use crate::resume::{Read, Resumable, StreamBuffer, StreamEntry};
use crate::state::SharedState;

const DONE: &str = "[DONE]";

fn frame(stream_id: &str, idx: u64, data: &str) -> Bytes {
    Bytes::from(format!("id: {stream_id}:{idx}\ndata: {data}\n\n"))
}

fn keepalive(position: Option<usize>) -> Bytes {
    match position {
        Some(p) => Bytes::from(format!(": keep-alive queue_position={p}\n\n")),
        None => Bytes::from_static(b": keep-alive\n\n"),
    }
}

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

/// Starts streaming a submitted request.
pub fn respond(
    state: SharedState,
    renderer: Renderer,
    stream: RequestStream,
    resumable: bool,
    owner: Option<String>,
) -> Response {
    let id = renderer.id.clone();
    let span = tracing::info_span!("request", id = %id, stream = true, resumable);
    if resumable {
        let buf = StreamBuffer::<Arc<str>>::new(state.cfg.resume_buffer_events);
        state.streams.insert(
            &id,
            StreamEntry {
                request_id: stream.id(),
                resumable: Resumable::Sse(buf.clone()),
                owner,
            },
        );
        tokio::spawn(pump(
            state.clone(),
            id.clone(),
            renderer,
            stream,
            buf.clone(),
        ));
        return follow(state, &id, buf, None);
    }
    state.streams.insert(
        &id,
        StreamEntry {
            request_id: stream.id(),
            resumable: Resumable::No,
            owner,
        },
    );
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(direct(state, id.clone(), renderer, stream, tx).instrument(span));
    response(&id, rx)
}

/// A plain stream: scheduler events straight to the socket.
async fn direct(
    state: SharedState,
    id: String,
    mut renderer: Renderer,
    mut stream: RequestStream,
    tx: mpsc::Sender<Bytes>,
) {
    let period = Duration::from_secs(state.cfg.keepalive_s);
    let mut idx = 0u64;
    let mut track = Track::default();
    'outer: loop {
        tokio::select! {
            ev = stream.recv() => {
                let Some(ev) = ev else { break };
                state.metrics.on_event(&mut track, &ev);
                let terminal = ev.is_terminal();
                for payload in renderer.stream_event(&ev) {
                    if tx.send(frame(&id, idx, &payload.to_string())).await.is_err() {
                        break 'outer;
                    }
                    idx += 1;
                }
                if let Event::Tokens { sampled_at, .. } = &ev {
                    state.metrics.on_sent(*sampled_at);
                }
                if terminal {
                    let _ = tx.send(frame(&id, idx, DONE)).await;
                    break;
                }
            }
            _ = tx.closed() => break, // client gone: dropping `stream` cancels the request
            _ = tokio::time::sleep(period) => {
                if tx.send(keepalive(stream.queue_position())).await.is_err() {
                    break;
                }
            }
        }
    }
    state.streams.remove(&id);
}

/// A resumable stream's generation: scheduler events into the buffer. Runs until the request
/// ends, or until nobody has followed it for `resume_window_s` (then it is cancelled).
async fn pump(
    state: SharedState,
    id: String,
    mut renderer: Renderer,
    mut stream: RequestStream,
    buf: Arc<StreamBuffer<Arc<str>>>,
) {
    let window = Duration::from_secs(state.cfg.resume_window_s);
    let mut progress = buf.subscribe_progress();
    let mut track = Track::default();
    loop {
        // Backpressure towards an attached follower; a detached stream runs free.
        while buf.unread().is_some_and(|u| u >= buf.capacity() as u64) {
            if progress.changed().await.is_err() {
                break;
            }
        }
        tokio::select! {
            ev = stream.recv() => {
                let Some(ev) = ev else { break };
                state.metrics.on_event(&mut track, &ev);
                let terminal = ev.is_terminal();
                for payload in renderer.stream_event(&ev) {
                    buf.push(None, Arc::from(payload.to_string()));
                }
                if let Event::Tokens { sampled_at, .. } = &ev {
                    state.metrics.on_sent(*sampled_at);
                }
                if terminal {
                    buf.push(None, Arc::from(DONE));
                    break;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if buf.detached_for().is_some_and(|d| d > window) {
                    tracing::info!(stream = %id, "resumable stream abandoned; cancelling");
                    break; // dropping `stream` cancels the request
                }
            }
        }
    }
    buf.finish();
    drop(stream);
    // Keep it replayable for the window, then forget it.
    tokio::time::sleep(window).await;
    state.streams.remove(&id);
}

/// A follower of a resumable stream from `cursor` (the last event index the client has).
pub fn follow(
    state: SharedState,
    id: &str,
    buf: Arc<StreamBuffer<Arc<str>>>,
    cursor: Option<u64>,
) -> Response {
    let (tx, rx) = mpsc::channel(16);
    buf.attach();
    let period = Duration::from_secs(state.cfg.keepalive_s);
    let sid = id.to_string();
    tokio::spawn(async move {
        let mut version = buf.subscribe();
        let mut cursor = cursor;
        'outer: loop {
            match buf.read_after(cursor) {
                Read::Frames(frames) => {
                    for f in frames {
                        if tx.send(frame(&sid, f.idx, &f.data)).await.is_err() {
                            break 'outer;
                        }
                        cursor = Some(f.idx);
                    }
                }
                Read::Done => break,
                Read::Gone => {
                    let e = crate::openai::stream_error_json(
                        "slow_consumer",
                        "the client fell behind the stream's replay buffer",
                    );
                    let _ = tx
                        .send(frame(&sid, cursor.map_or(0, |c| c + 1), &e.to_string()))
                        .await;
                    let _ = tx
                        .send(frame(&sid, cursor.map_or(1, |c| c + 2), DONE))
                        .await;
                    break;
                }
                Read::Wait => {
                    tokio::select! {
                        r = version.changed() => if r.is_err() { break },
                        _ = tx.closed() => break,
                        _ = tokio::time::sleep(period) => {
                            if tx.send(keepalive(None)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
        buf.detach();
    });
    response(id, rx)
}

/// Collects a non-streaming request's events.
pub async fn collect(
    state: &SharedState,
    renderer: &mut Renderer,
    stream: &mut RequestStream,
) -> Result<(), (String, String)> {
    let mut track = Track::default();
    while let Some(ev) = stream.recv().await {
        state.metrics.on_event(&mut track, &ev);
        let terminal = ev.is_terminal();
        if let Some(err) = renderer.absorb(&ev) {
            return Err(err);
        }
        if terminal || matches!(ev, Event::Finished { .. }) {
            return Ok(());
        }
    }
    Err((
        "internal".into(),
        "the generation ended without a result".into(),
    ))
}
