//! The tokenizer, built from GGUF metadata alone.
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

/// llama.cpp's token types.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

pub struct Tokenizer {
    inner: HfTokenizer,
    /// Bytes each token stands for when generated (control tokens: their text).
    token_bytes: Vec<Vec<u8>>,
    is_control: Vec<bool>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Tokens that end generation (eos plus end-of-turn tokens such as `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl Tokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.req_str("tokenizer.ggml.model")?;
        let tokens: Vec<String> = g
            .req("tokenizer.ggml.tokens")?
            .as_array()
            .ok_or_else(|| EngineError::BadMetadata {
                key: "tokenizer.ggml.tokens".into(),
                reason: "expected an array".into(),
            })?
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        let types: Vec<i64> = match g
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let id = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let bos_id = id("tokenizer.ggml.bos_token_id");
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(model == "llama");
        match model {
            "gpt2" => {}
            other => {
                return Err(EngineError::Tokenizer(format!(
                "tokenizer model `{other}` is not supported yet (supported: gpt2 byte-level BPE)"
            )))
            }
        }
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
        let is_control: Vec<bool> = (0..tokens.len())
            .map(|i| {
                let t = types.get(i).copied().unwrap_or(1);
                t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED
            })
            .collect();
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&is_control)
            .filter(|(_, &c)| c)
            .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        inner.add_special_tokens(&specials);
        let byte_decoder = byte_level_decoder();
        let token_bytes = tokens
            .iter()
            .zip(&is_control)
            .map(|(t, &c)| {
                if c {
                    t.as_bytes().to_vec()
                } else {
                    t.chars()
                        .map(|ch| byte_decoder.get(&ch).copied().unwrap_or(b'?'))
                        .collect()
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
            inner,
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

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their
    /// ids. A BOS is prepended when the model asks for it and `add_bos` is set.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The bytes a generated token contributes to the output.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map_or(&[], |v| v.as_slice())
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

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
