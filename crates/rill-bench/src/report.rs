//! Per-level summaries (percentiles of TTFT, inter-token gaps and end-to-end latency; output
//! tokens/s; requests/s; errors) as a table and as JSON.

use serde::Serialize;

use crate::runner::LevelResult;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
}

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

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub error_kinds: Vec<(String, usize)>,
    pub output_tokens: usize,
    pub wall_s: f64,
    pub output_tokens_per_s: f64,
    pub requests_per_s: f64,
    pub ttft_ms: Percentiles,
    pub itl_ms: Percentiles,
    pub e2e_ms: Percentiles,
    /// Speculative tokens drafted and accepted over the level's requests (where the server
    /// reported them).
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
}

impl Summary {
    /// Accepted over drafted tokens, if anything was drafted.
    pub fn acceptance(&self) -> Option<f64> {
        (self.drafted_tokens > 0).then(|| self.accepted_tokens as f64 / self.drafted_tokens as f64)
    }
}

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
