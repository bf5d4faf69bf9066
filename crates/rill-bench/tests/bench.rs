//! The load generator against a real rill server (per-level numbers, a stored run), and against
//! a broken server (a stream without `[DONE]` is a failure). The regression check on stored
//! synthetic runs is tested with the history, in `crates/rill-history/tests/history.rs`.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use rill_bench::{report, runner, workload, History, RunMeta, Target, Workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn target(url: String) -> Target {
    Target {
        base_url: url,
        api_key: None,
        model: "smollm2".into(),
        endpoint: "chat".into(),
    }
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rill-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.join("bench.sqlite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measures_a_real_rill_server_and_stores_the_run() {
    let engine = rill_engine::Engine::load(
        &rill_store::ensure_default_model(rill_store::Progress::Quiet).unwrap(),
        &rill_engine::EngineConfig {
            threads: 2,
            kv_tokens: 8192,
            kv_bytes: 0,
            kernels: None,
            chat_template: None,
            kv_type: Default::default(),
        },
    )
    .unwrap();
    let cfg = rill_server::ServeConfig {
        port: 0,
        ..rill_server::ServeConfig::default()
    };
    let server = rill_server::start(cfg, engine, "smollm2".into(), std::future::pending())
        .await
        .unwrap();
    let t = target(format!("http://{}", server.addr));
    let client = reqwest::Client::new();
    assert_eq!(t.discover_model(&client).await.as_deref(), Some("smollm2"));
    let w = Workload {
        prompts: workload::builtin("mixed").unwrap(),
        max_tokens: 16,
        ignore_eos: true,
        arrival: workload::Arrival::Closed,
        requests: 6,
        duration: None,
    };
    let mut levels = Vec::new();
    for c in [1, 3] {
        levels.push(runner::run_level(&client, &t, &w, c, 0, true).await);
    }
    for l in &levels {
        let s = report::summarize(l);
        assert_eq!((s.requests, s.errors), (6, 0), "{s:?}");
        assert_eq!(
            s.output_tokens,
            6 * 16,
            "ignore_eos: every request makes max_tokens"
        );
        assert!(s.ttft_ms.p50 > 0.0 && s.itl_ms.p50 > 0.0 && s.output_tokens_per_s > 0.0);
        // One gap per content chunk: up to one per token, fewer where speculation (on by
        // default) accepted several tokens in one step and sent them as one chunk.
        assert!(l.samples.iter().all(|x| (1..16).contains(&x.itl_ms.len())));
        // rill reports its drafting in the final chunk's `timings`.
        assert!(
            l.samples.iter().all(|x| x.drafts.is_some()),
            "{:?}",
            l.samples
        );
    }
    let table = report::table(&levels.iter().map(report::summarize).collect::<Vec<_>>());
    assert!(table.contains("TTFT p95"));

    let db = temp_db("real");
    let mut h = History::open(&db).unwrap();
    let meta = RunMeta {
        started_at: rill_bench::now_rfc3339(),
        git_commit: rill_bench::git_commit(),
        machine: rill_bench::machine(),
        model: "smollm2".into(),
        url: t.base_url.clone(),
        settings: serde_json::json!({"max_tokens": 16}),
        label: "test".into(),
    };
    let id = h.store(&meta, &levels).unwrap();
    let runs = h.runs().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, id);
    assert_eq!(
        runs[0]
            .levels
            .iter()
            .map(|l| l.concurrency)
            .collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(h.samples(id).unwrap().len(), 12);
    assert!(h.samples(id + 1).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_done_or_with_an_error_event_is_a_failure() {
    // A server that starts a stream and hangs up early, or sends an error event.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for n in 0.. {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let _ = sock.read(&mut buf).await;
            let chunk = r#"data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
            let tail = if n % 2 == 0 {
                String::new()
            } else {
                "data: {\"error\":{\"code\":\"slow_consumer\",\"message\":\"x\"}}\n\ndata: [DONE]\n\n".into()
            };
            let body = format!("{chunk}\n\n{tail}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    let client = reqwest::Client::new();
    let t = target(format!("http://{addr}"));
    let p = workload::Prompt::Text("hi".into());
    let cut = rill_bench::client::run_one(&client, &t, &p, 8, false).await;
    assert_eq!(cut.error.as_deref(), Some("stream ended without [DONE]"));
    assert!(cut.ttft_ms.is_some());
    let failed = rill_bench::client::run_one(&client, &t, &p, 8, false).await;
    assert_eq!(failed.error.as_deref(), Some("stream error: slow_consumer"));
    let refused =
        rill_bench::client::run_one(&client, &target("http://127.0.0.1:1".into()), &p, 8, false)
            .await;
    assert!(refused.error.unwrap().starts_with("connect"));
}
