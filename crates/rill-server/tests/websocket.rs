//! The WebSocket protocol with a real client (tokio-tungstenite) against the real server:
//! multiplexed generations, tokens and completion summaries, cancel, malformed frames, ping,
//! the MessagePack subprotocol and resume on a new connection.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(s: &rill_server::ServerHandle, protocol: Option<&str>) -> Ws {
    let mut req = format!("ws://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    if let Some(p) = protocol {
        assert_eq!(resp.headers()["sec-websocket-protocol"], p);
    }
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Binary(b) => return rmp_serde::from_slice(&b).unwrap(),
            _ => continue,
        }
    }
}

/// Reads frames until every id in `ids` completed or failed; returns text and final frame per id.
async fn run_until_done(ws: &mut Ws, ids: &[&str]) -> HashMap<String, (String, Value, Vec<u64>)> {
    let mut out: HashMap<String, (String, Value, Vec<u64>)> = HashMap::new();
    let mut done = 0;
    while done < ids.len() {
        let f = next(ws).await;
        let id = f["id"].as_str().unwrap_or("").to_string();
        let e = out
            .entry(id)
            .or_insert((String::new(), Value::Null, Vec::new()));
        match f["type"].as_str().unwrap() {
            "token" => {
                if let Some(t) = f.get("token") {
                    e.0.push_str(t["text"].as_str().unwrap());
                    if t["id"].is_u64() {
                        e.2.push(t["position"].as_u64().unwrap());
                    }
                } else {
                    e.0.push_str(f["text"].as_str().unwrap());
                    for t in f["tokens"].as_array().unwrap() {
                        e.2.push(t["position"].as_u64().unwrap());
                    }
                }
            }
            "complete" | "error" => {
                e.1 = f;
                done += 1;
            }
            "queued" => {}
            other => panic!("unexpected frame {other}: {f}"),
        }
    }
    out
}

fn greedy_chat(id: &str, content: &str, max_tokens: u32) -> Value {
    json!({"type": "generate", "id": id, "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "params": {"temperature": 0}})
}

async fn reference(s: &rill_server::ServerHandle, content: &str, max_tokens: u32) -> String {
    let v: Value = client()
        .post(url(s, "/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}))
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_generations_cancel_and_malformed_frames() {
    let _g = serial().await;
    let s = server(config()).await;
    let mut ws = connect(&s, None).await;

    // A malformed frame gets an error frame; the connection stays usable.
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let e = next(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["code"], "invalid_message");
    assert_eq!(e["error"]["recoverable"], true);
    send(&mut ws, json!({"type": "ping", "ts": 5})).await;
    let p = next(&mut ws).await;
    assert_eq!(
        (p["type"].as_str(), p["ts"].as_i64()),
        (Some("pong"), Some(5))
    );
    send(
        &mut ws,
        json!({"type": "generate", "id": "bad", "messages": [], "max_tokens": 4}),
    )
    .await;
    let e = next(&mut ws).await;
    assert_eq!(
        (e["id"].as_str(), e["type"].as_str()),
        (Some("bad"), Some("error"))
    );

    // Two generations at once, plus one cancelled.
    send(&mut ws, greedy_chat("a", "Name three colours.", 24)).await;
    send(&mut ws, greedy_chat("b", "Name three animals.", 24)).await;
    send(
        &mut ws,
        greedy_chat("c", "Tell me a very long story.", 1000),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut ws, json!({"type": "cancel", "id": "c"})).await;
    let got = run_until_done(&mut ws, &["a", "b", "c"]).await;
    assert_eq!(got["c"].1["finish_reason"], "cancelled");
    for (id, q) in [("a", "Name three colours."), ("b", "Name three animals.")] {
        let (text, complete, positions) = &got[id];
        assert_eq!(complete["type"], "complete", "{complete}");
        let summary = &complete["summary"];
        // The end-of-sequence token counts in usage but is not sent as text.
        let total = summary["total_tokens"].as_u64().unwrap() as usize;
        let eos = usize::from(complete["finish_reason"] == "stop");
        assert_eq!(total, positions.len() + eos);
        assert!(summary["ttft_ms"].as_f64().unwrap() > 0.0);
        assert!(summary["tokens_per_second"].is_number());
        assert_eq!(positions, &(0..positions.len() as u64).collect::<Vec<_>>());
        assert_eq!(text, &reference(&s, q, 24).await, "generation {id}");
    }
    wait_idle(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_subprotocol_and_resume_on_a_new_connection() {
    let _g = serial().await;
    let s = server(config()).await;
    let q = "Describe the sea in winter.";
    let want = reference(&s, q, 40).await;

    // Binary frames when negotiated.
    let mut ws = connect(&s, Some("rill.msgpack")).await;
    ws.send(Message::Binary(
        rmp_serde::to_vec_named(&greedy_chat("m", q, 40))
            .unwrap()
            .into(),
    ))
    .await
    .unwrap();
    let m = ws.next().await.unwrap().unwrap();
    assert!(matches!(m, Message::Binary(_)), "expected a binary frame");
    let got = run_until_done(&mut ws, &["m"]).await;
    let first: Value = rmp_serde::from_slice(&m.into_data()).unwrap();
    let mut text = first["token"]["text"].as_str().unwrap_or("").to_string();
    text.push_str(&got["m"].0);
    assert_eq!(text, want);
    drop(ws);

    // A resumable generation survives its connection; a new one resumes after the last
    // position it saw, with nothing lost or repeated.
    let mut ws = connect(&s, None).await;
    let mut g = greedy_chat("r", q, 40);
    g["resumable"] = json!(true);
    send(&mut ws, g).await;
    let mut text = String::new();
    let mut last = -1i64;
    while last < 4 {
        let f = next(&mut ws).await;
        if f["type"] == "token" {
            text.push_str(f["token"]["text"].as_str().unwrap());
            last = f["token"]["position"].as_i64().unwrap();
        }
    }
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = connect(&s, None).await;
    send(
        &mut ws,
        json!({"type": "resume", "id": "r", "after_position": last}),
    )
    .await;
    let got = run_until_done(&mut ws, &["r"]).await;
    let (rest, complete, positions) = &got["r"];
    assert_eq!(complete["type"], "complete");
    assert_eq!(positions.first().copied(), Some(last as u64 + 1));
    text.push_str(rest);
    assert_eq!(text, want);
    send(
        &mut ws,
        json!({"type": "resume", "id": "nope", "after_position": 0}),
    )
    .await;
    assert_eq!(next(&mut ws).await["error"]["code"], "not_found");
}

/// One error map: the same fault gets the same `code`, `param` and `type` whether it arrives as
/// an HTTP response (plain or `stream: true`), a WebSocket `error` frame, or, once a stream
/// has begun, an SSE error event and a WebSocket `error` frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_error_map_across_http_sse_and_websocket() {
    let _g = serial().await;
    let s = server(config()).await;
    let c = client();
    let bad = json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 9});

    let mut seen = Vec::new();
    for stream in [false, true] {
        let mut body = bad.clone();
        body["stream"] = json!(stream);
        let r = c
            .post(url(&s, "/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        seen.push(v["error"].clone());
    }
    let mut ws = connect(&s, None).await;
    let mut frame = bad.clone();
    frame["type"] = json!("generate");
    frame["id"] = json!("g");
    frame["params"] = json!({"temperature": 9});
    send(&mut ws, frame).await;
    let e = next(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str()),
        (Some("error"), Some("g"))
    );
    seen.push(e["error"].clone());
    for e in &seen {
        assert_eq!(e["code"], "invalid_value", "{e}");
        assert_eq!(e["param"], "temperature", "{e}");
        assert_eq!(e["type"], "invalid_request_error", "{e}");
        assert_eq!(e["recoverable"], true, "{e}");
    }

    // After a stream began: shutting the server down ends an SSE stream and a WebSocket
    // generation with the same typed error.
    let r = c
        .post(url(&s, "/v1/completions"))
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"type": "generate", "id": "w", "prompt": "Once upon a time", "max_tokens": 400, "params": {"ignore_eos": true}}),
    )
    .await;
    let mut sse = r.bytes_stream();
    let first = sse.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("data: "));
    loop {
        if next(&mut ws).await["type"] == "token" {
            break;
        }
    }
    let mut s = s;
    s.shutdown();
    let mut text = String::new();
    while let Some(chunk) = sse.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let sse_error: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v.get("error").is_some())
        .expect("an SSE error event");
    let ws_error = loop {
        let f = next(&mut ws).await;
        if f["type"] == "error" {
            break f;
        }
    };
    assert_eq!(ws_error["id"], "w");
    for e in [&sse_error["error"], &ws_error["error"]] {
        assert_eq!(e["code"], "server_shutdown", "{e}");
        assert_eq!(e["type"], "server_error", "{e}");
        assert_eq!(e["recoverable"], true, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_with_tools_sends_tool_call_frames_and_response_format_holds() {
    let _g = serial().await;
    let s = server(config()).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"]}}}]);
    let ask = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let (_, whole) = post_json(
        url(&s, "/v1/chat/completions"),
        json!({"messages": ask, "tools": tools, "tool_choice": "required",
               "parallel_tool_calls": false, "temperature": 0, "max_tokens": 60}),
    )
    .await;
    let want = &whole["choices"][0]["message"]["tool_calls"][0]["function"];
    let mut ws = connect(&s, None).await;
    send(
        &mut ws,
        json!({"type": "generate", "id": "t", "messages": ask, "max_tokens": 60, "tools": tools,
               "tool_choice": "required", "parallel_tool_calls": false,
               "params": {"temperature": 0}}),
    )
    .await;
    let (mut text, mut name, mut args) = (String::new(), None, String::new());
    let complete = loop {
        let f = next(&mut ws).await;
        match f["type"].as_str().unwrap() {
            "token" => text.push_str(f["token"]["text"].as_str().unwrap_or_default()),
            "tool_call" => {
                assert_eq!(f["index"], 0, "{f}");
                if let Some(n) = f["name"].as_str() {
                    assert!(name.is_none(), "one call");
                    assert!(f["call_id"].as_str().unwrap().starts_with("call_"), "{f}");
                    name = Some(n.to_string());
                }
                args.push_str(f["arguments"].as_str().unwrap());
            }
            "complete" => break f,
            other => panic!("unexpected frame {other}: {f}"),
        }
    };
    assert_eq!(complete["finish_reason"], "tool_calls", "{complete}");
    assert_eq!(text, "", "the call's text comes as tool_call frames only");
    assert_eq!(name.as_deref(), want["name"].as_str());
    assert_eq!(args, want["arguments"].as_str().unwrap());
    // response_format at the top level of the frame.
    send(
        &mut ws,
        json!({"type": "generate", "id": "j", "messages": ask, "max_tokens": 80,
               "response_format": {"type": "json_object"}, "params": {"temperature": 0}}),
    )
    .await;
    let done = run_until_done(&mut ws, &["j"]).await;
    let (text, end, _) = &done["j"];
    assert_eq!(end["finish_reason"], "stop", "{end}");
    assert!(
        serde_json::from_str::<Value>(text).unwrap().is_object(),
        "{text}"
    );
}
