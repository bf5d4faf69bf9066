//! Shared test setup: the real default model (pulled into the cache if absent) and the greedy
//! fixtures (llama.cpp's output, kept in tests/data/greedy).
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test and debug code: a panic is the failure report

pub mod invariance;
pub mod reference;

use std::path::PathBuf;
use std::sync::OnceLock;

use rill_engine::{Engine, EngineConfig};

pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        rill_store::ensure_default_model(rill_store::Progress::Quiet)
            .expect("pulling the default model (network to PyPI needed once)")
    })
    .clone()
}

pub fn engine(threads: usize) -> Engine {
    Engine::load(
        &model_path(),
        &EngineConfig {
            threads,
            kv_tokens: 8192,
            kv_bytes: 0,
            kernels: std::env::var("RILL_KERNELS").ok(),
            chat_template: None,
            kv_type: Default::default(),
        },
    )
    .expect("loading the default model")
}

pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("RILL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/greedy"))
}

pub struct Fixture {
    pub name: String,
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    pub greedy_tokens: Vec<u32>,
    pub gaps: Vec<f64>,
}

pub fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir (tests/data/greedy)")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for p in entries {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("read fixture"))
                .expect("fixture json");
        let ids = |k: &str| -> Vec<u32> {
            v[k].as_array()
                .expect(k)
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect()
        };
        out.push(Fixture {
            name: p.file_stem().unwrap().to_string_lossy().into_owned(),
            prompt: v["prompt"].as_str().expect("prompt").to_string(),
            prompt_tokens: ids("prompt_tokens"),
            greedy_tokens: ids("greedy_tokens"),
            gaps: v["top1_top2_prob_gap"]
                .as_array()
                .expect("gaps")
                .iter()
                .map(|x| x.as_f64().unwrap_or(0.0))
                .collect(),
        });
    }
    assert!(
        !out.is_empty(),
        "no greedy fixtures in {}",
        fixtures_dir().display()
    );
    out
}
