//! The adaptive batch-size controller: how many sequences may run at once and how many prompt
//! tokens a step may prefill, chosen from measured step times so that the p95 inter-token
//! latency of running streams stays under `target_itl_ms` while throughput stays as high as
//! that allows.
//!
//! **Why model-based with an AIMD trim.** On a CPU a step's time is close to linear in its
//! work: a fixed part (streaming every weight once), a cost per row (each token's matmuls; a
//! prefill token costs about what a decode row does) and a cost per attended position (each
//! row attends to every earlier position of its sequence, which is what makes the tail of a
//! 2,000-token prompt dearer than its head). The controller fits
//! `step_ms = fixed + per_row * rows + per_kpos * attended / 1000` online (non-negative least
//! squares with forgetting, so it follows contention and thermal changes) and solves it for the
//! work that fits a step budget: the running limit is the decode rows that fit, and each step's
//! prefill chunk is what is left after that step's decode rows. That jumps straight to the
//! operating point, where a pure AIMD on the batch size would creep towards it one sequence at
//! a time and oscillate around it. The model predicts the mean, not the tail, so the budget is
//! `target * headroom`, and the headroom is trimmed by AIMD on the measured p95 of recent
//! decode steps: multiplied by 0.85 when the p95 is over 95% of the target (unless the model's
//! own predictions are off: it is still following a change, and cutting then would react twice
//! to one slowdown), raised by 0.04 when it is under 85%. Every step of a decoding stream yields
//! one token, so the p95 of decode step times is the streams' p95 inter-token latency.

use std::collections::VecDeque;

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// p95 inter-token latency (ms) the limits are chosen to keep running streams under.
    pub target_itl_ms: f64,
    /// Hard cap on running sequences.
    pub max_running: usize,
    /// Prefill tokens a step may always take, so that prompts progress under any load.
    pub min_prefill: usize,
    /// Prefill tokens a step never exceeds.
    pub max_prefill: usize,
    /// Fixed limits instead of adapting (`max_running`, `max_prefill`).
    pub adaptive: bool,
}

/// One measured step.
#[derive(Debug, Clone, Copy)]
pub struct StepSample {
    /// Sequences that decoded one token in the step.
    pub decode_rows: usize,
    /// Speculative draft tokens verified beside the decode rows (rows like any other).
    pub draft_rows: usize,
    /// Prompt tokens prefilled in the step, over all sequences.
    pub prefill_tokens: usize,
    /// Positions attended, summed over all rows of the step.
    pub attended: f64,
    /// Wall time of the engine's batched forward pass for the step, in milliseconds.
    pub duration_ms: f64,
    /// Time since the previous step started, when that step also decoded: what a stream
    /// actually waits between tokens (compute plus sampling, scheduling and delivery).
    pub interval_ms: Option<f64>,
}

/// The controller's current decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sequences that may run at once: the decode rows that fit the step budget, in
    /// 1..=`ControllerConfig::max_running` (the cap itself when not adaptive).
    pub max_running: usize,
    /// Prefill tokens the last step's decode rows left room for.
    pub prefill_budget: usize,
}

/// Decisions and model state, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControllerState {
    /// Current running limit ([`Limits::max_running`]).
    pub max_running: usize,
    /// Current prefill budget in tokens ([`Limits::prefill_budget`]).
    pub prefill_budget: usize,
    /// Fraction of the target a step may take (the AIMD-trimmed budget factor, 0.3..=0.85).
    pub headroom: f64,
    /// Smoothed relative error of the step-time model's predictions.
    pub bias: f64,
    /// Fitted fixed cost of a step (streaming the weights once), in ms.
    pub fixed_ms: f64,
    /// Fitted cost of one row (a decode, draft or prompt token), in ms.
    pub per_row_ms: f64,
    /// Cost of 1,000 attended positions.
    pub per_kpos_ms: f64,
    /// p95 of recent decode step times.
    pub recent_p95_ms: f64,
    /// Times the running limit has gone up since start.
    pub increases: u64,
    /// Times the running limit has gone down since start.
    pub decreases: u64,
}

const WINDOW: usize = 32;
const FORGET: f64 = 0.98;
const HEADROOM_MIN: f64 = 0.3;
const HEADROOM_MAX: f64 = 0.85;
/// The p95 the trim aims under, as a fraction of the target (a margin for measurement noise).
const P95_GOAL: f64 = 0.95;
const N: usize = 3;
/// Where the fit starts, and what the ridge pulls a coefficient back to when the data cannot
/// tell (e.g. every step had the same number of rows).
const PRIOR: [f64; N] = [5.0, 2.0, 4.0];
/// Ridge weight: small next to a few samples' worth of data.
const RIDGE: f64 = 0.05;

/// The adaptive controller: fits the step-time model from [`StepSample`]s and derives the
/// running limit and prefill budget from it (see the module docs).
pub struct BatchController {
    cfg: ControllerConfig,
    /// [fixed_ms, per_row_ms, per_kpos_ms]
    theta: [f64; N],
    /// Exponentially weighted normal equations: sum of x x^T and of x y.
    xtx: [[f64; N]; N],
    xty: [f64; N],
    headroom: f64,
    /// Smoothed relative error of the model's predictions (positive: steps slower than fitted).
    bias: f64,
    /// Typical context length of a decoding sequence (smoothed), for the running limit.
    decode_context: f64,
    recent: VecDeque<f64>,
    since_trim: usize,
    limits: Limits,
    increases: u64,
    decreases: u64,
}

impl BatchController {
    /// A controller starting from a prior model (5 ms fixed, 2 ms per row, 4 ms per 1,000
    /// attended positions) and a headroom of 0.7.
    pub fn new(cfg: ControllerConfig) -> Self {
        let limits = Limits {
            max_running: cfg.max_running.max(1),
            prefill_budget: cfg.max_prefill.max(1),
        };
        let mut c = Self {
            // A prior that the first samples quickly override.
            theta: PRIOR,
            xtx: [[0.0; N]; N],
            xty: [0.0; N],
            headroom: 0.7,
            bias: 0.0,
            decode_context: 0.0,
            recent: VecDeque::with_capacity(WINDOW),
            since_trim: 0,
            limits,
            increases: 0,
            decreases: 0,
            cfg,
        };
        c.recompute(0, 0.0);
        c
    }

    /// The current limits (recomputed by every [`observe`](Self::observe)).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Time a step may take: the target less the headroom for tail latency.
    pub fn budget_ms(&self) -> f64 {
        self.cfg.target_itl_ms * self.headroom
    }

    /// Predicted time of a step with `rows` rows attending `attended` positions in all.
    pub fn predict_ms(&self, rows: usize, attended: f64) -> f64 {
        let [fixed, per_row, per_kpos] = self.theta;
        fixed + per_row * rows as f64 + per_kpos * attended / 1000.0
    }

    /// The fitted cost of one more row, for speculative draft planning.
    pub fn step_cost(&self) -> crate::speculative::StepCost {
        crate::speculative::StepCost {
            per_row_ms: self.theta[1],
            per_kpos_ms: self.theta[2],
        }
    }

    /// Whether the limits adapt to the latency target (false: fixed caps, no step budget).
    pub fn adaptive(&self) -> bool {
        self.cfg.adaptive
    }

    /// Predicted extra time of `n` prompt tokens appended at position `start`.
    pub fn chunk_ms(&self, n: usize, start: usize) -> f64 {
        let [_, per_row, per_kpos] = self.theta;
        per_row * n as f64 + per_kpos * attended(start, n) / 1000.0
    }

    /// The most prompt tokens, appended at `start`, that fit in `remaining_ms`.
    pub fn chunk_for(&self, remaining_ms: f64, start: usize) -> usize {
        if !self.cfg.adaptive {
            return self.cfg.max_prefill;
        }
        if remaining_ms <= 0.0 {
            return 0;
        }
        // per_kpos/2000 n^2 + (per_row + per_kpos*start/1000) n = remaining
        let [_, per_row, per_kpos] = self.theta;
        let a = per_kpos / 2000.0;
        let b = per_row + per_kpos * start as f64 / 1000.0;
        let n = if a > 1e-12 {
            (-b + (b * b + 4.0 * a * remaining_ms).sqrt()) / (2.0 * a)
        } else {
            remaining_ms / b
        };
        if n.is_finite() {
            (n.floor().max(0.0) as usize).min(self.cfg.max_prefill)
        } else {
            0
        }
    }

    /// Prefill tokens for one prompt at `start` in a step that also carries `decode_rows`
    /// decode rows attending `decode_attended` positions: what the budget leaves, at least
    /// `min_prefill`, at most `max_prefill`, and the whole `max_prefill` when nothing decodes.
    pub fn prefill_budget(&self, decode_rows: usize, decode_attended: f64, start: usize) -> usize {
        if !self.cfg.adaptive || decode_rows == 0 {
            return self.cfg.max_prefill;
        }
        let remaining = self.budget_ms() - self.predict_ms(decode_rows, decode_attended);
        self.chunk_for(remaining, start)
            .clamp(self.cfg.min_prefill, self.cfg.max_prefill)
    }

    /// A snapshot of the limits, the fitted model and the trim counters, for metrics.
    pub fn state(&self) -> ControllerState {
        ControllerState {
            max_running: self.limits.max_running,
            prefill_budget: self.limits.prefill_budget,
            headroom: self.headroom,
            bias: self.bias,
            fixed_ms: self.theta[0],
            per_row_ms: self.theta[1],
            per_kpos_ms: self.theta[2],
            recent_p95_ms: self.recent_p95(),
            increases: self.increases,
            decreases: self.decreases,
        }
    }

    fn recent_p95(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1]
    }

    /// Feeds one measured step and updates the limits.
    pub fn observe(&mut self, s: StepSample) {
        if !self.cfg.adaptive || !s.duration_ms.is_finite() || s.duration_ms <= 0.0 {
            return;
        }
        let rows = s.decode_rows + s.draft_rows + s.prefill_tokens;
        let predicted = self.predict_ms(rows, s.attended);
        let rows = rows as f64;
        if predicted > 0.0 {
            self.bias = 0.8 * self.bias + 0.2 * (s.duration_ms / predicted - 1.0);
        }
        self.fit_update([1.0, rows, s.attended / 1000.0], s.duration_ms);
        let mut decode_attended = 0.0;
        if s.decode_rows > 0 {
            if s.prefill_tokens == 0 && s.draft_rows == 0 {
                let per_seq = s.attended / s.decode_rows as f64;
                self.decode_context = 0.9 * self.decode_context + 0.1 * per_seq;
                decode_attended = s.attended;
            } else {
                decode_attended = self.decode_context * s.decode_rows as f64;
            }
            if self.recent.len() == WINDOW {
                self.recent.pop_front();
            }
            self.recent
                .push_back(s.interval_ms.unwrap_or(s.duration_ms).max(s.duration_ms));
            self.since_trim += 1;
            if self.since_trim >= WINDOW / 2 && self.recent.len() >= WINDOW / 2 {
                self.since_trim = 0;
                let p95 = self.recent_p95();
                // Trim only for tail latency the model does not explain: while its predictions
                // are off (it is still following a change), cutting would react twice.
                if p95 > P95_GOAL * self.cfg.target_itl_ms && self.bias.abs() < 0.1 {
                    self.headroom = (self.headroom * 0.85).max(HEADROOM_MIN);
                } else if p95 < 0.85 * self.cfg.target_itl_ms {
                    self.headroom = (self.headroom + 0.04).min(HEADROOM_MAX);
                }
            }
        }
        self.recompute(s.decode_rows, decode_attended);
    }

    /// Weighted least squares with forgetting, a light ridge towards [`PRIOR`], and every
    /// coefficient kept non-negative: the exact constrained optimum, found by solving the normal
    /// equations on each subset of free coefficients (8 tiny systems) and keeping the best
    /// feasible one. (A plain recursive least squares with clamping drifted into nonsense when
    /// rows and attended positions moved together.)
    fn fit_update(&mut self, x: [f64; N], y: f64) {
        for i in 0..N {
            for j in 0..N {
                self.xtx[i][j] = FORGET * self.xtx[i][j] + x[i] * x[j];
            }
            self.xty[i] = FORGET * self.xty[i] + x[i] * y;
        }
        let mut a = self.xtx;
        let mut b = self.xty;
        for i in 0..N {
            a[i][i] += RIDGE;
            b[i] += RIDGE * PRIOR[i];
        }
        // Minimise J(t) = t^T A t - 2 b^T t over t >= 0.
        let objective = |t: &[f64; N]| {
            let mut j = 0.0;
            for r in 0..N {
                j -= 2.0 * b[r] * t[r];
                for c in 0..N {
                    j += t[r] * a[r][c] * t[c];
                }
            }
            j
        };
        let mut best = ([0.0; N], 0.0);
        for mask in 1u32..(1 << N) {
            let idx: Vec<usize> = (0..N).filter(|i| mask & (1 << i) != 0).collect();
            let m: Vec<Vec<f64>> = idx
                .iter()
                .map(|&r| idx.iter().map(|&c| a[r][c]).collect())
                .collect();
            let v: Vec<f64> = idx.iter().map(|&r| b[r]).collect();
            let Some(sol) = solve(m, v) else { continue };
            if sol.iter().any(|&t| t < 0.0) {
                continue;
            }
            let mut t = [0.0; N];
            for (k, &i) in idx.iter().enumerate() {
                t[i] = sol[k];
            }
            let j = objective(&t);
            if j < best.1 {
                best = (t, j);
            }
        }
        self.theta = best.0;
        self.theta[1] = self.theta[1].max(0.01);
    }

    fn recompute(&mut self, decode_rows: usize, decode_attended: f64) {
        let before = self.limits.max_running;
        let max_running = if self.cfg.adaptive {
            let [fixed, per_row, per_kpos] = self.theta;
            let per_seq = per_row + per_kpos * self.decode_context / 1000.0;
            let rows = ((self.budget_ms() - fixed) / per_seq).floor();
            let rows = if rows.is_finite() {
                rows.max(1.0) as usize
            } else {
                1
            };
            rows.clamp(1, self.cfg.max_running.max(1))
        } else {
            self.cfg.max_running.max(1)
        };
        self.limits = Limits {
            max_running,
            prefill_budget: self.prefill_budget(decode_rows, decode_attended, 0),
        };
        match max_running.cmp(&before) {
            std::cmp::Ordering::Greater => self.increases += 1,
            std::cmp::Ordering::Less => self.decreases += 1,
            std::cmp::Ordering::Equal => {}
        }
    }
}

/// Solves a small dense system by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let (top, rest) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (k, row) in rest.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[col + 1 + k] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Positions attended by `n` tokens appended at `start` (token `start + j` attends
/// `start + j + 1` positions).
pub fn attended(start: usize, n: usize) -> f64 {
    let (s, n) = (start as f64, n as f64);
    n * s + n * (n + 1.0) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_mode_keeps_the_configured_limits() {
        let mut c = BatchController::new(ControllerConfig {
            target_itl_ms: 50.0,
            max_running: 12,
            min_prefill: 16,
            max_prefill: 256,
            adaptive: false,
        });
        c.observe(StepSample {
            decode_rows: 12,
            draft_rows: 0,
            prefill_tokens: 0,
            attended: 1200.0,
            duration_ms: 500.0,
            interval_ms: None,
        });
        assert_eq!(
            c.limits(),
            Limits {
                max_running: 12,
                prefill_budget: 256
            }
        );
        assert_eq!(c.prefill_budget(12, 1200.0, 0), 256);
    }

    #[test]
    fn attended_positions_count_the_causal_triangle() {
        assert_eq!(attended(0, 1), 1.0);
        assert_eq!(attended(0, 4), 10.0);
        assert_eq!(attended(10, 2), 11.0 + 12.0);
    }
}
