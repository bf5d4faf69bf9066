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

use rill_engine::{Engine, EngineConfig, KvType, SeqId, StepItem};
use support::reference;

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

fn bits(row: &[f32]) -> Vec<u32> {
    row.iter().map(|v| v.to_bits()).collect()
}

/// Prefills `tokens` of `seq` in chunks of `chunk` and returns the last token's logits.
fn prefill(e: &mut Engine, seq: SeqId, tokens: &[u32], chunk: usize) -> Vec<u32> {
    let mut last = Vec::new();
    let n = tokens.chunks(chunk).count();
    for (i, c) in tokens.chunks(chunk).enumerate() {
        let l = e
            .step(&[StepItem {
                seq,
                tokens: c,
                want_logits: i + 1 == n,
            }])
            .unwrap();
        if i + 1 == n {
            last = bits(l.row(0));
        }
    }
    last
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
        e.add_sequence(SeqId(1)).unwrap();
        let whole = prefill(&mut e, SeqId(1), &prompt, prompt.len());
        e.add_sequence(SeqId(2)).unwrap();
        let chunked = prefill(&mut e, SeqId(2), &prompt, 7);
        assert_eq!(whole, chunked, "kv {kv_type}: one step vs chunks of 7");

        // The prefix cache now holds sequence 2's blocks: a third sequence attaches them.
        e.add_sequence(SeqId(3)).unwrap();
        let reused = e.attach_prefix(SeqId(3), &prompt).unwrap();
        assert!(reused >= 32, "kv {kv_type}: {reused} tokens reused");
        let attached = prefill(&mut e, SeqId(3), &prompt[reused..], 64);
        assert_eq!(whole, attached, "kv {kv_type}: computed vs attached prefix");

        // One decode token alone, then the same token for sequence 2 beside 7 others.
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
            prefill(&mut e, s, &prompt[..5 + 3 * i], 64);
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
        assert_eq!(
            alone, batched,
            "kv {kv_type}: decode alone vs beside 7 sequences"
        );
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
