//! Batch invariance with the real model: a sequence decoded inside a batch of 8 sequences of
//! mixed prompt lengths (prefilled in the same steps as others decode) produces the same greedy
//! tokens as when decoded alone. Also exercises KV block accounting.
#![allow(clippy::unwrap_used)] // test and debug code: a panic is the failure report

mod support;

use rill_engine::{generate, GenerateOptions, SamplingParams, SeqId, StepItem};

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn batched_decode_equals_solo_decode() {
    let mut engine = support::engine(2);
    let prompts = [
        "Write a haiku about the sea.",
        "What is 17 times 23?",
        "Explain photosynthesis to a child in two sentences.",
        "List three colours.",
        "Translate 'thank you' into German.",
        "Why is the sky blue? Answer briefly, please, with one reason.",
        "Name a prime number larger than 100.",
        "Give me a short motto for a bakery.",
    ];
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let text = engine
                .chat_template
                .render(&[rill_engine::ChatMessage::new("user", p)], true)
                .unwrap();
            engine.tokenizer.encode(&text, true).unwrap()
        })
        .collect();
    let n_gen = 24;
    let solo: Vec<Vec<u32>> = ids
        .iter()
        .map(|p| {
            let g = generate(
                &mut engine,
                p,
                &GenerateOptions {
                    max_tokens: n_gen,
                    sampling: SamplingParams {
                        ignore_eos: true,
                        ..SamplingParams::greedy()
                    },
                    ..Default::default()
                },
                |_| {},
            )
            .unwrap();
            g.tokens.iter().map(|t| t.id).collect()
        })
        .collect();

    let idle = engine.kv_stats().available_blocks();
    // Staggered: sequence i starts its prefill at step i, so prefill chunks share steps with
    // other sequences' decode tokens.
    let seqs: Vec<SeqId> = (0..ids.len() as u64).map(|i| SeqId(100 + i)).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); ids.len()];
    let mut next: Vec<Option<u32>> = vec![None; ids.len()];
    let mut step = 0;
    while out.iter().any(|o| o.len() < n_gen) {
        let mut items = Vec::new();
        let mut who = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if out[i].len() >= n_gen || i > step {
                continue;
            }
            if i == step {
                engine.add_sequence(*s).unwrap();
                items.push(StepItem {
                    seq: *s,
                    tokens: &ids[i],
                    logits: 1,
                });
            } else if let Some(t) = &next[i] {
                items.push(StepItem {
                    seq: *s,
                    tokens: std::slice::from_ref(t),
                    logits: 1,
                });
            }
            who.push(i);
        }
        let logits = engine.step(&items).unwrap();
        let picks: Vec<u32> = (0..who.len()).map(|j| argmax(logits.row(j))).collect();
        for (j, &i) in who.iter().enumerate() {
            out[i].push(picks[j]);
            next[i] = Some(picks[j]);
        }
        step += 1;
    }
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(
            out[i], solo[i],
            "prompt {i} ({}) differs in a batch",
            prompts[i]
        );
        engine.free_sequence(*s);
    }
    assert_eq!(
        engine.kv_stats().available_blocks(),
        idle,
        "all KV blocks returned"
    );
}

#[test]
fn step_errors_leave_state_unchanged() {
    let mut engine = support::engine(1);
    engine.add_sequence(SeqId(1)).unwrap();
    let before = engine.kv_stats();
    let bad = engine.step(&[StepItem {
        seq: SeqId(1),
        tokens: &[u32::MAX],
        logits: 1,
    }]);
    assert!(bad.is_err());
    let unknown = engine.step(&[StepItem {
        seq: SeqId(9),
        tokens: &[1],
        logits: 1,
    }]);
    assert!(unknown.is_err());
    assert_eq!(engine.kv_stats(), before);
    assert_eq!(engine.seq_len(SeqId(1)), Some(0));
}
