//! How tools, earlier calls and their results reach the model.
//!
//! A template that speaks the Hermes format itself ([`ChatTemplate::renders_hermes_tools`])
//! gets `tools` and the messages as they are (assistant `tool_calls` with their arguments as
//! objects, `tool` messages with `tool_call_id`). Any other template (SmolLM2's, Gemma's, most
//! base-model templates) gets rill's **generic format**, documented in the README:
//! - the system message (one is added when there is none) ends with the tool list and the call
//!   format (the text of [`generic_system_prompt`]);
//! - an assistant message's calls follow its text, one `<tool_call>` block each;
//! - the results of consecutive `tool` messages become one `user` message of
//!   `<tool_response>` blocks, so templates that only know `user` and `assistant` render them.

use rill_engine::{ChatMessage, ChatTemplate, EngineError};
use serde_json::Value;

use super::{Tools, CALL_CLOSE, CALL_OPEN};

/// The system-prompt text that presents `tools` in the generic format.
pub fn generic_system_prompt(tools: &Tools) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    if let Value::Array(list) = tools.openai_json() {
        for t in list {
            s.push('\n');
            s.push_str(&t.to_string());
        }
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// One call of an assistant message, as the generic format writes it.
fn call_block(call: &Value) -> String {
    let f = call.get("function").unwrap_or(call);
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    let args = f.get("arguments").cloned().unwrap_or(Value::Null);
    format!(
        "{CALL_OPEN}\n{{\"name\": {}, \"arguments\": {}}}\n{CALL_CLOSE}",
        Value::from(name),
        args
    )
}

/// The messages in the generic format (see the module docs).
fn generic(messages: Vec<ChatMessage>, tools: Option<&Tools>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut in_results = false;
    for m in messages {
        if m.role == "tool" {
            let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
            match out.last_mut() {
                Some(last) if in_results => {
                    last.content.push('\n');
                    last.content.push_str(&block);
                }
                _ => out.push(ChatMessage::new("user", &block)),
            }
            in_results = true;
            continue;
        }
        in_results = false;
        let mut m = m;
        if let Some(Value::Array(calls)) = m.tool_calls.take() {
            let blocks: Vec<String> = calls.iter().map(call_block).collect();
            if !m.content.is_empty() {
                m.content.push('\n');
            }
            m.content.push_str(&blocks.join("\n"));
        }
        out.push(m);
    }
    if let Some(tools) = tools {
        let text = generic_system_prompt(tools);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content.push_str("\n\n");
                first.content.push_str(&text);
            }
            _ => out.insert(0, ChatMessage::new("system", &text)),
        }
    }
    out
}

/// The prompt text of a conversation with (optionally) tools, ending with the assistant
/// turn's opening.
pub fn render(
    template: &ChatTemplate,
    messages: Vec<ChatMessage>,
    tools: Option<&Tools>,
) -> Result<String, EngineError> {
    let has_tool_turns = messages
        .iter()
        .any(|m| m.role == "tool" || m.tool_calls.is_some());
    if template.renders_hermes_tools() {
        let list = tools.map(Tools::openai_json);
        return template.render_with_tools(&messages, list.as_ref(), true);
    }
    if tools.is_none() && !has_tool_turns {
        return template.render(&messages, true);
    }
    template.render(&generic(messages, tools), true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{Choice, Tool};
    use super::*;

    fn weather() -> Tools {
        Tools {
            tools: vec![Tool {
                name: "get_weather".into(),
                description: Some("Current weather".into()),
                parameters: json!({"type": "object"}),
                strict: false,
            }],
            choice: Choice::Auto,
            parallel: true,
        }
    }

    fn chatml() -> ChatTemplate {
        ChatTemplate::new(
            Some("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
            "",
            "",
        )
        .unwrap()
    }

    #[test]
    fn the_generic_format_puts_tools_calls_and_results_in_plain_turns() {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(
            json!([{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]),
        );
        let mut r1 = ChatMessage::new("tool", "{\"temp\": 21}");
        r1.tool_call_id = Some("call_1".into());
        let r2 = ChatMessage::new("tool", "sunny");
        let msgs = vec![ChatMessage::new("user", "Weather?"), call, r1, r2];
        let text = render(&chatml(), msgs, Some(&weather())).unwrap();
        assert!(text.starts_with("<|im_start|>system\n# Tools\n"), "{text}");
        assert!(text.contains("{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Current weather\",\"parameters\":{\"type\":\"object\"}}}"), "{text}");
        assert!(text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call><|im_end|>"), "{text}");
        assert!(text.contains("<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response>\n<tool_response>\nsunny\n</tool_response><|im_end|>"), "{text}");
        assert!(text.ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn a_hermes_template_gets_the_tools_itself() {
        let t = ChatTemplate::new(
            Some("{% if tools %}{% for t in tools %}{{ t.function.name }};{% endfor %}<tool_call>{% endif %}{% for m in messages %}{{ m.role }}:{{ m.content }}{% if m.tool_calls %}{{ m.tool_calls[0].function.arguments.city }}{% endif %}|{% endfor %}"),
            "",
            "",
        )
        .unwrap();
        assert!(t.renders_hermes_tools());
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(
            json!([{"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]),
        );
        let text = render(
            &t,
            vec![ChatMessage::new("user", "hi"), call],
            Some(&weather()),
        )
        .unwrap();
        assert_eq!(text, "get_weather;<tool_call>user:hi|assistant:Paris|");
    }
}
