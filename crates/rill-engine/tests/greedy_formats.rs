//! rill against llama.cpp on the default model requantized into every weight format
//! (`tools/requantize.sh`, llama.cpp's `llama-quantize --allow-requantize`): greedy decoding
//! must give llama.cpp's tokens (`tests/data/formats/*.json`, made by `tools/format-fixtures.py`
//! with the peer's `llama-server`) by the rules of `support::reference::compare`.
//!
//! The requantized files are made by llama.cpp's tool, which `.ci/run` builds; where they are
//! absent the test says so and passes, unless `RILL_REQUIRE_FORMATS=1` (as in CI).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use rill_engine::{Engine, EngineConfig};
use support::reference;

#[test]
fn greedy_tokens_match_llama_cpp_in_every_format() {
    let (data, files) = reference::fixture_files("formats");
    assert!(
        files.len() >= 13,
        "expected a fixture per format in {}",
        data.display()
    );
    let models = support::model_path().parent().unwrap().join("requant");
    let require = std::env::var_os("RILL_REQUIRE_FORMATS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for file in files {
        let (model, cases) = reference::load_cases(&file);
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
                chat_template: None,
                kv_type: Default::default(),
            },
        )
        .unwrap();
        failures.extend(reference::compare(&mut engine, &model, &cases, 0.0));
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
        chat_template: None,
        kv_type: Default::default(),
    };
    let mut e = Engine::load(&path, &cfg).unwrap();
    let prompt: Vec<u32> = e.tokenizer.encode("The river carried the boat past fields and towns, and the people on the banks waved as it went by.", false).unwrap();
    support::invariance::assert_batch_invariant(&mut e, &prompt, "Q4_K_M");
}
