//! Tool calling, in four parts with one job each:
//! - this module: the tools a request offers and how it lets the model use them
//!   ([`Tools`], [`Choice`]), converted from OpenAI's `tools` / `tool_choice` /
//!   `parallel_tool_calls` ([`crate::protocol::request::ChatFields::tools`]) and Anthropic's
//!   shapes alike;
//! - [`prompt`]: how tools, earlier calls and their results reach the model, through its own
//!   template when it speaks the Hermes format, else through rill's generic format;
//! - [`grammar`]: the Lark grammar that forces the calls (`required`, a named function) or,
//!   once the model writes the `<tool_call>` marker, constrains them (`auto`);
//! - [`parser`]: the streaming split of generated text into content and tool-call pieces
//!   (name first, then the arguments exactly as generated).
//!
//! The call format is the Hermes one, which Qwen 2.5, Hermes and SmolLM3 models are trained
//! on and most chat templates with tool support print:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```

pub mod grammar;
pub mod parser;
pub mod prompt;

use serde_json::{json, Map, Value};

use crate::protocol::ApiError;

/// The text that opens a tool call.
pub const CALL_OPEN: &str = "<tool_call>";
/// The text that closes a tool call.
pub const CALL_CLOSE: &str = "</tool_call>";

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Its name (`[A-Za-z0-9_-]{1,64}`, OpenAI's rule: [`MAX_NAME_LEN`]).
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// A JSON Schema of its arguments object.
    pub parameters: Value,
    /// Enforce every keyword of `parameters` (an unenforceable keyword is a 400); false:
    /// keywords llguidance cannot enforce are ignored.
    pub strict: bool,
}

/// How the model may use the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// It decides: text, or calls once it writes [`CALL_OPEN`].
    Auto,
    /// It must call at least one tool.
    Required,
    /// It must call this one.
    Named(String),
}

/// The tools of a request and how they may be used (`tool_choice: "none"` has none).
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// The functions, in the request's order (names unique).
    pub tools: Vec<Tool>,
    /// How the model may use them.
    pub choice: Choice,
    /// More than one call per answer.
    pub parallel: bool,
}

impl Tools {
    /// The tools as OpenAI tool objects, what chat templates get as `tools`.
    pub fn openai_json(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    let mut f = Map::new();
                    f.insert("name".into(), json!(t.name));
                    if let Some(d) = &t.description {
                        f.insert("description".into(), json!(d));
                    }
                    f.insert("parameters".into(), t.parameters.clone());
                    json!({"type": "function", "function": f})
                })
                .collect(),
        )
    }

    /// Whether the model may call `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tools.iter().any(|t| t.name == name)
    }
}

/// The longest tool name (OpenAI's rule).
pub const MAX_NAME_LEN: usize = 64;

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A function's `parameters` (or Anthropic's `input_schema`): a JSON Schema of an object
/// (absent: an object with any properties). `field` names it in errors.
pub fn parameters_schema(v: Option<&Value>, field: &str) -> Result<Value, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(json!({"type": "object"})),
        Some(Value::Object(s)) => match s.get("type") {
            None => Ok(Value::Object(s.clone())),
            Some(t) if t == "object" => Ok(Value::Object(s.clone())),
            Some(_) => Err(ApiError::param(
                field,
                format!("`{field}` must be the JSON Schema of an object (`\"type\": \"object\"`)"),
            )),
        },
        Some(_) => Err(ApiError::param(
            field,
            format!("`{field}` must be a JSON Schema object"),
        )),
    }
}

/// Checks a tool list: names valid and unique.
pub fn check_tools(tools: &[Tool], field: &str) -> Result<(), ApiError> {
    for (i, t) in tools.iter().enumerate() {
        if !valid_name(&t.name) {
            return Err(ApiError::param(
                &format!("{field}[{i}]"),
                format!(
                    "tool name `{}` must be 1-{MAX_NAME_LEN} characters of A-Z, a-z, 0-9, `_` and `-`",
                    t.name
                ),
            ));
        }
        if tools[..i].iter().any(|u| u.name == t.name) {
            return Err(ApiError::param(
                &format!("{field}[{i}]"),
                format!("tool name `{}` appears twice", t.name),
            ));
        }
    }
    Ok(())
}

/// The request's tools once the choice is known: a choice needs tools, a named one a tool of
/// that name.
pub fn finish(
    tools: Vec<Tool>,
    choice: Option<Choice>,
    parallel: bool,
    choice_field: &str,
) -> Result<Option<Tools>, ApiError> {
    let Some(choice) = choice else {
        return Ok(None);
    };
    if tools.is_empty() {
        return Err(ApiError::param(
            choice_field,
            format!("`{choice_field}` needs `tools`"),
        ));
    }
    if let Choice::Named(n) = &choice {
        if !tools.iter().any(|t| &t.name == n) {
            return Err(ApiError::param(
                choice_field,
                format!("`{choice_field}` names `{n}`, which is not among `tools`"),
            ));
        }
    }
    Ok(Some(Tools {
        tools,
        choice,
        parallel,
    }))
}
