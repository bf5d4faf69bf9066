//! Renders the model's `tokenizer.chat_template` (Jinja) with minijinja, configured like Hugging
//! Face's environment (trim_blocks, lstrip_blocks, `raise_exception`). A model without one (a
//! base model) has no chat format: rendering fails with [`EngineError::NoChatTemplate`] rather
//! than guessing one, unless the user supplies a template.

use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// One message of a conversation, as the template sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (whatever the template knows).
    pub role: String,
    /// The message text.
    pub content: String,
    /// An assistant message's tool calls in OpenAI's shape (`[{id, type, function: {name,
    /// arguments}}]`, `arguments` an object, as Hugging Face templates expect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` message's call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

/// A compiled chat template, or the absence of one.
pub struct ChatTemplate {
    /// None: the model has no template.
    env: Option<Environment<'static>>,
    /// The template renders `tools` and writes calls as `<tool_call>` JSON (Hermes, Qwen).
    hermes_tools: bool,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source` (None: a model without a template, whose `render` fails).
    pub fn new(source: Option<&str>, bos: &str, eos: &str) -> Result<Self> {
        let env = source.map(Self::compile).transpose()?;
        Ok(Self {
            env,
            hermes_tools: source.is_some_and(|s| s.contains("tools") && s.contains("<tool_call>")),
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// Whether there is a template to render.
    pub fn is_available(&self) -> bool {
        self.env.is_some()
    }

    /// Whether the template itself presents tools and tool calls in the Hermes format
    /// (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`, as Qwen 2.5 and Hermes
    /// models do): then [`ChatTemplate::render_with_tools`] hands it the tools and the
    /// messages' tool calls as they are.
    pub fn renders_hermes_tools(&self) -> bool {
        self.hermes_tools
    }

    fn compile(source: &str) -> Result<Environment<'static>> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        Ok(env)
    }

    /// Renders `messages`, ending with the assistant turn's opening when `add_generation_prompt`.
    /// Fails with [`EngineError::NoChatTemplate`] without a template.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with `tools` (OpenAI's tool objects) in the template's context,
    /// as Hugging Face's `apply_chat_template(tools=...)` passes them.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let env = self.env.as_ref().ok_or(EngineError::NoChatTemplate)?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| EngineError::ChatTemplate(e.to_string()))
    }
}
