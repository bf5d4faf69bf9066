//! The request bodies of `POST /v1/chat/completions` ([`ChatCompletionRequest`]) and `POST
//! /v1/completions` ([`CompletionRequest`]) as types. What deserializes a body is also what
//! documents it in `/openapi.json`, so the document states the real constraints: ranges (each
//! written once, in a [`Range`]), the roles, the union forms of `content`, `stop`, `prompt`,
//! `tool_choice` and `response_format`, and the fields refused ([`NOT_IMPLEMENTED`]).
//!
//! A field of the wrong type or out of range is a 400 naming its JSON path
//! (`messages[1].content`, `stop[2]`, `tools[0].function.name`); a missing required field is
//! named the same way. Unknown fields are ignored: OpenAI clients send extras.
//!
//! A body is read in two passes over the same JSON object: the fields both endpoints share
//! ([`Generation`]) and the endpoint's own ([`ChatFields`], [`CompletionFields`]), each struct
//! from the top level. (`#[serde(flatten)]` would lose the path of an error.) The published
//! schema of an endpoint merges the two. Unions have hand-written visitors, so that an error
//! says what was expected rather than that no variant matched.

use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::openapi::schema::{
    ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::params::Kind;
use crate::protocol::ApiError;
use crate::tools::{self, Choice, Tool, Tools};

// ---------------------------------------------------------------------------------------------
// Reading a body

/// Deserializes `T` from a request body. A wrong type or value is a 400 `invalid_value` whose
/// `param` is the JSON path of the field at fault; so is a missing required field.
pub fn from_body<'de, T: Deserialize<'de>>(body: &'de Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // serde reports a missing field at the object that lacks it.
        if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|f| f.strip_suffix('`'))
        {
            let path = match path.as_str() {
                "." => field.to_string(),
                _ => format!("{path}.{field}"),
            };
            return ApiError::param(&path, format!("`{path}` is required"));
        }
        match path.as_str() {
            "." => ApiError::invalid(inner),
            _ => ApiError::param(&path, format!("`{path}`: {inner}")),
        }
    })
}

/// Body of `POST /v1/chat/completions`: [`ChatFields`] and [`Generation`], both read from
/// the top level of the JSON object.
#[derive(Debug)]
pub struct ChatCompletionRequest {
    /// The fields of the chat endpoint only.
    pub chat: ChatFields,
    /// The fields both endpoints share.
    pub generation: Generation,
}

impl ChatCompletionRequest {
    /// Reads a body (after [`refuse_unimplemented`]).
    pub fn from_body(body: &Map<String, Value>) -> Result<Self, ApiError> {
        Ok(Self {
            chat: from_body(body)?,
            generation: from_body(body)?,
        })
    }
}

/// Body of `POST /v1/completions`: [`CompletionFields`] and [`Generation`], both read from the
/// top level of the JSON object.
#[derive(Debug)]
pub struct CompletionRequest {
    /// The fields of the completions endpoint only.
    pub completion: CompletionFields,
    /// The fields both endpoints share.
    pub generation: Generation,
}

impl CompletionRequest {
    /// Reads a body (after [`refuse_unimplemented`]).
    pub fn from_body(body: &Map<String, Value>) -> Result<Self, ApiError> {
        Ok(Self {
            completion: from_body(body)?,
            generation: from_body(body)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers in a range

/// The bounds of a numeric field: checked when the field deserializes and stated in its
/// schema (`minimum`, `maximum`, and `exclusiveMinimum` when `min` is excluded), the one place
/// they are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range<T> {
    /// The least value (itself excluded when `min_exclusive`).
    pub min: T,
    /// The greatest value.
    pub max: T,
    /// Whether `min` itself is out of range.
    pub min_exclusive: bool,
}

impl<T: Copy + PartialOrd> Range<T> {
    /// `[min, max]`.
    pub const fn inclusive(min: T, max: T) -> Self {
        Self {
            min,
            max,
            min_exclusive: false,
        }
    }

    /// `(min, max]`.
    pub const fn above(min: T, max: T) -> Self {
        Self {
            min,
            max,
            min_exclusive: true,
        }
    }

    /// Whether `x` is in the range.
    pub fn contains(&self, x: T) -> bool {
        let above_min = if self.min_exclusive {
            x > self.min
        } else {
            x >= self.min
        };
        above_min && x <= self.max
    }
}

impl<T: fmt::Display> fmt::Display for Range<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let open = if self.min_exclusive { '(' } else { '[' };
        write!(f, "{open}{}, {}]", self.min, self.max)
    }
}

impl Range<f64> {
    /// The least value taken: `min`, or when it is excluded, the next 32-bit float above it
    /// (the sampler computes in f32, where 5e-324 is 0).
    pub fn least(&self) -> f64 {
        if self.min_exclusive {
            f64::from((self.min as f32).next_up())
        } else {
            self.min
        }
    }

    fn schema(&self) -> ObjectBuilder {
        let o = ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(self.least()))
            .maximum(Some(self.max));
        if self.min_exclusive {
            o.exclusive_minimum(Some(self.min))
        } else {
            o
        }
    }

    fn deserialize<'de, D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        struct V(Range<f64>);
        impl Visitor<'_> for V {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a number in {}", self.0)
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<f64, E> {
                if (self.0.least()..=self.0.max).contains(&x) {
                    Ok(x)
                } else {
                    Err(E::custom(format!("{x:?} is out of range {}", self.0)))
                }
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<f64, E> {
                self.visit_f64(x as f64)
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<f64, E> {
                self.visit_f64(x as f64)
            }
        }
        d.deserialize_f64(V(self))
    }
}

impl Range<i64> {
    fn schema(&self) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(self.min))
            .maximum(Some(self.max))
    }

    fn deserialize<'de, D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        struct V(Range<i64>);
        impl Visitor<'_> for V {
            type Value = i64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an integer in {}", self.0)
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<i64, E> {
                if self.0.contains(x) {
                    Ok(x)
                } else {
                    Err(E::custom(format!("{x} is out of range {}", self.0)))
                }
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<i64, E> {
                match i64::try_from(x) {
                    Ok(x) => self.visit_i64(x),
                    Err(_) => Err(E::custom(format!("{x} is out of range {}", self.0))),
                }
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<i64, E> {
                match integral(x) {
                    Some(i) => match i64::try_from(i) {
                        Ok(i) => self.visit_i64(i),
                        Err(_) => Err(E::custom(format!("{x} is out of range {}", self.0))),
                    },
                    None => Err(E::invalid_type(de::Unexpected::Float(x), &self)),
                }
            }
        }
        d.deserialize_i64(V(self))
    }
}

/// An integer-valued float (`7.0`, an integer as JSON Schema sees it) within ±2^53, where
/// floats are exact. (JSON integers beyond i64 and u64 parse as floats, rounded: -2^63 - 1
/// would be -2^63, so those are refused rather than misread.)
fn integral(x: f64) -> Option<i128> {
    (x.fract() == 0.0 && x.abs() <= 2f64.powi(53)).then_some(x as i128)
}

/// A number type whose values lie in `RANGE`: deserializing checks it, the schema states it.
macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident: $t:ty = $range:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $name(pub $t);

        impl $name {
            /// The values it may take.
            pub const RANGE: Range<$t> = $range;
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::RANGE.deserialize(d).map(Self)
            }
        }

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                Self::RANGE.schema().into()
            }
        }

        impl ToSchema for $name {}
    };
}

bounded!(
    /// `temperature`: 0 is greedy.
    Temperature: f64 = Range::inclusive(0.0, 2.0)
);
bounded!(
    /// `top_p`: the probability mass nucleus sampling keeps.
    TopP: f64 = Range::above(0.0, 1.0)
);
bounded!(
    /// `top_k`: sample among this many most likely tokens (0: all).
    TopK: i64 = Range::inclusive(0, 1 << 20)
);
bounded!(
    /// `min_p`: drop tokens less likely than this fraction of the most likely one.
    MinP: f64 = Range::inclusive(0.0, 1.0)
);
bounded!(
    /// `repetition_penalty`: divides the logits of tokens seen recently (1: off).
    RepetitionPenalty: f64 = Range::above(0.0, 10.0)
);
bounded!(
    /// `frequency_penalty` and `presence_penalty`.
    Penalty: f64 = Range::inclusive(-2.0, 2.0)
);
bounded!(
    /// `n`: how many choices to generate for the prompt.
    Choices: i64 = Range::inclusive(1, 8)
);
bounded!(
    /// `best_of`: only 1 (no server-side best-of).
    BestOf: i64 = Range::inclusive(1, 1)
);
bounded!(
    /// `max_tokens` and `max_completion_tokens`.
    MaxTokens: i64 = Range::inclusive(1, i64::MAX)
);
bounded!(
    /// `top_logprobs` of a chat request, `logprobs` of a completions request: alternatives
    /// returned per token.
    LogprobCount: i64 = Range::inclusive(0, 20)
);
bounded!(
    /// `priority` (rill extension): higher is admitted first.
    Priority: i64 = Range::inclusive(-1000, 1000)
);

/// `seed`: an integer from -2^63 to 2^64 - 1 (a negative one is taken modulo 2^64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub u64);

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<Seed, E> {
                Ok(Seed(x as u64))
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<Seed, E> {
                Ok(Seed(x))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Seed, E> {
                match integral(x) {
                    Some(i) => Ok(Seed(i as u64)),
                    _ => Err(E::invalid_type(de::Unexpected::Float(x), &self)),
                }
            }
        }
        d.deserialize_i64(V)
    }
}

impl PartialSchema for Seed {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(i64::MIN))
            .maximum(Some(u64::MAX))
            .into()
    }
}

impl ToSchema for Seed {}

// ---------------------------------------------------------------------------------------------
// Fields both endpoints share

/// The fields of both endpoints. Absent and null mean the default.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct Generation {
    /// Accepted for compatibility; the server's one model answers whatever is named.
    pub model: Option<String>,
    /// Choices to generate (siblings that share the prompt's KV blocks). Default 1.
    #[schema(inline)]
    pub n: Option<Choices>,
    /// Only 1 is supported.
    #[schema(inline)]
    pub best_of: Option<BestOf>,
    /// Most tokens to generate. Default: the server's `default_max_tokens`, bounded by what
    /// the context leaves after the prompt.
    #[schema(inline)]
    pub max_tokens: Option<MaxTokens>,
    /// Same as `max_tokens`, which it takes precedence over.
    #[schema(inline)]
    pub max_completion_tokens: Option<MaxTokens>,
    /// Sampling temperature (0: greedy). Default 1.
    #[schema(inline)]
    pub temperature: Option<Temperature>,
    /// Nucleus sampling: keep the most likely tokens up to this cumulative probability.
    /// Default 1 (off).
    #[schema(inline)]
    pub top_p: Option<TopP>,
    /// rill extension: sample among the `top_k` most likely tokens (0: off, the default).
    #[schema(inline)]
    pub top_k: Option<TopK>,
    /// rill extension: drop tokens less likely than `min_p` times the most likely one
    /// (0: off, the default).
    #[schema(inline)]
    pub min_p: Option<MinP>,
    /// rill extension: divides the logits of tokens among the last 64 (1: off, the default).
    #[schema(inline)]
    pub repetition_penalty: Option<RepetitionPenalty>,
    /// Subtracted from a token's logit once per occurrence among the last 64 tokens.
    /// Default 0.
    #[schema(inline)]
    pub frequency_penalty: Option<Penalty>,
    /// Subtracted from the logit of every token among the last 64 tokens. Default 0.
    #[schema(inline)]
    pub presence_penalty: Option<Penalty>,
    /// Seed of the sampling random stream, for reproducible output (choice `i` of `n` uses
    /// `seed + i`). Default: random.
    #[schema(inline)]
    pub seed: Option<Seed>,
    /// rill extension: keep generating past the end-of-sequence token. Default false.
    pub ignore_eos: Option<bool>,
    /// Token id (a string) to a bias added to its logit; -100 bans the token.
    #[schema(inline)]
    pub logit_bias: Option<LogitBias>,
    /// Strings that end the generation (not included in the text).
    #[schema(inline)]
    pub stop: Option<Stop>,
    /// Answer with server-sent events instead of one JSON body. Default false.
    pub stream: Option<bool>,
    /// Options for `stream: true`.
    pub stream_options: Option<StreamOptions>,
    /// rill extension: higher is admitted first. Default 0.
    #[schema(inline)]
    pub priority: Option<Priority>,
    /// rill extension: let the draft model (when the server has one) propose tokens.
    /// Default true.
    pub speculative: Option<bool>,
    /// rill extension: keep generating for the resume window after the client disconnects,
    /// so that it can reattach. Default false.
    pub resumable: Option<bool>,
    /// What the output must match.
    pub response_format: Option<ResponseFormat>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct StreamOptions {
    /// Send a last chunk with the request's token usage. Default false.
    pub include_usage: Option<bool>,
}

/// The most stop sequences a request may carry.
pub const MAX_STOP: usize = 4;

/// `stop`: a string or an array of up to [`MAX_STOP`] strings, none empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stop(pub Vec<String>);

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Stop;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Stop, E> {
                if s.is_empty() {
                    return Err(E::custom("stop sequences must not be empty"));
                }
                Ok(Stop(vec![s.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Stop, A::Error> {
                let mut stops = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    stops.push(s);
                }
                if stops.len() > MAX_STOP {
                    return Err(de::Error::custom(format!(
                        "at most {MAX_STOP} stop sequences"
                    )));
                }
                if stops.iter().any(String::is_empty) {
                    return Err(de::Error::custom("stop sequences must not be empty"));
                }
                Ok(Stop(stops))
            }
        }
        d.deserialize_any(V)
    }
}

impl PartialSchema for Stop {
    fn schema() -> RefOr<Schema> {
        one_of([
            non_empty_string().into(),
            ArrayBuilder::new()
                .items(non_empty_string())
                .max_items(Some(MAX_STOP))
                .into(),
        ])
        .into()
    }
}

impl ToSchema for Stop {}

/// The most tokens `logit_bias` may bias.
pub const MAX_BIASED: usize = 1024;

/// `logit_bias`: token id (a string key) to a bias in [`LogitBias::RANGE`], for at most
/// [`MAX_BIASED`] tokens. Whether each id is in the model's vocabulary is checked later.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitBias(pub Vec<(u32, f32)>);

impl LogitBias {
    /// The bias a token may get.
    pub const RANGE: Range<f64> = Range::inclusive(-100.0, 100.0);
}

impl<'de> Deserialize<'de> for LogitBias {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LogitBias;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of token id to bias")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LogitBias, A::Error> {
                let mut out = Vec::new();
                while let Some((k, b)) = map.next_entry::<String, Value>()? {
                    if out.len() == MAX_BIASED {
                        return Err(de::Error::custom(format!(
                            "at most {MAX_BIASED} biased tokens"
                        )));
                    }
                    let t = k
                        .parse::<u32>()
                        .map_err(|_| de::Error::custom(format!("`{k}` is not a token id")))?;
                    let b = b
                        .as_f64()
                        .filter(|&b| LogitBias::RANGE.contains(b))
                        .ok_or_else(|| {
                            de::Error::custom(format!(
                                "the bias of token {k} must be a number in {}",
                                LogitBias::RANGE
                            ))
                        })?;
                    out.push((t, b as f32));
                }
                Ok(LogitBias(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl PartialSchema for LogitBias {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]{1,10}$")),
            ))
            .additional_properties(Some(Self::RANGE.schema()))
            .max_properties(Some(MAX_BIASED))
            .into()
    }
}

impl ToSchema for LogitBias {}

/// `response_format`: what the output must match, compiled against the model's vocabulary
/// when the request is parsed (an invalid schema, grammar or expression is a 400 naming
/// `response_format`).
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// `{"type": "text"}`: anything (the default).
    Text,
    /// `{"type": "json_object"}`: one JSON object.
    JsonObject,
    /// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`: JSON that
    /// matches `schema`.
    JsonSchema {
        /// The JSON Schema (an object or a boolean).
        schema: Value,
        /// Refuse keywords that cannot be enforced (false, OpenAI's default: ignore them).
        strict: bool,
    },
    /// rill's `{"type": "grammar", "grammar": LARK}`: text of a Lark grammar.
    Grammar(String),
    /// rill's `{"type": "regex", "regex": ...}`: text matching a regular expression.
    Regex(String),
}

impl ResponseFormat {
    /// The `type` of each form, in the order of the schema's `oneOf`.
    pub const TYPES: [&'static str; 5] = ["text", "json_object", "json_schema", "grammar", "regex"];

    fn from_object(f: &Map<String, Value>) -> Result<Self, String> {
        let text = |key: &str| {
            f.get(key)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| format!("`{key}` (a string) is required"))
        };
        Ok(match text("type")?.as_str() {
            "text" => ResponseFormat::Text,
            "json_object" => ResponseFormat::JsonObject,
            "json_schema" => {
                let js = f
                    .get("json_schema")
                    .and_then(Value::as_object)
                    .ok_or("`json_schema` (an object with `schema`) is required")?;
                let schema = js
                    .get("schema")
                    .filter(|s| s.is_object() || s.is_boolean())
                    .cloned()
                    .ok_or("`json_schema.schema` must be a JSON Schema")?;
                if let Some(key) = ["name", "description"]
                    .into_iter()
                    .find(|k| js.get(*k).is_some_and(|v| !v.is_null() && !v.is_string()))
                {
                    return Err(format!("`json_schema.{key}` must be a string"));
                }
                let strict = match js.get("strict") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err("`json_schema.strict` must be a boolean".into()),
                };
                ResponseFormat::JsonSchema { schema, strict }
            }
            "grammar" => ResponseFormat::Grammar(text("grammar")?),
            "regex" => ResponseFormat::Regex(text("regex")?),
            other => {
                return Err(format!(
                    "unknown `type` `{other}` ({})",
                    Self::TYPES.join(", ")
                ))
            }
        })
    }
}

impl<'de> Deserialize<'de> for ResponseFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = Map::<String, Value>::deserialize(d)?;
        ResponseFormat::from_object(&f).map_err(de::Error::custom)
    }
}

impl PartialSchema for ResponseFormat {
    fn schema() -> RefOr<Schema> {
        let form = |ty: &str, desc: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(desc))
                .property("type", enum_of([ty]))
                .required("type")
        };
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let nullable =
            |t: Type| ObjectBuilder::new().schema_type(SchemaType::from_iter([t, Type::Null]));
        let json_schema = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "name",
                nullable(Type::String).description(Some("A name for the format.")),
            )
            .property("description", nullable(Type::String))
            .property(
                "schema",
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::Object, Type::Boolean]))
                    .description(Some("The JSON Schema the output must match.")),
            )
            .property(
                "strict",
                nullable(Type::Boolean).description(Some(
                    "Refuse schema keywords that cannot be enforced (default false: \
                         ignore them).",
                )),
            )
            .required("schema");
        let [text, json_object, json, grammar, regex] = Self::TYPES;
        one_of([
            form(text, "Any text (the default).").into(),
            form(json_object, "One JSON object.").into(),
            form(json, "JSON matching a JSON Schema.")
                .property("json_schema", json_schema)
                .required("json_schema")
                .into(),
            form(grammar, "rill extension: text of a Lark grammar.")
                .property("grammar", string())
                .required("grammar")
                .into(),
            form(regex, "rill extension: text matching a regular expression.")
                .property("regex", string())
                .required("regex")
                .into(),
        ])
        .into()
    }
}

impl ToSchema for ResponseFormat {}

// ---------------------------------------------------------------------------------------------
// Chat

/// The fields of `POST /v1/chat/completions` only (see [`Generation`] for the rest).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatFields {
    /// The conversation, rendered through the model's chat template (at least one message).
    #[schema(min_items = 1)]
    pub messages: Vec<InputMessage>,
    /// Return the log-probability of each generated token. Default false.
    pub logprobs: Option<bool>,
    /// Alternatives per token; requires `logprobs: true`.
    #[schema(inline)]
    pub top_logprobs: Option<LogprobCount>,
    /// Function tools the model may call.
    pub tools: Option<Vec<ToolDefinition>>,
    /// How the model may use `tools`: `auto` (the default with tools), `none`, `required`,
    /// or a named function.
    pub tool_choice: Option<ToolChoice>,
    /// Allow several calls in one answer. Default true.
    pub parallel_tool_calls: Option<bool>,
}

impl ChatFields {
    /// `tools`, `tool_choice` and `parallel_tool_calls` in rill's terms. None: no tools, or
    /// `tool_choice: "none"` (the model answers in text).
    pub fn tools(&self) -> Result<Option<Tools>, ApiError> {
        let tools = self
            .tools
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, t)| {
                let f = &t.function;
                Ok(Tool {
                    name: f.name.clone(),
                    description: f.description.clone(),
                    parameters: tools::parameters_schema(
                        f.parameters.as_ref(),
                        &format!("tools[{i}].function.parameters"),
                    )?,
                    strict: f.strict.unwrap_or(false),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        tools::check_tools(&tools, "tools")?;
        let choice = match &self.tool_choice {
            None => (!tools.is_empty()).then_some(Choice::Auto),
            Some(ToolChoice::None) => None,
            Some(ToolChoice::Auto) => Some(Choice::Auto),
            Some(ToolChoice::Required) => Some(Choice::Required),
            Some(ToolChoice::Function(name)) => Some(Choice::Named(name.clone())),
        };
        let parallel = self.parallel_tool_calls.unwrap_or(true);
        tools::finish(tools, choice, parallel, "tool_choice")
    }
}

/// Who speaks a message. (`function`, the deprecated `functions` API, is refused.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// Instructions (treated as `system`).
    Developer,
    /// The person (or program) asking.
    User,
    /// The model.
    Assistant,
    /// A tool's result (with `tool_call_id`).
    Tool,
}

impl Role {
    /// The name of every role, as in [`Role::name`].
    pub const NAMES: [&'static str; 5] = ["system", "developer", "user", "assistant", "tool"];

    /// The role's name on the wire.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The role as chat templates see it (`developer` is `system`).
    pub fn template_role(self) -> &'static str {
        match self {
            Role::Developer => "system",
            r => r.name(),
        }
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Role;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a role ({})", Role::NAMES.join(", "))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Role, E> {
                const ROLES: [Role; 5] = [
                    Role::System,
                    Role::Developer,
                    Role::User,
                    Role::Assistant,
                    Role::Tool,
                ];
                if let Some(r) = ROLES.into_iter().find(|r| r.name() == s) {
                    return Ok(r);
                }
                Err(E::custom(match s {
                    "function" => "`function` messages (the deprecated `functions` API) are not \
                                   supported; use `tools` and `tool` messages"
                        .to_string(),
                    other => format!("unknown role `{other}` ({})", Role::NAMES.join(", ")),
                }))
            }
        }
        d.deserialize_str(V)
    }
}

/// One message of `messages`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(expecting = "a message object")]
pub struct InputMessage {
    /// Who speaks.
    pub role: Role,
    /// The text (null in an assistant message that only calls tools).
    pub content: Option<Content>,
    /// An assistant message's calls.
    pub tool_calls: Option<Vec<InputToolCall>>,
    /// A `tool` message's call id.
    pub tool_call_id: Option<String>,
    /// The deprecated `functions` API: refused unless null (use `tool_calls`).
    #[schema(schema_with = refused_function_call)]
    pub function_call: Option<Value>,
}

/// A message's content: a string, or an array of text parts (`{"type": "text", "text": ...}`,
/// joined). Other parts (images, audio) are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content(pub String);

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of text parts")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Content, E> {
                Ok(Content(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut text = String::new();
                let mut j = 0;
                while let Some(part) = seq.next_element::<Value>()? {
                    match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text"), Some(Value::String(t))) => text.push_str(t),
                        _ => {
                            return Err(de::Error::custom(format!(
                                "only text content parts are supported (part {j} is not \
                                 `{{\"type\": \"text\", \"text\": ...}}`)"
                            )))
                        }
                    }
                    j += 1;
                }
                Ok(Content(text))
            }
        }
        d.deserialize_any(V)
    }
}

impl PartialSchema for Content {
    fn schema() -> RefOr<Schema> {
        let part = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("type", enum_of(["text"]))
            .property("text", ObjectBuilder::new().schema_type(Type::String))
            .required("type")
            .required("text");
        one_of([
            ObjectBuilder::new().schema_type(Type::String).into(),
            ArrayBuilder::new().items(part).into(),
        ])
        .into()
    }
}

impl ToSchema for Content {}

/// A call an assistant message made (earlier in the conversation).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(expecting = "a tool call object")]
pub struct InputToolCall {
    /// The call's id (that the `tool` message answering it names).
    pub id: Option<String>,
    /// The function called.
    pub function: InputFunctionCall,
}

/// The function an earlier tool call called.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(expecting = "an object with `name` and `arguments`")]
pub struct InputFunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments: a JSON object, as JSON text (OpenAI's form) or as an object.
    pub arguments: Option<Arguments>,
}

/// A call's arguments, parsed (JSON text on the wire, or a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct Arguments(pub Value);

impl<'de> Deserialize<'de> for Arguments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Arguments;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Arguments, E> {
                serde_json::from_str(s)
                    .map(Arguments)
                    .map_err(|e| E::custom(format!("not valid JSON: {e}")))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Arguments, A::Error> {
                Map::deserialize(MapAccessDeserializer::new(map))
                    .map(|m| Arguments(Value::Object(m)))
            }
        }
        d.deserialize_any(V)
    }
}

impl PartialSchema for Arguments {
    fn schema() -> RefOr<Schema> {
        one_of([
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("The arguments object as JSON text."))
                .into(),
            ObjectBuilder::new().schema_type(Type::Object).into(),
        ])
        .into()
    }
}

impl ToSchema for Arguments {}

/// A tool of `tools`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(expecting = "a tool object")]
pub struct ToolDefinition {
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: ToolType,
    /// The function.
    pub function: FunctionDefinition,
}

/// The type of a tool: only `function` tools are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolType {
    /// A function the client runs.
    Function,
}

/// A function tool.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(expecting = "a function object")]
pub struct FunctionDefinition {
    /// Its name: 1 to 64 of `A-Z`, `a-z`, `0-9`, `_` and `-`, unique among the tools.
    #[schema(schema_with = tool_name)]
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// The JSON Schema of its arguments, an object (default: any object).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// Enforce every keyword of `parameters` (one that cannot be enforced is a 400); false,
    /// the default, ignores those.
    pub strict: Option<bool>,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// `"none"`: answer in text.
    None,
    /// `"auto"`: the model decides.
    Auto,
    /// `"required"`: call at least one tool.
    Required,
    /// `{"type": "function", "function": {"name": ...}}`: call this function.
    Function(String),
}

impl ToolChoice {
    /// The string forms.
    pub const NAMES: [&'static str; 3] = ["none", "auto", "required"];
}

/// The named form of `tool_choice`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(expecting = "an object")]
pub struct NamedToolChoice {
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: ToolType,
    /// The function to call.
    pub function: FunctionName,
}

/// The function a named `tool_choice` names.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(expecting = "an object with `name`")]
pub struct FunctionName {
    /// A function among `tools`.
    pub name: String,
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ToolChoice;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an object")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ToolChoice, E> {
                Ok(match s {
                    "none" => ToolChoice::None,
                    "auto" => ToolChoice::Auto,
                    "required" => ToolChoice::Required,
                    other => {
                        return Err(E::custom(format!(
                            "unknown `tool_choice` `{other}` ({}, or {{\"type\": \"function\", \
                             \"function\": {{\"name\": ...}}}})",
                            ToolChoice::NAMES.join(", ")
                        )))
                    }
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ToolChoice, A::Error> {
                let n = NamedToolChoice::deserialize(MapAccessDeserializer::new(map))?;
                Ok(ToolChoice::Function(n.function.name))
            }
        }
        d.deserialize_any(V)
    }
}

impl PartialSchema for ToolChoice {
    fn schema() -> RefOr<Schema> {
        one_of([enum_of(Self::NAMES).into(), NamedToolChoice::schema()]).into()
    }
}

impl ToSchema for ToolChoice {
    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        <NamedToolChoice as ToSchema>::schemas(out);
    }
}

// ---------------------------------------------------------------------------------------------
// Completions

/// The fields of `POST /v1/completions` only (see [`Generation`] for the rest).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionFields {
    /// The prompt.
    pub prompt: Prompt,
    /// Return the log-probability of each generated token with this many alternatives.
    #[schema(inline)]
    pub logprobs: Option<LogprobCount>,
}

/// `prompt`: a string, an array of one string, or an array of token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text, to tokenize.
    Text(String),
    /// Token ids, as they are.
    Tokens(Vec<u32>),
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "a string, an array of one string, or an array of token ids";
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Prompt;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Prompt, E> {
                Ok(Prompt::Text(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Prompt, E> {
                Ok(Prompt::Text(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Prompt, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    items.push(v);
                }
                if let [Value::String(s)] = items.as_mut_slice() {
                    return Ok(Prompt::Text(std::mem::take(s)));
                }
                let token = |t: &Value| {
                    let t = t.as_u64().map(i128::from).or(t.as_f64().and_then(integral));
                    t.and_then(|t| u32::try_from(t).ok())
                };
                items
                    .iter()
                    .map(token)
                    .collect::<Option<Vec<_>>>()
                    .map(Prompt::Tokens)
                    .ok_or_else(|| de::Error::custom(format!("must be {EXPECTED}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl PartialSchema for Prompt {
    fn schema() -> RefOr<Schema> {
        // Text that tokenizes to nothing (only "" with most tokenizers) is refused.
        one_of([
            non_empty_string().into(),
            ArrayBuilder::new()
                .items(non_empty_string())
                .min_items(Some(1))
                .max_items(Some(1))
                .into(),
            ArrayBuilder::new()
                .items(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0))
                        .maximum(Some(u32::MAX)),
                )
                .min_items(Some(1))
                .description(Some("Token ids."))
                .into(),
        ])
        .into()
    }
}

impl ToSchema for Prompt {}

// ---------------------------------------------------------------------------------------------
// Refused fields

/// OpenAI fields rill does not implement and that would change the output: a request that
/// sets one to anything but absent, null or its [`Neutral`] value is refused with a 400
/// naming it. Each is documented in the endpoint's schema as accepting only those values.
pub const NOT_IMPLEMENTED: [Refused; 10] = [
    Refused::new("tools", COMPLETION, Neutral::EmptyArray),
    Refused::new("tool_choice", COMPLETION, Neutral::Str("none")),
    Refused::new("functions", Endpoints::Both, Neutral::EmptyArray),
    Refused::new("function_call", Endpoints::Both, Neutral::Str("none")),
    Refused::new("audio", CHAT, Neutral::Nothing),
    Refused::new("modalities", CHAT, Neutral::TextOnly),
    Refused::new("prediction", CHAT, Neutral::Nothing),
    Refused::new("web_search_options", CHAT, Neutral::Nothing),
    Refused::new("suffix", COMPLETION, Neutral::Str("")),
    Refused::new("echo", COMPLETION, Neutral::False),
];

const CHAT: Endpoints = Endpoints::Only(Kind::Chat);
const COMPLETION: Endpoints = Endpoints::Only(Kind::Completion);

/// A field of [`NOT_IMPLEMENTED`].
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    /// Its name.
    pub field: &'static str,
    /// The endpoints that refuse it.
    pub endpoints: Endpoints,
    /// The value that asks for nothing rill lacks.
    pub neutral: Neutral,
}

impl Refused {
    const fn new(field: &'static str, endpoints: Endpoints, neutral: Neutral) -> Self {
        Self {
            field,
            endpoints,
            neutral,
        }
    }

    fn applies(&self, kind: Kind) -> bool {
        match self.endpoints {
            Endpoints::Both => true,
            Endpoints::Only(k) => k == kind,
        }
    }

    /// The field's schema: null or the neutral value.
    fn schema(&self) -> Schema {
        let neutral: Option<Schema> = match self.neutral {
            Neutral::Nothing => None,
            Neutral::EmptyArray => Some(ArrayBuilder::new().max_items(Some(0)).into()),
            Neutral::Str(s) => Some(enum_of([s]).into()),
            Neutral::False => Some(
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .enum_values(Some([false]))
                    .into(),
            ),
            Neutral::TextOnly => Some(
                ArrayBuilder::new()
                    .items(enum_of(["text"]))
                    .min_items(Some(1))
                    .max_items(Some(1))
                    .into(),
            ),
        };
        let desc = format!(
            "Not implemented: refused unless absent or null{}.",
            match self.neutral {
                Neutral::Nothing => String::new(),
                Neutral::EmptyArray => " or `[]`".into(),
                Neutral::Str(s) => format!(" or `\"{s}\"`"),
                Neutral::False => " or `false`".into(),
                Neutral::TextOnly => " or `[\"text\"]`".into(),
            }
        );
        let null = ObjectBuilder::new().schema_type(Type::Null);
        match neutral {
            None => null.description(Some(desc)).into(),
            Some(s) => OneOfBuilder::new()
                .item(null)
                .item(s)
                .description(Some(desc))
                .into(),
        }
    }
}

/// Which endpoints refuse a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Both.
    Both,
    /// This one.
    Only(Kind),
}

/// The value of a refused field that asks for nothing rill lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Neutral {
    /// None but null.
    Nothing,
    /// `[]`.
    EmptyArray,
    /// This string.
    Str(&'static str),
    /// `false`.
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

/// Refuses the fields of [`NOT_IMPLEMENTED`] that a `kind` request sets to a value that would
/// change the output.
pub fn refuse_unimplemented(kind: Kind, body: &Map<String, Value>) -> Result<(), ApiError> {
    for r in NOT_IMPLEMENTED.iter().filter(|r| r.applies(kind)) {
        let set = body.get(r.field).filter(|v| !v.is_null());
        if set.is_some_and(|v| !r.neutral.accepts(v)) {
            return Err(ApiError::param(
                r.field,
                format!(
                    "`{}` is not supported by this server yet; the request would not get what it asks for",
                    r.field
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Schemas

/// The published schema of a body: the endpoint's own fields and [`Generation`]'s in one
/// object, with the refused fields of the endpoint.
fn body_schema(kind: Kind, own: RefOr<Schema>, description: &str) -> RefOr<Schema> {
    let mut body = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .build();
    for part in [own, Generation::schema()] {
        if let RefOr::T(Schema::Object(o)) = part {
            body.properties.extend(o.properties);
            body.required.extend(o.required);
        }
    }
    for r in NOT_IMPLEMENTED.iter().filter(|r| r.applies(kind)) {
        body.properties
            .insert(r.field.to_string(), RefOr::T(r.schema()));
    }
    RefOr::T(Schema::Object(body))
}

impl PartialSchema for ChatCompletionRequest {
    fn schema() -> RefOr<Schema> {
        body_schema(
            Kind::Chat,
            ChatFields::schema(),
            "Body of `POST /v1/chat/completions`. Unknown fields are ignored.",
        )
    }
}

impl ToSchema for ChatCompletionRequest {
    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        <ChatFields as ToSchema>::schemas(out);
        <Generation as ToSchema>::schemas(out);
    }
}

impl PartialSchema for CompletionRequest {
    fn schema() -> RefOr<Schema> {
        body_schema(
            Kind::Completion,
            CompletionFields::schema(),
            "Body of `POST /v1/completions`. Unknown fields are ignored.",
        )
    }
}

impl ToSchema for CompletionRequest {
    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        <CompletionFields as ToSchema>::schemas(out);
        <Generation as ToSchema>::schemas(out);
    }
}

fn one_of<const N: usize>(items: [RefOr<Schema>; N]) -> OneOfBuilder {
    items
        .into_iter()
        .fold(OneOfBuilder::new(), |o, item| o.item(item))
}

/// A string schema that refuses "".
fn non_empty_string() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
}

/// A string schema that takes these values.
fn enum_of<const N: usize>(values: [&str; N]) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
}

/// A message's `function_call`: only null.
fn refused_function_call() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Null)
        .description(Some(
            "The deprecated `functions` API: refused unless null (use `tool_calls`).",
        ))
        .into()
}

/// A tool name, as [`tools::check_tools`] takes it.
fn tool_name() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "1 to 64 of `A-Z`, `a-z`, `0-9`, `_` and `-`, unique among the tools.",
        ))
        .pattern(Some(format!(
            "^[A-Za-z0-9_-]{{1,{}}}$",
            tools::MAX_NAME_LEN
        )))
        .into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn chat(v: Value) -> Result<ChatCompletionRequest, ApiError> {
        ChatCompletionRequest::from_body(&map(v))
    }

    fn completion(v: Value) -> Result<CompletionRequest, ApiError> {
        CompletionRequest::from_body(&map(v))
    }

    /// The `param` of the error a chat body (a user message, then `extra`) gets.
    fn chat_param(extra: Value) -> String {
        let mut b = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in map(extra) {
            b[k] = v;
        }
        let e = chat(b.clone()).and_then(|r| r.chat.tools()).unwrap_err();
        assert_eq!(
            e.kind,
            crate::protocol::ErrorKind::InvalidValue,
            "{b}: {e:?}"
        );
        e.param.unwrap_or_default()
    }

    #[test]
    fn a_wrong_type_or_value_names_its_path() {
        let user = json!({"role": "user", "content": "hi"});
        for (extra, param) in [
            (
                json!({"messages": [user, {"role": "user", "content": 5}]}),
                "messages[1].content",
            ),
            (
                json!({"messages": [user, {"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[1].content",
            ),
            (
                json!({"messages": [user, {"role": "wizard"}]}),
                "messages[1].role",
            ),
            (
                json!({"messages": [user, {"role": "function", "name": "f"}]}),
                "messages[1].role",
            ),
            (json!({"messages": [{"content": "hi"}]}), "messages[0].role"),
            (json!({"messages": "hi"}), "messages"),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]}),
                "messages[0].tool_calls[0].function",
            ),
            (json!({"stop": ["a", "b", 3]}), "stop[2]"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": ""}), "stop"),
            (
                json!({"tools": [{"type": "function", "function": {"name": 5}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tools": [{"type": "function"}]}),
                "tools[0].function",
            ),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (json!({"tools": "all"}), "tools"),
            (json!({"tool_choice": "sometimes"}), "tool_choice"),
            (
                json!({"tool_choice": {"type": "function", "function": {}}}),
                "tool_choice.function.name",
            ),
            (json!({"parallel_tool_calls": "yes"}), "parallel_tool_calls"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
            (json!({"repetition_penalty": 5e-324}), "repetition_penalty"),
            (json!({"n": 9}), "n"),
            (json!({"n": 2.5}), "n"),
            (json!({"best_of": 2}), "best_of"),
            (json!({"max_tokens": -3}), "max_tokens"),
            (json!({"max_tokens": u64::MAX}), "max_tokens"),
            (json!({"top_logprobs": 21}), "top_logprobs"),
            (json!({"priority": 1001}), "priority"),
            (json!({"seed": 1.5}), "seed"),
            (json!({"seed": 1e20}), "seed"),
            (
                serde_json::from_str::<Value>(r#"{"seed": -9223372036854775809}"#).unwrap(),
                "seed",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": 5, "schema": {}}}}),
                "response_format",
            ),
            (json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (json!({"logit_bias": {"5": 101}}), "logit_bias"),
            (json!({"logit_bias": [1]}), "logit_bias"),
            (
                json!({"stream_options": {"include_usage": 1}}),
                "stream_options.include_usage",
            ),
            (json!({"stream_options": true}), "stream_options"),
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
                "response_format",
            ),
            (json!({"response_format": "json"}), "response_format"),
            (json!({"model": 3}), "model"),
        ] {
            assert_eq!(chat_param(extra.clone()), param, "{extra}");
        }
        let e = chat(json!({"model": "m"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"), "{e:?}");
        assert!(e.message.contains("required"), "{e:?}");
    }

    #[test]
    fn bodies_read_into_their_types() {
        let r = chat(json!({
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                {"role": "user", "content": "hi", "name": "ignored"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "3"},
            ],
            "temperature": 0, "top_p": 1, "n": 8, "seed": u64::MAX, "stop": "\n",
            "logit_bias": {"7": -100}, "stream_options": {"include_usage": true},
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}},
            "unknown_field": {"anything": [1, 2]}, "max_tokens": null,
        }))
        .unwrap();
        let m = &r.chat.messages;
        assert_eq!(m[0].role, Role::Developer);
        assert_eq!(m[0].role.template_role(), "system");
        assert_eq!(m[0].content, Some(Content("Be brief.".into())));
        assert_eq!(m[2].content, None);
        let call = &m[2].tool_calls.as_ref().unwrap()[0];
        assert_eq!(call.function.arguments, Some(Arguments(json!({"a": 1}))));
        assert_eq!(m[3].tool_call_id.as_deref(), Some("c1"));
        let g = &r.generation;
        assert_eq!(g.temperature, Some(Temperature(0.0)));
        assert_eq!(g.n, Some(Choices(8)));
        let n = |n: Value| chat(json!({"messages": [], "n": n})).map(|r| r.generation.n);
        assert_eq!(
            n(json!(2.0)).unwrap(),
            Some(Choices(2)),
            "integral floats are integers"
        );
        assert!(n(json!(2.5)).is_err() && n(json!(1e30)).is_err());
        assert_eq!(g.seed, Some(Seed(u64::MAX)));
        assert_eq!(g.stop, Some(Stop(vec!["\n".into()])));
        assert_eq!(g.logit_bias, Some(LogitBias(vec![(7, -100.0)])));
        assert_eq!(g.max_tokens, None);
        assert_eq!(
            g.response_format,
            Some(ResponseFormat::JsonSchema {
                schema: json!({"type": "object"}),
                strict: true
            })
        );
        assert_eq!(g.stream_options.as_ref().unwrap().include_usage, Some(true));
        assert_eq!(
            chat(json!({"messages": [], "seed": -1}))
                .unwrap()
                .generation
                .seed,
            Some(Seed(u64::MAX))
        );

        let prompt = |p: Value| completion(json!({"prompt": p})).map(|r| r.completion.prompt);
        assert_eq!(prompt(json!("Once")).unwrap(), Prompt::Text("Once".into()));
        assert_eq!(
            prompt(json!(["Once"])).unwrap(),
            Prompt::Text("Once".into())
        );
        assert_eq!(prompt(json!([1, 2.0])).unwrap(), Prompt::Tokens(vec![1, 2]));
        assert_eq!(prompt(json!([])).unwrap(), Prompt::Tokens(vec![]));
        for bad in [
            json!(["a", "b"]),
            json!([1, "a"]),
            json!([-1]),
            json!([1u64 << 32]),
            json!(3),
        ] {
            let e = prompt(bad.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("prompt"), "{bad}: {e:?}");
        }
        let e = completion(json!({"prompt": "x", "logprobs": true})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logprobs"), "{e:?}");
        let e = completion(json!({})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"), "{e:?}");
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    }

    fn tools(extra: Value) -> Result<Option<Tools>, ApiError> {
        let mut b = json!({"messages": []});
        for (k, v) in map(extra) {
            b[k] = v;
        }
        chat(b)?.chat.tools()
    }

    #[test]
    fn tool_choices_parse_and_default_to_auto() {
        let t = tools(json!({"tools": [weather()]})).unwrap().unwrap();
        assert_eq!(t.choice, Choice::Auto);
        assert!(t.parallel);
        let t = tools(
            json!({"tools": [weather()], "tool_choice": "required", "parallel_tool_calls": false}),
        )
        .unwrap()
        .unwrap();
        assert_eq!((t.choice, t.parallel), (Choice::Required, false));
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let t = tools(json!({"tools": [weather()], "tool_choice": named}))
            .unwrap()
            .unwrap();
        assert_eq!(t.choice, Choice::Named("get_weather".into()));
        assert_eq!(
            tools(json!({"tools": [weather()], "tool_choice": "none"})).unwrap(),
            None
        );
        assert_eq!(tools(json!({})).unwrap(), None);
    }

    #[test]
    fn bad_tools_name_the_field() {
        let param = |v: Value| tools(v).unwrap_err().param;
        assert_eq!(
            param(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})).as_deref(),
            Some("tools[0]")
        );
        assert_eq!(
            param(json!({"tools": [weather(), weather()]})).as_deref(),
            Some("tools[1]")
        );
        assert_eq!(
            param(json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}))
                .as_deref(),
            Some("tools[0].function.parameters")
        );
        assert_eq!(
            param(json!({"tool_choice": "required"})).as_deref(),
            Some("tool_choice")
        );
        assert_eq!(
            param(json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}))
                .as_deref(),
            Some("tool_choice")
        );
    }

    #[test]
    fn unimplemented_fields_are_refused_unless_neutral() {
        let refused = |kind, v: Value| {
            refuse_unimplemented(kind, &map(v))
                .err()
                .and_then(|e| e.param)
        };
        assert_eq!(
            refused(Kind::Chat, json!({"audio": {"voice": "x"}})).as_deref(),
            Some("audio")
        );
        assert_eq!(
            refused(Kind::Chat, json!({"modalities": ["text", "audio"]})).as_deref(),
            Some("modalities")
        );
        assert_eq!(
            refused(Kind::Completion, json!({"echo": true})).as_deref(),
            Some("echo")
        );
        assert_eq!(
            refused(Kind::Completion, json!({"tools": [weather()]})).as_deref(),
            Some("tools")
        );
        for (kind, ok) in [
            (
                Kind::Chat,
                json!({"modalities": ["text"], "audio": null, "functions": [], "function_call": "none"}),
            ),
            (
                Kind::Chat,
                json!({"tools": [weather()], "echo": true, "suffix": "x"}),
            ),
            (
                Kind::Completion,
                json!({"echo": false, "suffix": "", "tools": [], "tool_choice": "none"}),
            ),
        ] {
            assert_eq!(refused(kind, ok.clone()), None, "{ok}");
        }
    }

    /// The sampler computes in f32: every float bound is an f32, so that a value in range is
    /// in range once rounded too.
    #[test]
    fn float_bounds_hold_in_f32() {
        for r in [
            Temperature::RANGE,
            TopP::RANGE,
            MinP::RANGE,
            RepetitionPenalty::RANGE,
            Penalty::RANGE,
            LogitBias::RANGE,
        ] {
            for b in [r.least(), r.max] {
                assert_eq!(f64::from(b as f32), b, "{r}");
            }
            assert!(r.least() as f32 > r.min as f32 || !r.min_exclusive, "{r}");
        }
    }

    /// The published document states the constraints the types check, from the same constants.
    #[test]
    fn the_openapi_document_states_the_constraints() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(crate::openapi::ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let chat = &schemas["ChatCompletionRequest"];
        let completion = &schemas["CompletionRequest"];
        assert_eq!(chat["required"], json!(["messages"]));
        assert_eq!(completion["required"], json!(["prompt"]));
        // A nullable field: `oneOf: [null, the bounded number]`.
        let bounded = |body: &Value, field: &str| body["properties"][field]["oneOf"][1].clone();
        for body in [chat, completion] {
            let n = bounded(body, "n");
            assert_eq!(
                (
                    n["type"].as_str(),
                    n["minimum"].as_i64(),
                    n["maximum"].as_i64()
                ),
                (Some("integer"), Some(1), Some(8))
            );
            assert_eq!(
                n["maximum"].as_i64(),
                Some(crate::params::MAX_CHOICES as i64)
            );
            let t = bounded(body, "temperature");
            assert_eq!(
                (
                    t["type"].as_str(),
                    t["minimum"].as_f64(),
                    t["maximum"].as_f64()
                ),
                (Some("number"), Some(0.0), Some(2.0))
            );
            let p = bounded(body, "top_p");
            assert_eq!(
                (
                    p["exclusiveMinimum"].as_f64(),
                    p["minimum"].as_f64(),
                    p["maximum"].as_f64()
                ),
                (Some(0.0), Some(TopP::RANGE.least()), Some(1.0))
            );
            let stop = bounded(body, "stop");
            assert_eq!(stop["oneOf"][1]["maxItems"], MAX_STOP);
            let bias = bounded(body, "logit_bias");
            assert_eq!(bias["maxProperties"], MAX_BIASED);
            assert_eq!(
                bias["additionalProperties"]["minimum"].as_f64(),
                Some(LogitBias::RANGE.min)
            );
            let refs = body["properties"]["response_format"]["oneOf"][1]["$ref"].as_str();
            assert_eq!(refs, Some("#/components/schemas/ResponseFormat"));
        }
        assert_eq!(schemas["Role"]["enum"], json!(Role::NAMES));
        let forms: Vec<_> = schemas["ResponseFormat"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["properties"]["type"]["enum"][0].clone())
            .collect();
        assert_eq!(forms, ResponseFormat::TYPES.map(Value::from));
        let choice = &schemas["ToolChoice"]["oneOf"];
        assert_eq!(choice[0]["enum"], json!(ToolChoice::NAMES));
        assert_eq!(choice[1]["required"], json!(["type", "function"]));
        assert_eq!(bounded(chat, "top_logprobs")["maximum"], 20);
        assert_eq!(bounded(completion, "logprobs")["maximum"], 20);
        assert_eq!(chat["properties"]["messages"]["minItems"], 1);
        // Refused fields: only null or their neutral value.
        assert_eq!(chat["properties"]["audio"]["type"], "null");
        assert_eq!(
            completion["properties"]["echo"]["oneOf"][1]["enum"],
            json!([false])
        );
        assert!(
            chat["properties"]["echo"].is_null() && completion["properties"]["messages"].is_null()
        );
        assert_eq!(
            chat["properties"]["tools"]["type"],
            json!(["array", "null"])
        );
        assert_eq!(
            completion["properties"]["tool_choice"]["oneOf"][1]["enum"],
            json!(["none"])
        );
        let name = &schemas["FunctionDefinition"]["properties"]["name"]["pattern"];
        assert_eq!(
            name,
            &json!(format!("^[A-Za-z0-9_-]{{1,{}}}$", tools::MAX_NAME_LEN))
        );
        // Every referenced schema is in the document.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(
                schemas[name].is_object(),
                "{name} is referenced but missing"
            );
        }
    }
}
