//! Incremental detokenization for streaming: bytes of each generated token go in, text comes out.
//! Never emits a partial UTF-8 character; holds back any tail that could be the start of a stop
//! sequence and releases it as soon as it cannot be; never lets a stop sequence through; and
//! flushes what is held when generation ends.

/// What one pushed token released.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// Text safe to show: whole characters, no possible stop-sequence prefix.
    pub text: String,
    /// A stop sequence matched: generation must end; `text` is everything before it.
    pub stopped: Option<String>,
}

/// The streaming decoder of one generation (see the module doc).
#[derive(Debug, Default)]
pub struct Detokenizer {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 character.
    pending: Vec<u8>,
    /// Decoded text not yet released (a possible stop-sequence prefix).
    held: String,
    finished: bool,
}

impl Detokenizer {
    /// A decoder that ends at the first of `stops` (empty ones ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Takes one token's bytes; returns the text they release (nothing once stopped).
    pub fn push(&mut self, bytes: &[u8]) -> Released {
        if self.finished {
            return Released::default();
        }
        self.pending.extend_from_slice(bytes);
        self.decode_pending(false);
        self.release()
    }

    /// Ends the stream: releases everything held (an incomplete character becomes U+FFFD).
    pub fn flush(&mut self) -> String {
        if self.finished {
            return String::new();
        }
        self.decode_pending(true);
        self.finished = true;
        std::mem::take(&mut self.held)
    }

    fn decode_pending(&mut self, at_end: bool) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 validated this prefix.
                    self.held.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .expect("from_utf8 validated the prefix up to valid_up_to()"),
                    );
                    match e.error_len() {
                        Some(n) => {
                            self.held.push('\u{FFFD}');
                            start += valid + n;
                        }
                        None => {
                            // Incomplete character at the end: keep it for the next token.
                            let rest = self.pending[start + valid..].to_vec();
                            self.pending = rest;
                            if at_end {
                                self.held.push('\u{FFFD}');
                                self.pending.clear();
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    fn release(&mut self) -> Released {
        // A complete stop sequence: cut there, end.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i);
        if let Some((i, s)) = hit {
            let s = s.clone();
            self.held.truncate(i);
            self.finished = true;
            self.pending.clear();
            return Released {
                text: std::mem::take(&mut self.held),
                stopped: Some(s),
            };
        }
        // Keep the longest tail that is a prefix of some stop sequence.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.held.char_indices() {
                let tail = &self.held[i..];
                if tail.len() > keep && s.starts_with(tail) {
                    keep = tail.len();
                }
            }
        }
        let cut = self.held.len() - keep;
        let rest = self.held.split_off(cut);
        Released {
            text: std::mem::replace(&mut self.held, rest),
            stopped: None,
        }
    }
}
