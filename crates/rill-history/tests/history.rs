//! The history and the regression check on stored synthetic runs: a 25% slowdown is flagged on
//! every metric, a rerun of the same distribution is not, and a speed-up reads as better.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use rand::{Rng, SeedableRng};
use rill_history::compare::{compare, Verdict};
use rill_history::{History, HistoryError, Level, RunMeta, Sample};

fn temp_db(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rill-history-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.join("bench.sqlite")
}

fn synthetic(seed: u64, n: usize, slowdown: f64) -> Vec<(usize, Sample)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            // Skewed latencies like a real server's: a base plus an exponential tail.
            let mut j = || 1.0 - (1.0 - rng.gen::<f64>()).ln() * 0.15;
            let ttft = 80.0 * j() * slowdown;
            let itl: Vec<f64> = (0..63).map(|_| 12.0 * j() * slowdown).collect();
            let e2e = ttft + itl.iter().sum::<f64>();
            (
                4,
                Sample {
                    ttft_ms: Some(ttft),
                    itl_ms: itl,
                    e2e_ms: e2e,
                    output_tokens: 64,
                    error: None,
                    drafts: None,
                },
            )
        })
        .collect()
}

#[test]
fn compare_flags_a_slowdown_and_not_noise() {
    let db = temp_db("synthetic");
    let mut h = History::open(&db).unwrap();
    let level = |samples: Vec<(usize, Sample)>| Level {
        concurrency: 4,
        summary: serde_json::json!({"concurrency": 4, "requests": samples.len()}),
        samples: samples.into_iter().map(|(_, s)| s).collect(),
    };
    let meta = RunMeta::default();
    let a = h.store(&meta, &[level(synthetic(1, 40, 1.0))]).unwrap();
    let a2 = h.store(&meta, &[level(synthetic(2, 40, 1.0))]).unwrap();
    let slow = h.store(&meta, &[level(synthetic(3, 40, 1.25))]).unwrap();
    let same = compare(&h.samples(a).unwrap(), &h.samples(a2).unwrap(), 0.01);
    assert!(!same.is_empty());
    assert!(same.iter().all(|d| d.verdict == Verdict::Same), "{same:#?}");
    let worse = compare(&h.samples(a).unwrap(), &h.samples(slow).unwrap(), 0.01);
    for m in ["ttft_ms", "itl_mean_ms", "e2e_ms", "decode_tokens_per_s"] {
        let d = worse.iter().find(|d| d.metric == m).unwrap();
        assert_eq!(d.verdict, Verdict::Regression, "{d:?}");
    }
    let better = compare(&h.samples(slow).unwrap(), &h.samples(a).unwrap(), 0.01);
    assert!(better.iter().all(|d| d.verdict == Verdict::Better));

    // The stored runs read back with their levels; an unknown run is a typed error.
    let runs = h.runs().unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![a, a2, slow]
    );
    assert_eq!(
        (runs[0].levels[0].concurrency, runs[0].levels[0].requests),
        (4, 40)
    );
    assert!(matches!(
        h.samples(slow + 1),
        Err(HistoryError::NoSuchRun(id)) if id == slow + 1
    ));
}
