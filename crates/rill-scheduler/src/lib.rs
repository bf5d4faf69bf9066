//! rill's scheduler: the thread that owns the engine and decides, every step, which sequences
//! run. Continuous batching (sequences join and leave at every step), chunked prefill within a
//! per-step budget, an adaptive controller that keeps p95 inter-token latency under a target,
//! a memory-pressure monitor that stops admitting and preempts (recompute later) instead of
//! failing, a bounded priority/FCFS queue with overload rejection, cancellation, and prefix
//! sharing through the engine's block-level prefix cache, and speculative decoding by prompt
//! lookup verified inside the same batched step.
//!
//! ```text
//! SchedulerHandle::submit ──control channel──▶ engine thread ──Outbox (per request)──▶ RequestStream
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod config;
pub mod controller;
mod engine_loop;
pub mod error;
pub mod fake;
mod handle;
pub mod memory;
mod queue;
pub mod request;
mod sequence;
pub mod speculative;
pub mod stats;
mod stream;

pub use backend::Backend;
pub use config::{MachineDefaults, SchedulerConfig};
pub use controller::{
    attended, BatchController, ControllerConfig, ControllerState, Limits, StepSample,
};
pub use error::{SchedulerError, SubmitError};
pub use handle::{retry_after, ModelLimits, Scheduler, SchedulerHandle};
pub use memory::{MemoryLimits, PressureLevel};
pub use request::{
    Constrained, ErrorCode, Event, FinishReason, Request, RequestId, Timings, Usage,
};
pub use speculative::{SpecConfig, SpecMode};
pub use stats::SchedulerStats;
pub use stream::RequestStream;
