//! `rill bench`: an async load generator for any OpenAI-compatible server (rill, llama-server,
//! vLLM...). It sweeps concurrency levels with a prompt set and an arrival pattern, measures
//! every request as a client sees it (TTFT, each inter-token gap, end to end, errors), reports
//! percentiles and throughput, keeps every run in SQLite, and compares runs statistically
//! (the history and the comparison live in `rill-history`, shared with the server's
//! dashboard, and are re-exported here as `history`, `compare` and `stats`).
//! It has no dependency on rill's engine.

#![warn(missing_docs)]

pub mod client;
pub mod report;
pub mod runner;
pub mod workload;

pub use client::{Sample, Target};
pub use rill_history::{compare, history, stats};
pub use rill_history::{History, HistoryError, RunMeta};
pub use runner::{LevelResult, Workload};

/// Why a benchmark could not be set up or recorded.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad input: unknown prompt set, unreadable or malformed JSONL prompt file.
    #[error("{0}")]
    Usage(String),
    /// The run history (SQLite) failed.
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// The current git commit (short), or "unknown".
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A one-line description of this machine (CPU model, logical CPUs, memory).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cpu}, {cpus} CPUs, {mem_gib:.0} GiB")
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
