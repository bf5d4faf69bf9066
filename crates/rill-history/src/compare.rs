//! The comparison behind `rill bench compare A B` and the dashboard's regression flags: per
//! concurrency level and metric, whether run B differs from run A beyond noise (Mann-Whitney U
//! on the per-request samples, two-sided, at `alpha`), and in which direction. A significant
//! change for the worse is a regression.

use serde::Serialize;

use crate::sample::Sample;
use crate::stats::{mann_whitney_p, median};

/// What a metric did from run A to run B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// No difference beyond noise.
    Same,
    /// Significantly better in B.
    Better,
    /// Significantly worse in B.
    Regression,
    /// Too few samples to say.
    Unknown,
}

/// One metric at one concurrency level, run A against run B.
#[derive(Debug, Clone, Serialize)]
pub struct MetricDiff {
    /// The concurrency level.
    pub concurrency: usize,
    /// `ttft_ms`, `itl_mean_ms`, `e2e_ms` or `decode_tokens_per_s`.
    pub metric: &'static str,
    /// Median over A's successful requests.
    pub median_a: f64,
    /// Median over B's successful requests.
    pub median_b: f64,
    /// B's median relative to A's, in percent (0 where A's is 0).
    pub change_pct: f64,
    /// Two-sided Mann-Whitney U p-value.
    pub p_value: f64,
    /// The verdict at the given `alpha`.
    pub verdict: Verdict,
}

/// Per-request metrics: name, extractor, whether higher is better.
type Metric = (&'static str, fn(&Sample) -> Option<f64>, bool);

const METRICS: [Metric; 4] = [
    ("ttft_ms", |s| s.ttft_ms, false),
    ("itl_mean_ms", |s| s.itl_mean_ms(), false),
    ("e2e_ms", |s| Some(s.e2e_ms), false),
    ("decode_tokens_per_s", |s| s.decode_tokens_per_s(), true),
];

/// Samples needed on each side before a verdict.
const MIN_SAMPLES: usize = 5;

/// Compares every metric at every concurrency level both runs have (samples as
/// [`History::samples`](crate::History::samples) returns them); a difference counts when its
/// p-value is below `alpha` and each side has at least 5 successful requests.
pub fn compare(a: &[(usize, Sample)], b: &[(usize, Sample)], alpha: f64) -> Vec<MetricDiff> {
    let mut levels: Vec<usize> = a.iter().map(|(c, _)| *c).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut out = Vec::new();
    for c in levels {
        let pick = |v: &[(usize, Sample)], f: fn(&Sample) -> Option<f64>| -> Vec<f64> {
            v.iter()
                .filter(|(l, s)| *l == c && s.ok())
                .filter_map(|(_, s)| f(s))
                .collect()
        };
        if !b.iter().any(|(l, _)| *l == c) {
            continue;
        }
        for (name, f, higher_better) in METRICS {
            let (xa, xb) = (pick(a, f), pick(b, f));
            let (ma, mb) = (median(&xa), median(&xb));
            let p = mann_whitney_p(&xa, &xb);
            let verdict = if xa.len() < MIN_SAMPLES || xb.len() < MIN_SAMPLES {
                Verdict::Unknown
            } else if p >= alpha {
                Verdict::Same
            } else if (mb > ma) == higher_better {
                Verdict::Better
            } else {
                Verdict::Regression
            };
            out.push(MetricDiff {
                concurrency: c,
                metric: name,
                median_a: ma,
                median_b: mb,
                change_pct: if ma != 0.0 {
                    (mb / ma - 1.0) * 100.0
                } else {
                    0.0
                },
                p_value: p,
                verdict,
            });
        }
    }
    out
}

/// The diffs as a fixed-width text table, one line per metric and level.
pub fn table(diffs: &[MetricDiff]) -> String {
    let mut s = format!(
        "{:>5} {:<20} {:>11} {:>11} {:>8} {:>9}  verdict\n",
        "conc", "metric", "median A", "median B", "change", "p"
    );
    for d in diffs {
        s.push_str(&format!(
            "{:>5} {:<20} {:>11.2} {:>11.2} {:>7.1}% {:>9.2e}  {:?}\n",
            d.concurrency, d.metric, d.median_a, d.median_b, d.change_pct, d.p_value, d.verdict
        ));
    }
    s
}
