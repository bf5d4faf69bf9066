//! Constrained decoding: token masks that keep generation inside a JSON schema, a Lark grammar
//! or a regex, computed by [`llguidance`] (an Earley parser over a derivative-based lexer, walked
//! against a trie of the vocabulary).
//!
//! Three layers:
//! - [`ConstraintEnv`], built **once per model** from rill's [`Tokenizer`]: the vocabulary as
//!   llguidance's token trie (each token's bytes; control tokens marked special so no grammar
//!   can produce them as text; every stop token an end-of-sequence token) and the parser factory
//!   with its per-vocabulary precomputation. Building it walks the whole vocabulary (about
//!   140 ms for SmolLM2's 49k tokens, 1 s for Gemma 3's 262k); share it behind an `Arc`.
//! - [`Constraint`], what a request asks for, compiled by [`ConstraintEnv::compile`] into a
//!   [`ConstraintState`] or a [`ConstraintError`] naming what is wrong with the schema, grammar
//!   or regex. Compiling builds the grammar and its lexer (0.5-2 ms for small schemas and
//!   grammars, more for large ones): do it when a request is admitted, not in the decode loop.
//! - [`ConstraintState`], one per sequence: [`mask`](ConstraintState::mask) (or
//!   [`apply_to_logits`](ConstraintState::apply_to_logits)) before sampling,
//!   [`commit`](ConstraintState::commit) after, [`rollback`](ConstraintState::rollback) for
//!   rejected speculative tokens, [`is_finished`](ConstraintState::is_finished) once the text is
//!   complete and only a stop token may follow.
//!
//! # Cost per token
//!
//! Computing a mask is the expensive step: llguidance advances its lexer over the trie of the
//! vocabulary from the current parser state. Measured on SmolLM2's 49k vocabulary
//! (`tests/constraint.rs`, `mask_time_per_token`, one core of a shared 2-core VM): a few
//! microseconds where llguidance's precomputed vocabulary slices apply (whitespace,
//! punctuation, JSON strings without length limits), 20-100 us typical, but 0.3-1 ms per token
//! inside lexemes the slices do not cover while most of the vocabulary is allowed (a string with
//! `maxLength`, a bounded character class such as `[A-Za-z ]{1,30}`); about 1 ms there on
//! Gemma 3's 262k vocabulary. The first visit to a lexer state costs more than later ones
//! (llguidance caches lexer states per compiled constraint). Such masks are worth computing
//! beside the forward pass rather than after it.
//!
//! Each mask is a fresh bit vector from llguidance (`vocab_size / 8` bytes, one allocation);
//! this module adds no allocation of its own on the hot path. A mask is computed at most once
//! per position and cached until the next commit or rollback. Committing the token just sampled
//! from that mask checks its bit and feeds its bytes to the parser (microseconds); committing
//! without a fresh mask (speculative tokens) first validates the tokens, roughly doubling their
//! parse cost. When the grammar forces bytes (a JSON key, say), the mask holds a single token:
//! the canonical tokenization of those bytes by rill's own tokenizer.

use std::sync::Arc;

use llguidance::api::{StopReason, TopLevelGrammar};
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use thiserror::Error;

use crate::tokenizer::Tokenizer;

/// What generation must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON value valid against `schema` (OpenAI's `json_schema` response format).
    JsonSchema {
        /// The JSON Schema (draft 2020-12 keywords; `$ref` to `$defs` resolves).
        schema: Value,
        /// `true`: every keyword must be enforced, so a keyword or `format` llguidance cannot
        /// enforce is a compile error (what compiles is enforced). `false`: such
        /// keywords are ignored with a warning ([`ConstraintState::warnings`]) and `oneOf` is
        /// approximated by `anyOf`, so the output may violate what was ignored.
        strict: bool,
    },
    /// A grammar in llguidance's Lark dialect (`start: ...`, `%json {...}` and `/regex/`
    /// terminals allowed).
    Lark(String),
    /// A regular expression (Rust `regex` syntax, so `\d` and `\w` are Unicode classes: write
    /// `[0-9]` for ASCII digits) the whole output must match.
    Regex(String),
}

impl Constraint {
    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(with_strictness(&json!({"type": "object"}), true))
            }
            Constraint::JsonSchema { schema, strict } => {
                TopLevelGrammar::from_json_schema(with_strictness(schema, *strict))
            }
            Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Constraint::Regex(r) => TopLevelGrammar::from_regex(r),
        }
    }

    fn compile_error(&self, message: String) -> ConstraintError {
        match self {
            Constraint::JsonObject | Constraint::JsonSchema { .. } => {
                ConstraintError::InvalidSchema(message)
            }
            Constraint::Lark(_) => ConstraintError::InvalidGrammar(message),
            Constraint::Regex(_) => ConstraintError::InvalidRegex(message),
        }
    }
}

/// The schema with llguidance's compile options (`x-guidance`) for `strict`: strict is
/// llguidance's default (unsupported keywords are errors); non-strict sets `lenient` and
/// `coerce_one_of`. JSON is compact (`whitespace_flexible: false`: no whitespace between
/// tokens, so a model cannot wander into endless blank space) unless the schema's own
/// `x-guidance` says otherwise; its other options are kept too.
pub fn with_strictness(schema: &Value, strict: bool) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(map) = &mut schema {
        let opts = map
            .entry("x-guidance")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(opts) = opts {
            opts.entry("whitespace_flexible")
                .or_insert(Value::Bool(false));
            opts.insert("lenient".into(), Value::Bool(!strict));
            if !strict {
                opts.insert("coerce_one_of".into(), Value::Bool(true));
            }
        }
    }
    schema
}

/// Why a constraint could not be built or followed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConstraintError {
    /// The JSON schema is malformed or uses what cannot be enforced (llguidance's message).
    #[error("invalid JSON schema: {0}")]
    InvalidSchema(String),
    /// The Lark grammar does not parse or compile (llguidance's message).
    #[error("invalid Lark grammar: {0}")]
    InvalidGrammar(String),
    /// The regular expression does not parse or compile (llguidance's message).
    #[error("invalid regex: {0}")]
    InvalidRegex(String),
    /// The vocabulary cannot back constrained decoding (no stop token, say).
    #[error("vocabulary cannot back constrained decoding: {0}")]
    Vocabulary(String),
    /// A committed token the constraint does not allow at its position; the state is unchanged.
    #[error("token {token} (position {position} of the committed tokens) is not allowed by the constraint: {reason}")]
    TokenRejected {
        /// The token.
        token: u32,
        /// Its index in the slice passed to [`ConstraintState::consume`] (0 for `commit`).
        position: usize,
        /// Why.
        reason: &'static str,
    },
    /// A rollback of more tokens than were committed; the state is unchanged.
    #[error("cannot roll back {requested} tokens: only {committed} were committed")]
    RollbackTooFar {
        /// Tokens asked to roll back.
        requested: usize,
        /// Tokens committed so far.
        committed: usize,
    },
    /// llguidance failed while following the constraint (the grammar became too complex for
    /// its limits, or no token can continue it); the state stays failed.
    #[error("constraint matcher failed: {0}")]
    Matcher(String),
}

/// rill's tokenizer as llguidance sees it: the trie of token bytes, and canonical
/// tokenization of forced bytes by rill's own encoder.
struct RillTokEnv {
    tokenizer: Arc<Tokenizer>,
    trie: TokTrie,
}

impl RillTokEnv {
    /// Whether `ids` spell exactly `bytes` with no control token.
    fn spells(&self, ids: &[u32], bytes: &[u8]) -> bool {
        let mut rest = bytes;
        for &id in ids {
            if self.tokenizer.is_control(id) {
                return false;
            }
            match rest.strip_prefix(self.tokenizer.token_bytes(id)) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }
}

impl TokenizerEnv for RillTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// rill's encoding of `s` when it spells `s` exactly without control tokens; otherwise
    /// (bytes that are not UTF-8, text that reads as a special token, a SentencePiece space
    /// prefix) the trie's greedy longest-match tokenization.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        if let Ok(text) = std::str::from_utf8(s) {
            if let Ok(ids) = self.tokenizer.encode(text, false) {
                if self.spells(&ids, s) {
                    return ids;
                }
            }
        }
        self.trie.greedy_tokenize(s)
    }
}

/// A model's vocabulary prepared for constrained decoding; build once per model and share.
pub struct ConstraintEnv {
    factory: ParserFactory,
    tok_env: TokEnv,
    stop_ids: Arc<[u32]>,
    vocab_size: usize,
}

impl ConstraintEnv {
    /// Prepares `tokenizer`'s vocabulary: each token's bytes (control tokens as special
    /// tokens, which grammars never produce as text), its stop tokens as end-of-sequence.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Self, ConstraintError> {
        let vocab_size = tokenizer.vocab_size();
        let n = u32::try_from(vocab_size)
            .map_err(|_| ConstraintError::Vocabulary(format!("{vocab_size} tokens")))?;
        if n == 0 {
            return Err(ConstraintError::Vocabulary(
                "the vocabulary is empty".into(),
            ));
        }
        let mut stop_ids: Vec<u32> = tokenizer
            .stop_ids
            .iter()
            .copied()
            .filter(|&t| t < n)
            .collect();
        stop_ids.dedup();
        let Some(&eos) = stop_ids.first() else {
            return Err(ConstraintError::Vocabulary(
                "the model has no end-of-sequence token to end constrained output with".into(),
            ));
        };
        let words: Vec<Vec<u8>> = (0..n)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_control(id) && !bytes.is_empty() {
                    let mut w = Vec::with_capacity(bytes.len() + 1);
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(bytes);
                    w
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let info = TokRxInfo {
            vocab_size: n,
            tok_eos: eos,
            tok_bos: tokenizer.bos_id.filter(|&t| t < n),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: stop_ids.get(1).copied(),
        };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&stop_ids);
        let env: TokEnv = Arc::new(RillTokEnv { tokenizer, trie });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstraintError::Vocabulary(format!("{e:#}")))?;
        factory.quiet();
        factory.limits_mut().verbose_errors = false;
        Ok(Self {
            factory,
            tok_env: env,
            stop_ids: stop_ids.into(),
            vocab_size,
        })
    }

    /// Tokens in the vocabulary (bits in a mask that can be set).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The tokens that end a constrained sequence (allowed once the constraint accepts).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// A fresh per-sequence state for `constraint`, or what is wrong with it.
    pub fn compile(&self, constraint: &Constraint) -> Result<ConstraintState, ConstraintError> {
        let parser = self
            .factory
            .create_parser(constraint.grammar())
            .map_err(|e| constraint.compile_error(format!("{e:#}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(constraint.compile_error(e));
        }
        Ok(ConstraintState {
            matcher,
            tok_env: Arc::clone(&self.tok_env),
            mask: SimpleVob::new(),
            mask_fresh: false,
            committed: 0,
            trailing_stops: 0,
            stop_ids: Arc::clone(&self.stop_ids),
            vocab_size: self.vocab_size,
        })
    }
}

/// One sequence's position in its constraint. `Clone` copies the parse state (for `n > 1`
/// choices that share a prompt); clones share llguidance's lexer cache.
#[derive(Clone)]
pub struct ConstraintState {
    matcher: Matcher,
    /// The vocabulary, for [`ConstraintState::force_bytes`].
    tok_env: TokEnv,
    /// The last mask computed; valid only while `mask_fresh`.
    mask: SimpleVob,
    mask_fresh: bool,
    /// Tokens committed, stop tokens after the end included.
    committed: usize,
    /// Stop tokens committed after the matcher had stopped (it does not see them).
    trailing_stops: usize,
    stop_ids: Arc<[u32]>,
    vocab_size: usize,
}

impl ConstraintState {
    fn matcher_error(&self, fallback: impl std::fmt::Display) -> ConstraintError {
        ConstraintError::Matcher(
            self.matcher
                .get_error()
                .unwrap_or_else(|| fallback.to_string()),
        )
    }

    fn is_stop(&self, token: u32) -> bool {
        self.stop_ids.contains(&token)
    }

    /// The tokens allowed next as a bit set: token `t` is allowed when bit `t % 32` of word
    /// `t / 32` is set (at least `vocab_size` bits; bits past the vocabulary are clear). Once
    /// the constraint is finished only the stop tokens are allowed. Computed once per
    /// position (see the module docs for its cost).
    pub fn mask(&mut self) -> Result<&[u32], ConstraintError> {
        if !self.mask_fresh {
            self.mask = self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| self.matcher_error(format!("{e:#}")))?;
            self.mask_fresh = true;
        }
        Ok(self.mask.as_slice())
    }

    /// Whether `token` may come next.
    pub fn is_allowed(&mut self, token: u32) -> Result<bool, ConstraintError> {
        let mask = self.mask()?;
        Ok(mask
            .get(token as usize / 32)
            .is_some_and(|w| w >> (token % 32) & 1 == 1))
    }

    /// Sets every disallowed token's logit to negative infinity (a row of the model's logits;
    /// entries past the vocabulary are disallowed).
    pub fn apply_to_logits(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let mask = self.mask()?;
        for (i, chunk) in logits.chunks_mut(32).enumerate() {
            let word = mask.get(i).copied().unwrap_or(0);
            if word == u32::MAX {
                continue;
            }
            for (bit, l) in chunk.iter_mut().enumerate() {
                if word >> bit & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }

    /// Whether a stop token may come next: the text so far is complete (it may also go on
    /// unless [`is_finished`](Self::is_finished)).
    pub fn eos_allowed(&mut self) -> Result<bool, ConstraintError> {
        if self.is_finished() {
            return Ok(true);
        }
        self.matcher
            .is_accepting()
            .map_err(|e| self.matcher_error(format!("{e:#}")))
    }

    /// Whether the constraint is complete: nothing but a stop token may follow (or one has).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    /// Whether a stop token has been committed (the sequence should end).
    pub fn ended_with_stop(&self) -> bool {
        self.trailing_stops > 0 || self.matcher.stop_reason() == StopReason::EndOfSentence
    }

    /// llguidance's message if following the constraint failed (see
    /// [`ConstraintError::Matcher`]).
    pub fn error(&self) -> Option<String> {
        self.matcher.get_error()
    }

    /// Tokens committed and not rolled back.
    pub fn committed(&self) -> usize {
        self.committed
    }

    /// What compiling ignored: with a non-strict schema, the keywords not enforced.
    pub fn warnings(&mut self) -> Vec<String> {
        self.matcher.grammar_warnings()
    }

    /// Advances past `token`, normally just sampled from [`mask`](Self::mask) (then only its
    /// bit is checked). A token the constraint does not allow is
    /// [`ConstraintError::TokenRejected`] and changes nothing.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        if self.mask_fresh && !self.matcher.is_stopped() {
            if !self.is_allowed(token)? {
                return Err(ConstraintError::TokenRejected {
                    token,
                    position: 0,
                    reason: "not in the mask at this position",
                });
            }
            return self.feed(std::slice::from_ref(&token));
        }
        self.consume(std::slice::from_ref(&token))
    }

    /// Advances past `tokens` (accepted speculative tokens, or a forced prefix), all or none:
    /// if one is not allowed, [`ConstraintError::TokenRejected`] names it and nothing changes.
    /// Stop tokens after the end of the constraint are accepted (and counted for rollback).
    pub fn consume(&mut self, tokens: &[u32]) -> Result<(), ConstraintError> {
        let valid = self.valid_prefix(tokens)?;
        if let Some(&token) = tokens.get(valid) {
            return Err(ConstraintError::TokenRejected {
                token,
                position: valid,
                reason: if token as usize >= self.vocab_size {
                    "outside the vocabulary"
                } else if self.is_finished() {
                    "the constraint is complete; only a stop token may follow"
                } else {
                    "the constraint does not allow it here"
                },
            });
        }
        if self.matcher.is_stopped() {
            self.trailing_stops += tokens.len();
            self.committed += tokens.len();
            self.mask_fresh = false;
            return Ok(());
        }
        // The matcher takes everything up to and including the first stop token; stop tokens
        // after it are past the end.
        let live = tokens
            .iter()
            .position(|&t| self.is_stop(t))
            .map_or(tokens.len(), |i| i + 1);
        self.feed(&tokens[..live])?;
        self.trailing_stops += tokens.len() - live;
        self.committed += tokens.len() - live;
        Ok(())
    }

    /// Advances past `bytes` of output that were generated without the constraint (a lazy
    /// constraint that starts at a trigger inside the text): they are tokenized canonically
    /// (rill's encoder, else the trie's longest matches) and consumed like
    /// [`consume`](Self::consume). The parser works on bytes, so how the model happened to
    /// tokenize them does not matter; what follows is masked as usual.
    pub fn force_bytes(&mut self, bytes: &[u8]) -> Result<(), ConstraintError> {
        let tokens = self.tok_env.tokenize_bytes(bytes);
        self.consume(&tokens)
    }

    /// Feeds validated tokens to the matcher.
    fn feed(&mut self, tokens: &[u32]) -> Result<(), ConstraintError> {
        self.mask_fresh = false;
        self.matcher
            .consume_tokens(tokens)
            .map_err(|e| self.matcher_error(format!("{e:#}")))?;
        self.committed += tokens.len();
        Ok(())
    }

    /// How many leading `tokens` the constraint allows in a row, without committing any (for
    /// checking draft tokens). Stop tokens count while the constraint accepts or is finished.
    pub fn valid_prefix(&mut self, tokens: &[u32]) -> Result<usize, ConstraintError> {
        let in_vocab = tokens
            .iter()
            .position(|&t| t as usize >= self.vocab_size)
            .unwrap_or(tokens.len());
        let tokens = &tokens[..in_vocab];
        let stops_from = |s: &Self, from: usize| {
            from + tokens[from..].iter().take_while(|&&t| s.is_stop(t)).count()
        };
        if self.matcher.is_stopped() {
            if self.matcher.is_error() {
                return Err(self.matcher_error("the matcher failed earlier"));
            }
            return Ok(stops_from(self, 0));
        }
        let n = self
            .matcher
            .validate_tokens(tokens)
            .map_err(|e| self.matcher_error(format!("{e:#}")))?;
        // The matcher stops validating at the first stop token it accepts.
        if n > 0 && self.is_stop(tokens[n - 1]) {
            return Ok(stops_from(self, n));
        }
        Ok(n)
    }

    /// Undoes the last `n` committed tokens; the next mask is the one computed `n` tokens ago.
    pub fn rollback(&mut self, n: usize) -> Result<(), ConstraintError> {
        if n > self.committed {
            return Err(ConstraintError::RollbackTooFar {
                requested: n,
                committed: self.committed,
            });
        }
        if n == 0 {
            return Ok(());
        }
        let past_end = n.min(self.trailing_stops);
        let rest = n - past_end;
        if rest > 0 {
            self.matcher
                .rollback(rest)
                .map_err(|e| self.matcher_error(format!("{e:#}")))?;
        }
        self.trailing_stops -= past_end;
        self.committed -= n;
        self.mask_fresh = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn env_is_shareable_and_state_movable() {
        assert_send_sync::<ConstraintEnv>();
        assert_send::<ConstraintState>();
    }

    #[test]
    fn strictness_sets_llguidance_options() {
        let s = json!({"type": "object", "x-guidance": {"whitespace_flexible": false}});
        let strict = with_strictness(&s, true);
        assert_eq!(strict["x-guidance"]["lenient"], json!(false));
        assert_eq!(strict["x-guidance"]["whitespace_flexible"], json!(false));
        let loose = with_strictness(&s, false);
        assert_eq!(loose["x-guidance"]["lenient"], json!(true));
        assert_eq!(loose["x-guidance"]["coerce_one_of"], json!(true));
        assert_eq!(with_strictness(&json!(true), true), json!(true));
    }
}
