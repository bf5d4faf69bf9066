//! Every architecture against llama.cpp without downloads: the tiny random-weight GGUFs of
//! `tests/data/arch/` (made by `tools/arch-oracle.py`, which also quantizes them with the peer's
//! `llama-quantize` and records the peer's `llama-server` output beside each) must tokenize to
//! the same prompt ids, give top-5 log-probabilities within 1e-3 of llama.cpp's at the first 4
//! positions (5e-3 for the F16 files, see `F16_TOL`), and the same greedy tokens by the rules of
//! `support::reference::compare`. Measured: the Q8_0 and Q4_0 files agree to every printed digit.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::path::PathBuf;

use rill_engine::{Engine, EngineConfig, SeqId, StepItem};
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

/// `path` with `llama.attention.sliding_window = window` added to its metadata (and a 1-byte
/// key that keeps the header a multiple of the 32-byte alignment, so tensor offsets stay valid).
fn with_sliding_window(path: &std::path::Path, window: u32) -> PathBuf {
    let bytes = std::fs::read(path).unwrap();
    let kv = |key: &str, ty: u32, value: &[u8]| {
        let mut e = (key.len() as u64).to_le_bytes().to_vec();
        e.extend(key.as_bytes());
        e.extend(ty.to_le_bytes());
        e.extend(value);
        e
    };
    let mut add = kv("llama.attention.sliding_window", 4, &window.to_le_bytes()); // u32
    add.extend(kv("rill.", 0, &[0])); // u8
    assert_eq!(add.len(), 64);
    let n_kv = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let mut out = bytes[..16].to_vec();
    out.extend((n_kv + 2).to_le_bytes());
    out.extend(&add);
    out.extend(&bytes[24..]);
    let p = std::env::temp_dir().join(format!("rill-llama-swa-{}.gguf", std::process::id()));
    std::fs::write(&p, out).unwrap();
    p
}

/// A llama file with `llama.attention.sliding_window` (Mistral-7B-v0.1 style) attends to that
/// window in every layer: the same logits as the plain file while the prompt fits the window,
/// different ones past it, and the same bits whether the prompt is prefilled in one step or
/// token by token while the windowed pages are released. (llama.cpp's llama graph ignores the
/// key, so there is no llama.cpp reference past the window; the window arithmetic itself is
/// Gemma 3's, checked against llama.cpp above.)
#[test]
fn a_llama_sliding_window_is_honoured() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/arch");
    let plain = data.join("llama.F16.gguf");
    let windowed = with_sliding_window(&plain, 8);
    let cfg = EngineConfig {
        threads: 1,
        kv_tokens: 256,
        ..EngineConfig::default()
    };
    let mut a = Engine::load(&plain, &cfg).unwrap();
    let mut b = Engine::load(&windowed, &cfg).unwrap();
    let _ = std::fs::remove_file(&windowed);
    let vocab = a.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..48u32).map(|i| (i * 37 + 5) % vocab).collect();
    let bits = |row: &[f32]| row.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let step = |e: &mut Engine, seq: SeqId, tokens: &[u32]| {
        bits(
            e.step(&[StepItem {
                seq,
                tokens,
                logits: 1,
            }])
            .unwrap()
            .row(0),
        )
    };
    a.add_sequence(SeqId(1)).unwrap();
    b.add_sequence(SeqId(1)).unwrap();
    let mut differ = 0;
    let mut last = Vec::new();
    for (i, t) in prompt.iter().enumerate() {
        let (la, lb) = (step(&mut a, SeqId(1), &[*t]), step(&mut b, SeqId(1), &[*t]));
        if i < 8 {
            assert_eq!(la, lb, "position {i} is inside the window");
        } else if la != lb {
            differ += 1;
        }
        last = lb;
    }
    assert!(differ > 30, "{differ} positions past the window differ");
    assert!(b.kv_stats().window_pages_released > 0);
    b.add_sequence(SeqId(2)).unwrap();
    assert_eq!(
        step(&mut b, SeqId(2), &prompt),
        last,
        "one step vs token by token"
    );
}
