//! The tokenizer, built from GGUF metadata alone.
//!
//! SentencePiece-style vocabularies (`tokenizer.ggml.model = llama`: Llama 2, Gemma, ...) use
//! our port of llama.cpp's score-driven merge (see `spm`).
//!
//! GPT-2 style byte-level BPE (`tokenizer.ggml.model = gpt2`) is built with the `tokenizers`
//! crate from the GGUF vocabulary and merges. To match llama.cpp exactly for SmolLM2 (pre-type
//! `smollm`): individual-digit splitting, then byte-level pre-tokenization *without* a prefix
//! space, a byte-level decoder, and control tokens registered as special tokens so `<|im_start|>`
//! in a prompt is one token.
//!
//! For detokenization we keep our own table of each token's bytes: streaming needs the bytes of
//! one token at a time (O(1) per token), which `tokenizers`' whole-sequence decode cannot give.

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::spm::{escape_whitespace, SpmVocab};

/// llama.cpp's token types.
const TOKEN_TYPE_NORMAL: i64 = 1;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
const TOKEN_TYPE_BYTE: i64 = 6;

enum Model {
    Bpe(Box<HfTokenizer>),
    Spm {
        vocab: Box<SpmVocab>,
        /// Control and user-defined tokens, longest first (matched before SPM runs).
        specials: Vec<(String, u32)>,
        /// Special tokens that swallow the whitespace after them (llama.cpp's RSTRIP).
        rstrip: Vec<u32>,
        add_space_prefix: bool,
    },
}

/// A model's vocabulary: encoding text, and the bytes each generated token stands for.
pub struct Tokenizer {
    model: Model,
    /// Bytes each token stands for when generated (control tokens: their text).
    token_bytes: Vec<Vec<u8>>,
    is_control: Vec<bool>,
    /// Beginning-of-sequence token.
    pub bos_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_id: Option<u32>,
    /// Tokens that end generation (eos plus end-of-turn tokens such as `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    /// Whether prompts start with `bos_id` (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// The file's `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// A per-token metadata array (`None` if the key is absent), every entry converted by `conv`:
/// an entry of another kind (`kind` names the expected one), a value that is not an array, or
/// (with `len`) an array of another length than the vocabulary is a typed error naming the key.
fn per_token<T>(
    g: &GgufFile,
    key: &str,
    len: Option<usize>,
    kind: &str,
    conv: impl Fn(&crate::gguf::Value) -> Option<T>,
) -> Result<Option<Vec<T>>> {
    let bad = |reason: String| EngineError::BadMetadata {
        key: key.into(),
        reason,
    };
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    let a = v
        .as_array()
        .ok_or_else(|| bad(format!("expected an array of {kind}")))?;
    if let Some(n) = len.filter(|&n| n != a.len()) {
        return Err(bad(format!("{} entries for {n} tokens", a.len())));
    }
    a.iter()
        .enumerate()
        .map(|(i, v)| conv(v).ok_or_else(|| bad(format!("entry {i} is {v:?}, expected {kind}"))))
        .collect::<Result<Vec<T>>>()
        .map(Some)
}

impl Tokenizer {
    /// The tokenizer a GGUF file describes (`tokenizer.ggml.*`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.req_str("tokenizer.ggml.model")?;
        let tokens: Vec<String> = per_token(g, "tokenizer.ggml.tokens", None, "strings", |v| {
            v.as_str().map(str::to_string)
        })?
        .ok_or_else(|| EngineError::MissingKey("tokenizer.ggml.tokens".into()))?;
        let types: Vec<i64> = per_token(
            g,
            "tokenizer.ggml.token_type",
            Some(tokens.len()),
            "integers",
            |v| v.as_i64(),
        )?
        .unwrap_or_else(|| vec![TOKEN_TYPE_NORMAL; tokens.len()]);
        let id = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let bos_id = id("tokenizer.ggml.bos_token_id");
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(model == "llama");
        let is_control: Vec<bool> = types
            .iter()
            .map(|&t| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .collect();
        let model_impl = match model {
            "gpt2" => Model::Bpe(Box::new(Self::build_bpe(g, &tokens, &is_control)?)),
            "llama" => {
                let scores: Vec<f32> = per_token(
                    g,
                    "tokenizer.ggml.scores",
                    Some(tokens.len()),
                    "numbers",
                    |v| v.as_f32(),
                )?
                .unwrap_or_else(|| vec![0.0; tokens.len()]);
                let mut specials: Vec<(String, u32)> = tokens
                    .iter()
                    .zip(&is_control)
                    .enumerate()
                    .filter(|(_, (t, &c))| c && !t.is_empty())
                    .map(|(i, (t, _))| (t.clone(), i as u32))
                    .collect();
                specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
                let rstrip = rstrip_tokens(g, &specials);
                Model::Spm {
                    vocab: Box::new(SpmVocab::new(&tokens, scores, id("tokenizer.ggml.unknown_token_id"))),
                    specials,
                    rstrip,
                    add_space_prefix: g
                        .get("tokenizer.ggml.add_space_prefix")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(true),
                }
            }
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "tokenizer model `{other}` is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)"
                )))
            }
        };
        let byte_decoder = byte_level_decoder();
        let token_bytes = tokens
            .iter()
            .zip(&is_control)
            .enumerate()
            .map(|(i, (t, &c))| match (&model_impl, c) {
                (_, true) => t.as_bytes().to_vec(),
                (Model::Bpe(_), false) => t
                    .chars()
                    .map(|ch| byte_decoder.get(&ch).copied().unwrap_or(b'?'))
                    .collect(),
                (Model::Spm { .. }, false) => {
                    if types[i] == TOKEN_TYPE_BYTE {
                        t.strip_prefix("<0x")
                            .and_then(|h| h.strip_suffix('>'))
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .map_or_else(|| t.as_bytes().to_vec(), |b| vec![b])
                    } else {
                        t.replace('\u{2581}', " ").into_bytes()
                    }
                }
            })
            .collect();
        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        if let Some(eot) = id("tokenizer.ggml.eot_token_id") {
            stop_ids.push(eot);
        }
        for name in ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"] {
            if let Some(&i) = tokens.iter().position(|t| t == name).as_ref() {
                if is_control[i] && !stop_ids.contains(&(i as u32)) {
                    stop_ids.push(i as u32);
                }
            }
        }
        Ok(Self {
            model: model_impl,
            token_bytes,
            is_control,
            bos_id,
            eos_id,
            stop_ids,
            add_bos,
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        })
    }

    /// A SentencePiece-style vocabulary from its pieces alone (`\u{2581}` stands for a space;
    /// every piece scores the same), ending generation at `stop_ids`. For backends and tests
    /// that have no GGUF file: the scheduler's fake engine builds its vocabulary this way.
    pub fn from_pieces(pieces: &[String], stop_ids: Vec<u32>) -> Self {
        let token_bytes = pieces
            .iter()
            .map(|t| t.replace('\u{2581}', " ").into_bytes())
            .collect();
        Self {
            model: Model::Spm {
                vocab: Box::new(SpmVocab::new(pieces, vec![0.0; pieces.len()], None)),
                specials: Vec::new(),
                rstrip: Vec::new(),
                add_space_prefix: false,
            },
            token_bytes,
            is_control: vec![false; pieces.len()],
            bos_id: None,
            eos_id: stop_ids.first().copied(),
            stop_ids,
            add_bos: false,
            chat_template: None,
        }
    }

    fn build_bpe(g: &GgufFile, tokens: &[String], is_control: &[bool]) -> Result<HfTokenizer> {
        let merges: Vec<(String, String)> = g
            .req("tokenizer.ggml.merges")?
            .as_array()
            .ok_or_else(|| EngineError::BadMetadata {
                key: "tokenizer.ggml.merges".into(),
                reason: "expected an array".into(),
            })?
            .iter()
            .filter_map(|v| {
                let s = v.as_str()?;
                let (a, b) = s.split_once(' ')?;
                Some((a.to_string(), b.to_string()))
            })
            .collect();
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            .build()
            .map_err(tok_err)?;
        let mut inner = HfTokenizer::new(bpe);
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let byte_level = ByteLevel::new(false, false, true);
        let pre_tok: PreTokenizerWrapper = match pre {
            // Llama-3 / Qwen2 style splitting differs in its regex; byte-level covers the common
            // GPT-2 rules. SmolLM, StarCoder, GPT-2 and friends split digits individually.
            "smollm" | "starcoder" | "refact" | "gpt-2" | "default" => Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ])
            .into(),
            _ => PreTokenizerWrapper::ByteLevel(byte_level),
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(is_control)
            .filter(|(_, &c)| c)
            .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        inner.add_special_tokens(&specials);
        Ok(inner)
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their
    /// ids. A BOS is prepended when the model asks for it and `add_bos` is set.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos && self.add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        match &self.model {
            Model::Bpe(t) => {
                let enc = t.encode(text, false).map_err(tok_err)?;
                ids.extend_from_slice(enc.get_ids());
            }
            Model::Spm {
                vocab,
                specials,
                rstrip,
                add_space_prefix,
            } => {
                let mut prev_special = true;
                let mut strip_next = false;
                for frag in split_specials(text, specials) {
                    match frag {
                        Fragment::Special(id) => {
                            ids.push(id);
                            prev_special = true;
                            strip_next = rstrip.contains(&id);
                        }
                        Fragment::Text(t) => {
                            // C's isspace, as llama.cpp trims.
                            let t = if std::mem::take(&mut strip_next) {
                                t.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r'])
                            } else {
                                t
                            };
                            if t.is_empty() {
                                continue;
                            }
                            let mut raw = String::with_capacity(t.len() + 1);
                            if *add_space_prefix && prev_special {
                                raw.push(' ');
                            }
                            raw.push_str(t);
                            vocab.tokenize(&escape_whitespace(&raw), &mut ids);
                            prev_special = false;
                        }
                    }
                }
            }
        }
        Ok(ids)
    }

    /// The bytes a generated token contributes to the output.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map_or(&[], |v| v.as_slice())
    }

    /// Whether `id` is a control or user-defined token (false outside the vocabulary).
    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether `id` ends generation.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// Whole-sequence decode (lossy for cut UTF-8), for tests and logs.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_bytes(i).to_vec())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The special tokens llama.cpp gives the RSTRIP attribute: for a model whose lower-cased
/// `general.name` contains `phi-3` or `phi3`, every special token but `<unk>`, `<s>` and
/// `<|endoftext|>` (Phi-3's chat template relies on it: the newline after `<|user|>` is not a
/// token). No other model has any.
fn rstrip_tokens(g: &GgufFile, specials: &[(String, u32)]) -> Vec<u32> {
    let name = g
        .get("general.name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_lowercase();
    if !(name.contains("phi-3") || name.contains("phi3")) {
        return Vec::new();
    }
    specials
        .iter()
        .filter(|(t, _)| !matches!(t.as_str(), "<unk>" | "<s>" | "<|endoftext|>"))
        .map(|&(_, id)| id)
        .collect()
}

enum Fragment<'a> {
    Text(&'a str),
    Special(u32),
}

/// Splits text on special-token occurrences, longest tokens first (llama.cpp's order).
fn split_specials<'a>(text: &'a str, specials: &[(String, u32)]) -> Vec<Fragment<'a>> {
    let mut frags = vec![Fragment::Text(text)];
    for (tok, id) in specials {
        if !text.contains(tok.as_str()) {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len());
        for f in frags {
            match f {
                Fragment::Text(t) if t.contains(tok.as_str()) => {
                    let mut rest = t;
                    while let Some(i) = rest.find(tok.as_str()) {
                        if i > 0 {
                            next.push(Fragment::Text(&rest[..i]));
                        }
                        next.push(Fragment::Special(*id));
                        rest = &rest[i + tok.len()..];
                    }
                    if !rest.is_empty() {
                        next.push(Fragment::Text(rest));
                    }
                }
                other => next.push(other),
            }
        }
        frags = next;
    }
    frags
}

/// GPT-2's byte <-> printable-unicode map, inverted.
fn byte_level_decoder() -> HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .filter_map(|(b, c)| Some((char::from_u32(c)?, b as u8)))
        .collect()
}
