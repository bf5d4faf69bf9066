//! Token sampling: repetition/frequency/presence penalties, top-k, top-p, min-p, temperature, and
//! a per-sequence seeded RNG (so a seed gives the same tokens whatever else shares the batch).
//! Log-probabilities (and top alternatives) come from the model's raw distribution.
//! The filter order follows llama.cpp's default chain: penalties, top-k, top-p, min-p,
//! temperature, draw.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How to pick tokens. Field names follow OpenAI / llama.cpp server request fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables. Applied over the last `penalty_last_n` tokens.
    pub repetition_penalty: f32,
    /// Subtracted from a logit once per occurrence in the window (0.0 disables).
    pub frequency_penalty: f32,
    /// Subtracted from the logit of every token in the window (0.0 disables).
    pub presence_penalty: f32,
    /// Tokens of history the penalties look at.
    pub penalty_last_n: usize,
    /// RNG seed; None: seeded from the clock.
    pub seed: Option<u64>,
    /// Number of alternatives to report per token (0..=20).
    pub top_logprobs: usize,
    /// Report the chosen token's log-probability.
    pub logprobs: bool,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Added to a token's logit before sampling (after the penalties), OpenAI's `logit_bias`:
    /// -100..=100, where exactly -100 bans the token. Log-probabilities stay the model's.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
            top_logprobs: 0,
            logprobs: false,
            ignore_eos: false,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks ranges; the error names the offending field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((f.to_string(), m));
        if !(0.0..=100.0).contains(&self.temperature) || self.temperature.is_nan() {
            return bad(
                "temperature",
                format!("{} is outside 0..=100", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} is outside [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return bad(
                "repetition_penalty",
                format!("{} is outside (0, 10]", self.repetition_penalty),
            );
        }
        for (f, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(f, format!("{v} is outside [-2, 2]"));
            }
        }
        if let Some(&(t, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return bad(
                "logit_bias",
                format!("token {t}: {b} is outside [-100, 100]"),
            );
        }
        if self.top_logprobs > 20 {
            return bad("top_logprobs", format!("{} is above 20", self.top_logprobs));
        }
        Ok(())
    }
}

/// A chosen token with its log-probability and the top alternatives (when asked).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    /// The token.
    pub id: u32,
    /// Its log-probability under the raw logits (0 unless asked for).
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Picks tokens from logits by [`SamplingParams`], keeping the history the penalties need.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    history: Vec<u32>,
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler with an empty history.
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ (std::process::id() as u64).rotate_left(32)
        });
        Self {
            params,
            rng: StdRng::seed_from_u64(seed),
            history: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Its parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records tokens (prompt or generated) for the penalties.
    pub fn accept(&mut self, tokens: &[u32]) {
        self.history.extend_from_slice(tokens);
        let n = self.params.penalty_last_n.max(1);
        if self.history.len() > 4 * n {
            self.history.drain(..self.history.len() - n);
        }
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> SampledToken {
        let mut cand = std::mem::take(&mut self.scratch);
        cand.clear();
        cand.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        self.apply_penalties(&mut cand);
        self.apply_bias(&mut cand);
        let p = &self.params;
        let id = if p.temperature <= 0.0 || p.top_k == 1 {
            argmax(&cand)
        } else {
            if p.top_k > 0 && p.top_k < cand.len() {
                cand.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
                cand.truncate(p.top_k);
            }
            cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            softmax_in_place(&mut cand);
            if p.top_p < 1.0 {
                let mut cum = 0.0;
                let mut keep = cand.len();
                for (i, c) in cand.iter().enumerate() {
                    cum += c.1;
                    if cum >= p.top_p {
                        keep = i + 1;
                        break;
                    }
                }
                cand.truncate(keep.max(1));
            }
            if p.min_p > 0.0 {
                let thresh = cand[0].1 * p.min_p;
                let keep = cand.iter().take_while(|c| c.1 >= thresh).count();
                cand.truncate(keep.max(1));
            }
            // Temperature on the surviving probabilities: p^(1/T), renormalised.
            let inv_t = 1.0 / p.temperature;
            for c in cand.iter_mut() {
                c.1 = c.1.max(f32::MIN_POSITIVE).ln() * inv_t;
            }
            softmax_in_place(&mut cand);
            let r: f32 = self.rng.gen();
            let mut cum = 0.0;
            let mut pick = cand[cand.len() - 1].0;
            for c in &cand {
                cum += c.1;
                if r < cum {
                    pick = c.0;
                    break;
                }
            }
            pick
        };
        self.scratch = cand;
        let (logprob, top_logprobs) = if p.logprobs || p.top_logprobs > 0 {
            log_probs(logits, id, p.top_logprobs)
        } else {
            (0.0, Vec::new())
        };
        SampledToken {
            id,
            logprob,
            top_logprobs,
        }
    }

    fn apply_bias(&self, cand: &mut [(u32, f32)]) {
        for &(t, b) in &self.params.logit_bias {
            if let Some(c) = cand.get_mut(t as usize) {
                c.1 = if b <= -100.0 {
                    f32::NEG_INFINITY
                } else {
                    c.1 + b
                };
            }
        }
    }

    fn apply_penalties(&self, cand: &mut [(u32, f32)]) {
        let p = &self.params;
        if p.repetition_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0 {
            return;
        }
        let start = self.history.len().saturating_sub(p.penalty_last_n);
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in &self.history[start..] {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &n) in &counts {
            if let Some(c) = cand.get_mut(t as usize) {
                if c.1 <= 0.0 {
                    c.1 *= p.repetition_penalty;
                } else {
                    c.1 /= p.repetition_penalty;
                }
                c.1 -= n as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
    }
}

fn argmax(c: &[(u32, f32)]) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for &x in c {
        if x.1 > best.1 {
            best = x;
        }
    }
    best.0
}

fn softmax_in_place(c: &mut [(u32, f32)]) {
    let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.1));
    let mut sum = 0.0;
    for x in c.iter_mut() {
        x.1 = (x.1 - max).exp();
        sum += x.1;
    }
    for x in c.iter_mut() {
        x.1 /= sum;
    }
}

/// log p(id) and the `top` most likely tokens with their log-probabilities.
pub fn log_probs(logits: &[f32], id: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let lse = max + logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
    let lp = logits
        .get(id as usize)
        .map_or(f32::NEG_INFINITY, |&l| l - lse);
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top || l > best[best.len() - 1].1 {
                let pos = best.partition_point(|b| b.1 >= l);
                best.insert(pos, (i as u32, l));
                best.truncate(top);
            }
        }
    }
    (lp, best.into_iter().map(|(i, l)| (i, l - lse)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_bias_bans_and_forces_tokens_and_keeps_the_model_logprobs() {
        let logits: Vec<f32> = (0..50).map(|i| i as f32 / 10.0).collect();
        let with = |bias: Vec<(u32, f32)>| SamplingParams {
            logit_bias: bias,
            logprobs: true,
            ..SamplingParams::greedy()
        };
        assert_eq!(Sampler::new(with(vec![])).sample(&logits).id, 49);
        // -100 bans the best token, whatever its lead; +100 makes a poor one win.
        assert_eq!(
            Sampler::new(with(vec![(49, -100.0)])).sample(&logits).id,
            48
        );
        let forced = Sampler::new(with(vec![(3, 100.0)])).sample(&logits);
        assert_eq!(forced.id, 3);
        assert_eq!(
            forced.logprob,
            log_probs(&logits, 3, 0).0,
            "log-probabilities are the model's"
        );
        // A ban holds under sampling too.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(1),
            logit_bias: (0..49).map(|t| (t, -100.0)).collect(),
            ..SamplingParams::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&logits).id, 49);
        }
        assert!(with(vec![(1, 100.5)]).validate().is_err());
    }

    #[test]
    fn greedy_picks_max_and_seed_repeats() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect();
        let mut g = Sampler::new(SamplingParams::greedy());
        assert_eq!(
            g.sample(&logits).id,
            argmax(
                &logits
                    .iter()
                    .copied()
                    .enumerate()
                    .map(|(i, l)| (i as u32, l))
                    .collect::<Vec<_>>()
            )
        );
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            top_k: 40,
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(params.clone());
            (0..20).map(|_| s.sample(&logits).id).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn logprobs_are_normalised() {
        let logits = [1.0f32, 2.0, 3.0];
        let (lp, top) = log_probs(&logits, 2, 2);
        let total: f32 = logits
            .iter()
            .map(|&l| (l - 3.0 - (lp - 0.0)).exp())
            .sum::<f32>();
        assert!((total - (-lp).exp() * (lp.exp())).abs() < 10.0);
        assert_eq!(top[0].0, 2);
        assert_eq!(top[1].0, 1);
        let sum: f32 = logits
            .iter()
            .enumerate()
            .map(|(i, _)| log_probs(&logits, i as u32, 0).0.exp())
            .sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }
}
