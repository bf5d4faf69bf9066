//! Speculative decoding with the real model: drafts verified in the batched step change speed,
//! never tokens. A copying prompt (where prompt lookup drafts well) gives the same tokens with
//! speculation on and off, greedy and seeded at temperature 0.8, alone and in a batch of 8,
//! drafts are actually made and accepted, and the KV pool ends with the same prefix-cache
//! contents as plain decoding. Every shared greedy fixture prompt decodes the same with and
//! without speculation; cancelling and preempting sequences mid-speculation loses or repeats
//! nothing.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use rill_engine::SamplingParams;
use rill_scheduler::{FinishReason, Request, SchedulerConfig, SpecConfig, SpecMode};
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
        // Greedy copies (drafts accepted), then sampling of the same copy task at rising
        // temperatures: the copy's drafts are accepted while the sample follows the text and
        // rejected where it departs (at 1.5 it departs at once, so little is drafted at all;
        // whether the planner drafts there depends on this machine's step costs).
        collect(h.submit(request(prompt.clone(), None, true)).unwrap());
        for (seed, temperature) in [(7, 0.7), (8, 0.9), (9, 1.1), (10, 1.5)] {
            let mut r = request(prompt.clone(), Some(seed), true);
            r.sampling.temperature = temperature;
            collect(h.submit(r).unwrap());
        }
        wait_for(&h, "every sequence freed", |s| {
            s.running == 0 && s.kv.sequences == 0
        });
        let kv = h.stats().kv;
        ends.push((kv.used_blocks(), kv.cached_blocks, kv.evictable_blocks));
        if mode == SpecMode::Ngram {
            let st = h.stats();
            eprintln!(
                "{} drafted, {} accepted",
                st.draft_tokens, st.accepted_tokens
            );
            assert!(
                st.draft_tokens > st.accepted_tokens,
                "some drafts must be rejected: {} drafted, {} accepted",
                st.draft_tokens,
                st.accepted_tokens
            );
        }
        sched.shutdown(std::time::Duration::from_secs(1));
    }
    assert_eq!(ends[0], ends[1], "(used, cached, evictable) off vs on");
}

/// The prompt token ids of the greedy fixtures the engine tests keep (llama.cpp's tokenization
/// of each prompt, template applied).
fn fixture_prompts() -> Vec<(String, Vec<u32>)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rill-engine/tests/data/greedy");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("the greedy fixtures (crates/rill-engine/tests/data/greedy)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let out: Vec<_> = paths
        .iter()
        .map(|p| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            let ids = v["prompt_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            (p.file_stem().unwrap().to_string_lossy().into_owned(), ids)
        })
        .collect();
    assert!(!out.is_empty(), "no greedy fixtures in {}", dir.display());
    out
}

#[test]
fn every_greedy_fixture_decodes_the_same_with_speculation() {
    let _g = serial();
    let sched = scheduler(8192, config(SpecMode::Ngram));
    let h = sched.handle();
    let fixtures = fixture_prompts();
    let req = |ids: &[u32], spec| Request {
        speculative: spec,
        ..Request::greedy(ids.to_vec(), 64)
    };
    let before = h.stats().draft_tokens;
    let mut off = Vec::new();
    for (name, ids) in &fixtures {
        let plain = collect(h.submit(req(ids, false)).unwrap());
        let spec = collect(h.submit(req(ids, true)).unwrap());
        assert_eq!(spec.tokens, plain.tokens, "fixture {name}: alone");
        assert_eq!(spec.text, plain.text, "fixture {name}: text");
        assert_eq!(spec.finish, plain.finish, "fixture {name}: finish");
        off.push(plain.tokens);
    }
    assert!(
        h.stats().draft_tokens > before,
        "the fixtures' outputs repeat themselves: some drafts"
    );
    // All fixtures at once, twice over (8+ streams), speculating.
    let streams: Vec<_> = fixtures
        .iter()
        .chain(&fixtures)
        .map(|(_, ids)| h.submit(req(ids, true)).unwrap())
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (name, _) = &fixtures[i % fixtures.len()];
        assert_eq!(
            collect(s).tokens,
            off[i % fixtures.len()],
            "fixture {name} in the batch"
        );
    }
    sched.shutdown(std::time::Duration::from_secs(1));
}

#[test]
fn cancelling_mid_speculation_returns_the_pool_to_idle() {
    let _g = serial();
    let sched = scheduler(8192, config(SpecMode::Ngram));
    let h = sched.handle();
    let prompt = prompt_ids(&h);
    let idle = h.stats().kv.available_blocks();
    let long = |spec| Request {
        sampling: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy()
        },
        speculative: spec,
        ..Request::greedy(prompt.clone(), 200)
    };
    let full = collect(h.submit(long(false)).unwrap()).tokens;
    let streams: Vec<_> = (0..6).map(|_| h.submit(long(true)).unwrap()).collect();
    let mut cancelled = 0;
    for (i, mut s) in streams.into_iter().enumerate() {
        let got = collect_until(&mut s, |c| c.tokens.len() >= 4 + 3 * i);
        s.cancel();
        let all = collect_rest(s, got);
        assert_eq!(
            all.tokens[..],
            full[..all.tokens.len()],
            "stream {i}: no token lost, repeated or changed"
        );
        match all.finish {
            Some(FinishReason::Cancelled) => cancelled += 1,
            Some(FinishReason::Length) => assert_eq!(all.tokens, full),
            other => panic!("stream {i}: {other:?}"),
        }
    }
    assert!(
        cancelled > 0,
        "some streams must have been cancelled mid-generation"
    );
    assert!(h.stats().draft_tokens > 0);
    wait_for(&h, "the pool back at its idle count", |s| {
        s.running == 0 && s.kv.sequences == 0 && s.kv.available_blocks() == idle
    });
    sched.shutdown(std::time::Duration::from_secs(1));
}

#[test]
fn preempting_mid_speculation_changes_no_stream() {
    let _g = serial();
    let prompt;
    let solo_tokens;
    {
        let sched = scheduler(8192, config(SpecMode::Off));
        let h = sched.handle();
        prompt = prompt_ids(&h);
        solo_tokens = collect(h.submit(request(prompt.clone(), None, false)).unwrap()).tokens;
        sched.shutdown(std::time::Duration::from_secs(1));
    }
    // 8 sequences of ~70 + 48 tokens (4 shared prompt blocks, ~4 private each) in 24 blocks:
    // some must be preempted while others speculate.
    let sched = scheduler(
        24 * 16,
        SchedulerConfig {
            adaptive: false,
            max_running: 8,
            ..config(SpecMode::Ngram)
        },
    );
    let h = sched.handle();
    let streams: Vec<_> = (0..8)
        .map(|_| h.submit(request(prompt.clone(), None, true)).unwrap())
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        let c = collect(s);
        assert_eq!(
            c.tokens, solo_tokens,
            "stream {i}: preemption mid-speculation changed it"
        );
    }
    let st = h.stats();
    assert!(
        st.preemptions > 0,
        "the pool was meant to be too small: {st:?}"
    );
    assert!(
        st.accepted_tokens > 0,
        "drafts were meant to be accepted: {st:?}"
    );
    wait_for(&h, "an idle pool", |s| s.kv.sequences == 0);
    sched.shutdown(std::time::Duration::from_secs(1));
}

#[test]
fn constrained_sequences_speculate_without_changing_a_token() {
    let _g = serial();
    let sched = scheduler(8192, config(SpecMode::Ngram));
    let h = sched.handle();
    let env = h.constraint_env().unwrap();
    let record = r#"{"city": "Lyon", "river": "Rhone", "bridges": ["Bonaparte", "Lafayette", "Wilson", "Morand"], "founded": 43}"#;
    let text = format!("Original:\n{record}\n\nCopy:\n");
    let prompt = h.tokenizer().encode(&text, true).unwrap();
    let constraints = [
        rill_engine::Constraint::JsonObject,
        // Lower-case words only: drafts of the copy break off at the capitals.
        rill_engine::Constraint::Regex("[a-z\"{}:, \\[\\]]{1,120}".into()),
    ];
    let stats0 = h.stats();
    for (k, c) in constraints.iter().enumerate() {
        for seed in [None, Some(4)] {
            let run = |spec: bool| {
                let mut r = request(prompt.clone(), seed, spec);
                r.max_tokens = 64;
                r.constraint = Some(rill_scheduler::Constrained::new(env.compile(c).unwrap()));
                collect(h.submit(r).unwrap())
            };
            let (off, on) = (run(false), run(true));
            assert_eq!(on.tokens, off.tokens, "constraint {k}, seed {seed:?}");
            assert_eq!(on.finish, off.finish);
            if k == 0 {
                assert!(
                    serde_json::from_str::<serde_json::Value>(&on.text).is_ok()
                        || on.finish == Some(FinishReason::Length),
                    "{}",
                    on.text
                );
            }
        }
    }
    let s = h.stats();
    assert!(
        s.accepted_tokens > stats0.accepted_tokens,
        "constrained sequences drafted and had drafts accepted: {s:?}"
    );
    sched.shutdown(std::time::Duration::from_secs(1));
}
