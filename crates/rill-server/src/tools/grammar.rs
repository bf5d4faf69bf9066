//! The grammar of a tool-calling answer, in llguidance's Lark dialect: one call (or, with
//! `parallel_tool_calls`, several separated by a newline), each
//! `<tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>` where NAME is one of the
//! allowed functions and ARGS is valid against that function's `parameters` (a `%json`
//! terminal, compact JSON; see [`closed`] for extra properties). A named choice allows one
//! call of that function. `required` and a named choice apply it from the first token;
//! `auto` applies it lazily, from the [`CALL_OPEN`] marker on.

use rill_engine::constraint::with_strictness;

use super::{Choice, Tools, CALL_CLOSE, CALL_OPEN};

/// A Lark string literal of `s` (JSON's escapes are Lark's).
fn lit(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The text before a call's arguments.
pub fn call_head(name: &str) -> String {
    format!("{CALL_OPEN}\n{{\"name\": \"{name}\", \"arguments\": ")
}

/// The text after a call's arguments.
pub fn call_tail() -> String {
    format!("}}\n{CALL_CLOSE}")
}

/// `parameters` with `additionalProperties: false` where it lists `properties` and says
/// nothing about others: a schema that allows any extra property lets a small model invent
/// arguments (seen: SmolLM2 adding `"required": [...]` to its arguments); a client that wants
/// extra properties says so.
fn closed(parameters: &serde_json::Value) -> serde_json::Value {
    let mut p = parameters.clone();
    if let Some(o) = p.as_object_mut() {
        if o.contains_key("properties") && !o.contains_key("additionalProperties") {
            o.insert("additionalProperties".into(), false.into());
        }
    }
    p
}

impl Tools {
    /// The grammar of the answer's calls (see the module docs).
    pub fn grammar(&self) -> String {
        let mut g = String::new();
        let several = self.parallel && !matches!(self.choice, Choice::Named(_));
        g.push_str(if several {
            "start: call (\"\\n\" call)*\n"
        } else {
            "start: call\n"
        });
        let allowed: Vec<(usize, &super::Tool)> = self
            .tools
            .iter()
            .enumerate()
            .filter(|(_, t)| match &self.choice {
                Choice::Named(n) => &t.name == n,
                Choice::Auto | Choice::Required => true,
            })
            .collect();
        let alts: Vec<String> = allowed.iter().map(|(i, _)| format!("fn_{i}")).collect();
        g.push_str(&format!("call: {}\n", alts.join(" | ")));
        for (i, t) in allowed {
            g.push_str(&format!(
                "fn_{i}: {} args_{i} {}\nargs_{i}: %json {}\n",
                lit(&call_head(&t.name)),
                lit(&call_tail()),
                with_strictness(&closed(&t.parameters), t.strict)
            ));
        }
        g
    }

    /// Where a lazy grammar starts: [`CALL_OPEN`] with `auto`; None when the grammar holds
    /// from the first token.
    pub fn trigger(&self) -> Option<&'static str> {
        (self.choice == Choice::Auto).then_some(CALL_OPEN)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::Tool;
    use super::*;

    fn tools(choice: Choice, parallel: bool) -> Tools {
        let tool = |name: &str| Tool {
            name: name.into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            strict: false,
        };
        Tools {
            tools: vec![tool("get_weather"), tool("get_time")],
            choice,
            parallel,
        }
    }

    #[test]
    fn grammar_lists_the_allowed_functions() {
        let g = tools(Choice::Required, true).grammar();
        assert!(g.starts_with("start: call (\"\\n\" call)*\n"), "{g}");
        assert!(g.contains("call: fn_0 | fn_1\n"), "{g}");
        assert!(g.contains(r#"fn_1: "<tool_call>\n{\"name\": \"get_time\", \"arguments\": " args_1 "}\n</tool_call>""#), "{g}");
        let g = tools(Choice::Named("get_time".into()), false).grammar();
        assert!(g.starts_with("start: call\ncall: fn_1\n"), "{g}");
        assert!(!g.contains("fn_0"), "{g}");
        assert_eq!(tools(Choice::Auto, true).trigger(), Some(CALL_OPEN));
        assert_eq!(tools(Choice::Required, true).trigger(), None);
    }
}
