//! rill's inference engine: GGUF loading, tokenizer and chat template, quantized CPU kernels,
//! a batched forward pass over a paged KV cache, sampling and streaming detokenization, and
//! constrained decoding (token masks for JSON schemas, Lark grammars and regexes, `constraint`).

#![warn(missing_docs)]

pub mod chat_template;
pub mod constraint;
pub mod detokenizer;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod kv_store;
pub mod model;
pub mod nn;
pub mod quant;
pub mod sampler;
pub mod spm;
pub mod sysinfo;
pub mod threadpool;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use constraint::{Constraint, ConstraintEnv, ConstraintError, ConstraintState};
pub use detokenizer::{Detokenizer, Released};
pub use engine::{Engine, EngineConfig, StepItem, StepLogits};
pub use error::{EngineError, Result};
pub use generate::{generate, FinishReason, GenerateOptions, Generation};
pub use kv_cache::{KvStats, KvType, SeqId, BLOCK_TOKENS, ROLLBACK_SLACK};
pub use sampler::{SampledToken, Sampler, SamplingParams};
pub use tokenizer::Tokenizer;
