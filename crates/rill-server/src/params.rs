//! Turns an OpenAI request body into a scheduler [`Request`]: the body deserializes into the
//! typed request of its endpoint ([`crate::protocol::request`], which checks every field's type
//! and range and names the parameter at fault; unknown fields are ignored, as OpenAI clients
//! expect), then what needs the model is checked here: the prompt's length, token ids,
//! `response_format` and tool grammars.

use rill_engine::Constraint;
use rill_engine::{ChatMessage, SamplingParams};
use rill_scheduler::{Constrained, Request, SchedulerHandle};
use serde_json::{Map, Value};

use crate::protocol::request::{
    self, ChatCompletionRequest, Choices, CompletionRequest, Generation, InputMessage, LogitBias,
    Prompt, ResponseFormat,
};
use crate::protocol::ApiError;
use crate::tools::{self, Tools};

/// Which OpenAI endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`: `messages`, rendered through the chat template.
    Chat,
    /// `/v1/completions`: a raw `prompt` (text or token ids).
    Completion,
}

/// The most choices (`n`) one request may ask for.
pub const MAX_CHOICES: usize = Choices::RANGE.max as usize;

/// A parsed generation request.
#[derive(Debug, Clone)]
pub struct GenParams {
    /// The endpoint, which decides the prompt field and the response shape.
    pub kind: Kind,
    /// What goes to the scheduler: prompt tokens, `max_tokens` (default: all the room the
    /// context leaves), sampling, stop sequences, priority.
    pub request: Request,
    /// `n`: choices to generate for the prompt (1..=[`MAX_CHOICES`]), each a sibling request
    /// that reuses the prompt's KV blocks through the prefix cache; with a `seed`, choice `i`
    /// samples with `seed + i`.
    pub n: usize,
    /// `stream`: answer with SSE chunks instead of one JSON body (default false).
    pub stream: bool,
    /// `stream_options.include_usage`: send a final usage chunk when streaming (default false).
    pub include_usage: bool,
    /// Return log-probabilities, with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// The answer may hold tool calls (`tools` offered and `tool_choice` not `none`): its text
    /// is split into content and calls.
    pub tool_calls: bool,
    /// `resumable` (rill extension): keep generating for the resume window after the client
    /// disconnects, so that it can reattach (default false).
    pub resumable: bool,
}

/// The server's bounds on one request (from [`crate::ServeConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Prompt tokens a request may carry (0: the model's limit).
    pub max_prompt_tokens: usize,
    /// `max_tokens` of a request that names none (bounded by what the context leaves).
    pub default_max_tokens: usize,
}

impl RequestLimits {
    /// The limits `cfg` sets.
    pub fn of(cfg: &crate::ServeConfig) -> Self {
        Self {
            max_prompt_tokens: cfg.max_prompt_tokens,
            default_max_tokens: cfg.default_max_tokens,
        }
    }
}

/// `response_format` compiled against the model's vocabulary (None: `text`). An invalid
/// schema, grammar or expression is a 400 naming `response_format`.
fn response_format(
    f: ResponseFormat,
    h: &SchedulerHandle,
) -> Result<Option<Constrained>, ApiError> {
    let constraint = match f {
        ResponseFormat::Text => return Ok(None),
        ResponseFormat::JsonObject => Constraint::JsonObject,
        ResponseFormat::JsonSchema { schema, strict } => Constraint::JsonSchema { schema, strict },
        ResponseFormat::Grammar(g) => Constraint::Lark(g),
        ResponseFormat::Regex(r) => Constraint::Regex(r),
    };
    let env = h.constraint_env().map_err(|e| {
        ApiError::internal(format!(
            "cannot build this model's constraint vocabulary: {e}"
        ))
    })?;
    let state = env
        .compile(&constraint)
        .map_err(|e| ApiError::param("response_format", e.to_string()))?;
    Ok(Some(Constrained::new(state)))
}

/// The grammar that keeps a tool-calling answer's calls well-formed: from the first token
/// (`required`, a named function) or from the `<tool_call>` marker on (`auto`).
pub fn tool_constraint(t: &Tools, h: &SchedulerHandle) -> Result<Constrained, ApiError> {
    let env = h.constraint_env().map_err(|e| {
        ApiError::internal(format!(
            "cannot build this model's constraint vocabulary: {e}"
        ))
    })?;
    let state = env.compile(&Constraint::Lark(t.grammar())).map_err(|e| {
        ApiError::param(
            "tools",
            format!("cannot enforce these tools' parameters: {e}"),
        )
    })?;
    Ok(match t.trigger() {
        Some(trigger) => Constrained::lazy(state, trigger),
        None => Constrained::new(state),
    })
}

/// `logit_bias`, each token id checked against the model's vocabulary.
fn logit_bias(b: Option<LogitBias>, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let b = b.map(|b| b.0).unwrap_or_default();
    if let Some((t, _)) = b.iter().find(|(t, _)| *t as usize >= vocab) {
        return Err(ApiError::param(
            "logit_bias",
            format!("`{t}` is not a token id of this model (0..{vocab})"),
        ));
    }
    Ok(b)
}

/// Parses the body bytes as a JSON object (400 for invalid UTF-8, malformed JSON, non-objects).
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(format!("request body is not valid UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

/// The conversation as chat templates take it: `developer` is `system`, an assistant's calls
/// carry their arguments as objects.
fn messages(msgs: Vec<InputMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::param("messages", "`messages` must not be empty"));
    }
    msgs.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let p = |f: &str| format!("messages[{i}].{f}");
            if m.function_call.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ApiError::param(
                    &p("function_call"),
                    "`function_call` (the deprecated `functions` API) is not supported; use `tool_calls`",
                ));
            }
            let tool_calls = match m.tool_calls {
                None => None,
                Some(calls) if m.role == request::Role::Assistant => Some(Value::Array(
                    calls
                        .into_iter()
                        .map(|c| {
                            let arguments = c
                                .function
                                .arguments
                                .map_or_else(|| Value::Object(Map::new()), |a| a.0);
                            serde_json::json!({
                                "id": c.id.unwrap_or_default(),
                                "type": "function",
                                "function": {"name": c.function.name, "arguments": arguments},
                            })
                        })
                        .collect(),
                )),
                Some(_) => {
                    return Err(ApiError::param(
                        &p("tool_calls"),
                        "only assistant messages carry `tool_calls`",
                    ))
                }
            };
            let content = m.content.map(|c| c.0).unwrap_or_default();
            let mut msg = ChatMessage::new(m.role.template_role(), &content);
            msg.tool_calls = tool_calls;
            msg.tool_call_id = m.tool_call_id;
            Ok(msg)
        })
        .collect()
}

fn encode(h: &SchedulerHandle, text: &str) -> Result<Vec<u32>, ApiError> {
    h.tokenizer()
        .encode(text, true)
        .map_err(|e| ApiError::param("prompt", format!("cannot tokenize: {e}")))
}

/// Parses a chat or completions request into scheduler terms (tokenizing the prompt: call it
/// off the async executor for large bodies).
pub fn parse(
    kind: Kind,
    body: &Map<String, Value>,
    h: &SchedulerHandle,
    limits: RequestLimits,
) -> Result<GenParams, ApiError> {
    request::refuse_unimplemented(kind, body)?;
    let (g, tools, prompt, logprobs) = match kind {
        Kind::Chat => {
            let ChatCompletionRequest { chat, generation } =
                ChatCompletionRequest::from_body(body)?;
            let tools = chat.tools()?;
            let on = chat.logprobs.unwrap_or(false);
            if chat.top_logprobs.is_some() && !on {
                return Err(ApiError::param(
                    "top_logprobs",
                    "`top_logprobs` requires `logprobs: true`",
                ));
            }
            let logprobs = on.then(|| chat.top_logprobs.map_or(0, |t| t.0 as usize));
            let msgs = messages(chat.messages)?;
            let text = tools::prompt::render(h.chat_template(), msgs, tools.as_ref())
                .map_err(|e| ApiError::param("messages", e.to_string()))?;
            (generation, tools, encode(h, &text)?, logprobs)
        }
        Kind::Completion => {
            let CompletionRequest {
                completion,
                generation,
            } = CompletionRequest::from_body(body)?;
            let prompt = match completion.prompt {
                Prompt::Text(s) => encode(h, &s)?,
                Prompt::Tokens(t) => t,
            };
            let logprobs = completion.logprobs.map(|n| n.0 as usize);
            (generation, None, prompt, logprobs)
        }
    };
    let Generation {
        model: _,
        n,
        best_of: _,
        max_tokens,
        max_completion_tokens,
        temperature,
        top_p,
        top_k,
        min_p,
        repetition_penalty,
        frequency_penalty,
        presence_penalty,
        seed,
        ignore_eos,
        logit_bias: bias,
        stop,
        stream,
        stream_options,
        priority,
        speculative,
        resumable,
        response_format: format,
    } = g;
    let prompt_param = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    if prompt.is_empty() {
        return Err(ApiError::param(prompt_param, "the prompt is empty"));
    }
    let default_max_tokens = limits.default_max_tokens;
    let max_prompt_tokens = limits.max_prompt_tokens;
    let limits = h.limits();
    let prompt_cap = if max_prompt_tokens > 0 {
        max_prompt_tokens.min(limits.max_sequence_tokens)
    } else {
        limits.max_sequence_tokens
    };
    if prompt.len() >= prompt_cap {
        let mut e = ApiError::param(
            prompt_param,
            format!(
                "the prompt has {} tokens; the limit is {} (this model's context and KV cache leave {})",
                prompt.len(),
                prompt_cap.saturating_sub(1),
                limits.max_sequence_tokens
            ),
        );
        e.kind = crate::protocol::ErrorKind::ContextLengthExceeded;
        return Err(e);
    }
    let room = limits.max_sequence_tokens - prompt.len();
    let max_tokens = max_completion_tokens
        .or(max_tokens)
        .map_or(default_max_tokens.min(room), |v| {
            usize::try_from(v.0).unwrap_or(usize::MAX)
        });
    if max_tokens > room {
        let mut e = ApiError::param(
            "max_tokens",
            format!(
                "prompt ({} tokens) plus max_tokens ({max_tokens}) exceeds the {}-token limit",
                prompt.len(),
                limits.max_sequence_tokens
            ),
        );
        e.kind = crate::protocol::ErrorKind::ContextLengthExceeded;
        return Err(e);
    }
    let d = SamplingParams::default();
    let float = |v: Option<f64>, default: f32| v.map_or(default, |v| v as f32);
    let sampling = SamplingParams {
        temperature: float(temperature.map(|v| v.0), d.temperature),
        top_p: float(top_p.map(|v| v.0), d.top_p),
        top_k: top_k.map_or(d.top_k, |v| v.0 as usize),
        min_p: float(min_p.map(|v| v.0), d.min_p),
        repetition_penalty: float(repetition_penalty.map(|v| v.0), d.repetition_penalty),
        frequency_penalty: float(frequency_penalty.map(|v| v.0), d.frequency_penalty),
        presence_penalty: float(presence_penalty.map(|v| v.0), d.presence_penalty),
        seed: seed.map(|s| s.0),
        logprobs: logprobs.is_some(),
        top_logprobs: logprobs.unwrap_or(0),
        ignore_eos: ignore_eos.unwrap_or(false),
        logit_bias: logit_bias(bias, limits.vocab_size)?,
        ..d
    };
    if let Err((field, msg)) = sampling.validate() {
        return Err(ApiError::param(&field, msg));
    }
    let format = match format {
        None => None,
        Some(f) => response_format(f, h)?,
    };
    let constraint = match &tools {
        Some(_) if format.is_some() => return Err(ApiError::param(
            "response_format",
            "`response_format` cannot be combined with `tools` (unless `tool_choice` is `none`)",
        )),
        Some(t) => Some(tool_constraint(t, h)?),
        None => format,
    };
    Ok(GenParams {
        kind,
        request: Request {
            prompt,
            max_tokens,
            sampling,
            stop: stop.map(|s| s.0).unwrap_or_default(),
            priority: priority.map_or(0, |p| p.0 as i32),
            speculative: speculative.unwrap_or(true),
            constraint,
        },
        tool_calls: tools.is_some(),
        n: n.map_or(1, |n| n.0 as usize),
        stream: stream.unwrap_or(false),
        include_usage: stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs,
        resumable: resumable.unwrap_or(false),
    })
}
