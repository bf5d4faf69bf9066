//! Every architecture against llama.cpp without downloads: the tiny random-weight GGUFs of
//! `tests/data/arch/` (made by `tools/arch-oracle.py`, which also quantizes them with the peer's
//! `llama-quantize` and records the peer's `llama-server` output beside each) must tokenize to
//! the same prompt ids, give top-5 log-probabilities within 1e-3 of llama.cpp's at the first 4
//! positions (5e-3 for the F16 files, see `F16_TOL`), and the same greedy tokens by the rules of
//! `support::reference::compare`. Measured: the Q8_0 and Q4_0 files agree to every printed digit.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::path::PathBuf;

use rill_engine::{Engine, EngineConfig};
use support::reference;

/// The F16 files' tolerance. rill's F16 kernels are ggml's AVX2 dot product (activations
/// rounded to f16, an 8-lane tree); the fixtures were made on an AVX-512 machine, where llama.cpp
/// sums in 16 lanes and runs prompts through tinyBLAS with f32 activations. Measured: 0.0046.
const F16_TOL: f32 = 5e-3;

#[test]
fn tiny_models_of_every_architecture_match_llama_cpp() {
    let (data, files) = reference::fixture_files("arch");
    let mut failures = Vec::new();
    for file in files {
        let (model, cases) = reference::load_cases(&file);
        let mut engine = Engine::load(
            &data.join(&model),
            &EngineConfig {
                threads: 2,
                kv_tokens: 256,
                kv_bytes: 0,
                kernels: std::env::var("RILL_KERNELS").ok(),
                chat_template: None,
                kv_type: Default::default(),
            },
        )
        .unwrap_or_else(|e| panic!("{model}: {e}"));
        for c in &cases {
            let ids = engine.tokenizer.encode(&c.prompt, true).unwrap();
            if ids != c.prompt_tokens {
                failures.push(format!(
                    "{model} {}: prompt tokens {ids:?}, llama.cpp {:?}",
                    c.name, c.prompt_tokens
                ));
            }
        }
        let tol = if model.contains(".F16.") {
            F16_TOL
        } else {
            1e-3
        };
        failures.extend(reference::compare(&mut engine, &model, &cases, tol));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An architecture rill does not run is refused at load, naming it and what is supported.
#[test]
fn an_unknown_architecture_is_refused_by_name() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/arch");
    let mut bytes = std::fs::read(data.join("llama.Q4_0.gguf")).unwrap();
    // The value of `general.architecture` (a length-prefixed string right after its key).
    let key = b"general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let value = at + 4 + 8; // value type (u32), string length (u64)
    assert_eq!(&bytes[value..value + 5], b"llama");
    bytes[value..value + 5].copy_from_slice(b"mamba");
    let path = std::env::temp_dir().join(format!("rill-mamba-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let err = Engine::load(&path, &EngineConfig::default())
        .err()
        .expect("an unknown architecture must not load")
        .to_string();
    let _ = std::fs::remove_file(&path);
    assert!(
        err.contains("`mamba`") && err.contains("llama, gemma3, qwen2, qwen3, phi3"),
        "{err}"
    );
}
