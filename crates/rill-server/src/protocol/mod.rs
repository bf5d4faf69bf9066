//! rill's wire protocol, in one place: the error type every transport reports
//! ([`error`]), OpenAI's response and chunk shapes ([`openai`]), SSE events ([`sse`]) and
//! the WebSocket frames ([`ws`]), Anthropic's Messages API ([`anthropic`]), and the OpenAI
//! request bodies ([`request`]). Handlers build these types; nothing else in the server
//! writes JSON for a client by hand.

pub mod anthropic;
pub mod error;
pub mod openai;
pub mod request;
pub mod sse;
pub mod ws;

pub use error::{ApiError, ErrorBody, ErrorEnvelope, ErrorKind};
