//! Speculative decoding by prompt lookup ("prefetching likely tokens"): each decoding sequence
//! drafts the tokens that followed the last earlier occurrence of its last n tokens (n from
//! `ngram_max` down to `ngram_min`) in its own prompt and generated text, and the scheduler
//! verifies the draft as extra rows of the sequence's row in the normal batched step. The target
//! token of every verified position is sampled exactly as plain decoding samples it (same logits,
//! same penalties, same per-sequence random stream), and a draft token is kept only while it
//! equals that sample, so speculation changes how many tokens a step yields, never which tokens.
//!
//! This module owns the parts that need no engine: the n-gram index ([`NgramIndex`]), the
//! per-sequence acceptance estimate ([`Acceptance`]) and the choice of draft lengths under the
//! controller's step-cost model ([`plan_drafts`]). A draft row is worth adding when the tokens
//! it is expected to yield (the chance that it and every draft token before it are accepted) per
//! millisecond it adds exceed what the step already yields per millisecond: on a memory-bound
//! single stream that is most drafts that match; in a large, compute-bound batch, none.

use std::collections::HashMap;

/// How drafts are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecMode {
    /// No speculation: one token per sequence per step.
    Off,
    /// Prompt lookup: n-gram matches against the sequence's own prompt and output.
    Ngram,
}

impl SpecMode {
    /// The name used by `--speculative` and the config key.
    pub fn as_str(&self) -> &'static str {
        match self {
            SpecMode::Off => "off",
            SpecMode::Ngram => "ngram",
        }
    }
}

impl std::str::FromStr for SpecMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(SpecMode::Off),
            "ngram" => Ok(SpecMode::Ngram),
            _ => Err(format!("`{s}` (allowed: off, ngram)")),
        }
    }
}

/// The most draft tokens one sequence may carry in a step: a rollback must stay within what
/// sliding-window layers keep ([`rill_engine::ROLLBACK_SLACK`]).
pub const MAX_DRAFT_LIMIT: usize = rill_engine::ROLLBACK_SLACK - 1;

/// Speculative decoding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecConfig {
    /// How drafts are made (default: `Ngram`; `Off` disables speculation).
    pub mode: SpecMode,
    /// Draft tokens a sequence may carry in one step (1..=[`MAX_DRAFT_LIMIT`]).
    pub max_draft: usize,
    /// Shortest suffix that may be matched.
    pub ngram_min: usize,
    /// Longest suffix tried first.
    pub ngram_max: usize,
}

impl Default for SpecConfig {
    fn default() -> Self {
        Self {
            mode: SpecMode::Ngram,
            max_draft: MAX_DRAFT_LIMIT,
            ngram_min: 2,
            ngram_max: 4,
        }
    }
}

impl SpecConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=MAX_DRAFT_LIMIT).contains(&self.max_draft) {
            return Err((
                "spec_max_draft".into(),
                format!("{} (must be in 1..={MAX_DRAFT_LIMIT})", self.max_draft),
            ));
        }
        if !(1..=8).contains(&self.ngram_min) {
            return Err((
                "spec_ngram_min".into(),
                format!("{} (must be in 1..=8)", self.ngram_min),
            ));
        }
        if !(self.ngram_min..=8).contains(&self.ngram_max) {
            return Err((
                "spec_ngram_max".into(),
                format!(
                    "{} (must be in spec_ngram_min = {} ..= 8)",
                    self.ngram_max, self.ngram_min
                ),
            ));
        }
        Ok(())
    }
}

/// Where each n-gram of a sequence's tokens last occurred, for `n` in `n_min..=n_max`: maps a
/// hash of the n tokens to the position just after them. Grows with the sequence (its tokens
/// never shrink: preemption keeps them).
#[derive(Debug)]
pub struct NgramIndex {
    n_min: usize,
    /// `maps[n - n_min]`: n-gram hash -> end position of its latest occurrence.
    maps: Vec<HashMap<u64, u32>>,
    /// n-grams ending at positions `< indexed` are in the maps.
    indexed: usize,
}

fn gram_hash(tokens: &[u32]) -> u64 {
    tokens.iter().fold(0x243f_6a88_85a3_08d3u64, |h, &t| {
        (h ^ u64::from(t))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29)
    })
}

impl NgramIndex {
    /// An empty index of the n-grams of `n_min..=n_max` tokens.
    pub fn new(n_min: usize, n_max: usize) -> Self {
        Self {
            n_min,
            maps: (n_min..=n_max).map(|_| HashMap::new()).collect(),
            indexed: 0,
        }
    }

    /// Indexes every n-gram that ends before the last position of `tokens` (the suffix ending
    /// at the end is what a lookup matches, so it must find earlier occurrences only).
    fn catch_up(&mut self, tokens: &[u32]) {
        let upto = tokens.len().saturating_sub(1);
        for end in self.indexed.max(1)..=upto {
            for (i, map) in self.maps.iter_mut().enumerate() {
                let n = self.n_min + i;
                if end >= n {
                    map.insert(gram_hash(&tokens[end - n..end]), end as u32);
                }
            }
        }
        self.indexed = self.indexed.max(upto + 1);
    }

    /// Writes into `out` up to `k` tokens that followed the latest earlier occurrence of the
    /// longest suffix of `tokens` (from `n_max` down to `n_min` tokens) found; returns the
    /// matched length (0: no match, `out` empty).
    pub fn draft(&mut self, tokens: &[u32], k: usize, out: &mut Vec<u32>) -> usize {
        out.clear();
        self.catch_up(tokens);
        let len = tokens.len();
        for i in (0..self.maps.len()).rev() {
            let n = self.n_min + i;
            if len < n + 1 {
                continue;
            }
            let suffix = &tokens[len - n..];
            let Some(&end) = self.maps[i].get(&gram_hash(suffix)) else {
                continue;
            };
            let end = end as usize;
            if end >= len || tokens[end - n..end] != *suffix {
                continue; // a hash collision
            }
            out.extend_from_slice(&tokens[end..(end + k).min(len)]);
            return n;
        }
        0
    }
}

/// Recent draft acceptance: accepted draft tokens over draft tokens whose fate was decided
/// (each accepted one, and the first rejected one; those behind it were never compared), with
/// a prior of one in two and exponential forgetting. Kept per sequence (forgets fast; steps
/// without a draft decay it back towards its start, so a sequence whose drafts stopped paying
/// tries again later) and server-wide (forgets slowly), which is where a new sequence starts:
/// traffic that copies its input starts with long drafts, open-ended traffic with short ones.
#[derive(Debug, Clone, Copy)]
pub struct Acceptance {
    hits: f64,
    trials: f64,
    forget: f64,
}

impl Default for Acceptance {
    fn default() -> Self {
        Self::per_sequence()
    }
}

impl Acceptance {
    const SEQUENCE_FORGET: f64 = 0.8;
    const SERVER_FORGET: f64 = 0.98;
    const IDLE_FORGET: f64 = 0.97;
    /// The weight (in decided draft tokens) a new sequence gives the server-wide estimate.
    const INHERITED_TRIALS: f64 = 8.0;

    /// A fresh per-sequence estimate at the prior.
    pub fn per_sequence() -> Self {
        Self {
            hits: 0.0,
            trials: 0.0,
            forget: Self::SEQUENCE_FORGET,
        }
    }

    /// A fresh server-wide estimate at the prior.
    pub fn server_wide() -> Self {
        Self {
            forget: Self::SERVER_FORGET,
            ..Self::per_sequence()
        }
    }

    /// A per-sequence estimate that starts at `server`'s rate, weighted as a few decided draft
    /// tokens so the sequence's own drafts soon dominate.
    pub fn starting_from(server: &Acceptance) -> Self {
        let w = Self::INHERITED_TRIALS;
        // `rate()` of (hits, w) equals the server's, (hits + 1) / (w + 2) = r, within what w
        // trials can say (at most 9 in 10).
        let hits = (server.rate() * (w + 2.0) - 1.0).clamp(0.0, w);
        Self {
            hits,
            trials: w,
            forget: Self::SEQUENCE_FORGET,
        }
    }

    /// The estimated chance that the next draft token is accepted.
    pub fn rate(&self) -> f64 {
        (self.hits + 1.0) / (self.trials + 2.0)
    }

    /// Records one verified draft of `drafted` tokens of which the first `accepted` matched.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        let decided = accepted + usize::from(accepted < drafted);
        self.hits = self.forget * self.hits + accepted as f64;
        self.trials = self.forget * self.trials + decided as f64;
    }

    /// Records a step in which the sequence carried no draft.
    pub fn idle(&mut self) {
        self.hits *= Self::IDLE_FORGET;
        self.trials *= Self::IDLE_FORGET;
    }
}

/// One decode row that could carry draft tokens.
#[derive(Debug, Clone, Copy)]
pub struct DraftCandidate {
    /// Positions the decode row attends (its sequence's length plus one).
    pub attended: usize,
    /// Chance that each draft token is accepted.
    pub rate: f64,
    /// Draft tokens on offer (already capped by the sequence's limits).
    pub offered: usize,
}

/// The step-cost model the controller fitted: `fixed + per_row * rows + per_kpos * attended /
/// 1000` milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct StepCost {
    /// Milliseconds one row adds.
    pub per_row_ms: f64,
    /// Milliseconds per thousand attended positions.
    pub per_kpos_ms: f64,
}

impl StepCost {
    /// What one more row attending `attended` positions adds to a step.
    pub fn row_ms(&self, attended: usize) -> f64 {
        (self.per_row_ms + self.per_kpos_ms * attended as f64 / 1000.0).max(1e-6)
    }
}

/// How much better than the step's own rate a draft token's expected yield per millisecond
/// must be: the cost model and the acceptance estimate are fits, and a verified draft costs
/// more than its row (sampling the row, the rollback). Without it a 16-stream batch drafted
/// at break-even and lost ~8% of its throughput.
const PAYOFF_MARGIN: f64 = 1.15;

/// Chooses each candidate's draft length. `tokens` and `step_ms` are what the step yields and
/// costs without drafts (its decode rows, and its predicted time with everything else it
/// carries); a draft token is added while its expected yield per added millisecond beats the
/// step's yield per millisecond so far, and while the step stays within `budget_ms` (None: no
/// latency bound). Best candidates first, so a tight budget goes to the likeliest drafts.
pub fn plan_drafts(
    cost: StepCost,
    tokens: f64,
    step_ms: f64,
    budget_ms: Option<f64>,
    candidates: &[DraftCandidate],
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| candidates[b].rate.total_cmp(&candidates[a].rate));
    let mut lengths = vec![0; candidates.len()];
    let (mut tokens, mut ms) = (tokens, step_ms.max(1e-6));
    for i in order {
        let c = candidates[i];
        let mut p = 1.0;
        for j in 0..c.offered {
            p *= c.rate;
            let dm = cost.row_ms(c.attended + j + 1);
            if p / dm <= PAYOFF_MARGIN * tokens / ms || budget_ms.is_some_and(|b| ms + dm > b) {
                break;
            }
            tokens += p;
            ms += dm;
            lengths[i] = j + 1;
        }
    }
    lengths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_continue_the_latest_earlier_match() {
        let mut ix = NgramIndex::new(2, 3);
        let mut out = Vec::new();
        //           0  1  2  3  4  5  6  7  8
        let toks = [5, 6, 7, 8, 9, 1, 6, 7, 8];
        // Suffix [6, 7, 8] occurred ending at 4: continue with 9, 1, 6.
        assert_eq!(ix.draft(&toks, 3, &mut out), 3);
        assert_eq!(out, [9, 1, 6]);
        // Drafts stop at the end of what is known.
        assert_eq!(ix.draft(&toks, 10, &mut out), 3);
        assert_eq!(out, [9, 1, 6, 7, 8]);
        // No earlier occurrence of any suffix: nothing.
        let mut ix = NgramIndex::new(2, 3);
        assert_eq!(ix.draft(&[1, 2, 3, 4], 4, &mut out), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn index_grows_incrementally_like_a_fresh_one() {
        let toks: Vec<u32> = (0..300).map(|i| (i * 7 % 13) as u32).collect();
        let mut grown = NgramIndex::new(1, 4);
        let mut out_a = Vec::new();
        let mut out_b = Vec::new();
        for len in 2..toks.len() {
            let a = grown.draft(&toks[..len], 5, &mut out_a);
            let b = NgramIndex::new(1, 4).draft(&toks[..len], 5, &mut out_b);
            assert_eq!((a, &out_a), (b, &out_b), "at {len}");
        }
    }

    #[test]
    fn acceptance_learns_and_recovers() {
        let mut a = Acceptance::default();
        assert_eq!(a.rate(), 0.5);
        for _ in 0..20 {
            a.observe(8, 8);
        }
        assert!(a.rate() > 0.9);
        for _ in 0..20 {
            a.observe(8, 0);
        }
        assert!(a.rate() < 0.2);
        for _ in 0..200 {
            a.idle();
        }
        assert!((a.rate() - 0.5).abs() < 0.05);
    }

    #[test]
    fn new_sequences_start_from_the_server_rate_and_soon_follow_their_own() {
        let mut server = Acceptance::server_wide();
        for _ in 0..100 {
            server.observe(8, 8);
        }
        let mut seq = Acceptance::starting_from(&server);
        assert!(seq.rate() >= 0.9 - 1e-9, "{}", seq.rate());
        for _ in 0..8 {
            seq.observe(4, 0);
        }
        assert!(seq.rate() < 0.4, "{}", seq.rate());
        assert_eq!(
            Acceptance::starting_from(&Acceptance::server_wide()).rate(),
            0.5
        );
    }

    #[test]
    fn drafts_pay_on_a_memory_bound_step_and_not_on_a_compute_bound_one() {
        let cost = StepCost {
            per_row_ms: 1.0,
            per_kpos_ms: 0.0,
        };
        let cand = |rate| DraftCandidate {
            attended: 100,
            rate,
            offered: 8,
        };
        // One stream, 10 ms fixed: a likely draft is taken whole, an unlikely one not at all.
        assert_eq!(plan_drafts(cost, 1.0, 11.0, None, &[cand(0.9)]), [8]);
        assert_eq!(plan_drafts(cost, 1.0, 11.0, None, &[cand(0.05)]), [0]);
        // 32 rows at 1 ms each behind the same fixed part: no draft beats 32 tokens in 42 ms.
        assert_eq!(plan_drafts(cost, 32.0, 42.0, None, &[cand(0.7)]), [0]);
        // A latency budget caps the draft.
        assert_eq!(plan_drafts(cost, 1.0, 11.0, Some(14.5), &[cand(0.9)]), [3]);
        // The budget goes to the likelier draft first.
        assert_eq!(
            plan_drafts(cost, 2.0, 12.0, Some(14.5), &[cand(0.6), cand(0.95)]),
            [0, 2]
        );
    }
}
