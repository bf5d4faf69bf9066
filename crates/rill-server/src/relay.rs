//! The one relay loop between a request's scheduler events and its client, and the one
//! follow loop between a resumable stream's buffer and a client.
//!
//! [`relay`] reads a request's [`Choices`] (one [`RequestStream`], or `n` sibling streams whose
//! events carry their choice index) and hands each event to a [`Sink`]: an SSE response
//! ([`crate::sse`]), a WebSocket connection ([`crate::ws`]), a resumable stream's
//! [`StreamBuffer`] ([`BufferSink`]) or the whole-response [`Collector`]. Metrics (every
//! event, and the send lag of every token event) are recorded here for all of them. When the
//! sink stops taking events the loop stops reading, so the scheduler coalesces and, past its
//! bound, ends the request with `slow_consumer`; when the client is gone the loop returns and
//! dropping the stream cancels the request.
//!
//! [`follow`] reads a [`StreamBuffer`] from a cursor and hands each buffered frame to a
//! [`FollowSink`], then the live ones, until the stream ends or the client goes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rill_scheduler::{Event, RequestStream};
use tokio::sync::oneshot;

use crate::metrics::{Metrics, Track};
use crate::protocol::ApiError;
use crate::resume::{Follower, Read, StreamBuffer};

/// The client is gone (or stopped taking events): stop relaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// Where a request's events go.
pub trait Sink: Send {
    /// Renders one event of choice `choice` (0 unless the request asked for `n` > 1) for the
    /// client and hands it over. Err: the client is gone.
    fn deliver(
        &mut self,
        choice: usize,
        ev: &Event,
    ) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Whether delivered tokens are on their way to the client now (they count in the send-lag
    /// metric); false for a response sent whole at the end.
    fn streams(&self) -> bool {
        true
    }

    /// Waits until the client can take more (a resumable buffer's backpressure).
    fn ready(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Completes when the client is gone.
    fn gone(&self) -> impl Future<Output = ()> + Send;

    /// How long without events before [`Sink::idle`] runs.
    fn idle_period(&self) -> Duration;

    /// Runs after every quiet [`Sink::idle_period`]: keep-alives, the queue position, checks
    /// for an abandoned stream. Err: stop relaying (the request is cancelled).
    fn idle(
        &mut self,
        queue_position: Option<usize>,
    ) -> impl Future<Output = Result<(), Gone>> + Send;

    /// After the terminal event was delivered, or the stream closed without one.
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// The terminal event was delivered.
    Ended,
    /// The client went away (the request is cancelled when its stream drops).
    ClientGone,
    /// The scheduler closed the stream without a terminal event.
    Lost,
}

/// Waits for a cancel message; never completes without a receiver.
async fn cancelled(cancel: &mut Option<oneshot::Receiver<()>>) -> bool {
    match cancel {
        Some(rx) => rx.await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The streams of one client request: one, or the `n` siblings of a request for `n` choices
/// (choice `i` is stream `i`). Dropping it cancels every request still running.
pub struct Choices {
    streams: Vec<RequestStream>,
    ended: Vec<bool>,
    /// Choice 0's events read before relaying began (see [`Choices::with_head`]).
    head: std::collections::VecDeque<Event>,
}

impl Choices {
    /// One request's stream.
    pub fn one(stream: RequestStream) -> Self {
        Self::new(vec![stream])
    }

    /// Sibling streams, choice `i` first in `streams[i]`.
    pub fn new(streams: Vec<RequestStream>) -> Self {
        let ended = vec![false; streams.len()];
        Self {
            streams,
            ended,
            head: Default::default(),
        }
    }

    /// With choice 0's `events` already read from its stream, delivered first.
    pub fn with_head(mut self, events: Vec<Event>) -> Self {
        self.head.extend(events);
        self
    }

    /// The scheduler's ids of the requests (for cancellation).
    pub fn ids(&self) -> Vec<rill_scheduler::RequestId> {
        self.streams.iter().map(RequestStream::id).collect()
    }

    /// The next event of any running choice; None when a stream closed without its terminal
    /// event.
    pub async fn recv(&mut self) -> Option<(usize, Event)> {
        let (choice, ev) = if let Some(ev) = self.head.pop_front() {
            (0, Some(ev))
        } else if self.streams.len() == 1 {
            (0, self.streams[0].recv().await)
        } else {
            let waiting = self
                .streams
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| !self.ended[*i])
                .map(|(i, s)| Box::pin(async move { (i, s.recv().await) }));
            futures_util::future::select_all(waiting).await.0
        };
        let ev = ev?;
        if ev.is_terminal() {
            self.ended[choice] = true;
        }
        Some((choice, ev))
    }

    /// Whether every choice has had its terminal event.
    pub fn all_ended(&self) -> bool {
        self.ended.iter().all(|&e| e)
    }

    /// The best queue position among the choices still waiting.
    pub fn queue_position(&self) -> Option<usize> {
        self.streams
            .iter()
            .filter_map(RequestStream::queue_position)
            .min()
    }

    /// Asks the scheduler to cancel every choice.
    pub fn cancel(&self) {
        for s in &self.streams {
            s.cancel();
        }
    }
}

/// Relays `stream`'s events to `sink` until every choice's terminal one (or the first
/// error), or until the client is gone. A message on `cancel` asks the scheduler to cancel
/// the request (the stream then ends with `finish_reason: "cancelled"`).
pub async fn relay<S: Sink>(
    metrics: &Metrics,
    stream: &mut Choices,
    sink: &mut S,
    mut cancel: Option<oneshot::Receiver<()>>,
) -> Relayed {
    let mut tracks: Vec<Track> = (0..stream.streams.len())
        .map(|_| Track::default())
        .collect();
    let period = sink.idle_period();
    loop {
        sink.ready().await;
        tokio::select! {
            ev = stream.recv() => {
                let Some((choice, ev)) = ev else {
                    sink.finish().await;
                    return Relayed::Lost;
                };
                metrics.on_event(&mut tracks[choice], &ev);
                if sink.deliver(choice, &ev).await.is_err() {
                    return Relayed::ClientGone;
                }
                match &ev {
                    Event::Tokens { sampled_at, .. } if sink.streams() => {
                        metrics.on_sent(*sampled_at)
                    }
                    _ => {}
                }
                if matches!(ev, Event::Error { .. }) || stream.all_ended() {
                    sink.finish().await;
                    return Relayed::Ended;
                }
            }
            _ = sink.gone() => return Relayed::ClientGone,
            asked = cancelled(&mut cancel), if cancel.is_some() => {
                cancel = None;
                if asked {
                    stream.cancel();
                }
            }
            _ = tokio::time::sleep(period) => {
                if sink.idle(stream.queue_position()).await.is_err() {
                    return Relayed::ClientGone;
                }
            }
        }
    }
}

/// Turns events into frames of one transport, for [`BufferSink`].
pub trait Frames: Send {
    /// A rendered frame, shared by every follower.
    type Frame: Clone + Send + Sync + 'static;

    /// The frames of choice `choice`'s `ev`, each with its token position (None: its index),
    /// into `out`.
    fn frames(&mut self, choice: usize, ev: &Event, out: &mut Vec<(Option<u64>, Self::Frame)>);

    /// A frame that closes the stream after the terminal event (SSE's `[DONE]`).
    fn trailer(&self) -> Option<Self::Frame> {
        None
    }
}

/// A resumable stream's generation: frames into its buffer, independent of any connection.
/// Waits while an attached follower is a buffer behind; stops (cancelling the request) when
/// nobody has followed for `window`.
pub struct BufferSink<F: Frames> {
    frames: F,
    buf: Arc<StreamBuffer<F::Frame>>,
    /// Bumped when a follower takes frames or detaches (subscribed once, so no bump is missed).
    progress: tokio::sync::watch::Receiver<u64>,
    window: Duration,
    scratch: Vec<(Option<u64>, F::Frame)>,
}

impl<F: Frames> BufferSink<F> {
    /// Renders with `frames` into `buf`; abandoned after `window` without a follower.
    pub fn new(frames: F, buf: Arc<StreamBuffer<F::Frame>>, window: Duration) -> Self {
        Self {
            frames,
            progress: buf.subscribe_progress(),
            buf,
            window,
            scratch: Vec::new(),
        }
    }
}

impl<F: Frames> Sink for BufferSink<F> {
    async fn deliver(&mut self, choice: usize, ev: &Event) -> Result<(), Gone> {
        self.frames.frames(choice, ev, &mut self.scratch);
        for (position, f) in self.scratch.drain(..) {
            self.buf.push(position, f);
        }
        Ok(())
    }

    async fn ready(&mut self) {
        while self
            .buf
            .unread()
            .is_some_and(|u| u >= self.buf.capacity() as u64)
        {
            if self.progress.changed().await.is_err() {
                break;
            }
        }
    }

    fn gone(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    fn idle_period(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn idle(&mut self, _: Option<usize>) -> Result<(), Gone> {
        if self.buf.detached_for().is_some_and(|d| d > self.window) {
            tracing::info!("resumable stream abandoned; cancelling");
            return Err(Gone);
        }
        Ok(())
    }

    async fn finish(&mut self) {
        if let Some(t) = self.frames.trailer() {
            self.buf.push(None, t);
        }
        self.buf.finish();
    }
}

/// A non-streamed request: absorbs every event into one response.
pub struct Collector {
    /// The OpenAI renderer that accumulates the response.
    pub renderer: crate::openai::Renderer,
    /// The failure, if the generation failed.
    pub error: Option<ApiError>,
}

impl Sink for Collector {
    fn streams(&self) -> bool {
        false
    }

    async fn deliver(&mut self, choice: usize, ev: &Event) -> Result<(), Gone> {
        if let Some(e) = self.renderer.absorb(choice, ev) {
            self.error = Some(e);
        }
        Ok(())
    }

    fn gone(&self) -> impl Future<Output = ()> + Send {
        // The client's connection owns this future: when it goes, the relay is dropped.
        std::future::pending()
    }

    fn idle_period(&self) -> Duration {
        Duration::from_secs(3600)
    }

    async fn idle(&mut self, _: Option<usize>) -> Result<(), Gone> {
        Ok(())
    }
}

/// Where a follower of a resumable stream sends the buffered frames.
pub trait FollowSink<T>: Send {
    /// Sends the frame at index `idx`. Err: the client is gone.
    fn send(&mut self, idx: u64, frame: &T) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Completes when the client is gone.
    fn gone(&self) -> impl Future<Output = ()> + Send;

    /// The follower fell behind the buffer (events after `cursor` were dropped): tell the
    /// client, which then ends.
    fn expired(&mut self, cursor: Option<u64>) -> impl Future<Output = ()> + Send;

    /// How long without frames before a keep-alive (None: never).
    fn keepalive_period(&self) -> Option<Duration> {
        None
    }

    /// Sends a keep-alive. Err: the client is gone.
    fn keepalive(&mut self) -> impl Future<Output = Result<(), Gone>> + Send {
        async { Ok(()) }
    }
}

/// Sends `follower`'s stream after `cursor` (None: from the start) to `sink`: the buffered
/// frames, then the live ones, until the stream ends or the client goes. The follower
/// detaches when this returns or is dropped.
pub async fn follow<T, S>(follower: Follower<T>, cursor: Option<u64>, sink: &mut S)
where
    T: Clone + Send + Sync + 'static,
    S: FollowSink<T>,
{
    let buf = follower.buffer();
    let mut version = buf.subscribe();
    let mut cursor = cursor;
    let period = sink.keepalive_period();
    loop {
        match buf.read_after(cursor) {
            Read::Frames(frames) => {
                for f in frames {
                    if sink.send(f.idx, &f.data).await.is_err() {
                        return;
                    }
                    cursor = Some(f.idx);
                }
            }
            Read::Done => return,
            Read::Gone => {
                sink.expired(cursor).await;
                return;
            }
            Read::Wait => {
                let quiet = async {
                    match period {
                        Some(p) => tokio::time::sleep(p).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = version.changed() => if r.is_err() { return },
                    _ = sink.gone() => return,
                    _ = quiet => {
                        if sink.keepalive().await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Runs a resumable stream's generation into its buffer (see [`BufferSink`]), then keeps it
/// replayable for the resume window before forgetting `key` in the stream registry.
pub async fn run_resumable<F: Frames>(
    state: crate::state::SharedState,
    key: String,
    mut stream: Choices,
    mut sink: BufferSink<F>,
    cancel: Option<oneshot::Receiver<()>>,
) {
    relay(&state.metrics, &mut stream, &mut sink, cancel).await;
    sink.buf.finish();
    drop(stream); // cancels the request if it is still running (abandoned)
    tokio::time::sleep(sink.window).await;
    state.streams.remove(&key);
}
