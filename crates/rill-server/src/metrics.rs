//! Prometheus metrics at `/metrics` (OpenMetrics text, via `prometheus-client`), one registry
//! per server. Request-level families are observed as events flow to clients; scheduler-level
//! ones (running/waiting sequences, the controller's limit, KV blocks, RSS, preemptions,
//! prefix-cache hits) are read from the scheduler's stats at scrape time. A short window of
//! recent TTFT and inter-token samples feeds the dashboard's live percentiles, and a counter of
//! tokens as they are sampled (`rill_sampled_tokens_total`) its live tokens/s.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rill_scheduler::{ErrorCode, Event, SchedulerHandle};

/// The label of `rill_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabel {
    /// `stop`, `length`, `cancelled` or `error`.
    pub finish_reason: String,
}

/// The label of the error and rejection counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code (`slow_consumer`, `invalid_value`, ...).
    pub code: String,
}

/// How long recent samples stay in the dashboard's window.
const RECENT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recent {
    ttft: VecDeque<(Instant, f64)>,
    itl: VecDeque<(Instant, f64)>,
}

/// The server's metrics: the registry `/metrics` renders and the request-level families.
pub struct Metrics {
    registry: Registry,
    ttft: Histogram,
    itl: Histogram,
    queue: Histogram,
    e2e: Histogram,
    send_lag: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    sampled_tokens: Counter,
    requests: Family<FinishLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    rejected: Family<CodeLabel, Counter>,
    recent: Mutex<Recent>,
}

/// Per-request state for observing its events.
#[derive(Debug, Default)]
pub struct Track {
    last_sampled: Option<Instant>,
}

fn seconds_histogram(start: f64, count: u16) -> Histogram {
    Histogram::new(exponential_buckets(start, 2.0, count))
}

impl Metrics {
    /// A registry with every family, reading scheduler state from `sched` at scrape time.
    pub fn new(sched: SchedulerHandle) -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(GatewayCollector {
            sched: sched.clone(),
        }));
        let registry = root.sub_registry_with_prefix("rill");
        let m = Self {
            ttft: seconds_histogram(0.005, 14),
            itl: seconds_histogram(0.001, 14),
            queue: seconds_histogram(0.001, 16),
            e2e: seconds_histogram(0.01, 14),
            send_lag: seconds_histogram(0.000_05, 14),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            sampled_tokens: Counter::default(),
            requests: Family::default(),
            errors: Family::default(),
            rejected: Family::default(),
            recent: Mutex::new(Recent::default()),
            registry: Registry::default(),
        };
        registry.register(
            "time_to_first_token_seconds",
            "Submission to first token",
            m.ttft.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Gap between consecutive tokens of a stream",
            m.itl.clone(),
        );
        registry.register(
            "queue_time_seconds",
            "Submission to admission into the batch",
            m.queue.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Submission to the end of the request",
            m.e2e.clone(),
        );
        registry.register(
            "send_lag_seconds",
            "Token sampled on the engine thread to bytes handed to the connection (or to a resumable stream's replay buffer)",
            m.send_lag.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of finished requests",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "generation_tokens",
            "Tokens generated for finished requests",
            m.generation_tokens.clone(),
        );
        registry.register(
            "sampled_tokens",
            "Tokens generated, counted as they are sampled (generation_tokens counts them when their request ends)",
            m.sampled_tokens.clone(),
        );
        registry.register(
            "requests",
            "Requests that ended, by finish reason (error: see rill_errors)",
            m.requests.clone(),
        );
        registry.register(
            "errors",
            "Requests that failed after they started, by error code",
            m.errors.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused before they started, by code",
            m.rejected.clone(),
        );
        registry.register_collector(Box::new(SchedulerCollector { sched }));
        Self {
            registry: root,
            ..m
        }
    }

    /// Observes one event of a request (call for every event, in order).
    pub fn on_event(&self, t: &mut Track, ev: &Event) {
        match ev {
            Event::Tokens {
                tokens, sampled_at, ..
            } if !tokens.is_empty() => {
                self.sampled_tokens.inc_by(tokens.len() as u64);
                // A burst of n tokens (speculation, or coalescing for a slow reader) counts n
                // gaps of an n-th of the wait: the metric counts tokens, not steps.
                if let Some(prev) = t.last_sampled {
                    let gap = sampled_at.saturating_duration_since(prev).as_secs_f64();
                    let each = gap / tokens.len() as f64;
                    for _ in 0..tokens.len() {
                        self.itl.observe(each);
                        self.push_recent(false, each);
                    }
                }
                t.last_sampled = Some(*sampled_at);
            }
            Event::Finished {
                reason,
                usage,
                timings,
                ..
            } => {
                tracing::info!(
                    finish = reason.as_str(),
                    prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens,
                    cached_tokens = usage.cached_tokens,
                    queue_ms = timings.queue_ms,
                    ttft_ms = timings.ttft_ms,
                    itl_p95_ms = timings.itl_p95_ms,
                    "request finished"
                );
                self.ttft.observe(timings.ttft_ms / 1e3);
                if timings.ttft_ms > 0.0 {
                    self.push_recent(true, timings.ttft_ms / 1e3);
                }
                self.queue.observe(timings.queue_ms / 1e3);
                self.e2e.observe(timings.total_ms / 1e3);
                self.prompt_tokens.inc_by(usage.prompt_tokens as u64);
                self.generation_tokens
                    .inc_by(usage.completion_tokens as u64);
                self.count_finish(reason.as_str());
            }
            Event::Error {
                code,
                usage,
                message,
            } => {
                tracing::warn!(code = code.as_str(), %message, "request failed");
                self.prompt_tokens.inc_by(usage.prompt_tokens as u64);
                self.generation_tokens
                    .inc_by(usage.completion_tokens as u64);
                self.count_finish("error");
                self.errors
                    .get_or_create(&CodeLabel {
                        code: code.as_str().into(),
                    })
                    .inc();
            }
            _ => {}
        }
    }

    fn count_finish(&self, reason: &str) {
        self.requests
            .get_or_create(&FinishLabel {
                finish_reason: reason.into(),
            })
            .inc();
    }

    /// A token's bytes were handed to the connection.
    pub fn on_sent(&self, sampled_at: Instant) {
        self.send_lag.observe(
            Instant::now()
                .saturating_duration_since(sampled_at)
                .as_secs_f64(),
        );
    }

    /// A request refused before it started (HTTP 4xx/429/503).
    pub fn on_rejected(&self, code: &str) {
        self.rejected
            .get_or_create(&CodeLabel { code: code.into() })
            .inc();
    }

    fn push_recent(&self, ttft: bool, v: f64) {
        let now = Instant::now();
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let q = if ttft { &mut r.ttft } else { &mut r.itl };
        q.push_back((now, v));
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RECENT)
            || q.len() > 50_000
        {
            q.pop_front();
        }
    }

    /// p50 and p95 (seconds) of TTFT and inter-token gaps over the last few seconds.
    pub fn recent_percentiles(&self) -> [(f64, f64); 2] {
        let now = Instant::now();
        let r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let pct = |q: &VecDeque<(Instant, f64)>| {
            let mut v: Vec<f64> = q
                .iter()
                .filter(|(t, _)| now.duration_since(*t) <= RECENT)
                .map(|(_, x)| *x)
                .collect();
            if v.is_empty() {
                return (f64::NAN, f64::NAN);
            }
            v.sort_by(f64::total_cmp);
            let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
            (at(0.5), at(0.95))
        };
        [pct(&r.ttft), pct(&r.itl)]
    }

    /// Tokens generated for requests that ended (`rill_generation_tokens_total`).
    pub fn generation_tokens_total(&self) -> u64 {
        self.generation_tokens.get()
    }

    /// Tokens generated so far, counted as they are sampled, running requests included
    /// (`rill_sampled_tokens_total`): the dashboard's live tokens/s.
    pub fn sampled_tokens_total(&self) -> u64 {
        self.sampled_tokens.get()
    }

    /// Requests failed after they started, per error code (every code, zeros included).
    pub fn errors_by_code(&self) -> Vec<(String, u64)> {
        ErrorCode::ALL
            .iter()
            .map(|c| {
                let v = self
                    .errors
                    .get_or_create(&CodeLabel {
                        code: c.as_str().into(),
                    })
                    .get();
                (c.as_str().to_string(), v)
            })
            .collect()
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}

/// The gauges an inference gateway reads, under vLLM's names (the Gateway API Inference
/// Extension's endpoint picker scrapes `vllm:num_requests_waiting`,
/// `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` and
/// `vllm:cache_config_info{block_size,num_gpu_blocks}`): the same values as
/// `rill_waiting_requests`, `rill_running_sequences` and `rill_kv_blocks_used` /
/// `rill_kv_blocks_total`, read from one scheduler snapshot (cheap enough for a scrape every
/// 50 ms).
struct GatewayCollector {
    sched: SchedulerHandle,
}

impl std::fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayCollector")
    }
}

impl Collector for GatewayCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.sched.stats();
        for (name, help, v) in [
            (
                "vllm:num_requests_running",
                "Requests in the running batch (rill_running_sequences)",
                s.running as i64,
            ),
            (
                "vllm:num_requests_waiting",
                "Requests waiting for admission (rill_waiting_requests)",
                s.waiting as i64,
            ),
        ] {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let usage = s.kv.used_blocks() as f64 / s.kv.total_blocks.max(1) as f64;
        let g = ConstGauge::new(usage);
        g.encode(enc.encode_descriptor(
            "vllm:kv_cache_usage_perc",
            "KV cache blocks held by sequences, 0 to 1 (rill_kv_blocks_used / rill_kv_blocks_total)",
            None,
            g.metric_type(),
        )?)?;
        let labels = [
            ("block_size".to_string(), s.kv.block_tokens.to_string()),
            ("num_gpu_blocks".to_string(), s.kv.total_blocks.to_string()),
        ];
        let g = ConstGauge::new(1i64);
        let mut family = enc.encode_descriptor(
            "vllm:cache_config_info",
            "The KV cache's configuration (tokens per block, blocks in the pool; memory is host RAM here)",
            None,
            g.metric_type(),
        )?;
        g.encode(family.encode_family(&labels)?)?;
        Ok(())
    }
}

/// Scheduler state, read at scrape time.
struct SchedulerCollector {
    sched: SchedulerHandle,
}

impl std::fmt::Debug for SchedulerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchedulerCollector")
    }
}

impl Collector for SchedulerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.sched.stats();
        let cfg = self.sched.config();
        let gauges: [(&str, &str, i64); 11] = [
            (
                "running_sequences",
                "Sequences in the running batch",
                s.running as i64,
            ),
            (
                "waiting_requests",
                "Requests waiting for admission",
                s.waiting as i64,
            ),
            (
                "batch_limit",
                "The controller's current limit on running sequences",
                s.controller.max_running as i64,
            ),
            (
                "prefill_budget_tokens",
                "Prefill tokens the last step's decode rows left room for",
                s.controller.prefill_budget as i64,
            ),
            (
                "kv_blocks_used",
                "KV cache blocks held by sequences",
                s.kv.used_blocks() as i64,
            ),
            (
                "kv_blocks_total",
                "KV cache blocks in the pool",
                s.kv.total_blocks as i64,
            ),
            (
                "kv_cache_bytes",
                "Bytes of the KV block pool, in its KV type",
                (s.kv.total_blocks * s.kv.bytes_per_block) as i64,
            ),
            (
                "kv_blocks_cached",
                "KV blocks in the prefix cache",
                s.kv.cached_blocks as i64,
            ),
            (
                "rss_bytes",
                "Resident set size of the process",
                s.rss_bytes as i64,
            ),
            (
                "memory_pressure",
                "0 normal, 1 high (admission stopped), 2 critical (preempting)",
                s.pressure as i64,
            ),
            (
                "last_step_decode_rows",
                "Decode rows in the last step (the batch size)",
                s.last_decode_rows as i64,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let fg: [(&str, &str, f64); 3] = [
            (
                "target_itl_seconds",
                "The controller's p95 inter-token latency target",
                cfg.target_itl_ms / 1e3,
            ),
            (
                "recent_step_p95_seconds",
                "p95 of recent decode step times (the controller's input)",
                s.controller.recent_p95_ms / 1e3,
            ),
            (
                "last_step_seconds",
                "Duration of the last forward step",
                s.last_step_ms / 1e3,
            ),
        ];
        for (name, help, v) in fg {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 8] = [
            (
                "preemptions",
                "Sequences preempted for memory (recomputed later)",
                s.preemptions,
            ),
            (
                "prefix_cache_hit_tokens",
                "Prompt tokens served from the prefix cache",
                s.prefix_hit_tokens,
            ),
            (
                "prefix_cache_hit_blocks",
                "KV blocks reused from the prefix cache",
                s.kv.prefix_hit_blocks,
            ),
            ("prefill_tokens", "Prompt tokens computed", s.prefill_tokens),
            ("steps", "Forward steps run", s.steps),
            (
                "scheduler_rejected_overload",
                "Submissions refused because the queue was full",
                s.rejected_overload,
            ),
            (
                "spec_draft_tokens",
                "Speculative draft tokens verified",
                s.draft_tokens,
            ),
            (
                "spec_accepted_tokens",
                "Speculative draft tokens accepted (each one a token without its own step)",
                s.accepted_tokens,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        // Accepted tokens per verified draft, from the scheduler's exact per-count tallies.
        let mut buckets: Vec<(f64, u64)> = s
            .accepted_hist
            .iter()
            .enumerate()
            .map(|(n, &c)| (n as f64, c))
            .collect();
        buckets.push((f64::MAX, 0));
        let count: u64 = s.accepted_hist.iter().sum();
        let sum: f64 = s
            .accepted_hist
            .iter()
            .enumerate()
            .map(|(n, &c)| (n as u64 * c) as f64)
            .sum();
        enc.encode_descriptor(
            "spec_accepted_per_draft",
            "Draft tokens accepted per verified draft",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
        Ok(())
    }
}
