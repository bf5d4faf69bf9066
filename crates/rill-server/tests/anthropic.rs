//! Anthropic's Messages API against the real server and model over real HTTP: the message and
//! error shapes, the streamed event order, stop reasons, count_tokens, 400s naming the field,
//! `x-api-key` auth, cancellation, keep-alive pings and a failure mid-stream.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use rill_server::ServeConfig;
use serde_json::{json, Value};
use support::*;

const SYSTEM: &str = "You are brief.";

fn body(content: &str, max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "smollm2",
        "system": SYSTEM,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "metadata": {"user_id": "u-1"},
    })
}

/// Reads an Anthropic SSE stream to its end: `(event name, data)` of every event.
async fn read_events(resp: reqwest::Response) -> Vec<(String, Value)> {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut name, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            let data: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(data["type"], name.as_str(), "event name = data.type");
            events.push((name, data));
        }
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn streamed_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect()
}

fn find<'a>(events: &'a [(String, Value)], name: &str) -> &'a Value {
    &events.iter().find(|(n, _)| n == name).unwrap().1
}

async fn post(s: &rill_server::ServerHandle, path: &str, b: &Value) -> reqwest::Response {
    client()
        .post(url(s, path))
        .header("anthropic-version", "2023-06-01")
        .json(b)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_have_anthropic_shapes_events_and_stop_reasons() {
    let _g = serial().await;
    let s = server(config()).await;

    // Not streamed.
    let r = post(&s, "/v1/messages", &body("Name three colours.", 24, false)).await;
    assert_eq!(r.status(), 200);
    let sid = r.headers()["x-rill-stream-id"]
        .to_str()
        .unwrap()
        .to_string();
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["id"], sid.as_str());
    assert!(sid.starts_with("msg_"), "{sid}");
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], "smollm2");
    assert_eq!(m["content"].as_array().unwrap().len(), 1);
    assert_eq!(m["content"][0]["type"], "text");
    let text = m["content"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    let reason = m["stop_reason"].as_str().unwrap().to_string();
    assert!(reason == "end_turn" || reason == "max_tokens", "{reason}");
    assert_eq!(m["stop_sequence"], Value::Null);
    let input_tokens = m["usage"]["input_tokens"].as_u64().unwrap();
    let output_tokens = m["usage"]["output_tokens"].as_u64().unwrap();
    assert!(input_tokens > 0 && output_tokens > 0 && output_tokens <= 24);

    // The prompt is the OpenAI chat route's: same tokens, same greedy text.
    let v: Value = client()
        .post(url(&s, "/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name three colours."}], "max_tokens": 24, "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], input_tokens);
    assert_eq!(v["choices"][0]["message"]["content"], text.as_str());

    // count_tokens: the same prompt's tokens (max_tokens not needed; system as blocks).
    let mut count = body("Name three colours.", 24, false);
    count.as_object_mut().unwrap().remove("max_tokens");
    count["system"] = json!([{"type": "text", "text": SYSTEM}]);
    let r = post(&s, "/v1/messages/count_tokens", &count).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"input_tokens": input_tokens})
    );

    // Streamed: Anthropic's event order, the same text, usage and stop reason.
    let r = post(&s, "/v1/messages", &body("Name three colours.", 24, true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let sid = r.headers()["x-rill-stream-id"]
        .to_str()
        .unwrap()
        .to_string();
    let events = read_events(r).await;
    let n = names(&events);
    assert_eq!(n[..3], ["message_start", "content_block_start", "ping"]);
    let rest: Vec<&str> = n[3..].iter().copied().filter(|&e| e != "ping").collect();
    let deltas = rest.len() - 3;
    assert!(deltas >= 1, "{n:?}");
    assert!(rest[..deltas].iter().all(|&e| e == "content_block_delta"));
    assert_eq!(
        rest[deltas..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let start = &find(&events, "message_start")["message"];
    assert_eq!(start["id"], sid.as_str());
    assert_eq!(start["type"], "message");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["model"], "smollm2");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["input_tokens"], input_tokens);
    assert_eq!(start["usage"]["output_tokens"], 0);
    assert_eq!(
        find(&events, "content_block_start"),
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(
        find(&events, "content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(streamed_text(&events), text);
    let delta = find(&events, "message_delta");
    assert_eq!(delta["delta"]["stop_reason"], reason.as_str());
    assert_eq!(delta["delta"]["stop_sequence"], Value::Null);
    assert_eq!(delta["usage"]["output_tokens"], output_tokens);

    // max_tokens.
    let m: Value = post(&s, "/v1/messages", &body("Tell me a story.", 3, false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(m["stop_reason"], "max_tokens");
    assert_eq!(m["usage"]["output_tokens"], 3);

    // stop_sequence, with the string met; the text stops before it.
    let word = text.split_whitespace().nth(1).unwrap().to_string();
    let mut b = body("Name three colours.", 24, false);
    b["stop_sequences"] = json!(["zzzz-never", word]);
    let m: Value = post(&s, "/v1/messages", &b).await.json().await.unwrap();
    assert_eq!(m["stop_reason"], "stop_sequence", "{m}");
    assert_eq!(m["stop_sequence"], word.as_str());
    let stopped = m["content"][0]["text"].as_str().unwrap();
    assert!(
        !stopped.contains(&word) && text.starts_with(stopped),
        "{stopped:?} vs {text:?}"
    );
    b["stream"] = json!(true);
    let events = read_events(post(&s, "/v1/messages", &b).await).await;
    assert_eq!(streamed_text(&events), stopped);
    let delta = find(&events, "message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "stop_sequence");
    assert_eq!(delta["delta"]["stop_sequence"], word.as_str());

    // end_turn: the model ends its turn before max_tokens.
    let m: Value = post(&s, "/v1/messages", &body("Say hello.", 200, false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(m["stop_reason"], "end_turn", "{m}");
    assert!(m["usage"]["output_tokens"].as_u64().unwrap() < 200);
    wait_idle(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_anthropic_400s_naming_the_field() {
    let _g = serial().await;
    let s = server(config()).await;
    let check = |v: &Value, path: &str| {
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{path}: ")), "{path}: {v}");
    };
    let user = json!({"role": "user", "content": "Hi"});
    let with = |extra: Value| {
        let mut b = json!({"max_tokens": 4, "messages": [user.clone()]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let image = json!({"messages": [user.clone(), {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]});
    // A tool result belongs in a user turn.
    let tool_result = json!({"messages": [user.clone(),
        {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]},
        user.clone()]});
    let cases = [
        (json!({"messages": [user.clone()]}), "max_tokens"),
        (with(json!({"max_tokens": 0})), "max_tokens"),
        (with(json!({"temperature": 1.5})), "temperature"),
        (with(json!({"temperature": "hot"})), "temperature"),
        (with(json!({"top_p": 0})), "top_p"),
        (
            with(json!({"tools": [{"name": "f", "input_schema": {"type": "string"}}]})),
            "tools[0].input_schema",
        ),
        (
            with(json!({"tools": [{"type": "bash_20250124", "name": "bash"}]})),
            "tools[0].type",
        ),
        (with(json!({"tool_choice": {"type": "any"}})), "tool_choice"),
        (
            with(json!({"thinking": {"type": "enabled", "budget_tokens": 1024}})),
            "thinking",
        ),
        (with(image), "messages[2].content[1].type"),
        (with(tool_result), "messages[1].content[0].type"),
        (
            with(json!({"messages": [{"role": "system", "content": "x"}]})),
            "messages[0].role",
        ),
        (
            with(json!({"messages": [user.clone(), {"role": "assistant", "content": "Sure,"}]})),
            "messages[1].role",
        ),
        (
            with(json!({"system": [{"type": "text", "text": 3}]})),
            "system[0].text",
        ),
        (with(json!({"stop_sequences": [""]})), "stop_sequences[0]"),
        (with(json!({"messages": []})), "messages"),
    ];
    for (b, path) in &cases {
        let r = post(&s, "/v1/messages", b).await;
        assert_eq!(r.status(), 400, "{path}");
        check(&r.json().await.unwrap(), path);
    }
    // count_tokens refuses the same fields (and needs no max_tokens).
    let r = post(
        &s,
        "/v1/messages/count_tokens",
        &json!({"messages": [user.clone()], "tools": [{"name": "f"}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    check(&r.json().await.unwrap(), "tools[0].input_schema");
    // Malformed JSON.
    let r = client()
        .post(url(&s, "/v1/messages"))
        .header("content-type", "application/json")
        .body("{\"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Neutral values of unimplemented fields change nothing and are accepted; so is metadata.
    let r = post(
        &s,
        "/v1/messages",
        &with(
            json!({"tools": [], "tool_choice": {"type": "auto"}, "thinking": {"type": "disabled"},
            "metadata": {"user_id": "x"}, "service_tier": "auto"}),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_idle(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_key_authenticates_like_a_bearer_token() {
    let _g = serial().await;
    let s = server(ServeConfig {
        api_keys: vec!["sekret".into()],
        ..config()
    })
    .await;
    let c = client();
    let b = json!({"max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]});
    let r = c
        .post(url(&s, "/v1/messages"))
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-api-key"));
    let r = c
        .post(url(&s, "/v1/messages"))
        .header("x-api-key", "wrong")
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for (name, value) in [("x-api-key", "sekret"), ("authorization", "Bearer sekret")] {
        let r = c
            .post(url(&s, "/v1/messages"))
            .header(name, value)
            .header("anthropic-version", "2023-06-01")
            .json(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let r = c
            .post(url(&s, "/v1/messages/count_tokens"))
            .header(name, value)
            .json(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
    // On every route, and the OpenAI routes keep OpenAI's error shape.
    let r = c
        .get(url(&s, "/v1/models"))
        .header("x-api-key", "sekret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(url(&s, "/v1/models"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_a_message_and_a_waiting_stream_gets_pings() {
    let _g = serial().await;
    let s = server(ServeConfig {
        max_running: 1,
        ..config()
    })
    .await;
    // A long stream holds the one running slot; a second one waits in the queue.
    let long = post(
        &s,
        "/v1/messages",
        &body("Tell me a long story.", 2000, true),
    )
    .await;
    let sid = long.headers()["x-rill-stream-id"]
        .to_str()
        .unwrap()
        .to_string();
    let long = tokio::spawn(read_events(long));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = post(&s, "/v1/messages", &body("Name three colours.", 8, true)).await;
    let waiting = tokio::spawn(read_events(waiting));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let d = client()
        .delete(url(&s, &format!("/v1/streams/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 200);
    // The cancelled stream ends normally, as cut short: max_tokens.
    let events = long.await.unwrap();
    let n = names(&events);
    assert_eq!(
        n[n.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let delta = find(&events, "message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() < 2000);
    // The waiting stream got its opening at once, then keep-alive pings, then its text.
    let events = waiting.await.unwrap();
    let n = names(&events);
    let first_delta = n.iter().position(|&e| e == "content_block_delta").unwrap();
    let pings = n[..first_delta].iter().filter(|&&e| e == "ping").count();
    assert!(pings >= 2, "{n:?}");
    assert_eq!(n.last(), Some(&"message_stop"));
    wait_idle(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_stream_is_an_error_event() {
    let _g = serial().await;
    let mut s = server(config()).await;
    let r = post(
        &s,
        "/v1/messages",
        &body("Tell me a long story.", 2000, true),
    )
    .await;
    let reader = tokio::spawn(read_events(r));
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.shutdown();
    let events = reader.await.unwrap();
    let (name, err) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(err["error"]["type"], "overloaded_error", "{err}");
    assert!(!names(&events).contains(&"message_stop"));
    tokio::time::timeout(Duration::from_secs(30), s.wait())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn tools_come_back_as_tool_use_blocks_whole_and_streamed() {
    let _g = serial().await;
    let s = server(config()).await;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]});
    let tools = json!([{"name": "get_weather", "description": "Weather in a city", "input_schema": schema},
        {"name": "get_time", "description": "Time in a timezone",
         "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}]);
    for choice in [
        json!({"type": "any"}),
        json!({"type": "tool", "name": "get_weather"}),
    ] {
        let mut b = body("What is the weather in Paris?", 100, false);
        b["tools"] = tools.clone();
        b["tool_choice"] = choice.clone();
        let whole: Value = post(&s, "/v1/messages", &b).await.json().await.unwrap();
        assert_eq!(whole["stop_reason"], "tool_use", "{whole}");
        let uses: Vec<&Value> = whole["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["type"] == "tool_use")
            .collect();
        assert!(!uses.is_empty(), "{whole}");
        for u in &uses {
            assert!(u["id"].as_str().unwrap().starts_with("toolu_"), "{u}");
            if u["name"] == "get_weather" {
                let input = u["input"].as_object().unwrap();
                assert!(input["city"].is_string(), "{u}");
                assert!(
                    ["celsius", "fahrenheit"].contains(&input["unit"].as_str().unwrap()),
                    "{u}"
                );
                assert_eq!(input.len(), 2, "{u}");
            } else {
                assert_eq!(choice["type"], "any", "a named choice calls that tool: {u}");
            }
        }
        b["stream"] = json!(true);
        let events = read_events(post(&s, "/v1/messages", &b).await).await;
        let n = names(&events);
        assert_eq!(n[..2], ["message_start", "ping"], "{n:?}");
        assert_eq!(n[n.len() - 2..], ["message_delta", "message_stop"], "{n:?}");
        assert_eq!(
            find(&events, "message_delta")["delta"]["stop_reason"],
            "tool_use"
        );
        // Each tool_use block: a start with id and name, input_json_delta pieces that
        // concatenate to the whole response's input (greedy), a stop.
        let mut streamed = Vec::new();
        for (name, data) in &events {
            match name.as_str() {
                "content_block_start" => {
                    assert_eq!(data["index"].as_u64().unwrap() as usize, streamed.len());
                    streamed.push((data["content_block"].clone(), String::new()));
                }
                "content_block_delta" => {
                    let i = data["index"].as_u64().unwrap() as usize;
                    assert_eq!(i + 1, streamed.len(), "deltas go to the open block");
                    if let Some(j) = data["delta"]["partial_json"].as_str() {
                        streamed[i].1.push_str(j);
                    }
                }
                _ => {}
            }
        }
        let got: Vec<(Value, Value)> = streamed
            .iter()
            .filter(|(b, _)| b["type"] == "tool_use")
            .map(|(b, j)| (b["name"].clone(), serde_json::from_str(j).unwrap()))
            .collect();
        let want: Vec<(Value, Value)> = uses
            .iter()
            .map(|u| (u["name"].clone(), u["input"].clone()))
            .collect();
        assert_eq!(got, want);
    }

    // A tool result answered; the tool_use turn before it renders through the same history.
    let b = json!({"max_tokens": 20, "temperature": 0, "tools": tools, "messages": [
        {"role": "user", "content": "Weather in London?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
            "input": {"city": "London", "unit": "celsius"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "14 degrees, rain"}]}],
        "tool_choice": {"type": "none"}});
    let r = post(&s, "/v1/messages", &b).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["type"], "text", "{v}");
    let counted: Value = post(&s, "/v1/messages/count_tokens", &b)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(counted["input_tokens"], v["usage"]["input_tokens"]);
}
