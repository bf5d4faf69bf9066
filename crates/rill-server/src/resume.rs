//! Resumable streams: a generation that outlives its connection. Its events go into a bounded
//! [`StreamBuffer`] (oldest dropped first) that any number of followers read from a cursor; a
//! follower that reconnects with `Last-Event-ID` (SSE) or `after_position` (WebSocket) gets
//! every later event, then the live ones. The [`Registry`] maps stream ids to generations (all
//! of them, for `DELETE /v1/streams/{id}`; buffers only for the resumable ones).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rill_scheduler::RequestId;

use crate::protocol::ws::ServerFrame;
use tokio::sync::watch;

/// One buffered event.
#[derive(Debug, Clone)]
pub struct Frame<T> {
    /// Event index within the stream, from 0.
    pub idx: u64,
    /// Token position for WebSocket resume (the index again for SSE).
    pub position: u64,
    /// The event as sent to clients (an SSE `data:` payload or a WebSocket frame).
    pub data: T,
}

/// Events a resume asks for were already dropped from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

/// What a follower gets when it asks for events after its cursor.
#[derive(Debug)]
pub enum Read<T> {
    /// Every buffered event after the cursor, in order (at least one).
    Frames(Vec<Frame<T>>),
    /// The stream ended and the follower has everything.
    Done,
    /// Nothing new yet.
    Wait,
    /// Events after the cursor were already dropped from the buffer.
    Gone,
}

struct Inner<T> {
    frames: VecDeque<Frame<T>>,
    next_idx: u64,
    done: bool,
    attached: usize,
    detached_at: Option<Instant>,
    /// Highest index any attached follower has taken (for backpressure).
    acked: Option<u64>,
}

/// A resumable stream's recent events (at most `cap`, oldest dropped first), shared by the
/// producer and any number of followers.
pub struct StreamBuffer<T> {
    inner: Mutex<Inner<T>>,
    /// Bumped on every push and at the end: followers wait on it.
    version: watch::Sender<u64>,
    /// Bumped when a follower takes frames or detaches: the producer waits on it.
    progress: watch::Sender<u64>,
    cap: usize,
}

impl<T: Clone> StreamBuffer<T> {
    /// An empty buffer keeping at most `cap` events (at least 1), detached from the start.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                next_idx: 0,
                done: false,
                attached: 0,
                detached_at: Some(Instant::now()),
                acked: None,
            }),
            version: watch::channel(0).0,
            progress: watch::channel(0).0,
            cap: cap.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notified on every push and when the stream finishes (for followers waiting on `Wait`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Notified when a follower takes events or detaches (for the producer's backpressure).
    pub fn subscribe_progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Appends an event; drops the oldest beyond capacity. Returns its index.
    pub fn push(&self, position: Option<u64>, data: T) -> u64 {
        let idx = {
            let mut g = self.lock();
            let idx = g.next_idx;
            g.next_idx += 1;
            g.frames.push_back(Frame {
                idx,
                position: position.unwrap_or(idx),
                data,
            });
            while g.frames.len() > self.cap {
                g.frames.pop_front();
            }
            idx
        };
        self.version.send_modify(|v| *v += 1);
        idx
    }

    /// Marks the stream ended: followers that have every event then read `Done`.
    pub fn finish(&self) {
        self.lock().done = true;
        self.version.send_modify(|v| *v += 1);
    }

    /// Whether events after `cursor` were already dropped (a resume from there is impossible).
    pub fn is_expired(&self, cursor: Option<u64>) -> bool {
        let g = self.lock();
        let want = cursor.map_or(0, |c| c + 1);
        want < g.frames.front().map_or(g.next_idx, |f| f.idx)
    }

    /// Events with index after `cursor` (None: from the start).
    pub fn read_after(&self, cursor: Option<u64>) -> Read<T> {
        let mut g = self.lock();
        let want = cursor.map_or(0, |c| c + 1);
        let first = g.frames.front().map_or(g.next_idx, |f| f.idx);
        if want < first {
            return Read::Gone;
        }
        let out: Vec<Frame<T>> = g.frames.iter().filter(|f| f.idx >= want).cloned().collect();
        if let Some(last) = out.last() {
            g.acked = Some(g.acked.map_or(last.idx, |a| a.max(last.idx)));
            drop(g);
            self.progress.send_modify(|v| *v += 1);
            Read::Frames(out)
        } else if g.done {
            Read::Done
        } else {
            Read::Wait
        }
    }

    /// The index of the last event at or before token `position` (WebSocket resume), or None
    /// to start from the beginning; Err if those events were dropped.
    pub fn cursor_for_position(&self, position: u64) -> Result<Option<u64>, Expired> {
        let g = self.lock();
        let first = g.frames.front();
        if first.is_some_and(|f| f.idx > 0 && f.position > position + 1) {
            return Err(Expired);
        }
        Ok(g.frames
            .iter()
            .take_while(|f| f.position <= position)
            .last()
            .map(|f| f.idx))
    }

    /// Frames pushed but not yet taken by an attached follower (None when nobody is attached:
    /// the producer then runs free and old frames are dropped).
    pub fn unread(&self) -> Option<u64> {
        let g = self.lock();
        (g.attached > 0).then(|| g.next_idx - g.acked.map_or(0, |a| a + 1))
    }

    /// Most events kept (`resume_buffer_events`, at least 1).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// A follower of this stream: attached until it is dropped.
    pub fn follower(self: &Arc<Self>) -> Follower<T> {
        {
            let mut g = self.lock();
            g.attached += 1;
            g.detached_at = None;
        }
        Follower { buf: self.clone() }
    }

    fn detach(&self) {
        {
            let mut g = self.lock();
            g.attached = g.attached.saturating_sub(1);
            if g.attached == 0 {
                g.detached_at = Some(Instant::now());
                g.acked = None;
            }
        }
        self.progress.send_modify(|v| *v += 1);
    }

    /// How long the stream has had no follower (None while one is attached).
    pub fn detached_for(&self) -> Option<std::time::Duration> {
        self.lock().detached_at.map(|t| t.elapsed())
    }
}

/// An attached reader of a [`StreamBuffer`] (the producer waits for it, and the stream is
/// not abandoned while one exists); detaches when dropped.
pub struct Follower<T: Clone> {
    buf: Arc<StreamBuffer<T>>,
}

impl<T: Clone> Follower<T> {
    /// The buffer it reads.
    pub fn buffer(&self) -> &Arc<StreamBuffer<T>> {
        &self.buf
    }
}

impl<T: Clone> Drop for Follower<T> {
    fn drop(&mut self) {
        self.buf.detach();
    }
}

/// What the registry knows of a stream.
pub enum Resumable {
    /// Not resumable (registered for cancellation only).
    No,
    /// An SSE stream's buffer of `data:` payloads.
    Sse(Arc<StreamBuffer<Arc<str>>>),
    /// A WebSocket generation's buffer of frames.
    Ws(Arc<StreamBuffer<Arc<ServerFrame>>>),
}

/// A registered stream: its scheduler request and, when resumable, its buffer.
pub struct StreamEntry {
    /// The scheduler requests generating it, one per choice (for cancellation).
    pub request_ids: Vec<RequestId>,
    /// Whether and how it can be resumed.
    pub resumable: Resumable,
    /// The API key that created it (others may not touch it).
    pub owner: Option<String>,
}

/// Live streams by id (the response id; WebSocket ids are scoped by API key).
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<String, Arc<StreamEntry>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<StreamEntry>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `e` under `id` (replacing any entry there) and returns the shared entry.
    pub fn insert(&self, id: &str, e: StreamEntry) -> Arc<StreamEntry> {
        let e = Arc::new(e);
        self.lock().insert(id.to_string(), e.clone());
        e
    }

    /// The entry registered under `id`, if any.
    pub fn get(&self, id: &str) -> Option<Arc<StreamEntry>> {
        self.lock().get(id).cloned()
    }

    /// Forgets `id` (no-op when absent).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_after_a_cursor_and_reports_dropped_events() {
        let b = StreamBuffer::<u32>::new(3);
        for i in 0..5 {
            b.push(Some(i * 10), i as u32);
        }
        assert!(matches!(b.read_after(None), Read::Gone));
        assert!(matches!(b.read_after(Some(0)), Read::Gone));
        match b.read_after(Some(2)) {
            Read::Frames(f) => assert_eq!(f.iter().map(|f| f.data).collect::<Vec<_>>(), vec![3, 4]),
            _ => panic!("expected frames"),
        }
        assert!(matches!(b.read_after(Some(4)), Read::Wait));
        b.finish();
        assert!(matches!(b.read_after(Some(4)), Read::Done));
        assert_eq!(b.cursor_for_position(30), Ok(Some(3)));
        assert_eq!(b.cursor_for_position(0), Err(Expired));
    }
}
