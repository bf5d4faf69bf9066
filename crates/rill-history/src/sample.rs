//! What one streaming request measured, as a client saw it ([`Sample`]), and the speculative
//! decoding counts a server reported for it ([`Drafts`]). `rill bench` produces samples; the
//! history stores them and the comparison ranks them.

use serde::{Deserialize, Serialize};

/// What one request measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Submission to the first content chunk (`None` if none arrived).
    pub ttft_ms: Option<f64>,
    /// Gaps between consecutive content chunks.
    pub itl_ms: Vec<f64>,
    /// Submission to the end of the stream.
    pub e2e_ms: f64,
    /// Tokens generated (the server's usage, or content chunks where it reports none).
    pub output_tokens: usize,
    /// Why the request failed (`None`: it succeeded).
    pub error: Option<String>,
    /// Speculative tokens the server drafted and accepted for this request, from the final
    /// chunk's `timings` (rill: `draft_tokens`/`accepted_tokens`; llama-server:
    /// `draft_n`/`draft_n_accepted`); `None` where the server reports none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drafts: Option<Drafts>,
}

/// Speculative-decoding counts one request reported.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Drafts {
    /// Draft tokens the server verified.
    pub drafted: usize,
    /// Draft tokens it accepted.
    pub accepted: usize,
}

impl Sample {
    /// Whether the request succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Mean gap between content chunks, if there was more than one chunk.
    pub fn itl_mean_ms(&self) -> Option<f64> {
        (!self.itl_ms.is_empty())
            .then(|| self.itl_ms.iter().sum::<f64>() / self.itl_ms.len() as f64)
    }

    /// Output tokens per second after the first.
    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        let ttft = self.ttft_ms?;
        let span = (self.e2e_ms - ttft) / 1e3;
        (self.output_tokens > 1 && span > 0.0).then(|| (self.output_tokens - 1) as f64 / span)
    }
}
