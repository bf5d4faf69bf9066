//! The HTTP API with real clients against the real server and model: OpenAI shapes (JSON and
//! SSE), typed errors, auth, cancellation and disconnects, resumable streams, slow readers,
//! the OpenAPI document and graceful shutdown.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::time::Duration;

use rill_server::ServeConfig;
use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncWriteExt;

fn chat_body(content: &str, max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "smollm2",
        "messages": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "some_unknown_field": {"ignored": true},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_have_openai_shapes() {
    let _g = serial().await;
    let s = server(config()).await;
    let c = client();

    // Non-streaming chat.
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&chat_body("Name three colours.", 24, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-rill-stream-id").is_some());
    let full: Value = r.json().await.unwrap();
    assert_eq!(full["object"], "chat.completion");
    assert!(full["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(full["model"], "smollm2");
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    assert_eq!(full["choices"][0]["message"]["role"], "assistant");
    let reason = full["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(reason == "stop" || reason == "length");
    let u = &full["usage"];
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert!(u["completion_tokens"].as_u64().unwrap() <= 24);
    assert!(full["timings"]["ttft_ms"].as_f64().unwrap() > 0.0);

    // The same request streamed: the same text, every event with a sequential id.
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&chat_body("Name three colours.", 24, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    let sid = r.headers()["x-rill-stream-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (events, _) = read_sse(r, usize::MAX).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id.as_deref(), Some(format!("{sid}:{i}").as_str()));
    }
    assert!(events.last().unwrap().is_done());
    assert_eq!(
        stream_text(&events),
        text,
        "stream and non-stream greedy output differ"
    );
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| !e.is_done())
        .map(|e| e.json())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == sid));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], reason);
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], u["completion_tokens"]);
    for k in [
        "ttft_ms",
        "queue_ms",
        "prompt_tokens_per_s",
        "generation_tokens_per_s",
        "itl_p50_ms",
        "itl_p95_ms",
    ] {
        assert!(usage["timings"][k].is_number(), "timings.{k}");
    }

    // Completions with logprobs, stop sequences, seed.
    let r = c
        .post(url(&s, "/v1/completions"))
        .json(&json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "logprobs": 2, "seed": 7}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    let lp = &v["choices"][0]["logprobs"];
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    let joined: String = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(joined.starts_with(v["choices"][0]["text"].as_str().unwrap()));

    let stop_at = text.split_whitespace().nth(1).unwrap().to_string();
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name three colours."}], "max_tokens": 24, "temperature": 0, "stop": [stop_at]}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let stopped = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(
        !stopped.contains(&stop_at) && text.starts_with(stopped),
        "{stopped:?} vs {text:?}"
    );

    // Models, readiness, OpenAPI.
    let m: Value = c
        .get(url(&s, "/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["data"][0]["id"], "smollm2");
    assert_eq!(c.get(url(&s, "/ready")).send().await.unwrap().status(), 200);
    let doc: Value = c
        .get(url(&s, "/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/chat/completions"]["post"].is_object());
    // The request schemas are the types the handlers deserialize, with their constraints.
    let schemas = &doc["components"]["schemas"];
    let chat = &schemas["ChatCompletionRequest"]["properties"];
    assert_eq!(chat["n"]["oneOf"][1]["maximum"], 8, "{chat}");
    let t = &chat["temperature"]["oneOf"][1];
    assert_eq!(
        (t["minimum"].as_f64(), t["maximum"].as_f64()),
        (Some(0.0), Some(2.0))
    );
    assert_eq!(
        schemas["Role"]["enum"],
        json!(["system", "developer", "user", "assistant", "tool"])
    );
    assert!(schemas["CompletionRequest"]["properties"]["prompt"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_4xx_and_the_server_keeps_serving() {
    let _g = serial().await;
    let s = server(ServeConfig {
        max_body_bytes: 64 * 1024,
        ..config()
    })
    .await;
    let c = client();
    let post = |body: Vec<u8>| {
        c.post(url(&s, "/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let check = |v: &Value, param: Option<&str>| {
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{v}");
        }
    };
    let r = post(b"{\"messages\": [".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    check(&r.json().await.unwrap(), None);
    let r = post(b"{\"messages\": \"\xff\xfe\"}".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(
        json!({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"})
            .to_string()
            .into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    check(&r.json().await.unwrap(), Some("temperature"));
    let r = post(
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3})
            .to_string()
            .into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    check(&r.json().await.unwrap(), Some("max_tokens"));
    let r = post(
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 9})
            .to_string()
            .into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    check(&r.json().await.unwrap(), Some("n"));
    let r = post(json!({"messages": "hi"}).to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    check(&r.json().await.unwrap(), Some("messages"));
    let r = post(
        json!({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", 3]})
            .to_string()
            .into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    check(&r.json().await.unwrap(), Some("stop[2]"));
    // Oversized body.
    let big =
        json!({"messages": [{"role": "user", "content": "word ".repeat(20_000)}]}).to_string();
    let r = post(big.into_bytes()).await.unwrap();
    assert_eq!(r.status(), 413);
    check(&r.json().await.unwrap(), None);
    // A prompt over the context length (under the body limit).
    let long = json!({"prompt": (0..9000).map(|i| (i % 1000 + 10) as u32).collect::<Vec<_>>()})
        .to_string();
    let r = c
        .post(url(&s, "/v1/completions"))
        .body(long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // Unknown route.
    assert_eq!(
        c.get(url(&s, "/v1/nope")).send().await.unwrap().status(),
        404
    );
    // Still serving.
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&chat_body("Hi", 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_route_but_health() {
    let _g = serial().await;
    let s = server(ServeConfig {
        api_keys: vec!["sekret".into()],
        ..config()
    })
    .await;
    let c = client();
    assert_eq!(
        c.get(url(&s, "/health")).send().await.unwrap().status(),
        200
    );
    let r = c.get(url(&s, "/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = c
        .get(url(&s, "/v1/models"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(url(&s, "/v1/models"))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_mid_prefill_and_mid_decode_free_their_blocks() {
    let _g = serial().await;
    let s = server(config()).await;
    let c = client();
    // Mid-prefill: a long prompt, dropped as soon as the response starts.
    let long = "The river flows past old stone bridges and quiet towns. ".repeat(150);
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&chat_body(&long, 64, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    wait_idle(&s).await;
    // Mid-decode: after a few tokens.
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&chat_body("Tell me a story.", 400, true))
        .send()
        .await
        .unwrap();
    let (events, _) = read_sse(r, 5).await;
    assert_eq!(events.len(), 5);
    wait_idle(&s).await;
    let st = s.state.sched.stats();
    assert_eq!(
        st.cancelled, 2,
        "both disconnects cancel their request: {st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_a_stream_by_id() {
    let _g = serial().await;
    let s = server(config()).await;
    let c = client();
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&chat_body("Tell me a story.", 400, true))
        .send()
        .await
        .unwrap();
    let sid = r.headers()["x-rill-stream-id"]
        .to_str()
        .unwrap()
        .to_string();
    let reader = tokio::spawn(read_sse(r, usize::MAX));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = c
        .delete(url(&s, &format!("/v1/streams/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 200);
    let (events, _) = reader.await.unwrap();
    assert!(events.last().unwrap().is_done());
    let finish = events.iter().rev().find_map(|e| {
        e.json()["choices"][0]["finish_reason"]
            .as_str()
            .map(String::from)
    });
    assert_eq!(finish.as_deref(), Some("cancelled"));
    assert_eq!(
        c.delete(url(&s, "/v1/streams/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_loses_and_repeats_nothing() {
    let _g = serial().await;
    let s = server(config()).await;
    let c = client();
    let body = chat_body("Describe a lighthouse at night.", 60, true);
    let reference = {
        let mut b = body.clone();
        b["stream"] = json!(false);
        let v: Value = c
            .post(url(&s, "/v1/chat/completions"))
            .json(&b)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .header("X-Rill-Resumable", "true")
        .json(&body)
        .send()
        .await
        .unwrap();
    let sid = r.headers()["x-rill-stream-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (first, _) = read_sse(r, 6).await; // then the connection drops
    let last_id = first.last().unwrap().id.clone().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // generation continues meanwhile
    let r = c
        .get(url(&s, &format!("/v1/streams/{sid}")))
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (rest, _) = read_sse(r, usize::MAX).await;
    let mut all = first.clone();
    all.extend(rest);
    let ids: Vec<String> = all.iter().map(|e| e.id.clone().unwrap()).collect();
    let expect: Vec<String> = (0..all.len()).map(|i| format!("{sid}:{i}")).collect();
    assert_eq!(ids, expect, "nothing lost, nothing repeated");
    assert!(all.last().unwrap().is_done());
    assert_eq!(stream_text(&all), reference);

    // Unknown ids and foreign event ids are refused clearly.
    assert_eq!(
        c.get(url(&s, "/v1/streams/chatcmpl-nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = c
        .get(url(&s, &format!("/v1/streams/{sid}")))
        .header("Last-Event-ID", "other:3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_slow_consumer_while_eight_streams_finish() {
    let _g = serial().await;
    let s = server(ServeConfig {
        send_buffer_bytes: 4096,
        stream_capacity: 2,
        max_pending_tokens: 16,
        ..config()
    })
    .await;
    // A raw client with a tiny receive buffer that sends its request and never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let mut stalled = sock.connect(s.addr).await.unwrap();
    let body = chat_body("Count from one to five hundred.", 2000, true).to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(req.as_bytes()).await.unwrap();
    let c = client();
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            let u = url(&s, "/v1/chat/completions");
            tokio::spawn(async move {
                let r = c
                    .post(u)
                    .json(&chat_body(
                        &format!("Say something about the number {i}."),
                        48,
                        true,
                    ))
                    .send()
                    .await
                    .unwrap();
                read_sse(r, usize::MAX).await.0
            })
        })
        .collect();
    for r in readers {
        let events = r.await.unwrap();
        assert!(events.last().unwrap().is_done());
        assert!(events.iter().all(|e| e.json().get("error").is_none()));
    }
    let t = std::time::Instant::now();
    while s
        .state
        .sched
        .stats()
        .errors_of(rill_scheduler::ErrorCode::SlowConsumer)
        == 0
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the stalled reader was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stalled);
    wait_idle(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_running_streams_with_a_typed_error() {
    let _g = serial().await;
    let mut s = server(config()).await;
    let c = client();
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&chat_body("Tell me a long story.", 2000, true))
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(read_sse(r, usize::MAX));
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.shutdown();
    let (events, _) = reader.await.unwrap();
    assert!(events.last().unwrap().is_done());
    let err = events.iter().rev().nth(1).unwrap().json();
    assert_eq!(err["error"]["code"], "server_shutdown", "{err}");
    tokio::time::timeout(Duration::from_secs(30), s.wait())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_cors_and_expired_resumes() {
    let _g = serial().await;
    let s = server(ServeConfig {
        rate_limit_rpm: 2,
        cors_origins: vec!["https://chat.example".into()],
        resume_buffer_events: 4,
        ..config()
    })
    .await;
    let c = client();
    // CORS: the allowed origin is echoed, others get no grant.
    let r = c
        .get(url(&s, "/v1/models"))
        .header("origin", "https://chat.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://chat.example"
    );
    let r = c
        .get(url(&s, "/v1/models"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // A resumable stream with a 4-event buffer: resuming from the start after it moved on is 410.
    let r = c
        .post(url(&s, "/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 24, "temperature": 0, "stream": true, "resumable": true}))
        .send()
        .await
        .unwrap();
    let sid = r.headers()["x-rill-stream-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (events, _) = read_sse(r, usize::MAX).await;
    assert!(events.len() > 8);
    let r = c
        .get(url(&s, &format!("/v1/streams/{sid}")))
        .header("Last-Event-ID", format!("{sid}:0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "stream_expired");

    // Two generation requests per minute (the stream above was the first): the third is 429.
    let hi = json!({"prompt": "Hi", "max_tokens": 2});
    let r = c
        .post(url(&s, "/v1/completions"))
        .json(&hi)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(url(&s, "/v1/completions"))
        .json(&hi)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

/// Parses OpenMetrics/Prometheus text: every sample line is `name{labels} value`; returns them.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name_end = key.find('{').unwrap_or(key.len());
        let name = &key[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < key.len() {
            assert!(key.ends_with('}'), "bad labels in {line:?}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.push((key.to_string(), v));
    }
    assert!(text.trim_end().ends_with("# EOF"));
    out
}

fn metric(m: &[(String, f64)], key: &str) -> f64 {
    m.iter().find(|(k, _)| k == key).map_or(0.0, |(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_exactly_what_was_sent() {
    let _g = serial().await;
    let s = server(config()).await;
    let c = client();
    let scrape = || async {
        let r = c.get(url(&s, "/metrics")).send().await.unwrap();
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text"));
        parse_metrics(&r.text().await.unwrap())
    };
    let before = scrape().await;
    let mut prompt_tokens = 0.0;
    for i in 0..3 {
        let body = json!({"messages": [{"role": "user", "content": format!("Count to {i}.")}], "max_tokens": 7, "ignore_eos": true});
        let v: Value = c
            .post(url(&s, "/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        prompt_tokens += v["usage"]["prompt_tokens"].as_f64().unwrap();
    }
    let r = c
        .post(url(&s, "/v1/completions"))
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 7, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    let (events, _) = read_sse(r, usize::MAX).await;
    prompt_tokens += events[events.len() - 2].json()["usage"]["prompt_tokens"]
        .as_f64()
        .unwrap();
    let r = c
        .post(url(&s, "/v1/completions"))
        .json(&json!({"prompt": "x", "temperature": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let after = scrape().await;
    let delta = |k: &str| metric(&after, k) - metric(&before, k);
    assert_eq!(delta("rill_generation_tokens_total"), 28.0);
    // Counted as sampled: once every request has ended, the same tokens.
    assert_eq!(delta("rill_sampled_tokens_total"), 28.0);
    assert_eq!(delta("rill_prompt_tokens_total"), prompt_tokens);
    assert_eq!(delta("rill_requests_total{finish_reason=\"length\"}"), 4.0);
    assert_eq!(delta("rill_time_to_first_token_seconds_count"), 4.0);
    assert_eq!(delta("rill_request_duration_seconds_count"), 4.0);
    assert_eq!(delta("rill_inter_token_latency_seconds_count"), 4.0 * 6.0);
    assert_eq!(
        delta("rill_send_lag_seconds_count"),
        7.0,
        "the streamed request's tokens"
    );
    assert_eq!(
        delta("rill_rejected_requests_total{code=\"invalid_value\"}"),
        1.0
    );
    assert_eq!(metric(&after, "rill_running_sequences"), 0.0);
    assert!(metric(&after, "rill_kv_blocks_total") > 0.0);
    assert!(metric(&after, "rill_rss_bytes") > 0.0);
    assert!(metric(&after, "rill_batch_limit") >= 1.0);
    assert_eq!(metric(&after, "rill_target_itl_seconds"), 0.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_page_assets_and_live_feed() {
    let _g = serial().await;
    let s = server(ServeConfig {
        api_keys: vec!["k".into()],
        bench_db: Some(std::env::temp_dir().join("rill-no-such-bench.sqlite")),
        ..config()
    })
    .await;
    let c = client();
    // The page and assets are public; the data needs the key.
    let page = c.get(url(&s, "/dashboard")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("uPlot.iife.min.js"));
    for a in [
        "dashboard.js",
        "dashboard.css",
        "uPlot.iife.min.js",
        "uPlot.min.css",
        "uPlot.LICENSE.txt",
    ] {
        assert_eq!(
            c.get(url(&s, &format!("/dashboard/assets/{a}")))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{a}"
        );
    }
    // Every embedded file is routed, with its content type.
    for f in rill_server::static_files::FILES {
        let r = c.get(url(&s, f.path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", f.path);
        assert_eq!(r.headers()["content-type"], f.content_type, "{}", f.path);
        assert_eq!(r.bytes().await.unwrap().as_ref(), f.body, "{}", f.path);
    }
    assert_eq!(
        c.get(url(&s, "/dashboard/assets/nope.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(url(&s, "/dashboard/live"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let h: Value = c
        .get(url(&s, "/dashboard/history?api_key=k"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["runs"].as_array().unwrap().len(), 0);
    // Live: the stored history, then a snapshot every second.
    let r = c
        .get(url(&s, "/dashboard/live?api_key=k"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let t = std::time::Instant::now();
    while text.matches("event: snapshot").count() < 2 {
        use futures_util::StreamExt;
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    assert!(text.starts_with("event: history\ndata: ["));
    let snap = text
        .split("event: snapshot\ndata: ")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    let v: Value = serde_json::from_str(snap).unwrap();
    for k in [
        "t",
        "tokens_per_s",
        "running",
        "waiting",
        "batch_limit",
        "kv_used",
        "kv_total",
        "rss_mib",
        "errors",
    ] {
        assert!(!v[k].is_null(), "snapshot lacks {k}: {v}");
    }
}

/// Fields that would change the output are implemented or refused, never ignored: every
/// OpenAI field rill lacks is a 400 naming it (its neutral value is accepted), unknown and
/// tool roles are 400s naming the message, `logit_bias` bans and forces tokens, and a request
/// without `max_tokens` stops at `default_max_tokens`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_fields_are_refused_and_logit_bias_steers_sampling() {
    let _g = serial().await;
    let s = server(ServeConfig {
        default_max_tokens: 5,
        ..config()
    })
    .await;
    let post = |path: &'static str, body: Value| post_json(url(&s, path), body);
    let chat = |extra: Value| {
        let mut b =
            json!({"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (field, value) in [
        ("tools", json!([{"type": "code_interpreter"}])),
        ("tool_choice", json!("required")),
        ("response_format", json!({"type": "xml"})),
        ("functions", json!([{"name": "f"}])),
        ("prediction", json!({"type": "content", "content": "x"})),
    ] {
        let (status, v) = post("/v1/chat/completions", chat(json!({field: value}))).await;
        assert_eq!(status, 400, "{field}: {v}");
        let param = v["error"]["param"].as_str().unwrap();
        assert!(param.starts_with(field), "{v}");
        assert_eq!(v["error"]["code"], "invalid_value", "{v}");
    }
    for (field, value) in [
        ("tools", json!([])),
        ("tool_choice", json!("none")),
        ("response_format", json!({"type": "text"})),
    ] {
        let (status, v) = post("/v1/chat/completions", chat(json!({field: value}))).await;
        assert_eq!(status, 200, "the neutral {field} is accepted: {v}");
    }
    let (status, v) = post(
        "/v1/completions",
        json!({"prompt": "Once", "max_tokens": 2, "echo": true}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("echo")),
        "{v}"
    );
    for (role, extra) in [("wizard", json!({})), ("function", json!({"name": "f"}))] {
        let mut m = json!({"role": role, "content": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        let body = json!({"messages": [{"role": "user", "content": "hi"}, m], "max_tokens": 2});
        let (status, v) = post("/v1/chat/completions", body).await;
        assert_eq!(status, 400, "{role}: {v}");
        assert_eq!(v["error"]["param"], "messages[1].role", "{v}");
    }

    // logit_bias: +100 makes one token the greedy choice at every step, -100 bans the choice.
    let tok = s.state.sched.tokenizer().clone();
    let sea = tok.encode(" sea", false).unwrap();
    assert_eq!(sea.len(), 1, "a one-token word");
    let greedy = |bias: Value| {
        json!({"prompt": "The colour of the sky is", "max_tokens": 3, "temperature": 0,
            "logprobs": 0, "logit_bias": bias})
    };
    let (status, v) = post("/v1/completions", greedy(json!({sea[0].to_string(): 100}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], " sea sea sea", "{v}");
    let (_, plain) = post("/v1/completions", greedy(json!({}))).await;
    let first = plain["choices"][0]["logprobs"]["tokens"][0]
        .as_str()
        .unwrap()
        .to_string();
    let first_id = tok.encode(&first, false).unwrap()[0];
    let (_, banned) = post(
        "/v1/completions",
        greedy(json!({first_id.to_string(): -100})),
    )
    .await;
    assert_ne!(
        banned["choices"][0]["logprobs"]["tokens"][0].as_str(),
        Some(first.as_str()),
        "{banned}"
    );
    for bad in [
        json!({"99999999": 1}),
        json!({"5": 101}),
        json!({"x": 1}),
        json!([1]),
    ] {
        let (status, v) = post("/v1/completions", greedy(bad.clone())).await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some("logit_bias")),
            "{bad}: {v}"
        );
    }

    // No max_tokens: the server's default_max_tokens bounds the answer.
    let (status, v) = post(
        "/v1/completions",
        json!({"prompt": "Once upon a time", "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

/// A client that sends a whole 64 MiB body before it reads (as Python's urllib does) gets the
/// 413, not a connection reset: the server drains what it will not use before answering. A
/// body within the limit still works on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_sent_whole_gets_its_413() {
    use tokio::io::AsyncReadExt;
    let _g = serial().await;
    let s = server(config()).await;
    let body = vec![b' '; 64 << 20];
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&body)
        .await
        .expect("the server reads the whole body");
    let mut answer = Vec::new();
    sock.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    let r = client()
        .post(url(&s, "/v1/completions"))
        .json(&json!({"prompt": "Hi", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Checks `v` against the JSON Schema subset the tests use (type, properties, required,
/// enum, items, minimum/maximum, additionalProperties: false).
fn conforms(v: &Value, schema: &Value) -> Result<(), String> {
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{v} not in {e:?}"));
        }
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("any");
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        return Err(format!("{v} is not a {ty}"));
    }
    if let Some(x) = v.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| x < m)
            || schema
                .get("maximum")
                .and_then(Value::as_f64)
                .is_some_and(|m| x > m)
        {
            return Err(format!("{x} out of range"));
        }
    }
    if let (Some(o), Some(props)) = (
        v.as_object(),
        schema.get("properties").and_then(Value::as_object),
    ) {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !o.contains_key(r.as_str().unwrap()) {
                return Err(format!("missing {r}"));
            }
        }
        for (k, x) in o {
            match props.get(k) {
                Some(p) => conforms(x, p)?,
                None if schema.get("additionalProperties") == Some(&json!(false)) => {
                    return Err(format!("unexpected key {k}"))
                }
                None => {}
            }
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), schema.get("items")) {
        for x in a {
            conforms(x, items)?;
        }
    }
    Ok(())
}

/// `response_format`: JSON objects, JSON schemas (sampled at temperature 0.8), a regex, streamed
/// and not, in a batch beside unconstrained requests whose output the feature leaves as it was;
/// invalid schemas and expressions are 400s naming `response_format`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_format_constrains_the_output_and_nothing_else() {
    let _g = serial().await;
    let s = server(config()).await;
    let c = client();
    let post = |path: &'static str, body: Value| post_json(url(&s, path), body);
    let ask = |q: &str| json!([{"role": "user", "content": q}]);
    let schemas = [
        json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
            "shades": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
            "required": ["colour", "shades"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"city": {"type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
            "required": ["name", "sunny"], "additionalProperties": false}},
            "required": ["city"], "additionalProperties": false}),
    ];
    // Constrained and unconstrained requests at once: 3 schemas, a JSON object, 4 plain ones.
    let plain_body = |i: usize| {
        json!({"messages": ask(&format!("Tell me a fact about the number {i}.")),
        "max_tokens": 12, "temperature": 0})
    };
    let mut solo = Vec::new();
    for i in 0..4 {
        let (_, v) = post("/v1/chat/completions", plain_body(i)).await;
        solo.push(v["choices"][0]["message"]["content"].clone());
    }
    let mut tasks = Vec::new();
    for (i, schema) in schemas.iter().enumerate() {
        let body = json!({"messages": ask("Describe something as JSON."), "max_tokens": 120,
            "temperature": 0.8, "seed": i,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}});
        tasks.push(tokio::spawn(post("/v1/chat/completions", body)));
    }
    tasks.push(tokio::spawn(post(
        "/v1/chat/completions",
        json!({"messages": ask("Return a JSON object with the name and colour of a cat."),
        "max_tokens": 200, "temperature": 0, "response_format": {"type": "json_object"}}),
    )));
    for i in 0..4 {
        tasks.push(tokio::spawn(post("/v1/chat/completions", plain_body(i))));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    for (i, schema) in schemas.iter().enumerate() {
        let (status, v) = &results[i];
        assert_eq!(*status, 200, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        conforms(&parsed, schema).unwrap_or_else(|e| panic!("{e}: {text}"));
    }
    assert_eq!(
        results[3].1["choices"][0]["finish_reason"], "stop",
        "{}",
        results[3].1
    );
    let text = results[3].1["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(
        serde_json::from_str::<Value>(text).unwrap().is_object(),
        "{text}"
    );
    for i in 0..4 {
        assert_eq!(
            results[4 + i].1["choices"][0]["message"]["content"],
            solo[i],
            "an unconstrained request changed beside constrained ones"
        );
    }

    // Streamed, on completions, with a regex.
    let r = c
        .post(url(&s, "/v1/completions"))
        .json(
            &json!({"prompt": "My phone number is", "max_tokens": 30, "stream": true,
            "response_format": {"type": "regex", "regex": " [0-9]{3}-[0-9]{4}"}}),
        )
        .send()
        .await
        .unwrap();
    let (events, _) = read_sse(r, usize::MAX).await;
    let text: String = events
        .iter()
        .filter(|e| !e.is_done())
        .filter_map(|e| e.json()["choices"][0]["text"].as_str().map(String::from))
        .collect();
    let re_ok = text.len() == 9
        && text.starts_with(' ')
        && text[1..4].bytes().all(|b| b.is_ascii_digit())
        && &text[4..5] == "-"
        && text[5..].bytes().all(|b| b.is_ascii_digit());
    assert!(re_ok, "{text:?}");

    for bad in [
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": 5, "maxProperties": 1}, "strict": true}}),
        json!({"type": "json_schema", "json_schema": {"name": "x"}}),
        json!({"type": "regex", "regex": "(unclosed"}),
        json!({"type": "grammar", "grammar": "start: undefined_rule"}),
    ] {
        let (status, v) = post(
            "/v1/chat/completions",
            json!({"messages": ask("hi"), "max_tokens": 4, "response_format": bad}),
        )
        .await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some("response_format")),
            "{bad}: {v}"
        );
    }
}

/// The calls of a streamed chat answer, assembled from `delta.tool_calls` fragments by index:
/// (name, arguments) each, and the finish reason.
fn streamed_calls(events: &[SseEvent]) -> (Vec<(String, String)>, String) {
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = String::new();
    for e in events.iter().filter(|e| !e.is_done()) {
        let v = e.json();
        let choice = &v["choices"][0];
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
        for d in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = d["index"].as_u64().unwrap() as usize;
            if let Some(name) = d["function"]["name"].as_str() {
                assert_eq!(i, calls.len(), "a call's first fragment names it, in order");
                assert!(d["id"].as_str().unwrap().starts_with("call_"), "{d}");
                assert_eq!(d["type"], "function");
                calls.push((name.to_string(), String::new()));
            }
            if let Some(a) = d["function"]["arguments"].as_str() {
                calls[i].1.push_str(a);
            }
        }
    }
    (calls, finish)
}

/// A whole response's calls: (name, arguments) each.
fn response_calls(v: &Value) -> Vec<(String, String)> {
    v["choices"][0]["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            assert!(c["id"].as_str().unwrap().starts_with("call_"), "{c}");
            (
                c["function"]["name"].as_str().unwrap().to_string(),
                c["function"]["arguments"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn tool_calls_are_forced_named_or_chosen_and_stream_as_generated() {
    let _g = serial().await;
    let s = server(config()).await;
    let c = client();
    let post = |body: Value| post_json(url(&s, "/v1/chat/completions"), body);
    let weather = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]});
    let time = json!({"type": "object", "properties": {"tz": {"type": "string", "maxLength": 30}},
        "required": ["tz"]});
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": weather}},
        {"type": "function", "function": {"name": "get_time", "description": "Time in a timezone", "parameters": time}}]);
    let schema_of = |name: &str| {
        let mut s = if name == "get_weather" {
            weather.clone()
        } else {
            time.clone()
        };
        s["additionalProperties"] = json!(false);
        s
    };
    let check = |calls: &[(String, String)]| {
        assert!(!calls.is_empty());
        for (name, args) in calls {
            let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{e}: {args}"));
            conforms(&v, &schema_of(name)).unwrap_or_else(|e| panic!("{name} {e}: {args}"));
        }
    };
    let ask = json!([{"role": "user", "content": "What is the weather in Paris?"}]);

    // required, named: whole and streamed alike (greedy), valid against the schemas.
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    for choice in [json!("required"), named] {
        let body = json!({"messages": ask, "tools": tools, "tool_choice": choice,
            "temperature": 0, "max_tokens": 120});
        let (status, whole) = post(body.clone()).await;
        assert_eq!(status, 200, "{whole}");
        assert_eq!(
            whole["choices"][0]["finish_reason"], "tool_calls",
            "{whole}"
        );
        assert!(
            whole["choices"][0]["message"]["content"].is_null(),
            "{whole}"
        );
        let calls = response_calls(&whole);
        check(&calls);
        if choice != "required" {
            assert_eq!(calls.len(), 1, "a named choice makes one call: {whole}");
            assert_eq!(calls[0].0, "get_time");
        }
        let mut streamed = body;
        streamed["stream"] = json!(true);
        let r = c
            .post(url(&s, "/v1/chat/completions"))
            .json(&streamed)
            .send()
            .await
            .unwrap();
        let (events, _) = read_sse(r, usize::MAX).await;
        let (scalls, finish) = streamed_calls(&events);
        assert_eq!((scalls, finish.as_str()), (calls, "tool_calls"));
    }

    // auto: a conversation the model continues with a call (constrained from `<tool_call>`
    // on), and a question it answers in text.
    let call = |city: &str, id: &str| {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
            "function": {"name": "get_weather", "arguments": json!({"city": city, "unit": "celsius"}).to_string()}}]})
    };
    let user = |q: &str| json!({"role": "user", "content": q});
    let history = json!([
        user("Weather in London?"),
        call("London", "call_1"),
        user("Weather in Rome?"),
        call("Rome", "call_2"),
        user("Weather in Paris?")
    ]);
    let (_, v) = post(
        json!({"messages": history, "tools": tools, "tool_choice": "auto",
        "parallel_tool_calls": false, "temperature": 0, "max_tokens": 80}),
    )
    .await;
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let calls = response_calls(&v);
    check(&calls);
    assert_eq!(calls[0].0, "get_weather");
    let (_, v) =
        post(json!({"messages": ask, "tools": tools, "temperature": 0, "max_tokens": 40})).await;
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{v}"
    );

    // A tool result in the history is answered.
    let with_result = json!([user("Weather in London?"), call("London", "call_1"),
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 14}"}]);
    let (status, v) = post(
        json!({"messages": with_result, "tools": tools, "tool_choice": "none",
        "temperature": 0, "max_tokens": 20}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");

    // Bad tools name their field.
    for (body, param) in [
        (
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": tools, "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"tools": tools, "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}, user("x")]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
    ] {
        let mut b = json!({"messages": ask, "max_tokens": 4});
        for (k, v) in body.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (status, v) = post(b).await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{v}"
        );
    }
}

#[tokio::test]
async fn n_choices_share_the_prompt_and_stream_with_their_index() {
    let _g = serial().await;
    let s = server(config()).await;
    let c = client();
    let post = |path: &'static str, body: Value| post_json(url(&s, path), body);
    let ask = json!([{"role": "user", "content": "Give me a name for a boat. ".repeat(8)}]);

    // Greedy: every choice is the same answer; the prompt is computed once (the siblings
    // attach its blocks from the prefix cache) and counted once.
    let hits = s.state.sched.stats().prefix_hit_tokens;
    let (status, v) = post(
        "/v1/chat/completions",
        json!({"messages": ask, "max_tokens": 12, "temperature": 0, "n": 3}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let reused = s.state.sched.stats().prefix_hit_tokens - hits;
    let (_, one) = post(
        "/v1/chat/completions",
        json!({"messages": ask, "max_tokens": 12, "temperature": 0}),
    )
    .await;
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, ch) in choices.iter().enumerate() {
        assert_eq!(ch["index"], i, "{v}");
        assert_eq!(
            ch["message"]["content"], one["choices"][0]["message"]["content"],
            "{v}"
        );
    }
    let prompt = one["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], prompt, "{v}");
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        3 * one["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(
        reused as u64 >= 2 * ((prompt - 1) / 16 * 16),
        "the siblings attached the prompt's blocks from the prefix cache ({reused} tokens reused)"
    );

    // Sampled with a seed: streamed chunks carry their choice's index, each choice ends once,
    // and the streamed choices equal the whole response's.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0,
        "seed": 7, "n": 4});
    let (_, whole) = post("/v1/completions", body.clone()).await;
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let r = c
        .post(url(&s, "/v1/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    let (events, _) = read_sse(r, usize::MAX).await;
    let mut texts = vec![String::new(); 4];
    let mut ends = [0; 4];
    for e in events.iter().filter(|e| !e.is_done()) {
        let v = e.json();
        for ch in v["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap() as usize;
            texts[i].push_str(ch["text"].as_str().unwrap());
            ends[i] += usize::from(ch["finish_reason"].is_string());
        }
    }
    assert_eq!(ends, [1; 4]);
    assert_eq!(events.iter().filter(|e| e.is_done()).count(), 1);
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(
            t,
            whole["choices"][i]["text"].as_str().unwrap(),
            "choice {i}"
        );
    }
    assert!(
        texts.iter().any(|t| t != &texts[0]),
        "seeded choices sample differently: {texts:?}"
    );
}
