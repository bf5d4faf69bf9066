//! Batch-shape invariance on a loaded engine: a sequence's logits must be the same bits whether
//! its prompt is prefilled in one step or in chunks, and whether it decodes alone or beside
//! other sequences.

use rill_engine::{Engine, SeqId, StepItem};

/// A logit row as bits (exact comparison).
pub fn bits(row: &[f32]) -> Vec<u32> {
    row.iter().map(|v| v.to_bits()).collect()
}

/// Prefills `tokens` of `seq` in chunks of `chunk`; returns the last token's logits.
pub fn prefill(e: &mut Engine, seq: SeqId, tokens: &[u32], chunk: usize) -> Vec<u32> {
    let n = tokens.chunks(chunk).count();
    let mut last = Vec::new();
    for (i, c) in tokens.chunks(chunk).enumerate() {
        let l = e
            .step(&[StepItem {
                seq,
                tokens: c,
                logits: usize::from(i + 1 == n),
            }])
            .unwrap();
        if i + 1 == n {
            last = bits(l.row(0));
        }
    }
    last
}

/// Sequences 1 and 2 get `prompt` (one step; chunks of 7); sequence 1 then decodes a token
/// alone and sequence 2 the same token beside 7 new sequences (ids 10-16). Asserts both pairs
/// equal and returns the whole-prompt logits. `label` names the case in a failure.
pub fn assert_batch_invariant(e: &mut Engine, prompt: &[u32], label: &str) -> Vec<u32> {
    e.add_sequence(SeqId(1)).unwrap();
    let whole = prefill(e, SeqId(1), prompt, prompt.len());
    e.add_sequence(SeqId(2)).unwrap();
    let chunked = prefill(e, SeqId(2), prompt, 7);
    assert_eq!(
        whole, chunked,
        "{label}: prefill in one step vs chunks of 7"
    );
    let tok = [504u32];
    let alone = prefill(e, SeqId(1), &tok, 1);
    let others: Vec<SeqId> = (10..17).map(SeqId).collect();
    for (i, &s) in others.iter().enumerate() {
        e.add_sequence(s).unwrap();
        prefill(e, s, &prompt[..3 + 2 * i], 64);
    }
    let mut items = vec![StepItem {
        seq: SeqId(2),
        tokens: &tok,
        logits: 1,
    }];
    items.extend(others.iter().map(|&s| StepItem {
        seq: s,
        tokens: &tok,
        logits: 1,
    }));
    let batched = bits(e.step(&items).unwrap().row(0));
    assert_eq!(
        alone, batched,
        "{label}: decode alone vs beside 7 sequences"
    );
    whole
}
