//! rill against llama.cpp on the default model requantized into every weight format
//! (`tools/requantize.sh`, llama.cpp's `llama-quantize --allow-requantize`): greedy decoding
//! must give llama.cpp's tokens (`tests/data/formats/*.json`, made by `tools/format-fixtures.py`
//! with the peer's `llama-server`) for at least 32 tokens per case, or diverge only
//! - at a near-tie of the reference (its top-2 log-prob gap < 0.1), or
//! - where both engines end the text (llama.cpp's `ignore_eos` bans the end token, so its
//!   fixture goes on: rill's generates through it instead), or
//! - where both engines end the text (llama.cpp's `ignore_eos` bans the end token, so its
//!   fixture goes on: rill's generates through it instead), or
//! - at a tie of both engines: each engine's choice is the other's runner-up and both gaps are
//!   < 0.5 (llama.cpp runs a prompt through other kernels than decode for some formats, so the
//!   two engines may split a close call either way).
//!
//! The requantized files are made by llama.cpp's tool, which `.ci/run` builds; where they are
//! absent the test says so and passes, unless `RILL_REQUIRE_FORMATS=1` (as in CI).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::path::PathBuf;

use rill_engine::{
    generate, Engine, EngineConfig, GenerateOptions, SamplingParams, SeqId, StepItem,
};

const MIN_MATCH: usize = 32;
const NEAR_TIE: f32 = 0.1;
const TIE: f32 = 0.5;

struct Case {
    name: String,
    prompt_tokens: Vec<u32>,
    greedy: Vec<u32>,
    /// Per position: (id, logprob) of the reference's two most likely tokens.
    top2: Vec<[(u32, f32); 2]>,
}

fn load_cases(path: &std::path::Path) -> (String, Vec<Case>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            prompt_tokens: ids(&c["prompt_tokens"]),
            greedy: ids(&c["greedy_tokens"]),
            top2: c["top2"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let e = |i: usize| {
                        (
                            p[i][0].as_u64().unwrap() as u32,
                            p[i][1].as_f64().unwrap() as f32,
                        )
                    };
                    [e(0), e(1)]
                })
                .collect(),
        })
        .collect();
    (v["model"].as_str().unwrap().to_string(), cases)
}

#[test]
fn greedy_tokens_match_llama_cpp_in_every_format() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/formats");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 13,
        "expected a fixture per format in {}",
        data.display()
    );
    let models = support::model_path().parent().unwrap().join("requant");
    let require = std::env::var_os("RILL_REQUIRE_FORMATS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for file in files {
        let (model, cases) = load_cases(&file);
        let path = models.join(&model);
        if !path.exists() {
            assert!(
                !require,
                "{} is missing: run tools/requantize.sh",
                path.display()
            );
            eprintln!(
                "SKIPPED {model}: not in {} (tools/requantize.sh makes it)",
                models.display()
            );
            continue;
        }
        let mut engine = Engine::load(
            &path,
            &EngineConfig {
                threads: 2,
                kv_tokens: 1024,
                kv_bytes: 0,
                kernels: None,
            },
        )
        .unwrap();
        for c in &cases {
            let g = generate(
                &mut engine,
                &c.prompt_tokens,
                &GenerateOptions {
                    max_tokens: c.greedy.len(),
                    sampling: SamplingParams {
                        ignore_eos: true,
                        logprobs: true,
                        top_logprobs: 2,
                        ..SamplingParams::greedy()
                    },
                    ..Default::default()
                },
                |_| {},
            )
            .unwrap();
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
            let tie =
                ref_gap < TIE && our_gap < TIE && our_runner_up == Some(ref1) && ours.id == ref2;
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
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A mixed-format file (Q4_K_M: Q4_K, Q6_K and Q5_0 tensors side by side) gives the same logits,
/// bit for bit, whether a prompt is prefilled in one step or in chunks of 7, and whether a
/// sequence decodes alone or beside 7 others.
#[test]
fn mixed_format_file_is_batch_invariant() {
    let path = support::model_path()
        .parent()
        .unwrap()
        .join("requant/SmolLM2-135M-Instruct.Q4_K_M.gguf");
    if !path.exists() {
        let require = std::env::var_os("RILL_REQUIRE_FORMATS").is_some_and(|v| v == "1");
        assert!(
            !require,
            "{} is missing: run tools/requantize.sh",
            path.display()
        );
        eprintln!("SKIPPED: {} not made (tools/requantize.sh)", path.display());
        return;
    }
    let cfg = EngineConfig {
        threads: 2,
        kv_tokens: 2048,
        kv_bytes: 0,
        kernels: None,
    };
    let mut e = Engine::load(&path, &cfg).unwrap();
    let prompt: Vec<u32> = e.tokenizer.encode("The river carried the boat past fields and towns, and the people on the banks waved as it went by.", false).unwrap();
    let bits = |row: &[f32]| row.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    // One step.
    e.add_sequence(SeqId(1)).unwrap();
    let whole = bits(
        e.step(&[StepItem {
            seq: SeqId(1),
            tokens: &prompt,
            want_logits: true,
        }])
        .unwrap()
        .row(0),
    );
    // Chunks of 7.
    e.add_sequence(SeqId(2)).unwrap();
    let mut chunked = Vec::new();
    for (i, c) in prompt.chunks(7).enumerate() {
        let last = (i + 1) * 7 >= prompt.len();
        let l = e
            .step(&[StepItem {
                seq: SeqId(2),
                tokens: c,
                want_logits: last,
            }])
            .unwrap();
        if last {
            chunked = bits(l.row(0));
        }
    }
    assert_eq!(whole, chunked, "prefill in one step vs chunks of 7");
    // Decode alone, then the same token beside 7 other sequences.
    let tok = [504u32];
    let alone = bits(
        e.step(&[StepItem {
            seq: SeqId(1),
            tokens: &tok,
            want_logits: true,
        }])
        .unwrap()
        .row(0),
    );
    let others: Vec<SeqId> = (10..17).map(SeqId).collect();
    for (i, &s) in others.iter().enumerate() {
        e.add_sequence(s).unwrap();
        e.step(&[StepItem {
            seq: s,
            tokens: &prompt[..3 + 2 * i],
            want_logits: false,
        }])
        .unwrap();
    }
    let mut items = vec![StepItem {
        seq: SeqId(2),
        tokens: &tok,
        want_logits: true,
    }];
    items.extend(others.iter().map(|&s| StepItem {
        seq: s,
        tokens: &tok,
        want_logits: true,
    }));
    let batched = bits(e.step(&items).unwrap().row(0));
    assert_eq!(alone, batched, "decode alone vs beside 7 sequences");
}
