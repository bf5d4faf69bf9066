//! SentencePiece-style ("llama" in GGUF) tokenization, as llama.cpp does it: the text's spaces
//! become U+2581, characters start as symbols, and the adjacent pair whose concatenation is a
//! vocabulary entry with the highest score is merged, repeatedly; leftover symbols that are not
//! tokens fall back to byte tokens (`<0xXX>`).
//!
//! Written here rather than taken from the `tokenizers` crate: its Unigram model picks the
//! Viterbi-best segmentation, which gives different ids than llama.cpp's greedy merge for the
//! same GGUF, and prompt ids must match the reference exactly.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The SPM vocabulary: token text -> id, and each token's score.
pub struct SpmVocab {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    byte_tokens: [Option<u32>; 256],
    unk: Option<u32>,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl SpmVocab {
    /// The vocabulary of `tokens` (id = index) with one score each, `unk` the token for bytes
    /// without a byte token. Panics unless there is one score per token.
    pub fn new(tokens: &[String], scores: Vec<f32>, unk: Option<u32>) -> Self {
        assert_eq!(scores.len(), tokens.len(), "one score per token");
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect::<HashMap<_, _>>();
        let byte_tokens = std::array::from_fn(|b| ids.get(&format!("<0x{b:02X}>")).copied());
        Self {
            ids,
            scores,
            byte_tokens,
            unk,
        }
    }

    /// Tokenizes one run of ordinary text (no special tokens), spaces already escaped.
    pub fn tokenize(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut syms: Vec<Symbol> = Vec::new();
        for (i, (off, ch)) in text.char_indices().enumerate() {
            let len = ch.len_utf8();
            syms.push(Symbol {
                start: off,
                len,
                prev: i as isize - 1,
                next: if off + len == text.len() {
                    -1
                } else {
                    i as isize + 1
                },
            });
        }
        let mut heap = BinaryHeap::new();
        let mut rev_merge: HashMap<&str, (usize, usize)> = HashMap::new();
        let try_add = |syms: &[Symbol],
                       heap: &mut BinaryHeap<Bigram>,
                       rev: &mut HashMap<_, _>,
                       l: isize,
                       r: isize| {
            if l < 0 || r < 0 {
                return;
            }
            let (ls, rs) = (syms[l as usize], syms[r as usize]);
            let piece = &text[ls.start..ls.start + ls.len + rs.len];
            if let Some(&id) = self.ids.get(piece) {
                heap.push(Bigram {
                    left: l as usize,
                    right: r as usize,
                    score: self.scores[id as usize],
                    size: piece.len(),
                });
                rev.insert(piece, (l as usize, r as usize));
            }
        };
        for i in 1..syms.len() {
            try_add(&syms, &mut heap, &mut rev_merge, i as isize - 1, i as isize);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            syms[b.left].len += r.len;
            syms[b.right].len = 0;
            syms[b.left].next = r.next;
            if r.next >= 0 {
                syms[r.next as usize].prev = b.left as isize;
            }
            let (prev, next) = (syms[b.left].prev, syms[b.left].next);
            try_add(&syms, &mut heap, &mut rev_merge, prev, b.left as isize);
            try_add(&syms, &mut heap, &mut rev_merge, b.left as isize, next);
        }
        let mut i = 0isize;
        while i != -1 {
            let s = syms[i as usize];
            self.resegment(text, &syms, &rev_merge, s.start, s.len, out);
            i = s.next;
        }
    }

    fn resegment(
        &self,
        text: &str,
        syms: &[Symbol],
        rev_merge: &HashMap<&str, (usize, usize)>,
        start: usize,
        len: usize,
        out: &mut Vec<u32>,
    ) {
        let piece = &text[start..start + len];
        if let Some(&id) = self.ids.get(piece) {
            out.push(id);
            return;
        }
        match rev_merge.get(piece) {
            Some(&(l, r)) => {
                let (ls, rs) = (syms[l], syms[r]);
                // The merged pair's original extents: left from its start, right after it.
                let left_len = rs.start - ls.start;
                self.resegment(text, syms, rev_merge, ls.start, left_len, out);
                self.resegment(text, syms, rev_merge, rs.start, start + len - rs.start, out);
            }
            None => {
                for &b in piece.as_bytes() {
                    if let Some(id) = self.byte_tokens[b as usize].or(self.unk) {
                        out.push(id);
                    }
                }
            }
        }
    }
}

/// llama.cpp's whitespace escaping for SPM: ' ' -> U+2581.
pub fn escape_whitespace(text: &str) -> String {
    text.replace(' ', "\u{2581}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(entries: &[(&str, f32)]) -> SpmVocab {
        let mut tokens: Vec<String> = vec!["<unk>".into()];
        let mut scores = vec![0.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
        }
        for (t, s) in entries {
            tokens.push((*t).into());
            scores.push(*s);
        }
        SpmVocab::new(&tokens, scores, Some(0))
    }

    fn ids_of(v: &SpmVocab, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        v.tokenize(&escape_whitespace(text), &mut out);
        out
    }

    const BASE: u32 = 257; // first non-byte entry

    #[test]
    fn merges_highest_score_first() {
        // "abc": "ab" (score -1) and "bc" (score -0.5) compete; "bc" wins, leaving "a" + "bc".
        let v = vocab(&[
            ("a", -3.0),
            ("b", -3.0),
            ("c", -3.0),
            ("ab", -1.0),
            ("bc", -0.5),
        ]);
        assert_eq!(ids_of(&v, "abc"), vec![BASE, BASE + 4]);
    }

    #[test]
    fn leftmost_wins_a_tie() {
        let v = vocab(&[("a", -3.0), ("aa", -1.0)]);
        // "aaa": pairs (0,1) and (1,2) tie; the left one merges first.
        assert_eq!(ids_of(&v, "aaa"), vec![BASE + 1, BASE]);
    }

    #[test]
    fn spaces_become_u2581_and_unknown_chars_fall_back_to_bytes() {
        let v = vocab(&[("\u{2581}", -2.0), ("h", -3.0), ("\u{2581}h", -1.0)]);
        // "é" is not in the vocabulary: its two UTF-8 bytes become byte tokens.
        assert_eq!(ids_of(&v, " hé"), vec![BASE + 2, 1 + 0xC3, 1 + 0xA9]);
    }
}
