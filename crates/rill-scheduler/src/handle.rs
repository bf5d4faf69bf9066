//! The scheduler's public face: [`Scheduler::start`] moves an engine onto its own thread and
//! returns a [`SchedulerHandle`] (cheap to clone, usable from any thread or task) that submits
//! requests, cancels them, reads stats and shuts the loop down. Everything a submission can be
//! rejected for is checked here, before it reaches the engine thread, so rejections are
//! immediate and typed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rill_engine::{ChatTemplate, ConstraintEnv, ConstraintError, Tokenizer};

use crate::backend::Backend;

use crate::config::SchedulerConfig;
use crate::engine_loop::EngineLoop;
use crate::error::{SchedulerError, SubmitError};
use crate::request::{Request, RequestId};
use crate::stats::SchedulerStats;
use crate::stream::{Outbox, RequestStream};

/// Messages to the engine thread.
pub(crate) enum Control {
    Submit(Box<Submission>),
    Cancel(RequestId),
    Shutdown { grace: Duration },
}

pub(crate) struct Submission {
    pub id: RequestId,
    pub request: Request,
    pub outbox: Outbox,
    pub submitted: Instant,
}

/// What the model and the KV pool allow one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// The model's context length in tokens.
    pub context_length: usize,
    /// KV cache capacity in tokens.
    pub kv_tokens: usize,
    /// Prompt plus generated tokens of one sequence: the smaller of the two above.
    pub max_sequence_tokens: usize,
    /// Tokens in the model's vocabulary; valid token ids are below it.
    pub vocab_size: usize,
}

pub(crate) struct Shared {
    pub stats: Mutex<SchedulerStats>,
    /// Submitted requests not yet admitted (preempted ones excluded): the bounded queue.
    pub queued: AtomicUsize,
    pub accepting: AtomicBool,
    next_id: AtomicU64,
}

impl Shared {
    pub fn stats(&self) -> std::sync::MutexGuard<'_, SchedulerStats> {
        // A panic while holding the lock leaves plain counters behind: keep using them.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle to a running scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    control: std::sync::mpsc::Sender<Control>,
    shared: Arc<Shared>,
    config: Arc<SchedulerConfig>,
    limits: ModelLimits,
    tokenizer: Arc<Tokenizer>,
    chat_template: Arc<ChatTemplate>,
    /// The model's constraint environment, built at the first constrained request.
    constraint_env: Arc<std::sync::OnceLock<Result<Arc<ConstraintEnv>, ConstraintError>>>,
}

/// Owns the engine thread; dropping it shuts the loop down (without grace) and joins it.
pub struct Scheduler {
    handle: SchedulerHandle,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Validates the configuration and starts the engine loop on its own thread.
    pub fn start<B: Backend>(engine: B, config: SchedulerConfig) -> Result<Self, SchedulerError> {
        config
            .validate()
            .map_err(|(key, message)| SchedulerError::Config { key, message })?;
        let kv = engine.kv_stats();
        let kv_tokens = kv.total_blocks * kv.block_tokens;
        let context_length = engine.context_length();
        let limits = ModelLimits {
            context_length,
            kv_tokens,
            max_sequence_tokens: context_length.min(kv_tokens),
            vocab_size: engine.vocab_size(),
        };
        let shared = Arc::new(Shared {
            stats: Mutex::new(SchedulerStats {
                kv,
                ..SchedulerStats::default()
            }),
            queued: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = SchedulerHandle {
            control: tx,
            shared: shared.clone(),
            config: Arc::new(config.clone()),
            limits,
            tokenizer: engine.tokenizer().clone(),
            chat_template: engine.chat_template().clone(),
            constraint_env: Arc::default(),
        };
        let thread = std::thread::Builder::new()
            .name("rill-engine".into())
            .spawn(move || EngineLoop::new(engine, config, rx, shared).run())
            .map_err(SchedulerError::Spawn)?;
        Ok(Self {
            handle,
            thread: Some(thread),
        })
    }

    /// A handle for submitting requests (cheap to clone); once the scheduler shuts down,
    /// submissions through it fail with `ShuttingDown`.
    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Stops admitting, lets running and queued requests finish for up to `grace`, ends the
    /// rest with `server_shutdown`, and waits for the engine thread to exit.
    pub fn shutdown(mut self, grace: Duration) {
        self.handle.shutdown(grace);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.shutdown(Duration::ZERO);
            let _ = t.join();
        }
    }
}

impl SchedulerHandle {
    /// What the model and KV pool allow one sequence (fixed at start).
    pub fn limits(&self) -> ModelLimits {
        self.limits
    }

    /// The configuration the scheduler was started with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The engine's tokenizer, for encoding prompts and decoding tokens off the engine thread.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The model's environment for output constraints (token masks over its vocabulary),
    /// built once, at the first call (about 0.1 s for a 49k vocabulary, 1 s for 262k): call
    /// it off the async executor.
    pub fn constraint_env(&self) -> Result<Arc<ConstraintEnv>, ConstraintError> {
        self.constraint_env
            .get_or_init(|| ConstraintEnv::new(self.tokenizer.clone()).map(Arc::new))
            .clone()
    }

    /// The model's chat template, for rendering chat messages into a prompt.
    pub fn chat_template(&self) -> &Arc<ChatTemplate> {
        &self.chat_template
    }

    /// A snapshot of the scheduler's state and counters.
    pub fn stats(&self) -> SchedulerStats {
        self.shared.stats().clone()
    }

    /// Whether submissions are accepted (false once shutdown began).
    pub fn is_accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::Acquire)
    }

    /// Checks a request against everything that does not depend on load.
    pub fn check(&self, r: &Request) -> Result<(), SubmitError> {
        if r.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if r.max_tokens == 0 {
            return Err(SubmitError::InvalidParameter {
                field: "max_tokens".into(),
                message: "must be at least 1".into(),
            });
        }
        if let Err((field, message)) = r.sampling.validate() {
            return Err(SubmitError::InvalidParameter { field, message });
        }
        if let Some(&t) = r
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.limits.vocab_size)
        {
            return Err(SubmitError::BadToken(t));
        }
        let l = &self.limits;
        if r.prompt.len() + r.max_tokens > l.max_sequence_tokens {
            let what = if l.context_length <= l.kv_tokens {
                "the model's context length"
            } else {
                "the KV cache"
            };
            return Err(SubmitError::TooLong {
                prompt: r.prompt.len(),
                max_tokens: r.max_tokens,
                limit: l.max_sequence_tokens,
                what,
            });
        }
        Ok(())
    }

    /// Submits a request. Rejected at once when invalid, when it can never fit, when the queue
    /// is full (with a retry-after estimate) or when shutting down.
    pub fn submit(&self, request: Request) -> Result<RequestStream, SubmitError> {
        if let Err(e) = self.check(&request) {
            self.shared.stats().rejected_invalid += 1;
            return Err(e);
        }
        if !self.is_accepting() {
            return Err(SubmitError::ShuttingDown);
        }
        let cap = self.config.queue_capacity;
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= cap {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            let mut stats = self.shared.stats();
            stats.rejected_overload += 1;
            return Err(SubmitError::Overloaded {
                waiting: stats.waiting.max(cap),
                retry_after: retry_after(stats.waiting.max(cap), stats.completion_rate),
            });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (outbox, rx, stream_shared) = Outbox::new(self.config.stream_capacity);
        let submission = Submission {
            id,
            request,
            outbox,
            submitted: Instant::now(),
        };
        if self
            .control
            .send(Control::Submit(Box::new(submission)))
            .is_err()
        {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(Outbox::stream(id, rx, stream_shared, self.control.clone()))
    }

    /// Cancels a request by id (running or waiting); its stream ends with `Cancelled`.
    /// Unknown or finished ids are ignored.
    pub fn cancel(&self, id: RequestId) {
        let _ = self.control.send(Control::Cancel(id));
    }

    /// Stops admitting now; running and queued requests get `grace` to finish.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.accepting.store(false, Ordering::Release);
        let _ = self.control.send(Control::Shutdown { grace });
    }
}

/// When a rejected client should come back: the time for half the queue to drain at the
/// recent completion rate (half, so that clients told to retry do not all return at once into
/// a queue that is still full), between 1 and 60 seconds.
pub fn retry_after(waiting: usize, completion_rate: f64) -> Duration {
    let secs = if completion_rate > 0.0 {
        (waiting as f64 / 2.0) / completion_rate
    } else {
        5.0
    };
    Duration::from_secs(secs.ceil().clamp(1.0, 60.0) as u64)
}
