//! Renders one request's scheduler events as OpenAI payloads ([`crate::protocol::openai`]):
//! streaming chunks for SSE, or, absorbed event by event, one whole response.

use std::sync::Arc;

use rill_engine::{SampledToken, Tokenizer};
use rill_scheduler::{Event, FinishReason, Timings, Usage};
use serde_json::Value;

use crate::params::{GenParams, Kind};
use crate::protocol::openai::{
    ChatLogprobs, Chunk, ChunkChoice, Completion, CompletionLogprobs, Delta, Message,
    ResponseChoice, TimingsBody, TokenLogprob, TopLogprob, UsageBody,
};
use crate::protocol::sse::SsePayload;
use crate::protocol::ApiError;

/// Seconds since the Unix epoch.
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

/// Renders scheduler events as OpenAI payloads, for one request.
pub struct Renderer {
    kind: Kind,
    /// The completion's id (also the stream id).
    pub id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: Option<usize>,
    tokenizer: Arc<Tokenizer>,
    // Accumulated for a whole (non-streaming) response.
    text: String,
    chat_logprobs: Vec<TokenLogprob>,
    completion_logprobs: CompletionLogprobs,
    text_offset: usize,
    finish: Option<(FinishReason, Usage, Timings)>,
}

impl Renderer {
    /// A renderer for the request `p`, answering as `model`.
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
            completion_logprobs: CompletionLogprobs::default(),
            text_offset: 0,
            finish: None,
        }
    }

    fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.tokenizer.token_bytes(id)).into_owned()
    }

    fn chat_logprob(&self, t: &SampledToken) -> TokenLogprob {
        let entry = |id: u32, lp: f32| {
            let bytes = self.tokenizer.token_bytes(id);
            TopLogprob {
                token: String::from_utf8_lossy(bytes).into_owned(),
                logprob: lp,
                bytes: bytes.to_vec(),
            }
        };
        let e = entry(t.id, t.logprob);
        TokenLogprob {
            token: e.token,
            logprob: e.logprob,
            bytes: e.bytes,
            top_logprobs: t
                .top_logprobs
                .iter()
                .map(|&(id, lp)| entry(id, lp))
                .collect(),
        }
    }

    fn completion_logprobs(&mut self, tokens: &[SampledToken]) -> CompletionLogprobs {
        let mut lp = CompletionLogprobs::default();
        for t in tokens {
            let s = self.token_text(t.id);
            lp.text_offset.push(self.text_offset);
            self.text_offset += s.len();
            lp.tokens.push(s);
            lp.token_logprobs.push(t.logprob);
            lp.top_logprobs.push(
                t.top_logprobs
                    .iter()
                    .map(|&(id, lp)| (self.token_text(id), Value::from(lp)))
                    .collect(),
            );
        }
        lp
    }

    fn chunk(&self, choices: Vec<ChunkChoice>) -> Chunk {
        Chunk {
            id: self.id.clone(),
            object: match self.kind {
                Kind::Chat => "chat.completion.chunk",
                Kind::Completion => "text_completion",
            },
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: "rill",
            choices,
            usage: None,
            timings: None,
        }
    }

    /// Streaming: the payloads an event turns into (possibly none).
    pub fn stream_event(&mut self, ev: &Event) -> Vec<SsePayload> {
        let one = |c: Chunk| vec![SsePayload::Chunk(Box::new(c))];
        match ev {
            Event::Started { .. } => match self.kind {
                Kind::Chat => one(self.chunk(vec![ChunkChoice::Chat {
                    index: 0,
                    delta: Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    },
                    logprobs: None,
                    finish_reason: None,
                }])),
                Kind::Completion => Vec::new(),
            },
            Event::Tokens { tokens, text, .. } => {
                let with_lp = self.logprobs.is_some() && !tokens.is_empty();
                if text.is_empty() && !with_lp {
                    return Vec::new();
                }
                let choice = match self.kind {
                    Kind::Chat => ChunkChoice::Chat {
                        index: 0,
                        delta: Delta {
                            role: None,
                            content: Some(text.clone()),
                        },
                        logprobs: with_lp.then(|| ChatLogprobs {
                            content: tokens.iter().map(|t| self.chat_logprob(t)).collect(),
                        }),
                        finish_reason: None,
                    },
                    Kind::Completion => ChunkChoice::Text {
                        index: 0,
                        text: text.clone(),
                        logprobs: with_lp.then(|| self.completion_logprobs(tokens)),
                        finish_reason: None,
                    },
                };
                one(self.chunk(vec![choice]))
            }
            Event::Finished {
                reason,
                usage,
                timings,
                ..
            } => {
                let finish_reason = Some(reason.as_str());
                let choice = match self.kind {
                    Kind::Chat => ChunkChoice::Chat {
                        index: 0,
                        delta: Delta::default(),
                        logprobs: None,
                        finish_reason,
                    },
                    Kind::Completion => ChunkChoice::Text {
                        index: 0,
                        text: String::new(),
                        logprobs: None,
                        finish_reason,
                    },
                };
                let mut last = self.chunk(vec![choice]);
                last.timings = Some(TimingsBody::new(timings, usage));
                let mut out = vec![SsePayload::Chunk(Box::new(last))];
                if self.include_usage {
                    let mut u = self.chunk(Vec::new());
                    u.usage = Some(UsageBody::from(usage));
                    u.timings = Some(TimingsBody::new(timings, usage));
                    out.push(SsePayload::Chunk(Box::new(u)));
                }
                out
            }
            Event::Error { code, message, .. } => {
                vec![SsePayload::error(&ApiError::from_event(*code, message))]
            }
        }
    }

    /// Non-streaming: absorbs an event; returns the error if the generation failed.
    pub fn absorb(&mut self, ev: &Event) -> Option<ApiError> {
        match ev {
            Event::Tokens { tokens, text, .. } => {
                if self.logprobs.is_some() {
                    match self.kind {
                        Kind::Chat => {
                            let v: Vec<TokenLogprob> =
                                tokens.iter().map(|t| self.chat_logprob(t)).collect();
                            self.chat_logprobs.extend(v);
                        }
                        Kind::Completion => {
                            let v = self.completion_logprobs(tokens);
                            self.completion_logprobs.extend(v);
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
            Event::Error { code, message, .. } => Some(ApiError::from_event(*code, message)),
            Event::Started { .. } => None,
        }
    }

    /// Non-streaming: the whole response after `Finished`.
    pub fn response(&self) -> Completion {
        let (reason, usage, timings) =
            self.finish
                .unwrap_or((FinishReason::Stop, Usage::default(), Timings::default()));
        let with_lp = self.logprobs.is_some();
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                ResponseChoice::Chat {
                    index: 0,
                    message: Message {
                        role: "assistant",
                        content: self.text.clone(),
                        refusal: None,
                    },
                    logprobs: with_lp.then(|| ChatLogprobs {
                        content: self.chat_logprobs.clone(),
                    }),
                    finish_reason: reason.as_str(),
                },
            ),
            Kind::Completion => (
                "text_completion",
                ResponseChoice::Text {
                    index: 0,
                    text: self.text.clone(),
                    logprobs: with_lp.then(|| self.completion_logprobs.clone()),
                    finish_reason: reason.as_str(),
                },
            ),
        };
        Completion {
            id: self.id.clone(),
            object,
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: "rill",
            choices: vec![choice],
            usage: UsageBody::from(&usage),
            timings: TimingsBody::new(&timings, &usage),
        }
    }
}
