//! Turns an OpenAI request body into a scheduler [`Request`]: every field checked for type and
//! range with errors that name the parameter; unknown fields ignored, as OpenAI clients expect.

use rill_engine::Constraint;
use rill_engine::{ChatMessage, SamplingParams};
use rill_scheduler::{Constrained, Request, SchedulerHandle};
use serde_json::{Map, Value};

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
pub const MAX_CHOICES: usize = 8;

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

struct Obj<'a>(&'a Map<String, Value>);

impl<'a> Obj<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn f64(&self, key: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let x = v
                    .as_f64()
                    .ok_or_else(|| ApiError::param(key, format!("`{key}` must be a number")))?;
                if !(min..=max).contains(&x) {
                    return Err(ApiError::param(
                        key,
                        format!("`{key}` = {x} is out of range [{min}, {max}]"),
                    ));
                }
                Ok(Some(x))
            }
        }
    }

    fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let x = v
                    .as_i64()
                    .or_else(|| v.as_u64().map(|u| u as i64))
                    .ok_or_else(|| ApiError::param(key, format!("`{key}` must be an integer")))?;
                if !(min..=max).contains(&x) {
                    return Err(ApiError::param(
                        key,
                        format!("`{key}` = {x} is out of range [{min}, {max}]"),
                    ));
                }
                Ok(Some(x))
            }
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| ApiError::param(key, format!("`{key}` must be a boolean"))),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ApiError::param(key, format!("`{key}` must be a string"))),
        }
    }
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

/// OpenAI fields rill does not implement yet and that would change the output: refused with a
/// 400 naming them (absent, null, or the value in the second column is accepted: it changes
/// nothing).
const NOT_IMPLEMENTED: [(&str, Kinds, Neutral); 10] = [
    ("tools", Kinds::Completion, Neutral::EmptyArray),
    ("tool_choice", Kinds::Completion, Neutral::Str("none")),
    ("functions", Kinds::Both, Neutral::EmptyArray),
    ("function_call", Kinds::Both, Neutral::Str("none")),
    ("audio", Kinds::Chat, Neutral::Nothing),
    ("modalities", Kinds::Chat, Neutral::TextOnly),
    ("prediction", Kinds::Chat, Neutral::Nothing),
    ("web_search_options", Kinds::Chat, Neutral::Nothing),
    ("suffix", Kinds::Completion, Neutral::Str("")),
    ("echo", Kinds::Completion, Neutral::False),
];

/// Which endpoints a refused field belongs to.
#[derive(Clone, Copy, PartialEq)]
enum Kinds {
    Chat,
    Completion,
    Both,
}

/// The value of a refused field that asks for nothing rill lacks.
#[derive(Clone, Copy)]
enum Neutral {
    Nothing,
    EmptyArray,
    Str(&'static str),
    False,
    /// `["text"]`.
    TextOnly,
}

impl Neutral {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Neutral::Nothing => false,
            Neutral::EmptyArray => v.as_array().is_some_and(Vec::is_empty),
            Neutral::Str(s) => v.as_str() == Some(s),
            Neutral::False => v.as_bool() == Some(false),
            Neutral::TextOnly => v.as_array().is_some_and(|a| a.len() == 1 && a[0] == "text"),
        }
    }
}

/// Refuses fields that would change the output and are not implemented.
fn refuse_unimplemented(kind: Kind, o: &Obj) -> Result<(), ApiError> {
    for (field, kinds, neutral) in NOT_IMPLEMENTED {
        let applies = match kinds {
            Kinds::Both => true,
            Kinds::Chat => kind == Kind::Chat,
            Kinds::Completion => kind == Kind::Completion,
        };
        if o.get(field).is_some_and(|v| applies && !neutral.accepts(v)) {
            return Err(ApiError::param(
                field,
                format!("`{field}` is not supported by this server yet; the request would not get what it asks for"),
            ));
        }
    }
    Ok(())
}

/// `response_format`: what the output must match, compiled against the model's vocabulary.
/// `text` (or absent): nothing; `json_object`; `json_schema` (`{"json_schema": {"name",
/// "schema", "strict"}}`; `strict` false, OpenAI's default, ignores the keywords that cannot
/// be enforced); rill's `grammar` (`{"grammar": LARK}`) and `regex` (`{"regex": ...}`). An
/// invalid schema, grammar or expression is a 400 naming `response_format`.
fn response_format(o: &Obj, h: &SchedulerHandle) -> Result<Option<Constrained>, ApiError> {
    let Some(v) = o.get("response_format") else {
        return Ok(None);
    };
    let bad = |m: &str| ApiError::param("response_format", m);
    let f = v
        .as_object()
        .ok_or_else(|| bad("`response_format` must be an object"))?;
    let text = |key: &str| {
        f.get(key)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| bad(&format!("`response_format.{key}` (a string) is required")))
    };
    let constraint = match text("type")?.as_str() {
        "text" => return Ok(None),
        "json_object" => Constraint::JsonObject,
        "json_schema" => {
            let js = f.get("json_schema").and_then(Value::as_object).ok_or_else(|| {
                bad("`response_format.json_schema` (an object with `schema`) is required")
            })?;
            let schema = js
                .get("schema")
                .filter(|s| s.is_object() || s.is_boolean())
                .cloned()
                .ok_or_else(|| bad("`response_format.json_schema.schema` must be a JSON Schema"))?;
            let strict = match js.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad("`response_format.json_schema.strict` must be a boolean")),
            };
            Constraint::JsonSchema { schema, strict }
        }
        "grammar" => Constraint::Lark(text("grammar")?),
        "regex" => Constraint::Regex(text("regex")?),
        other => {
            return Err(bad(&format!(
                "unknown `response_format.type` `{other}` (text, json_object, json_schema, grammar, regex)"
            )))
        }
    };
    let env = h.constraint_env().map_err(|e| {
        ApiError::internal(format!(
            "cannot build this model's constraint vocabulary: {e}"
        ))
    })?;
    let state = env.compile(&constraint).map_err(|e| bad(&e.to_string()))?;
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

/// `logit_bias`: token id (as a string key) to a bias in [-100, 100].
fn logit_bias(o: &Obj, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(v) = o.get("logit_bias") else {
        return Ok(Vec::new());
    };
    let m = v.as_object().ok_or_else(|| {
        ApiError::param(
            "logit_bias",
            "`logit_bias` must be an object of token id to bias",
        )
    })?;
    if m.len() > 1024 {
        return Err(ApiError::param("logit_bias", "at most 1024 biased tokens"));
    }
    m.iter()
        .map(|(k, b)| {
            let t = k
                .parse::<u32>()
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::param(
                        "logit_bias",
                        format!("`{k}` is not a token id of this model (0..{vocab})"),
                    )
                })?;
            let b = b
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    ApiError::param(
                        "logit_bias",
                        format!("the bias of token {k} must be a number in [-100, 100]"),
                    )
                })?;
            Ok((t, b as f32))
        })
        .collect()
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

fn stop_sequences(o: &Obj) -> Result<Vec<String>, ApiError> {
    let v = match o.get("stop") {
        None => return Ok(Vec::new()),
        Some(v) => v,
    };
    let stops: Vec<String> = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().map(String::from).ok_or_else(|| {
                    ApiError::param("stop", "`stop` must be a string or an array of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::param(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
    };
    if stops.len() > 4 {
        return Err(ApiError::param("stop", "at most 4 stop sequences"));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::param("stop", "stop sequences must not be empty"));
    }
    Ok(stops)
}

fn messages(o: &Obj) -> Result<Vec<ChatMessage>, ApiError> {
    let arr = o
        .get("messages")
        .ok_or_else(|| ApiError::param("messages", "`messages` is required"))?
        .as_array()
        .ok_or_else(|| ApiError::param("messages", "`messages` must be an array"))?;
    if arr.is_empty() {
        return Err(ApiError::param("messages", "`messages` must not be empty"));
    }
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let p = |f: &str| format!("messages[{i}].{f}");
            let m = m.as_object().ok_or_else(|| {
                ApiError::param(&format!("messages[{i}]"), "each message must be an object")
            })?;
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::param(&p("role"), "`role` must be a string"))?;
            let role = match role {
                "developer" => "system",
                "system" | "user" | "assistant" | "tool" => role,
                "function" => {
                    return Err(ApiError::param(
                        &p("role"),
                        "`function` messages (the deprecated `functions` API) are not supported; use `tools` and `tool` messages",
                    ))
                }
                other => {
                    return Err(ApiError::param(
                        &p("role"),
                        format!("unknown role `{other}` (system, developer, user, assistant, tool)"),
                    ))
                }
            };
            if m.get("function_call").is_some_and(|v| !v.is_null()) {
                return Err(ApiError::param(
                    &p("function_call"),
                    "`function_call` (the deprecated `functions` API) is not supported; use `tool_calls`",
                ));
            }
            let tool_calls = match m.get("tool_calls") {
                None | Some(Value::Null) => None,
                Some(v) if role == "assistant" => Some(history_calls(v, &p("tool_calls"))?),
                Some(_) => {
                    return Err(ApiError::param(
                        &p("tool_calls"),
                        "only assistant messages carry `tool_calls`",
                    ))
                }
            };
            let tool_call_id = match m.get("tool_call_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    return Err(ApiError::param(
                        &p("tool_call_id"),
                        "`tool_call_id` must be a string",
                    ))
                }
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for part in parts {
                        match (part.get("type").and_then(Value::as_str), part.get("text")) {
                            (Some("text"), Some(Value::String(t))) => s.push_str(t),
                            _ => {
                                return Err(ApiError::param(
                                    &p("content"),
                                    "only text content parts are supported",
                                ))
                            }
                        }
                    }
                    s
                }
                Some(_) => {
                    return Err(ApiError::param(
                        &p("content"),
                        "`content` must be a string or an array of text parts",
                    ))
                }
            };
            let mut msg = ChatMessage::new(role, &content);
            msg.tool_calls = tool_calls;
            msg.tool_call_id = tool_call_id;
            Ok(msg)
        })
        .collect()
}

/// An assistant message's `tool_calls`, with each call's `arguments` (a JSON string on the
/// wire) parsed into the object chat templates expect.
fn history_calls(v: &Value, field: &str) -> Result<Value, ApiError> {
    let calls = v
        .as_array()
        .ok_or_else(|| ApiError::param(field, "`tool_calls` must be an array"))?;
    let calls = calls
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let f = |x: &str| format!("{field}[{j}].{x}");
            let func = c
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    ApiError::param(&f("function"), "`function` (an object) is required")
                })?;
            let name = func.get("name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::param(&f("function.name"), "`name` (a string) is required")
            })?;
            let arguments = match func.get("arguments") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                    ApiError::param(
                        &f("function.arguments"),
                        format!("`arguments` is not valid JSON: {e}"),
                    )
                })?,
                Some(o @ Value::Object(_)) => o.clone(),
                Some(_) => {
                    return Err(ApiError::param(
                        &f("function.arguments"),
                        "`arguments` must be a JSON string",
                    ))
                }
            };
            Ok(serde_json::json!({
                "id": c.get("id").and_then(Value::as_str).unwrap_or_default(),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Value::Array(calls))
}

/// Prompt token ids of a completions request: a string, one-string array, or token ids.
fn completion_prompt(o: &Obj, h: &SchedulerHandle) -> Result<Vec<u32>, ApiError> {
    let bad = || {
        ApiError::param(
            "prompt",
            "`prompt` must be a string, an array of one string, or an array of token ids",
        )
    };
    match o
        .get("prompt")
        .ok_or_else(|| ApiError::param("prompt", "`prompt` is required"))?
    {
        Value::String(s) => encode(h, s),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            encode(h, a[0].as_str().unwrap_or(""))
        }
        Value::Array(a) if a.iter().all(Value::is_u64) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(bad)
            })
            .collect(),
        _ => Err(bad()),
    }
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
    let o = Obj(body);
    refuse_unimplemented(kind, &o)?;
    let max_prompt_tokens = limits.max_prompt_tokens;
    let n = o.int("n", 1, MAX_CHOICES as i64)?.unwrap_or(1) as usize;
    if o.int("best_of", 1, 1).is_err() {
        return Err(ApiError::param("best_of", "only best_of = 1 is supported"));
    }
    o.str("model")?;
    let tools = match kind {
        Kind::Chat => tools::parse_openai(body)?,
        Kind::Completion => None,
    };
    let prompt = match kind {
        Kind::Chat => {
            let msgs = messages(&o)?;
            let text = tools::prompt::render(h.chat_template(), msgs, tools.as_ref())
                .map_err(|e| ApiError::param("messages", e.to_string()))?;
            encode(h, &text)?
        }
        Kind::Completion => completion_prompt(&o, h)?,
    };
    let prompt_param = if kind == Kind::Chat {
        "messages"
    } else {
        "prompt"
    };
    if prompt.is_empty() {
        return Err(ApiError::param(prompt_param, "the prompt is empty"));
    }
    let default_max_tokens = limits.default_max_tokens;
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
    let max_tokens = match o.int("max_completion_tokens", 1, i64::MAX)? {
        Some(v) => Some(v),
        None => o.int("max_tokens", 1, i64::MAX)?,
    }
    .map_or(default_max_tokens.min(room), |v| v as usize);
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
    let logprobs = match kind {
        Kind::Chat => {
            let on = o.bool("logprobs")?.unwrap_or(false);
            let top = o.int("top_logprobs", 0, 20)?;
            if top.is_some() && !on {
                return Err(ApiError::param(
                    "top_logprobs",
                    "`top_logprobs` requires `logprobs: true`",
                ));
            }
            on.then_some(top.unwrap_or(0) as usize)
        }
        Kind::Completion => o.int("logprobs", 0, 20)?.map(|n| n as usize),
    };
    let sampling = SamplingParams {
        temperature: o
            .f64("temperature", 0.0, 2.0)?
            .map_or(d.temperature, |v| v as f32),
        top_p: o.f64("top_p", 0.0, 1.0)?.map_or(d.top_p, |v| v as f32),
        top_k: o.int("top_k", 0, 1 << 20)?.map_or(d.top_k, |v| v as usize),
        min_p: o.f64("min_p", 0.0, 1.0)?.map_or(d.min_p, |v| v as f32),
        repetition_penalty: o
            .f64("repetition_penalty", 0.0, 10.0)?
            .map_or(d.repetition_penalty, |v| v as f32),
        frequency_penalty: o
            .f64("frequency_penalty", -2.0, 2.0)?
            .map_or(d.frequency_penalty, |v| v as f32),
        presence_penalty: o
            .f64("presence_penalty", -2.0, 2.0)?
            .map_or(d.presence_penalty, |v| v as f32),
        seed: o.int("seed", i64::MIN, i64::MAX)?.map(|v| v as u64),
        logprobs: logprobs.is_some(),
        top_logprobs: logprobs.unwrap_or(0),
        ignore_eos: o.bool("ignore_eos")?.unwrap_or(false),
        logit_bias: logit_bias(&o, limits.vocab_size)?,
        ..d
    };
    if let Err((field, msg)) = sampling.validate() {
        return Err(ApiError::param(&field, msg));
    }
    let include_usage = match o.get("stream_options") {
        None => false,
        Some(Value::Object(so)) => Obj(so).bool("include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(ApiError::param(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    Ok(GenParams {
        kind,
        request: Request {
            prompt,
            max_tokens,
            sampling,
            stop: stop_sequences(&o)?,
            priority: o.int("priority", -1000, 1000)?.unwrap_or(0) as i32,
            speculative: o.bool("speculative")?.unwrap_or(true),
            constraint: match &tools {
                Some(t) => {
                    if response_format(&o, h)?.is_some() {
                        return Err(ApiError::param(
                            "response_format",
                            "`response_format` cannot be combined with `tools` (unless `tool_choice` is `none`)",
                        ));
                    }
                    Some(tool_constraint(t, h)?)
                }
                None => response_format(&o, h)?,
            },
        },
        tool_calls: tools.is_some(),
        n,
        stream: o.bool("stream")?.unwrap_or(false),
        include_usage,
        logprobs,
        resumable: o.bool("resumable")?.unwrap_or(false),
    })
}
