//! rill against llama.cpp on the same GGUF: the tokenizer gives the same prompt ids and greedy
//! decoding gives the same tokens as llama.cpp's for the whole fixture (up to 64 tokens, SPEC
//! §2; the engine issue asks for at least 32). A divergence is accepted only at a near-tie
//! (reference log-prob gap < 0.1), and is reported. rill reproduces llama.cpp's CPU arithmetic
//! bit for bit on the reference machine (AVX-512), so today every fixture matches in full.
#![allow(clippy::unwrap_used)] // test and debug code: a panic is the failure report

mod support;

use rill_engine::{generate, GenerateOptions, SamplingParams};

const MIN_MATCH: usize = 64;
const NEAR_TIE: f64 = 0.1;

#[test]
fn prompt_tokens_match_llama_cpp() {
    let engine = support::engine(1);
    for f in support::fixtures() {
        let ids = engine.tokenizer.encode(&f.prompt, true).expect("encode");
        assert_eq!(ids, f.prompt_tokens, "fixture {}", f.name);
    }
}

#[test]
fn greedy_tokens_match_llama_cpp() {
    let mut engine = support::engine(2);
    let mut failures = Vec::new();
    for f in support::fixtures() {
        let want = f.greedy_tokens.len().min(64);
        let g = generate(
            &mut engine,
            &f.prompt_tokens,
            &GenerateOptions {
                max_tokens: want,
                sampling: SamplingParams {
                    ignore_eos: true,
                    ..SamplingParams::greedy()
                },
                ..Default::default()
            },
            |_| {},
        )
        .expect("generate");
        let got: Vec<u32> = g.tokens.iter().map(|t| t.id).collect();
        let matched = got
            .iter()
            .zip(&f.greedy_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{}: {matched}/{} tokens match",
            f.name,
            f.greedy_tokens.len()
        );
        if matched < want.min(MIN_MATCH) {
            let gap = f.gaps[matched];
            if gap < NEAR_TIE {
                eprintln!("  diverged at a near-tie (gap {gap:.4} < {NEAR_TIE})");
            } else {
                failures.push(format!(
                    "fixture {}: diverged at token {matched} (rill {} vs llama.cpp {}) where the \
                     reference top1-top2 log-prob gap is {gap:.4} (not a near-tie)",
                    f.name, got[matched], f.greedy_tokens[matched]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
