//! Scheduler settings and the defaults derived from the machine (what `rill info` prints).

use std::time::Duration;

use rill_engine::sysinfo::MachineInfo;

use crate::controller::ControllerConfig;
use crate::memory::MemoryLimits;
use crate::speculative::SpecConfig;

/// Defaults rill derives from the machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineDefaults {
    /// Compute threads: one per physical core.
    pub threads: usize,
    /// KV cache size: a quarter of available memory, at most 1 GiB.
    pub kv_cache_bytes: u64,
    /// Hard cap on running sequences (the controller adapts below it).
    pub max_running: usize,
    /// Process RSS at which admission stops: 85% of total memory.
    pub rss_high_bytes: u64,
    /// Process RSS at which sequences are preempted: 95% of total memory.
    pub rss_critical_bytes: u64,
}

impl MachineDefaults {
    /// Derives the defaults from `m`: threads = physical cores (at least 1), KV cache = available
    /// memory / 4 capped at 1 GiB, `max_running` = 16 per thread clamped to 8..=64, RSS limits at
    /// 85% and 95% of total memory.
    pub fn for_machine(m: &MachineInfo) -> Self {
        let threads = m.physical_cores.max(1);
        Self {
            threads,
            kv_cache_bytes: (m.memory_available_bytes / 4).min(1 << 30),
            // Batched kernels read the weights once per step, so rows are cheap: 16 per core.
            max_running: (threads * 16).clamp(8, 64),
            rss_high_bytes: m.memory_total_bytes / 100 * 85,
            rss_critical_bytes: m.memory_total_bytes / 100 * 95,
        }
    }
}

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// p95 inter-token latency the controller keeps running streams under.
    pub target_itl_ms: f64,
    /// Hard cap on running sequences.
    pub max_running: usize,
    /// Prefill tokens a step may always take (progress under load).
    pub min_prefill_chunk: usize,
    /// Prefill tokens a step never exceeds.
    pub max_prefill_chunk: usize,
    /// Adapt the running limit and prefill budget to `target_itl_ms`; off: fixed at the caps.
    pub adaptive: bool,
    /// Requests that may wait for admission; beyond it, submissions are rejected as overloaded.
    pub queue_capacity: usize,
    /// KV-cache and RSS thresholds at which admission stops and sequences are preempted
    /// (default: KV 95% full, RSS checks off).
    pub memory: MemoryLimits,
    /// Preemptions a request survives; the next one fails it with `preempted_too_often`.
    pub max_preemptions: u32,
    /// Events a consumer may have unread before tokens are coalesced.
    pub stream_capacity: usize,
    /// Coalesced tokens a lagging consumer may owe before it is cancelled (`slow_consumer`).
    pub max_pending_tokens: usize,
    /// How long a consumer may stay behind before it is cancelled (`slow_consumer`).
    pub max_consumer_stall: Duration,
    /// Share KV blocks of identical prompt prefixes.
    pub prefix_cache: bool,
    /// Speculative decoding (prompt-lookup drafts verified in the batched step).
    pub spec: SpecConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            target_itl_ms: 100.0,
            max_running: 32,
            min_prefill_chunk: 8,
            max_prefill_chunk: 512,
            adaptive: true,
            queue_capacity: 256,
            memory: MemoryLimits {
                kv_high_watermark: 0.95,
                rss_high_bytes: 0,
                rss_critical_bytes: 0,
            },
            max_preemptions: 16,
            stream_capacity: 64,
            max_pending_tokens: 1024,
            max_consumer_stall: Duration::from_secs(30),
            prefix_cache: true,
            spec: SpecConfig::default(),
        }
    }
}

impl SchedulerConfig {
    /// The defaults for this machine.
    pub fn for_machine(m: &MachineInfo) -> Self {
        let d = MachineDefaults::for_machine(m);
        Self {
            max_running: d.max_running,
            memory: MemoryLimits {
                rss_high_bytes: d.rss_high_bytes,
                rss_critical_bytes: d.rss_critical_bytes,
                ..Self::default().memory
            },
            ..Self::default()
        }
    }

    /// Checks every field; the error names the field and what is allowed.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_string(), m));
        if !(self.target_itl_ms.is_finite() && self.target_itl_ms > 0.0) {
            return bad(
                "target_itl_ms",
                format!("{} (must be > 0)", self.target_itl_ms),
            );
        }
        if self.max_running == 0 {
            return bad("max_running", "0 (must be at least 1)".into());
        }
        if self.min_prefill_chunk == 0 || self.min_prefill_chunk > self.max_prefill_chunk {
            return bad(
                "min_prefill_chunk",
                format!(
                    "{} (must be between 1 and max_prefill_chunk = {})",
                    self.min_prefill_chunk, self.max_prefill_chunk
                ),
            );
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "0 (must be at least 1)".into());
        }
        let w = self.memory.kv_high_watermark;
        if !(w > 0.0 && w <= 1.0) {
            return bad("kv_high_watermark", format!("{w} (must be in (0, 1])"));
        }
        if self.stream_capacity == 0 {
            return bad("stream_capacity", "0 (must be at least 1)".into());
        }
        self.spec.validate()
    }

    pub(crate) fn controller(&self) -> ControllerConfig {
        ControllerConfig {
            target_itl_ms: self.target_itl_ms,
            max_running: self.max_running,
            min_prefill: self.min_prefill_chunk,
            max_prefill: self.max_prefill_chunk,
            adaptive: self.adaptive,
        }
    }
}
