//! Tool calling, in four parts with one job each:
//! - this module: the tools a request offers and how it lets the model use them
//!   ([`Tools`], [`Choice`]), parsed from OpenAI's `tools` / `tool_choice` /
//!   `parallel_tool_calls` (Anthropic's shapes convert into the same types);
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
    /// Its name (`[A-Za-z0-9_-]{1,64}`, OpenAI's rule).
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

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
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
                    "tool name `{}` must be 1-64 characters of A-Z, a-z, 0-9, `_` and `-`",
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

/// OpenAI's `tools`, `tool_choice` and `parallel_tool_calls` from a chat request body. None:
/// no tools, or `tool_choice: "none"` (then the model answers in text).
pub fn parse_openai(body: &Map<String, Value>) -> Result<Option<Tools>, ApiError> {
    let get = |k: &str| body.get(k).filter(|v| !v.is_null());
    let tools = match get("tools") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, t)| openai_tool(i, t))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::param("tools", "`tools` must be an array")),
    };
    check_tools(&tools, "tools")?;
    let choice = match get("tool_choice") {
        None => (!tools.is_empty()).then_some(Choice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => None,
            "auto" => Some(Choice::Auto),
            "required" => Some(Choice::Required),
            other => {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("unknown `tool_choice` `{other}` (none, auto, required, or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}})"),
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    ApiError::param(
                        "tool_choice",
                        "a named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            Some(Choice::Named(name.to_string()))
        }
        Some(_) => {
            return Err(ApiError::param(
                "tool_choice",
                "`tool_choice` must be a string or an object",
            ))
        }
    };
    let parallel = match get("parallel_tool_calls") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::param(
                "parallel_tool_calls",
                "`parallel_tool_calls` must be a boolean",
            ))
        }
    };
    finish(tools, choice, parallel, "tool_choice")
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

fn openai_tool(i: usize, t: &Value) -> Result<Tool, ApiError> {
    let field = |f: &str| format!("tools[{i}].{f}");
    let t = t
        .as_object()
        .ok_or_else(|| ApiError::param(&format!("tools[{i}]"), "each tool must be an object"))?;
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::param(
            &field("type"),
            "only `\"type\": \"function\"` tools are supported",
        ));
    }
    let f = t
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::param(&field("function"), "`function` (an object) is required"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::param(&field("function.name"), "`name` (a string) is required"))?;
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::param(
                &field("function.description"),
                "`description` must be a string",
            ))
        }
    };
    let strict = match f.get("strict") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::param(
                &field("function.strict"),
                "`strict` must be a boolean",
            ))
        }
    };
    Ok(Tool {
        name: name.to_string(),
        description,
        parameters: parameters_schema(f.get("parameters"), &field("function.parameters"))?,
        strict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    }

    #[test]
    fn choices_parse_and_default_to_auto() {
        let t = parse_openai(&body(json!({"tools": [weather()]})))
            .unwrap()
            .unwrap();
        assert_eq!(t.choice, Choice::Auto);
        assert!(t.parallel);
        let t = parse_openai(&body(
            json!({"tools": [weather()], "tool_choice": "required", "parallel_tool_calls": false}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!((t.choice, t.parallel), (Choice::Required, false));
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let t = parse_openai(&body(json!({"tools": [weather()], "tool_choice": named})))
            .unwrap()
            .unwrap();
        assert_eq!(t.choice, Choice::Named("get_weather".into()));
        assert_eq!(
            parse_openai(&body(json!({"tools": [weather()], "tool_choice": "none"}))).unwrap(),
            None
        );
        assert_eq!(parse_openai(&body(json!({}))).unwrap(), None);
    }

    #[test]
    fn bad_tools_name_the_field() {
        let param = |v: Value| parse_openai(&body(v)).unwrap_err().param;
        assert_eq!(
            param(json!({"tools": [{"type": "retrieval"}]})).as_deref(),
            Some("tools[0].type")
        );
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
        assert_eq!(
            param(json!({"tools": [weather()], "tool_choice": "sometimes"})).as_deref(),
            Some("tool_choice")
        );
        assert_eq!(
            param(json!({"tools": [weather()], "parallel_tool_calls": "yes"})).as_deref(),
            Some("parallel_tool_calls")
        );
    }
}
