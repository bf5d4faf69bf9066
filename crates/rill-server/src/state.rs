//! Shared server state: the scheduler handle, configuration, stream registry, auth keys and
//! rate limiters, readiness and the shutdown signal.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rill_scheduler::SchedulerHandle;
use tokio::sync::watch;

use crate::config::ServeConfig;
use crate::protocol::ApiError;
use crate::resume::Registry;

/// Per-key request and token budgets.
struct KeyLimits {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<DefaultDirectRateLimiter>,
}

/// Everything the handlers share, behind one [`Arc`] ([`SharedState`]).
pub struct AppState {
    /// Submits requests to, and reads stats from, the scheduler.
    pub sched: SchedulerHandle,
    /// The validated server configuration.
    pub cfg: ServeConfig,
    /// The model id reported by `/v1/models` and in every response's `model` field.
    pub model_id: String,
    /// This replica's id, the suffix of its stream ids ([`ServeConfig::replica`]).
    pub replica: String,
    /// When the server started, in Unix seconds (the model's `created`).
    pub created: u64,
    /// Resumable streams by id, for `GET`/`DELETE /v1/streams/{id}`.
    pub streams: Registry,
    keys: Vec<String>,
    limits: Mutex<HashMap<String, Arc<KeyLimits>>>,
    ready: AtomicBool,
    /// Set to `true` once graceful shutdown begins; long-lived tasks (WebSockets, the dashboard
    /// sampler) subscribe to it.
    pub shutdown: watch::Sender<bool>,
    /// The Prometheus registry and request-level metrics.
    pub metrics: crate::metrics::Metrics,
    /// The dashboard's recent once-a-second snapshots.
    pub snapshots: crate::dashboard::Snapshots,
}

/// The state as handlers hold it.
pub type SharedState = Arc<AppState>;

impl AppState {
    /// State for a server of `model_id` on `sched`; `keys` are the accepted API keys (empty: no
    /// auth). Starts ready, with no streams and fresh metrics.
    pub fn new(
        sched: SchedulerHandle,
        cfg: ServeConfig,
        model_id: String,
        keys: Vec<String>,
    ) -> Self {
        Self {
            metrics: crate::metrics::Metrics::new(sched.clone()),
            snapshots: crate::dashboard::Snapshots::default(),
            sched,
            replica: cfg.replica(),
            cfg,
            model_id,
            created: crate::openai::now_unix(),
            streams: Registry::default(),
            keys,
            limits: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(true),
            shutdown: watch::channel(false).0,
        }
    }

    /// A new stream id: `prefix`, 24 random hex digits and this replica's id
    /// (`chatcmpl-HEX.REPLICA`).
    pub fn new_stream_id(&self, prefix: &str) -> String {
        format!("{}.{}", crate::openai::new_id(prefix), self.replica)
    }

    /// Whether new requests are taken (`/ready` answers 200): not shutting down and the
    /// scheduler still accepting.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.sched.is_accepting()
    }

    /// Marks the server ready or not (false at the start of shutdown).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether requests must carry an API key (true when any key is configured).
    pub fn auth_required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key a bearer token names, if it is one of ours (constant-time comparison).
    pub fn check_key(&self, token: &str) -> Option<String> {
        self.keys
            .iter()
            .find(|k| {
                k.len() == token.len()
                    && k.bytes()
                        .zip(token.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            })
            .cloned()
    }

    fn key_limits(&self, key: &str) -> Arc<KeyLimits> {
        let mut m = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key.to_string())
            .or_insert_with(|| {
                let per_min =
                    |n: u32| NonZeroU32::new(n).map(|n| RateLimiter::direct(Quota::per_minute(n)));
                Arc::new(KeyLimits {
                    requests: per_min(self.cfg.rate_limit_rpm),
                    tokens: per_min(self.cfg.rate_limit_tpm),
                })
            })
            .clone()
    }

    /// Charges one request and its token budget (prompt + max_tokens) to `key`.
    pub fn charge(&self, key: &str, tokens: usize) -> Result<(), ApiError> {
        if self.cfg.rate_limit_rpm == 0 && self.cfg.rate_limit_tpm == 0 {
            return Ok(());
        }
        let l = self.key_limits(key);
        let wait_s = |not_until: governor::NotUntil<governor::clock::QuantaInstant>| {
            use governor::clock::Clock;
            not_until
                .wait_time_from(governor::clock::DefaultClock::default().now())
                .as_secs()
                .max(1)
        };
        if let Some(r) = &l.requests {
            r.check()
                .map_err(|n| ApiError::rate_limited("requests per minute", wait_s(n)))?;
        }
        if let Some(t) = &l.tokens {
            let n = NonZeroU32::new(tokens.clamp(1, u32::MAX as usize) as u32)
                .unwrap_or(NonZeroU32::MIN);
            match t.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Err(ApiError::rate_limited(
                        "tokens per minute",
                        wait_s(not_until),
                    ))
                }
                Err(_) => {
                    return Err(ApiError::rate_limited(
                        "this request alone exceeds the tokens-per-minute limit",
                        60,
                    ))
                }
            }
        }
        Ok(())
    }
}
