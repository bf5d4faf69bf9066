//! The memory-pressure monitor: KV blocks in use and process RSS against configured limits,
//! reduced to one level. The engine loop acts on it: `High` stops admitting new sequences,
//! `Critical` preempts the most recently started ones (recomputed later) until it clears.
//! KV-block exhaustion for the very next step is handled where the step is planned (the loop
//! preempts until the step fits), so the process never fails an allocation it could avoid.

use std::time::{Duration, Instant};

use rill_engine::KvStats;

/// Memory pressure, ordered `Normal < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum PressureLevel {
    /// Below every limit: admit as usual.
    #[default]
    Normal,
    /// KV use at or over `kv_high_watermark`, or RSS at or over `rss_high_bytes`: stop admitting.
    High,
    /// RSS at or over `rss_critical_bytes`: preempt running sequences until it clears.
    Critical,
}

impl PressureLevel {
    /// The level's lowercase name (`"normal"`, `"high"`, `"critical"`), as the dashboard shows.
    pub fn as_str(&self) -> &'static str {
        match self {
            PressureLevel::Normal => "normal",
            PressureLevel::High => "high",
            PressureLevel::Critical => "critical",
        }
    }
}

/// Where pressure starts.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    /// Fraction of KV blocks in use (cached-but-unused blocks count as free) at which admission
    /// stops.
    pub kv_high_watermark: f64,
    /// Process RSS at which admission stops (0: no limit).
    pub rss_high_bytes: u64,
    /// Process RSS at which running sequences are preempted (0: no limit).
    pub rss_critical_bytes: u64,
}

/// Turns KV-block use and process RSS (re-read at most every 100 ms) into a [`PressureLevel`].
pub struct PressureMonitor {
    limits: MemoryLimits,
    rss: u64,
    last_read: Option<Instant>,
}

/// How often RSS is re-read (a /proc read per step would be wasted work).
const RSS_PERIOD: Duration = Duration::from_millis(100);

impl PressureMonitor {
    /// A monitor for `limits`; RSS is first read on the first [`level`](Self::level) call.
    pub fn new(limits: MemoryLimits) -> Self {
        Self {
            limits,
            rss: 0,
            last_read: None,
        }
    }

    /// The last RSS reading in bytes (0 where unknown).
    pub fn rss_bytes(&self) -> u64 {
        self.rss
    }

    /// The pressure level now.
    pub fn level(&mut self, kv: &KvStats) -> PressureLevel {
        if self.last_read.is_none_or(|t| t.elapsed() >= RSS_PERIOD) {
            self.rss = process_rss_bytes().unwrap_or(0);
            self.last_read = Some(Instant::now());
        }
        self.classify(kv, self.rss)
    }

    /// The level for given readings (pure: tested without a process to measure).
    pub fn classify(&self, kv: &KvStats, rss: u64) -> PressureLevel {
        let over = |limit: u64| limit > 0 && rss >= limit;
        if over(self.limits.rss_critical_bytes) {
            return PressureLevel::Critical;
        }
        let used = kv.used_blocks() as f64 / kv.total_blocks.max(1) as f64;
        if over(self.limits.rss_high_bytes) || used >= self.limits.kv_high_watermark {
            return PressureLevel::High;
        }
        PressureLevel::Normal
    }
}

/// Resident set size of this process, from /proc/self/status (Linux; `None` elsewhere).
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_kv_use_and_rss() {
        let m = PressureMonitor::new(MemoryLimits {
            kv_high_watermark: 0.9,
            rss_high_bytes: 1000,
            rss_critical_bytes: 2000,
        });
        let kv = |free: usize| KvStats {
            total_blocks: 100,
            free_blocks: free,
            ..KvStats::default()
        };
        assert_eq!(m.classify(&kv(50), 10), PressureLevel::Normal);
        assert_eq!(m.classify(&kv(10), 10), PressureLevel::High);
        assert_eq!(m.classify(&kv(50), 1500), PressureLevel::High);
        assert_eq!(m.classify(&kv(50), 2500), PressureLevel::Critical);
        assert!(process_rss_bytes().is_some_and(|b| b > 0));
    }
}
