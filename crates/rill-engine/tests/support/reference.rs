//! llama.cpp reference fixtures (`tools/format-fixtures.py`, `tools/model-fixtures.py`: the
//! peer's `llama-server`, greedy) and the rules rill's greedy output is held to. A case passes
//! when rill gives the reference's tokens for at least 32 positions, or diverges only
//! - at a near-tie of the reference (its top-2 log-prob gap < 0.1), or
//! - where both engines end the text (llama.cpp's `ignore_eos` bans the end token, so its
//!   fixture goes on: rill's generates through it instead), or
//! - at a tie of both engines: each engine's choice is the other's runner-up and both gaps are
//!   < 0.5 (llama.cpp runs a prompt through other kernels than decode for some formats, so the
//!   two engines may split a close call either way).

use std::path::PathBuf;

use rill_engine::{generate, Engine, GenerateOptions, SamplingParams};

pub const MIN_MATCH: usize = 32;
pub const NEAR_TIE: f32 = 0.1;
pub const TIE: f32 = 0.5;

pub struct Case {
    pub name: String,
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    pub greedy: Vec<u32>,
    /// Per position: (id, logprob) of the reference's two most likely tokens.
    pub top2: Vec<[(u32, f32); 2]>,
    /// At the first positions, when the fixture has them: the five most likely tokens.
    pub top5_first: Vec<Vec<(u32, f32)>>,
}

/// `tests/data/<dir>` and its fixture files (`*.json`), sorted; none is a failure.
pub fn fixture_files(dir: &str) -> (PathBuf, Vec<PathBuf>) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", data.display());
    (data, files)
}

/// The model named by a fixture file and its cases.
pub fn load_cases(path: &std::path::Path) -> (String, Vec<Case>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    let pairs = |p: &serde_json::Value| -> Vec<(u32, f32)> {
        p.as_array()
            .unwrap()
            .iter()
            .map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32))
            .collect()
    };
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            prompt: c["prompt"].as_str().unwrap_or_default().to_string(),
            prompt_tokens: ids(&c["prompt_tokens"]),
            greedy: ids(&c["greedy_tokens"]),
            top2: c["top2"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let v = pairs(p);
                    [v[0], v[1]]
                })
                .collect(),
            top5_first: c["top5_first"]
                .as_array()
                .map(|a| a.iter().map(pairs).collect())
                .unwrap_or_default(),
        })
        .collect();
    (v["model"].as_str().unwrap().to_string(), cases)
}

/// Runs every case greedily and returns one message per case that breaks the rules above.
/// Where a case has top-5 log-probs (at its first positions), rill's most likely token must be
/// the reference's (unless that is a near-tie), at least 3 of the 5 tokens must be in both
/// lists, and each such token's log-probability within `top5_tol` of the reference's.
pub fn compare(engine: &mut Engine, model: &str, cases: &[Case], top5_tol: f32) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let g = generate(
            engine,
            &c.prompt_tokens,
            &GenerateOptions {
                max_tokens: c.greedy.len(),
                sampling: SamplingParams {
                    ignore_eos: true,
                    logprobs: true,
                    top_logprobs: 5,
                    ..SamplingParams::greedy()
                },
                ..Default::default()
            },
            |_| {},
        )
        .unwrap();
        let mut worst = 0f32;
        for (pos, want) in c.top5_first.iter().enumerate() {
            let got = &g.tokens[pos].top_logprobs;
            // The same most likely token (unless the reference calls it a near-tie) and, for
            // every token in both top-5 lists, log-probabilities within `top5_tol`.
            let near_tie = want.len() > 1 && want[0].1 - want[1].1 < NEAR_TIE;
            let same_top = got.first().map(|t| t.0) == want.first().map(|t| t.0) || near_tie;
            let diffs: Vec<f32> = want
                .iter()
                .filter_map(|w| got.iter().find(|o| o.0 == w.0).map(|o| (o.1 - w.1).abs()))
                .collect();
            let max = diffs.iter().copied().fold(0f32, f32::max);
            worst = worst.max(max);
            if !same_top || max > top5_tol || diffs.len() < want.len().min(3) {
                failures.push(format!(
                    "{model} {}: top-5 at position {pos}: llama.cpp {want:?}, rill {got:?}",
                    c.name
                ));
            }
        }
        if !c.top5_first.is_empty() {
            eprintln!(
                "{model} {}: top-5 log-probs at the first {} positions within {worst:.4} of llama.cpp's",
                c.name,
                c.top5_first.len()
            );
        }
        let matched = g
            .tokens
            .iter()
            .zip(&c.greedy)
            .take_while(|(a, b)| a.id == **b)
            .count();
        let want = MIN_MATCH.min(c.greedy.len());
        if matched >= want {
            eprintln!(
                "{model} {}: {matched}/{} tokens match",
                c.name,
                c.greedy.len()
            );
            continue;
        }
        let [(ref1, lp1), (ref2, lp2)] = c.top2[matched];
        let ref_gap = lp1 - lp2;
        let ours = &g.tokens[matched];
        let our_gap = match ours.top_logprobs.as_slice() {
            [(_, a), (_, b), ..] => a - b,
            _ => f32::INFINITY,
        };
        let our_runner_up = ours.top_logprobs.get(1).map(|t| t.0);
        // llama.cpp's `ignore_eos` bans the end token (its log-probs still show it on top);
        // rill's generates through it. Both engines ending the text here is agreement.
        let both_end = ours.id == ref1 && c.greedy[matched] != ref1;
        let tie = ref_gap < TIE && our_gap < TIE && our_runner_up == Some(ref1) && ours.id == ref2;
        let verdict = format!(
            "{model} {}: diverged at token {matched}: llama.cpp {ref1} ({lp1:.3}) over {ref2} \
             ({lp2:.3}), gap {ref_gap:.3}; rill {} over {:?}, gap {our_gap:.3}",
            c.name, ours.id, our_runner_up
        );
        if both_end {
            eprintln!(
                "{model} {}: {matched} tokens match, then both end the text",
                c.name
            );
        } else if ref_gap < NEAR_TIE || tie {
            eprintln!(
                "{verdict}: accepted ({})",
                if tie { "tie" } else { "near-tie" }
            );
        } else {
            failures.push(verdict);
        }
    }
    failures
}
