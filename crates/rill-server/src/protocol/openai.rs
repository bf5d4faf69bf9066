//! OpenAI's response shapes as types: streaming chunks (`chat.completion.chunk`,
//! `text_completion`), whole responses (`chat.completion`, `text_completion`), usage, log
//! probabilities, and rill's `timings` object, which rides on the last chunk and on whole
//! responses.

use serde::Serialize;
use serde_json::Map;
use utoipa::ToSchema;

use rill_scheduler::{Timings, Usage};

/// Token counts (`usage`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageBody {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
    /// Cached prompt tokens.
    pub prompt_tokens_details: PromptDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PromptDetails {
    /// Prompt tokens reused from the prefix cache.
    pub cached_tokens: usize,
}

impl From<&Usage> for UsageBody {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptDetails {
                cached_tokens: u.cached_tokens,
            },
        }
    }
}

/// rill's `timings` (milliseconds and tokens per second).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimingsBody {
    /// Submission to admission.
    pub queue_ms: f64,
    /// Submission to first token.
    pub ttft_ms: f64,
    /// Prompt processing.
    pub prompt_ms: f64,
    /// Prompt processing speed.
    pub prompt_tokens_per_s: f64,
    /// Decode speed.
    pub generation_tokens_per_s: f64,
    /// Mean gap between tokens.
    pub itl_mean_ms: f64,
    /// Median gap between tokens.
    pub itl_p50_ms: f64,
    /// p95 gap between tokens.
    pub itl_p95_ms: f64,
    /// Submission to the end.
    pub total_ms: f64,
    /// Prompt tokens reused from the prefix cache.
    pub cached_tokens: usize,
    /// Times the request was preempted for memory.
    pub preemptions: u32,
    /// Speculative tokens drafted.
    pub draft_tokens: u64,
    /// Speculative tokens accepted.
    pub accepted_tokens: u64,
}

impl TimingsBody {
    /// The timings of a finished request.
    pub fn new(t: &Timings, u: &Usage) -> Self {
        Self {
            queue_ms: t.queue_ms,
            ttft_ms: t.ttft_ms,
            prompt_ms: t.prefill_ms,
            prompt_tokens_per_s: t.prompt_tokens_per_s,
            generation_tokens_per_s: t.decode_tokens_per_s,
            itl_mean_ms: t.itl_mean_ms,
            itl_p50_ms: t.itl_p50_ms,
            itl_p95_ms: t.itl_p95_ms,
            total_ms: t.total_ms,
            cached_tokens: u.cached_tokens,
            preemptions: t.preemptions,
            draft_tokens: t.draft_tokens,
            accepted_tokens: t.accepted_tokens,
        }
    }
}

/// One alternative of a chat token's log probabilities.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    /// The token's text (lossy UTF-8).
    pub token: String,
    /// Its log probability.
    pub logprob: f32,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A chat token's log probability and its alternatives.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenLogprob {
    /// The token's text (lossy UTF-8).
    pub token: String,
    /// Its log probability.
    pub logprob: f32,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The most likely alternatives.
    pub top_logprobs: Vec<TopLogprob>,
}

/// Chat `logprobs`.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<TokenLogprob>,
}

/// Legacy completions `logprobs`.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log probabilities.
    pub token_logprobs: Vec<f32>,
    /// Their alternatives, text to log probability.
    #[schema(value_type = Vec<Object>)]
    pub top_logprobs: Vec<Map<String, serde_json::Value>>,
    /// Byte offset of each token in the generated text.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Appends `other`'s tokens.
    pub fn extend(&mut self, other: CompletionLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}

/// A chat chunk's `delta`.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Delta {
    /// `assistant` in the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New tool-call fragments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A fragment of a streamed tool call: the first of each call carries its `id`, `type` and
/// `function.name`; the next ones add to `function.arguments`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolCallDelta {
    /// The call's index in the answer.
    pub index: usize,
    /// `call_...` (first fragment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (first fragment).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The function's name and/or more of its arguments.
    pub function: FunctionDelta,
}

/// `tool_calls[].function` of a fragment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionDelta {
    /// The function's name (first fragment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments' JSON text, as generated.
    pub arguments: String,
}

/// A whole tool call of a response message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolCall {
    /// `call_` and 24 hex digits.
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function and its arguments.
    pub function: FunctionCall,
}

/// `tool_calls[].function` of a response message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text, as generated.
    pub arguments: String,
}

/// One choice of a streamed chunk.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ChunkChoice {
    /// `chat.completion.chunk`.
    Chat {
        /// Always 0 (one choice).
        index: u32,
        /// What is new.
        delta: Delta,
        /// Log probabilities of the new tokens, when asked for.
        logprobs: Option<ChatLogprobs>,
        /// Set on the last chunk.
        finish_reason: Option<&'static str>,
    },
    /// `text_completion`.
    Text {
        /// Always 0.
        index: u32,
        /// New text.
        text: String,
        /// Log probabilities of the new tokens, when asked for.
        logprobs: Option<CompletionLogprobs>,
        /// Set on the last chunk.
        finish_reason: Option<&'static str>,
    },
}

/// A streamed chunk: the data of one SSE event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Chunk {
    /// The completion's id.
    pub id: String,
    /// `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// Always `rill`.
    pub system_fingerprint: &'static str,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Token counts (the usage chunk, with `stream_options.include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
    /// rill's timings (the last chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<TimingsBody>,
}

/// The assistant message of a whole chat response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    /// `assistant`.
    pub role: &'static str,
    /// The generated text (null when the answer is only tool calls).
    pub content: Option<String>,
    /// The answer's tool calls, when it made any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Always null.
    pub refusal: Option<String>,
}

/// The choice of a whole response.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ResponseChoice {
    /// `chat.completion`.
    Chat {
        /// Always 0.
        index: u32,
        /// The answer.
        message: Message,
        /// Log probabilities, when asked for.
        logprobs: Option<ChatLogprobs>,
        /// Why it ended.
        finish_reason: &'static str,
    },
    /// `text_completion`.
    Text {
        /// Always 0.
        index: u32,
        /// The generated text.
        text: String,
        /// Log probabilities, when asked for.
        logprobs: Option<CompletionLogprobs>,
        /// Why it ended.
        finish_reason: &'static str,
    },
}

/// A whole (non-streamed) response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Completion {
    /// The completion's id.
    pub id: String,
    /// `chat.completion` or `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// Always `rill`.
    pub system_fingerprint: &'static str,
    /// The one choice.
    pub choices: Vec<ResponseChoice>,
    /// Token counts.
    pub usage: UsageBody,
    /// rill's timings.
    pub timings: TimingsBody,
}
