//! OpenAI response shapes: streaming chunks (`chat.completion.chunk`, `text_completion`) and
//! whole responses, built from scheduler events, plus rill's `timings` object.

use std::sync::Arc;

use rill_engine::{SampledToken, Tokenizer};
use rill_scheduler::{Event, FinishReason, Timings, Usage};
use serde_json::{json, Value};

use crate::params::{GenParams, Kind};

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new id: `prefix` and 24 random hex digits.
pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:024x}",
        rand::random::<u128>() & ((1u128 << 96) - 1)
    )
}

pub fn timings_json(t: &Timings, u: &Usage) -> Value {
    json!({
        "queue_ms": t.queue_ms,
        "ttft_ms": t.ttft_ms,
        "prompt_ms": t.prefill_ms,
        "prompt_tokens_per_s": t.prompt_tokens_per_s,
        "generation_tokens_per_s": t.decode_tokens_per_s,
        "itl_mean_ms": t.itl_mean_ms,
        "itl_p50_ms": t.itl_p50_ms,
        "itl_p95_ms": t.itl_p95_ms,
        "total_ms": t.total_ms,
        "cached_tokens": u.cached_tokens,
        "preemptions": t.preemptions,
        "draft_tokens": t.draft_tokens,
        "accepted_tokens": t.accepted_tokens,
    })
}

pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// The payload of an error event after a stream began.
pub fn stream_error_json(code: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": "server_error", "code": code, "param": null}})
}

/// Renders scheduler events as OpenAI JSON, for one request.
pub struct Renderer {
    kind: Kind,
    pub id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: Option<usize>,
    tokenizer: Arc<Tokenizer>,
    // Accumulated for a whole (non-streaming) response.
    text: String,
    chat_logprobs: Vec<Value>,
    text_offset: usize,
    finish: Option<(FinishReason, Usage, Timings)>,
}

impl Renderer {
    pub fn new(p: &GenParams, id: String, model: &str, tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            kind: p.kind,
            id,
            created: now_unix(),
            model: model.to_string(),
            include_usage: p.include_usage,
            logprobs: p.logprobs,
            tokenizer,
            text: String::new(),
            chat_logprobs: Vec::new(),
            text_offset: 0,
            finish: None,
        }
    }

    fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.tokenizer.token_bytes(id)).into_owned()
    }

    fn chat_logprob(&self, t: &SampledToken) -> Value {
        let entry = |id: u32, lp: f32| {
            let bytes = self.tokenizer.token_bytes(id);
            json!({"token": String::from_utf8_lossy(bytes), "logprob": lp, "bytes": bytes})
        };
        let mut v = entry(t.id, t.logprob);
        v["top_logprobs"] = t
            .top_logprobs
            .iter()
            .map(|&(id, lp)| entry(id, lp))
            .collect::<Vec<_>>()
            .into();
        v
    }

    fn completion_logprobs(&mut self, tokens: &[SampledToken]) -> Value {
        let mut toks = Vec::new();
        let mut lps = Vec::new();
        let mut tops = Vec::new();
        let mut offsets = Vec::new();
        for t in tokens {
            let s = self.token_text(t.id);
            offsets.push(self.text_offset);
            self.text_offset += s.len();
            toks.push(Value::from(s));
            lps.push(Value::from(t.logprob));
            let top: serde_json::Map<String, Value> = t
                .top_logprobs
                .iter()
                .map(|&(id, lp)| (self.token_text(id), Value::from(lp)))
                .collect();
            tops.push(Value::Object(top));
        }
        json!({"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
    }

    /// The fields every response and chunk shares, around one choice.
    fn envelope(&self, object: &str, choice: Value) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "rill",
            "choices": [choice],
        })
    }

    fn chunk(&self, choice: Value) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        self.envelope(object, choice)
    }

    /// Streaming: the data payloads an event turns into (possibly none).
    pub fn stream_event(&mut self, ev: &Event) -> Vec<Value> {
        match ev {
            Event::Started { .. } => match self.kind {
                Kind::Chat => vec![self.chunk(json!({
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null,
                    "finish_reason": null,
                }))],
                Kind::Completion => Vec::new(),
            },
            Event::Tokens { tokens, text, .. } => {
                let with_lp = self.logprobs.is_some() && !tokens.is_empty();
                if text.is_empty() && !with_lp {
                    return Vec::new();
                }
                let choice = match self.kind {
                    Kind::Chat => {
                        let lp = if with_lp {
                            json!({"content": tokens.iter().map(|t| self.chat_logprob(t)).collect::<Vec<_>>()})
                        } else {
                            Value::Null
                        };
                        json!({"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
                    }
                    Kind::Completion => {
                        let lp = if with_lp {
                            self.completion_logprobs(tokens)
                        } else {
                            Value::Null
                        };
                        json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": null})
                    }
                };
                vec![self.chunk(choice)]
            }
            Event::Finished {
                reason,
                usage,
                timings,
                ..
            } => {
                let mut last = match self.kind {
                    Kind::Chat => self.chunk(json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason.as_str()})),
                    Kind::Completion => self.chunk(json!({"index": 0, "text": "", "logprobs": null, "finish_reason": reason.as_str()})),
                };
                last["timings"] = timings_json(timings, usage);
                let mut out = vec![last];
                if self.include_usage {
                    let mut u = self.chunk(Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage_json(usage);
                    u["timings"] = timings_json(timings, usage);
                    out.push(u);
                }
                out
            }
            Event::Error { code, message, .. } => {
                vec![stream_error_json(code.as_str(), message)]
            }
        }
    }

    /// Non-streaming: absorbs an event; returns an error payload if the generation failed.
    pub fn absorb(&mut self, ev: &Event) -> Option<(String, String)> {
        match ev {
            Event::Tokens { tokens, text, .. } => {
                if self.logprobs.is_some() {
                    match self.kind {
                        Kind::Chat => {
                            let v: Vec<Value> =
                                tokens.iter().map(|t| self.chat_logprob(t)).collect();
                            self.chat_logprobs.extend(v);
                        }
                        Kind::Completion => {
                            let v = self.completion_logprobs(tokens);
                            self.chat_logprobs.push(v);
                        }
                    }
                }
                self.text.push_str(text);
                None
            }
            Event::Finished {
                reason,
                usage,
                timings,
                ..
            } => {
                self.finish = Some((*reason, *usage, *timings));
                None
            }
            Event::Error { code, message, .. } => {
                Some((code.as_str().to_string(), message.clone()))
            }
            Event::Started { .. } => None,
        }
    }

    /// Non-streaming: the whole response after `Finished`.
    pub fn response(&self) -> Value {
        let (reason, usage, timings) =
            self.finish
                .unwrap_or((FinishReason::Stop, Usage::default(), Timings::default()));
        let (object, choice) = match self.kind {
            Kind::Chat => {
                let lp = if self.logprobs.is_some() {
                    json!({"content": self.chat_logprobs})
                } else {
                    Value::Null
                };
                (
                    "chat.completion",
                    json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": self.text, "refusal": null},
                        "logprobs": lp,
                        "finish_reason": reason.as_str(),
                    }),
                )
            }
            Kind::Completion => {
                let lp = if self.logprobs.is_some() {
                    let mut merged = json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
                    for part in &self.chat_logprobs {
                        for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
                            if let (Some(dst), Some(src)) =
                                (merged[k].as_array_mut(), part[k].as_array())
                            {
                                dst.extend(src.iter().cloned());
                            }
                        }
                    }
                    merged
                } else {
                    Value::Null
                };
                (
                    "text_completion",
                    json!({
                        "index": 0,
                        "text": self.text,
                        "logprobs": lp,
                        "finish_reason": reason.as_str(),
                    }),
                )
            }
        };
        let mut v = self.envelope(object, choice);
        v["usage"] = usage_json(&usage);
        v["timings"] = timings_json(&timings, &usage);
        v
    }
}
