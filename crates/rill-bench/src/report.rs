//! Per-level summaries (percentiles of TTFT, inter-token gaps and end-to-end latency; output
//! tokens/s; requests/s; errors) as a table and as JSON.

use serde::Serialize;

use crate::runner::LevelResult;

/// Distribution summary of a set of values (nearest-rank percentiles; all 0 when empty).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Nearest-rank percentiles and the mean of `v` (order irrelevant; empty: all zeros).
pub fn percentiles(v: &[f64]) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1];
    Percentiles {
        p50: q(0.5),
        p90: q(0.9),
        p95: q(0.95),
        p99: q(0.99),
        mean: s.iter().sum::<f64>() / s.len() as f64,
    }
}

/// One concurrency level's results, reduced to what the table and the JSON report show.
/// Latencies and throughput count successful requests only.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Concurrency level (clients, or most requests in flight).
    pub concurrency: usize,
    /// Requests sent, failed ones included.
    pub requests: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Failures by kind (the error text before its first `:`), with counts, in first-seen order.
    pub error_kinds: Vec<(String, usize)>,
    /// Tokens generated over the successful requests.
    pub output_tokens: usize,
    /// Wall time of the whole level, in seconds.
    pub wall_s: f64,
    /// `output_tokens` per second of `wall_s`.
    pub output_tokens_per_s: f64,
    /// Successful requests per second of `wall_s`.
    pub requests_per_s: f64,
    /// Time to first content chunk, ms.
    pub ttft_ms: Percentiles,
    /// Gaps between consecutive content chunks, pooled over requests, ms.
    pub itl_ms: Percentiles,
    /// Request start to end of stream, ms.
    pub e2e_ms: Percentiles,
    /// Speculative tokens drafted and accepted over the level's requests (where the server
    /// reported them).
    pub drafted_tokens: usize,
    /// Of `drafted_tokens`, those the server accepted.
    pub accepted_tokens: usize,
}

impl Summary {
    /// Accepted over drafted tokens, if anything was drafted.
    pub fn acceptance(&self) -> Option<f64> {
        (self.drafted_tokens > 0).then(|| self.accepted_tokens as f64 / self.drafted_tokens as f64)
    }
}

/// Reduces one level's samples to a [`Summary`].
pub fn summarize(r: &LevelResult) -> Summary {
    let ok: Vec<_> = r.samples.iter().filter(|s| s.ok()).collect();
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for s in r.samples.iter().filter_map(|s| s.error.as_ref()) {
        let k: String = s.split(':').next().unwrap_or(s).to_string();
        match kinds.iter_mut().find(|(x, _)| *x == k) {
            Some(e) => e.1 += 1,
            None => kinds.push((k, 1)),
        }
    }
    let tokens: usize = ok.iter().map(|s| s.output_tokens).sum();
    let itl: Vec<f64> = ok.iter().flat_map(|s| s.itl_ms.iter().copied()).collect();
    Summary {
        concurrency: r.concurrency,
        requests: r.samples.len(),
        errors: r.samples.len() - ok.len(),
        error_kinds: kinds,
        output_tokens: tokens,
        wall_s: r.wall_s,
        output_tokens_per_s: tokens as f64 / r.wall_s.max(1e-9),
        requests_per_s: ok.len() as f64 / r.wall_s.max(1e-9),
        ttft_ms: percentiles(&ok.iter().filter_map(|s| s.ttft_ms).collect::<Vec<_>>()),
        itl_ms: percentiles(&itl),
        e2e_ms: percentiles(&ok.iter().map(|s| s.e2e_ms).collect::<Vec<_>>()),
        drafted_tokens: ok.iter().filter_map(|s| s.drafts).map(|d| d.drafted).sum(),
        accepted_tokens: ok.iter().filter_map(|s| s.drafts).map(|d| d.accepted).sum(),
    }
}

/// A fixed-width text table, one row per level (throughput, TTFT/ITL/E2E percentiles), each
/// followed by its speculation acceptance and error kinds when there are any.
pub fn table(rows: &[Summary]) -> String {
    let mut out = format!(
        "{:>5} {:>5} {:>4} {:>9} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}\n",
        "conc",
        "reqs",
        "err",
        "tok/s",
        "req/s",
        "TTFT p50",
        "TTFT p95",
        "TTFT p99",
        "ITL p50",
        "ITL p95",
        "ITL p99",
        "E2E p50",
        "E2E p95"
    );
    for s in rows {
        out.push_str(&format!(
            "{:>5} {:>5} {:>4} {:>9.1} {:>7.2} {:>9.1} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>8.1} {:>9.0} {:>9.0}\n",
            s.concurrency,
            s.requests,
            s.errors,
            s.output_tokens_per_s,
            s.requests_per_s,
            s.ttft_ms.p50,
            s.ttft_ms.p95,
            s.ttft_ms.p99,
            s.itl_ms.p50,
            s.itl_ms.p95,
            s.itl_ms.p99,
            s.e2e_ms.p50,
            s.e2e_ms.p95
        ));
        if let Some(a) = s.acceptance() {
            out.push_str(&format!(
                "      speculation: {} drafted, {} accepted ({:.0}%)\n",
                s.drafted_tokens,
                s.accepted_tokens,
                100.0 * a
            ));
        }
        for (k, n) in &s.error_kinds {
            out.push_str(&format!("      {n} x {k}\n"));
        }
    }
    out
}
