//! Renders one request's scheduler events as OpenAI payloads ([`crate::protocol::openai`]):
//! streaming chunks for SSE, or, absorbed event by event, one whole response.

use std::sync::Arc;

use rill_engine::{SampledToken, Tokenizer};
use rill_scheduler::{Event, FinishReason, Timings, Usage};
use serde_json::Value;

use crate::params::{GenParams, Kind};
use crate::protocol::openai::{
    ChatLogprobs, Chunk, ChunkChoice, Completion, CompletionLogprobs, Delta, FunctionCall,
    FunctionDelta, Message, ResponseChoice, TimingsBody, TokenLogprob, ToolCall, ToolCallDelta,
    TopLogprob, UsageBody,
};
use crate::protocol::sse::SsePayload;
use crate::protocol::ApiError;
use crate::tools::parser::{CallParser, Piece};

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

/// Renders scheduler events as OpenAI payloads, for one request (of `n` choices).
pub struct Renderer {
    kind: Kind,
    /// The completion's id (also the stream id).
    pub id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: Option<usize>,
    tokenizer: Arc<Tokenizer>,
    choices: Vec<ChoiceState>,
}

/// One choice's answer so far.
struct ChoiceState {
    // Accumulated for a whole (non-streaming) response.
    text: String,
    chat_logprobs: Vec<TokenLogprob>,
    completion_logprobs: CompletionLogprobs,
    text_offset: usize,
    finish: Option<(FinishReason, Usage, Timings)>,
    /// Splits a tool-calling answer into content and calls.
    calls: Option<CallParser>,
}

impl ChoiceState {
    /// `reason` as the wire says it: a stop after complete tool calls is `tool_calls`.
    fn finish_reason(&self, reason: FinishReason) -> &'static str {
        match &self.calls {
            Some(c) if reason == FinishReason::Stop && c.completed() > 0 => "tool_calls",
            _ => reason.as_str(),
        }
    }

    /// The assistant message of a whole chat response: the text, or its content and calls.
    fn message(&self) -> Message {
        let (content, tool_calls) = match &self.calls {
            None => (Some(self.text.clone()), None),
            Some(p) => {
                let calls: Vec<ToolCall> = p
                    .calls()
                    .iter()
                    .map(|c| ToolCall {
                        id: c.id.clone(),
                        kind: "function",
                        function: FunctionCall {
                            name: c.name.clone(),
                            arguments: c.arguments.clone(),
                        },
                    })
                    .collect();
                let content = p.content();
                if calls.is_empty() {
                    (Some(content.to_string()), None)
                } else {
                    (
                        (!content.trim().is_empty()).then(|| content.to_string()),
                        Some(calls),
                    )
                }
            }
        };
        Message {
            role: "assistant",
            content,
            tool_calls,
            refusal: None,
        }
    }
}

/// The chat deltas of parsed pieces, in order: content, and call fragments. A call's first
/// fragment carries only its `id`, `type` and `function.name` (with `arguments: ""`, as OpenAI
/// sends it) and ends its delta; the call's arguments follow in the next one.
fn deltas_of(pieces: Vec<Piece>) -> Vec<Delta> {
    let mut out = Vec::new();
    let mut content: Option<String> = None;
    let mut calls: Vec<ToolCallDelta> = Vec::new();
    let flush =
        |content: &mut Option<String>, calls: &mut Vec<ToolCallDelta>, out: &mut Vec<Delta>| {
            if content.is_some() || !calls.is_empty() {
                out.push(Delta {
                    role: None,
                    content: content.take(),
                    tool_calls: (!calls.is_empty()).then(|| std::mem::take(calls)),
                });
            }
        };
    for p in pieces {
        match p {
            Piece::Content(t) => content.get_or_insert_with(String::new).push_str(&t),
            Piece::Start { index, id, name } => {
                calls.push(ToolCallDelta {
                    index,
                    id: Some(id),
                    kind: Some("function"),
                    function: FunctionDelta {
                        name: Some(name),
                        arguments: String::new(),
                    },
                });
                flush(&mut content, &mut calls, &mut out);
            }
            Piece::Arguments { index, text } => match calls.last_mut() {
                Some(c) if c.index == index => c.function.arguments.push_str(&text),
                _ => calls.push(ToolCallDelta {
                    index,
                    id: None,
                    kind: None,
                    function: FunctionDelta {
                        name: None,
                        arguments: text,
                    },
                }),
            },
        }
    }
    flush(&mut content, &mut calls, &mut out);
    out
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
            choices: (0..p.n.max(1))
                .map(|_| ChoiceState {
                    text: String::new(),
                    chat_logprobs: Vec::new(),
                    completion_logprobs: CompletionLogprobs::default(),
                    text_offset: 0,
                    finish: None,
                    calls: p.tool_calls.then(CallParser::new),
                })
                .collect(),
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

    fn completion_logprobs(
        &mut self,
        choice: usize,
        tokens: &[SampledToken],
    ) -> CompletionLogprobs {
        let mut lp = CompletionLogprobs::default();
        let mut offset = self.choices[choice].text_offset;
        for t in tokens {
            let s = self.token_text(t.id);
            lp.text_offset.push(offset);
            offset += s.len();
            lp.tokens.push(s);
            lp.token_logprobs.push(t.logprob);
            lp.top_logprobs.push(
                t.top_logprobs
                    .iter()
                    .map(|&(id, lp)| (self.token_text(id), Value::from(lp)))
                    .collect(),
            );
        }
        self.choices[choice].text_offset = offset;
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

    /// The request's token counts: the prompt once, every choice's completion.
    fn usage(&self) -> Usage {
        let mut total = Usage::default();
        for (i, (_, u, _)) in self
            .choices
            .iter()
            .filter_map(|c| c.finish.as_ref())
            .enumerate()
        {
            if i == 0 {
                total.prompt_tokens = u.prompt_tokens;
                total.cached_tokens = u.cached_tokens;
            }
            total.completion_tokens += u.completion_tokens;
        }
        total
    }

    /// Streaming: the payloads choice `choice`'s event turns into (possibly none).
    pub fn stream_event(&mut self, choice: usize, ev: &Event) -> Vec<SsePayload> {
        let one = |c: Chunk| vec![SsePayload::Chunk(Box::new(c))];
        let index = choice as u32;
        match ev {
            Event::Started { .. } => match self.kind {
                Kind::Chat => one(self.chunk(vec![ChunkChoice::Chat {
                    index,
                    delta: Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        tool_calls: None,
                    },
                    logprobs: None,
                    finish_reason: None,
                }])),
                Kind::Completion => Vec::new(),
            },
            Event::Tokens { tokens, text, .. } => {
                let with_lp = self.logprobs.is_some() && !tokens.is_empty();
                let deltas = match self.choices[choice].calls.as_mut() {
                    Some(p) => deltas_of(p.push(text)),
                    None => vec![Delta {
                        role: None,
                        content: Some(text.clone()),
                        tool_calls: None,
                    }],
                };
                let empty = match self.kind {
                    Kind::Chat => deltas.iter().all(|d| {
                        d.content.as_ref().is_none_or(String::is_empty) && d.tool_calls.is_none()
                    }),
                    Kind::Completion => text.is_empty(),
                };
                if empty && !with_lp {
                    return Vec::new();
                }
                match self.kind {
                    Kind::Chat => {
                        // The tokens' log probabilities ride on the event's first chunk.
                        let mut logprobs = with_lp.then(|| ChatLogprobs {
                            content: tokens.iter().map(|t| self.chat_logprob(t)).collect(),
                        });
                        let deltas = if deltas.is_empty() {
                            vec![Delta::default()]
                        } else {
                            deltas
                        };
                        deltas
                            .into_iter()
                            .map(|delta| {
                                let c = ChunkChoice::Chat {
                                    index,
                                    delta,
                                    logprobs: logprobs.take(),
                                    finish_reason: None,
                                };
                                SsePayload::Chunk(Box::new(self.chunk(vec![c])))
                            })
                            .collect()
                    }
                    Kind::Completion => {
                        let c = ChunkChoice::Text {
                            index,
                            text: text.clone(),
                            logprobs: with_lp.then(|| self.completion_logprobs(choice, tokens)),
                            finish_reason: None,
                        };
                        one(self.chunk(vec![c]))
                    }
                }
            }
            Event::Finished {
                reason,
                usage,
                timings,
                ..
            } => {
                let mut out = Vec::new();
                let c = &mut self.choices[choice];
                let rest = c.calls.as_mut().map(CallParser::finish).unwrap_or_default();
                c.finish = Some((*reason, *usage, *timings));
                let finish_reason = Some(c.finish_reason(*reason));
                for delta in deltas_of(rest) {
                    out.push(SsePayload::Chunk(Box::new(self.chunk(vec![
                        ChunkChoice::Chat {
                            index,
                            delta,
                            logprobs: None,
                            finish_reason: None,
                        },
                    ]))));
                }
                let last = match self.kind {
                    Kind::Chat => ChunkChoice::Chat {
                        index,
                        delta: Delta::default(),
                        logprobs: None,
                        finish_reason,
                    },
                    Kind::Completion => ChunkChoice::Text {
                        index,
                        text: String::new(),
                        logprobs: None,
                        finish_reason,
                    },
                };
                let mut last = self.chunk(vec![last]);
                last.timings = Some(TimingsBody::new(timings, usage));
                out.push(SsePayload::Chunk(Box::new(last)));
                if self.include_usage && self.choices.iter().all(|c| c.finish.is_some()) {
                    let total = self.usage();
                    let mut u = self.chunk(Vec::new());
                    u.usage = Some(UsageBody::from(&total));
                    u.timings = Some(TimingsBody::new(timings, &total));
                    out.push(SsePayload::Chunk(Box::new(u)));
                }
                out
            }
            Event::Error { code, message, .. } => {
                vec![SsePayload::error(&ApiError::from_event(*code, message))]
            }
        }
    }

    /// Non-streaming: absorbs choice `choice`'s event; returns the error if the generation
    /// failed.
    pub fn absorb(&mut self, choice: usize, ev: &Event) -> Option<ApiError> {
        match ev {
            Event::Tokens { tokens, text, .. } => {
                if self.logprobs.is_some() {
                    match self.kind {
                        Kind::Chat => {
                            let v: Vec<TokenLogprob> =
                                tokens.iter().map(|t| self.chat_logprob(t)).collect();
                            self.choices[choice].chat_logprobs.extend(v);
                        }
                        Kind::Completion => {
                            let v = self.completion_logprobs(choice, tokens);
                            self.choices[choice].completion_logprobs.extend(v);
                        }
                    }
                }
                let c = &mut self.choices[choice];
                c.text.push_str(text);
                if let Some(p) = c.calls.as_mut() {
                    p.push(text);
                }
                None
            }
            Event::Finished {
                reason,
                usage,
                timings,
                ..
            } => {
                let c = &mut self.choices[choice];
                if let Some(p) = c.calls.as_mut() {
                    p.finish();
                }
                c.finish = Some((*reason, *usage, *timings));
                None
            }
            Event::Error { code, message, .. } => Some(ApiError::from_event(*code, message)),
            Event::Started { .. } => None,
        }
    }

    /// Non-streaming: the whole response after every choice's `Finished`.
    pub fn response(&self) -> Completion {
        let with_lp = self.logprobs.is_some();
        let choices: Vec<ResponseChoice> = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let reason = c.finish.map_or(FinishReason::Stop, |f| f.0);
                let index = i as u32;
                match self.kind {
                    Kind::Chat => ResponseChoice::Chat {
                        index,
                        message: c.message(),
                        logprobs: with_lp.then(|| ChatLogprobs {
                            content: c.chat_logprobs.clone(),
                        }),
                        finish_reason: c.finish_reason(reason),
                    },
                    Kind::Completion => ResponseChoice::Text {
                        index,
                        text: c.text.clone(),
                        logprobs: with_lp.then(|| c.completion_logprobs.clone()),
                        finish_reason: reason.as_str(),
                    },
                }
            })
            .collect();
        let usage = self.usage();
        let timings = self
            .choices
            .first()
            .and_then(|c| c.finish)
            .map_or_else(Timings::default, |f| f.2);
        Completion {
            id: self.id.clone(),
            object: match self.kind {
                Kind::Chat => "chat.completion",
                Kind::Completion => "text_completion",
            },
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: "rill",
            choices,
            usage: UsageBody::from(&usage),
            timings: TimingsBody::new(&timings, &usage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calls_first_fragment_has_only_its_name_and_the_arguments_follow() {
        let mut p = CallParser::new();
        // One token event that completes the head and starts the arguments.
        let deltas = deltas_of(
            p.push("Sure.<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>"),
        );
        assert_eq!(deltas.len(), 2, "{deltas:?}");
        let first = &deltas[0];
        assert_eq!(first.content.as_deref(), Some("Sure."));
        let call = &first.tool_calls.as_ref().unwrap()[0];
        assert_eq!(call.function.name.as_deref(), Some("f"));
        assert!(call.id.is_some() && call.function.arguments.is_empty());
        let rest = &deltas[1].tool_calls.as_ref().unwrap()[0];
        assert!(rest.id.is_none() && rest.function.name.is_none());
        assert_eq!(rest.function.arguments, "{\"a\": 1}");
    }
}
