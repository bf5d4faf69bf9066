//! The 8- and 4-bit KV caches on the real default model:
//! - greedy decoding with `kv_type` q8_0 / q4_0 gives llama.cpp's tokens with the same cache
//!   (`-fa on -ctk T -ctv T`; fixtures in `tests/data/kv`, made by `tools/kv-fixtures.py`) by
//!   the rules of `support::reference::compare`;
//! - in every KV type a sequence's logits are the same bits whether its prompt is prefilled in
//!   one step or in chunks, whether it decodes alone or in a batch, and whether its prompt's
//!   first blocks are computed or attached from the prefix cache;
//! - the block budget is counted in the chosen type, and a model whose heads do not fit the
//!   blocks is refused with an error naming `kv_type`.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use rill_engine::{Engine, EngineConfig, KvType, SeqId};
use support::{invariance, reference};

fn engine(kv_type: KvType, kv_tokens: usize) -> Engine {
    Engine::load(
        &support::model_path(),
        &EngineConfig {
            threads: 2,
            kv_tokens,
            kv_bytes: 0,
            kernels: std::env::var("RILL_KERNELS").ok(),
            chat_template: None,
            kv_type,
        },
    )
    .unwrap()
}

#[test]
fn greedy_tokens_match_llama_cpp_with_quantized_kv() {
    let (data, files) = reference::fixture_files("kv");
    assert_eq!(
        files.len(),
        2,
        "a fixture per quantized type in {}",
        data.display()
    );
    let mut failures = Vec::new();
    for file in files {
        let kv_type: KvType = file.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let (model, cases) = reference::load_cases(&file);
        assert!(cases.len() >= 5, "{}", file.display());
        let mut e = engine(kv_type, 2048);
        assert_eq!(e.kv_stats().kv_type, kv_type);
        let label = format!("{model} kv {kv_type}");
        failures.extend(reference::compare(&mut e, &label, &cases, 0.0));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_kv_type_is_batch_and_prefix_invariant() {
    for kv_type in KvType::ALL {
        let mut e = engine(kv_type, 4096);
        let text = "The river carried the boat past fields and towns, and the people on the banks \
                    waved as it went by. Evening came, and the lanterns on the water were lit one \
                    by one.";
        let prompt = e.tokenizer.encode(&text.repeat(2), true).unwrap();
        assert!(
            prompt.len() > 48,
            "three full blocks to share: {}",
            prompt.len()
        );
        let label = format!("kv {kv_type}");
        let whole = invariance::assert_batch_invariant(&mut e, &prompt, &label);
        // The prefix cache holds sequence 1's blocks: a new sequence attaches them.
        e.add_sequence(SeqId(3)).unwrap();
        let reused = e.attach_prefix(SeqId(3), &prompt).unwrap();
        assert!(reused >= 32, "{label}: {reused} tokens reused");
        let attached = invariance::prefill(&mut e, SeqId(3), &prompt[reused..], 64);
        assert_eq!(whole, attached, "{label}: computed vs attached prefix");
    }
}

#[test]
fn the_block_budget_counts_in_the_chosen_type() {
    let budget = 64 << 20;
    let tokens = |kv_type| {
        let e = Engine::load(
            &support::model_path(),
            &EngineConfig {
                threads: 1,
                kv_tokens: 0,
                kv_bytes: budget,
                kernels: None,
                chat_template: None,
                kv_type,
            },
        )
        .unwrap();
        let s = e.kv_stats();
        assert_eq!(s.kv_type, kv_type);
        assert!(s.total_blocks * s.bytes_per_block <= budget + s.bytes_per_block);
        s.total_blocks * s.block_tokens
    };
    let (f16, q8, q4) = (
        tokens(KvType::F16),
        tokens(KvType::Q8_0),
        tokens(KvType::Q4_0),
    );
    // SmolLM2-135M: 30 layers, K and V of 192 elements: 23040, 12240 and 6480 bytes a token.
    assert_eq!(f16, budget / 23040 / 16 * 16);
    assert!(
        (q8 as f64 / f16 as f64 - 64.0 / 34.0).abs() < 0.01,
        "{q8} vs {f16}"
    );
    assert!(
        (q4 as f64 / f16 as f64 - 64.0 / 18.0).abs() < 0.01,
        "{q4} vs {f16}"
    );
}

#[test]
fn heads_that_do_not_fit_the_blocks_are_refused() {
    // The oracle's tiny llama has 16-dimensional heads.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/arch/llama.F16.gguf");
    let cfg = |kv_type| EngineConfig {
        threads: 1,
        kv_tokens: 256,
        kv_bytes: 0,
        kernels: None,
        chat_template: None,
        kv_type,
    };
    assert!(Engine::load(&path, &cfg(KvType::F16)).is_ok());
    for t in [KvType::Q8_0, KvType::Q4_0] {
        let e = Engine::load(&path, &cfg(t)).err().unwrap().to_string();
        assert!(
            e.contains("kv_type") && e.contains(t.name()) && e.contains("16"),
            "{e}"
        );
    }
}
