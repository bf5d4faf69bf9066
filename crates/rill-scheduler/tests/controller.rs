//! The adaptive batch-size controller driven by synthetic step times (a simulated engine whose
//! step cost is linear in its rows, with jitter): it converges to the largest batch whose p95
//! step time stays under the target, and backs off when the machine gets slower.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use rill_scheduler::{BatchController, ControllerConfig, StepSample};

const TARGET: f64 = 50.0;

fn p95(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[(v.len() as f64 * 0.95).ceil() as usize - 1]
}

/// Runs `steps` simulated steps with 64 streams wanting to run and a prompt arriving every 8th
/// step; returns each step's duration.
fn simulate(c: &mut BatchController, steps: usize, cost: impl Fn(usize) -> f64) -> Vec<f64> {
    (0..steps)
        .map(|i| {
            let running = c.limits().max_running.min(64);
            let prefill = if i % 8 == 0 {
                c.prefill_budget(running, 0.0, 0)
            } else {
                0
            };
            // +-8% deterministic jitter.
            let d = cost(running + prefill) * (1.0 + 0.08 * (i as f64 * 1.7).sin());
            c.observe(StepSample {
                decode_rows: running,
                draft_rows: 0,
                prefill_tokens: prefill,
                attended: 0.0,
                duration_ms: d,
                interval_ms: None,
            });
            d
        })
        .collect()
}

#[test]
fn converges_under_the_target_and_backs_off_when_steps_slow_down() {
    let mut c = BatchController::new(ControllerConfig {
        target_itl_ms: TARGET,
        max_running: 64,
        min_prefill: 4,
        max_prefill: 512,
        adaptive: true,
    });
    // 4 ms per step plus 3 ms per row: 15 rows fit 50 ms. Steps that carry a prompt chunk take
    // at least `min_prefill` = 4 extra rows and are one in eight, so more often than the 5% tail:
    // the p95 is theirs, and at most 11 decode rows keep it under the target.
    let fast = |rows: usize| 4.0 + 3.0 * rows as f64;
    let warm = simulate(&mut c, 300, fast);
    let settled = &warm[200..];
    let limit = c.limits().max_running;
    assert!(p95(settled) <= TARGET, "p95 {} over target", p95(settled));
    assert!(
        (8..=11).contains(&limit),
        "limit {limit} should approach the 11 rows that fit"
    );
    let s = c.state();
    let predicted = s.fixed_ms + s.per_row_ms * limit as f64;
    assert!(
        (predicted / fast(limit) - 1.0).abs() < 0.15,
        "the fitted model predicts {predicted} ms at the operating point, truly {}",
        fast(limit)
    );

    // The machine gets twice as slow per row (contention): latency rises and the limit drops to
    // what fits now (7 rows, 4 of them prefill).
    let slow = |rows: usize| 4.0 + 6.0 * rows as f64;
    let after = simulate(&mut c, 300, slow);
    assert!(
        after[0] > TARGET,
        "the slowdown first shows as latency over target"
    );
    let new_limit = c.limits().max_running;
    assert!(new_limit < limit, "backs off: {limit} -> {new_limit}");
    assert!(
        (2..=3).contains(&new_limit),
        "limit {new_limit} should approach 3 rows"
    );
    assert!(
        p95(&after[150..]) <= TARGET,
        "p95 {} over target",
        p95(&after[150..])
    );
    assert!(c.state().decreases > 0);

    // And recovers when the machine is fast again.
    simulate(&mut c, 300, fast);
    assert!(c.limits().max_running > new_limit);
}

#[test]
fn prefill_budget_fills_what_decode_leaves() {
    let mut c = BatchController::new(ControllerConfig {
        target_itl_ms: TARGET,
        max_running: 64,
        min_prefill: 4,
        max_prefill: 512,
        adaptive: true,
    });
    simulate(&mut c, 200, |rows| 4.0 + 3.0 * rows as f64);
    let few = c.prefill_budget(2, 0.0, 0);
    let many = c.prefill_budget(12, 0.0, 0);
    assert!(few > many, "{few} vs {many}");
    assert_eq!(c.prefill_budget(60, 0.0, 0), 4, "never below the minimum");
    assert_eq!(
        c.prefill_budget(0, 0.0, 0),
        512,
        "nobody decoding: full chunks"
    );
}
