//! The engine's typed errors: every failure that can reach a caller names what went wrong.

use thiserror::Error;

/// Errors from loading a model or running it.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: bad magic {0:#010x} (expected 0x46554747 'GGUF')")]
    BadMagic(u32),
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error("GGUF file is truncated or corrupt while reading {what} at byte {offset}")]
    Truncated { what: String, offset: usize },
    #[error("GGUF metadata key `{key}` is invalid: {reason}")]
    BadMetadata { key: String, reason: String },
    #[error("GGUF metadata key `{0}` is missing")]
    MissingKey(String),
    #[error("tensor `{name}`: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("tensor `{0}` is missing from the model")]
    MissingTensor(String),
    #[error("tensor `{name}` has type {dtype}, which rill does not support")]
    UnsupportedTensorType { name: String, dtype: String },
    #[error("model architecture `{0}` is not supported (supported: {list})", list = crate::model::SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("model has no chat template (no `tokenizer.chat_template`): use /v1/completions with raw text, or start rill with --chat-template FILE")]
    NoChatTemplate,
    #[error("sequence {0} is unknown to the engine")]
    UnknownSequence(u64),
    #[error("sequence {0} already exists")]
    DuplicateSequence(u64),
    #[error("KV cache is full: {needed} blocks needed, {free} free")]
    OutOfBlocks { needed: usize, free: usize },
    #[error("sequence {seq} would exceed the context length {n_ctx}")]
    ContextOverflow { seq: u64, n_ctx: usize },
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    #[error("invalid request: {0}")]
    InvalidInput(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
