//! The engine's typed errors: every failure that can reach a caller names what went wrong.

use thiserror::Error;

/// Errors from loading a model or running it.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The model file could not be opened or mapped.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with `GGUF` (the magic found).
    #[error("not a GGUF file: bad magic {0:#010x} (expected 0x46554747 'GGUF')")]
    BadMagic(u32),
    /// A GGUF version other than 2 or 3.
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// The file ends (or a length field points) before something it must hold.
    #[error("GGUF file is truncated or corrupt while reading {what} at byte {offset}")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where, in bytes from the start of the file.
        offset: usize,
    },
    /// A metadata value has the wrong type, range or shape.
    #[error("GGUF metadata key `{key}` is invalid: {reason}")]
    BadMetadata {
        /// The metadata key.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// A required metadata key is absent.
    #[error("GGUF metadata key `{0}` is missing")]
    MissingKey(String),
    /// A tensor's shape, offset or data is invalid.
    #[error("tensor `{name}`: {reason}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor `{0}` is missing from the model")]
    MissingTensor(String),
    /// A tensor's element type has no kernels here.
    #[error("tensor `{name}` has type {dtype}, which rill does not support")]
    UnsupportedTensorType {
        /// The tensor.
        name: String,
        /// ggml's name for its type.
        dtype: String,
    },
    /// `general.architecture` names an architecture rill cannot run.
    #[error("model architecture `{0}` is not supported (supported: {list})", list = crate::model::SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture(String),
    /// The vocabulary could not be built, or text could not be encoded.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template does not compile or fails to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A chat request for a model without a chat template.
    #[error("model has no chat template (no `tokenizer.chat_template`): use /v1/completions with raw text, or start rill with --chat-template FILE")]
    NoChatTemplate,
    /// No sequence has this id.
    #[error("sequence {0} is unknown to the engine")]
    UnknownSequence(u64),
    /// A sequence with this id already exists.
    #[error("sequence {0} already exists")]
    DuplicateSequence(u64),
    /// The KV cache cannot hold what was asked (in block equivalents).
    #[error("KV cache is full: {needed} blocks needed, {free} free")]
    OutOfBlocks {
        /// Blocks the operation needs.
        needed: usize,
        /// Blocks available (free or evictable).
        free: usize,
    },
    /// A step would take a sequence past the model's context length.
    #[error("sequence {seq} would exceed the context length {n_ctx}")]
    ContextOverflow {
        /// The sequence.
        seq: u64,
        /// The context length.
        n_ctx: usize,
    },
    /// A token id at or past the vocabulary size.
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    /// A request that is malformed or asks for something impossible.
    #[error("invalid request: {0}")]
    InvalidInput(String),
}

/// The engine's results.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
