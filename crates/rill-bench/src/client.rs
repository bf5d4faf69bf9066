//! One streaming request against an OpenAI-compatible server, timed as a client sees it: time
//! to the first content chunk, every gap between content chunks, end to end. A stream that ends
//! without `[DONE]`, or with an error event, is a failure.

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::workload::Prompt;
pub use rill_history::{Drafts, Sample};

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8080` (with or without `/v1`).
    pub base_url: String,
    /// Sent as a bearer token when set.
    pub api_key: Option<String>,
    /// The `model` field of every request.
    pub model: String,
    /// `chat` or `completions`.
    pub endpoint: String,
}

impl Target {
    fn v1(&self) -> String {
        let b = self.base_url.trim_end_matches('/');
        if b.ends_with("/v1") {
            b.to_string()
        } else {
            format!("{b}/v1")
        }
    }

    /// The first model the server lists (for labelling runs).
    pub async fn discover_model(&self, client: &reqwest::Client) -> Option<String> {
        let mut req = client.get(format!("{}/models", self.v1()));
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let v: Value = req.send().await.ok()?.json().await.ok()?;
        v["data"][0]["id"].as_str().map(String::from)
    }
}

/// Reads a request's speculative-decoding counts from a `timings` object of rill
/// (`draft_tokens`/`accepted_tokens`) or llama-server (`draft_n`/`draft_n_accepted`).
fn drafts_from_timings(t: &Value) -> Option<Drafts> {
    let n = |k: &str| t.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let (d, a) = match (n("draft_tokens"), n("accepted_tokens")) {
        (Some(d), Some(a)) => (d, a),
        _ => (n("draft_n")?, n("draft_n_accepted").unwrap_or(0)),
    };
    Some(Drafts {
        drafted: d,
        accepted: a,
    })
}

fn body(t: &Target, prompt: &Prompt, max_tokens: usize, ignore_eos: bool) -> Value {
    let mut b = json!({
        "model": t.model,
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0,
    });
    if ignore_eos {
        b["ignore_eos"] = json!(true);
    }
    match (t.endpoint.as_str(), prompt) {
        ("completions", Prompt::Text(s)) => b["prompt"] = json!(s),
        ("completions", Prompt::Messages(m)) => {
            let joined: Vec<&str> = m
                .as_array()
                .map(|a| a.iter().filter_map(|x| x["content"].as_str()).collect())
                .unwrap_or_default();
            b["prompt"] = json!(joined.join("\n"));
        }
        (_, Prompt::Text(s)) => b["messages"] = json!([{"role": "user", "content": s}]),
        (_, Prompt::Messages(m)) => b["messages"] = m.clone(),
    }
    b
}

/// Sends one streaming request and measures it.
pub async fn run_one(
    client: &reqwest::Client,
    t: &Target,
    prompt: &Prompt,
    max_tokens: usize,
    ignore_eos: bool,
) -> Sample {
    let path = if t.endpoint == "completions" {
        "completions"
    } else {
        "chat/completions"
    };
    let start = Instant::now();
    let mut req = client
        .post(format!("{}/{path}", t.v1()))
        .json(&body(t, prompt, max_tokens, ignore_eos));
    if let Some(k) = &t.api_key {
        req = req.bearer_auth(k);
    }
    let mut s = Sample::default();
    let ms = |i: Instant| i.duration_since(start).as_secs_f64() * 1e3;
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            s.error = Some(format!("connect: {e}"));
            s.e2e_ms = ms(Instant::now());
            return s;
        }
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        s.error = Some(format!(
            "http {}: {}",
            status.as_u16(),
            text.chars().take(200).collect::<String>()
        ));
        s.e2e_ms = ms(Instant::now());
        return s;
    }
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::<u8>::new();
    let mut last: Option<Instant> = None;
    let mut chunks = 0usize;
    let mut usage_tokens = None;
    let mut done = false;
    'read: while let Some(part) = stream.next().await {
        let part = match part {
            Ok(p) => p,
            Err(e) => {
                s.error = Some(format!("read: {e}"));
                break;
            }
        };
        buf.extend_from_slice(&part);
        while let Some(end) = find_event_end(&buf) {
            let block: Vec<u8> = buf.drain(..end).collect();
            let now = Instant::now();
            for line in String::from_utf8_lossy(&block).lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    done = true;
                    break 'read;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    s.error = Some(format!(
                        "bad event: {}",
                        data.chars().take(120).collect::<String>()
                    ));
                    break 'read;
                };
                if let Some(e) = v.get("error") {
                    let code = e["code"].as_str().or(e["type"].as_str()).unwrap_or("error");
                    s.error = Some(format!("stream error: {code}"));
                    continue;
                }
                if let Some(d) = v.get("timings").and_then(drafts_from_timings) {
                    s.drafts = Some(d);
                }
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    usage_tokens = Some(n as usize);
                }
                let c = &v["choices"][0];
                let text = c["delta"]["content"]
                    .as_str()
                    .or(c["text"].as_str())
                    .unwrap_or("");
                if !text.is_empty() {
                    chunks += 1;
                    match last {
                        None => s.ttft_ms = Some(ms(now)),
                        Some(prev) => s.itl_ms.push(now.duration_since(prev).as_secs_f64() * 1e3),
                    }
                    last = Some(now);
                }
            }
        }
    }
    s.e2e_ms = ms(Instant::now());
    s.output_tokens = usage_tokens.unwrap_or(chunks);
    if s.error.is_none() && !done {
        s.error = Some("stream ended without [DONE]".into());
    }
    s
}

/// End of the first SSE event in `buf` (after its blank line), if complete.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
