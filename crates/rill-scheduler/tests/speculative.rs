//! Speculative decoding with the real model: drafts verified in the batched step change speed,
//! never tokens. A copying prompt (where prompt lookup drafts well) gives the same tokens with
//! speculation on and off, greedy and seeded at temperature 0.8, alone and in a batch of 8,
//! drafts are actually made and accepted, and the KV pool ends with the same prefix-cache
//! contents as plain decoding.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use rill_engine::SamplingParams;
use rill_scheduler::{Request, SchedulerConfig, SpecConfig, SpecMode};
use support::*;

const TEXT: &str = "The river runs through the old town, past the mill and the church, and under \
    the stone bridge that the Romans built. In spring the water rises and floods the meadows, and \
    the children watch the ducks from the bank while their parents sell bread at the market.";

fn prompt_ids(h: &rill_scheduler::SchedulerHandle) -> Vec<u32> {
    let text = format!("Original:\n{TEXT}\n\nCopy:\nThe river runs");
    h.tokenizer().encode(&text, true).unwrap()
}

fn request(prompt: Vec<u32>, seed: Option<u64>, speculative: bool) -> Request {
    let sampling = match seed {
        None => SamplingParams::greedy(),
        Some(s) => SamplingParams {
            temperature: 0.8,
            seed: Some(s),
            ..SamplingParams::default()
        },
    };
    Request {
        sampling,
        speculative,
        ..Request::greedy(prompt, 48)
    }
}

fn config(mode: SpecMode) -> SchedulerConfig {
    SchedulerConfig {
        spec: SpecConfig {
            mode,
            ..SpecConfig::default()
        },
        ..SchedulerConfig::default()
    }
}

#[test]
fn speculation_changes_no_token_alone_or_in_a_batch() {
    let _g = serial();
    let sched = scheduler(8192, config(SpecMode::Ngram));
    let h = sched.handle();
    let prompt = prompt_ids(&h);
    let seeds = [None, Some(1), Some(2), Some(3)];
    let run = |seed, spec| collect(h.submit(request(prompt.clone(), seed, spec)).unwrap());
    for seed in seeds {
        let off = run(seed, false);
        let on = run(seed, true);
        assert_eq!(on.tokens, off.tokens, "seed {seed:?}: alone");
        assert_eq!(on.text, off.text, "seed {seed:?}: text");
        assert_eq!(on.finish, off.finish);
    }
    let stats = h.stats();
    assert!(stats.draft_tokens > 0, "a copying prompt must draft");
    assert!(
        stats.accepted_tokens > 0,
        "and some drafts must be accepted"
    );
    // Eight at once, speculating and not, each equal to its solo plain run.
    let solo: Vec<Vec<u32>> = seeds.iter().map(|&s| run(s, false).tokens).collect();
    let streams: Vec<_> = (0..8)
        .map(|i| {
            let seed = seeds[i % seeds.len()];
            h.submit(request(prompt.clone(), seed, i % 3 != 0)).unwrap()
        })
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        assert_eq!(
            collect(s).tokens,
            solo[i % seeds.len()],
            "stream {i} in the batch"
        );
    }
    sched.shutdown(std::time::Duration::from_secs(1));
}

#[test]
fn rejected_drafts_leave_the_pool_as_plain_decoding_would() {
    let _g = serial();
    let mut ends = Vec::new();
    for mode in [SpecMode::Off, SpecMode::Ngram] {
        let sched = scheduler(8192, config(mode));
        let h = sched.handle();
        let prompt = prompt_ids(&h);
        for seed in [None, Some(7)] {
            collect(h.submit(request(prompt.clone(), seed, true)).unwrap());
        }
        wait_for(&h, "every sequence freed", |s| {
            s.running == 0 && s.kv.sequences == 0
        });
        let kv = h.stats().kv;
        ends.push((kv.used_blocks(), kv.cached_blocks, kv.evictable_blocks));
        if mode == SpecMode::Ngram {
            let st = h.stats();
            assert!(
                st.draft_tokens > st.accepted_tokens,
                "some drafts must be rejected"
            );
        }
        sched.shutdown(std::time::Duration::from_secs(1));
    }
    assert_eq!(ends[0], ends[1], "(used, cached, evictable) off vs on");
}
