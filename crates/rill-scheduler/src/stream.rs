//! The per-request channel between the engine thread and a consumer.
//!
//! The channel itself is unbounded so that a terminal event can always be delivered, but the
//! engine thread bounds it by policy: it counts events in flight and, past
//! `stream_capacity`, stops sending and coalesces new tokens into one pending event
//! ([`Outbox`]). A consumer that falls further behind than `max_pending_tokens` (or stalls for
//! `max_consumer_stall`) is cancelled with `slow_consumer`. The engine thread never blocks on a
//! consumer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::handle::Control;
use crate::request::{Event, RequestId};

/// `position` value of a request that is not waiting.
const NOT_WAITING: usize = usize::MAX;

/// State shared by both ends of one request's stream.
#[derive(Debug)]
pub(crate) struct StreamShared {
    in_flight: AtomicUsize,
    position: AtomicUsize,
}

/// The consumer's end: receives the request's events. Dropping it cancels the request.
pub struct RequestStream {
    id: RequestId,
    rx: mpsc::UnboundedReceiver<Event>,
    shared: Arc<StreamShared>,
    control: std::sync::mpsc::Sender<Control>,
}

impl RequestStream {
    /// The scheduler-assigned id of this request (for [`SchedulerHandle::cancel`]).
    ///
    /// [`SchedulerHandle::cancel`]: crate::SchedulerHandle::cancel
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after the terminal event.
    pub async fn recv(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await;
        self.received(ev)
    }

    /// The next event, blocking the calling thread (not for use inside an async runtime).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        let ev = self.rx.blocking_recv();
        self.received(ev)
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        let ev = self.rx.try_recv().ok();
        self.received(ev)
    }

    fn received(&self, ev: Option<Event>) -> Option<Event> {
        if ev.is_some() {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        ev
    }

    /// 1-based position in the waiting queue, or `None` once running (or finished).
    pub fn queue_position(&self) -> Option<usize> {
        match self.shared.position.load(Ordering::Acquire) {
            NOT_WAITING => None,
            p => Some(p),
        }
    }

    /// Asks the scheduler to cancel this request; the stream then ends with
    /// `Finished { reason: Cancelled }`. Dropping the stream cancels too, silently.
    pub fn cancel(&self) {
        let _ = self.control.send(Control::Cancel(self.id));
    }
}

/// The engine thread's end of a stream, with its coalescing buffer.
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Event>,
    shared: Arc<StreamShared>,
    capacity: usize,
    pending: Option<Event>,
    pending_tokens: usize,
    /// When the consumer last had room (for the stall bound).
    blocked_since: Option<Instant>,
    terminated: bool,
}

impl Outbox {
    pub(crate) fn new(
        capacity: usize,
    ) -> (Self, mpsc::UnboundedReceiver<Event>, Arc<StreamShared>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(StreamShared {
            in_flight: AtomicUsize::new(0),
            position: AtomicUsize::new(NOT_WAITING),
        });
        (
            Self {
                tx,
                shared: shared.clone(),
                capacity: capacity.max(1),
                pending: None,
                pending_tokens: 0,
                blocked_since: None,
                terminated: false,
            },
            rx,
            shared,
        )
    }

    pub(crate) fn stream(
        id: RequestId,
        rx: mpsc::UnboundedReceiver<Event>,
        shared: Arc<StreamShared>,
        control: std::sync::mpsc::Sender<Control>,
    ) -> RequestStream {
        RequestStream {
            id,
            rx,
            shared,
            control,
        }
    }

    /// The consumer dropped its end.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn set_position(&self, position: Option<usize>) {
        self.shared
            .position
            .store(position.unwrap_or(NOT_WAITING), Ordering::Release);
    }

    fn has_room(&self) -> bool {
        self.shared.in_flight.load(Ordering::Acquire) < self.capacity
    }

    fn send_now(&mut self, ev: Event) {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(ev).is_err() {
            // Receiver gone: the scheduler notices via is_closed and cancels.
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Sends an event, coalescing token events while the consumer is behind.
    pub(crate) fn send(&mut self, ev: Event) {
        if self.terminated {
            return;
        }
        self.flush();
        if self.pending.is_none() && self.has_room() {
            self.send_now(ev);
            return;
        }
        self.blocked_since.get_or_insert_with(Instant::now);
        match (&mut self.pending, ev) {
            (
                Some(Event::Tokens {
                    tokens,
                    text,
                    sampled_at,
                }),
                Event::Tokens {
                    tokens: t2,
                    text: s2,
                    sampled_at: a2,
                },
            ) => {
                self.pending_tokens += t2.len();
                tokens.extend(t2);
                text.push_str(&s2);
                *sampled_at = a2;
            }
            (Some(_), ev) => {
                // A non-token event behind a pending one: deliver both in order now; the bound
                // is a policy, not a hard limit, and these events are rare and small.
                if let Some(p) = self.pending.take() {
                    self.send_now(p);
                }
                self.pending_tokens = 0;
                self.send_now(ev);
            }
            (None, ev) => {
                if let Event::Tokens { tokens, .. } = &ev {
                    self.pending_tokens = tokens.len();
                }
                self.pending = Some(ev);
            }
        }
    }

    /// Hands the pending coalesced event over if the consumer has room again.
    pub(crate) fn flush(&mut self) {
        if self.pending.is_some() && self.has_room() {
            if let Some(p) = self.pending.take() {
                self.send_now(p);
            }
            self.pending_tokens = 0;
            self.blocked_since = None;
        } else if self.pending.is_none() && self.has_room() {
            self.blocked_since = None;
        }
    }

    /// Tokens waiting behind a full channel, and for how long the consumer has been behind.
    pub(crate) fn backlog(&self) -> (usize, Option<Instant>) {
        (self.pending_tokens, self.blocked_since)
    }

    /// Sends the terminal event after anything pending, regardless of the bound.
    pub(crate) fn finish(&mut self, ev: Event) {
        if self.terminated {
            return;
        }
        if let Some(p) = self.pending.take() {
            self.send_now(p);
        }
        self.send_now(ev);
        self.terminated = true;
        self.set_position(None);
    }

    /// Ends the stream with an error, dropping tokens the consumer never took.
    pub(crate) fn fail(&mut self, ev: Event) {
        self.pending = None;
        self.pending_tokens = 0;
        self.finish(ev);
    }
}
