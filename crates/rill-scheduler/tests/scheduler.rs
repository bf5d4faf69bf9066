//! The scheduler with the real model: continuous batching equals solo runs, cancellation frees
//! every block, a small pool preempts and recomputes without changing any stream, impossible
//! and overflowing requests are refused with typed errors, a shared system prompt is computed
//! once, a slow consumer is cut off alone, and shutdown ends streams with a typed error.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::time::Duration;

use rill_engine::SamplingParams;
use rill_scheduler::{ErrorCode, FinishReason, Request, SchedulerConfig, SubmitError};
use support::*;

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        sampling: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy()
        },
        ..Request::greedy(prompt, max_tokens)
    }
}

fn fixed(max_running: usize) -> SchedulerConfig {
    SchedulerConfig {
        adaptive: false,
        max_running,
        max_prefill_chunk: 256,
        ..SchedulerConfig::default()
    }
}

#[test]
fn concurrent_requests_match_their_solo_runs() {
    let _g = serial();
    let sched = scheduler(8192, SchedulerConfig::default());
    let h = sched.handle();
    let prompts: Vec<Vec<u32>> = mixed_prompts(32)
        .iter()
        .map(|p| chat_ids(&h, None, p))
        .collect();
    let reqs: Vec<Request> = prompts.iter().map(|p| greedy(p.clone(), 24)).collect();
    let streams: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    let got: Vec<Collected> = streams.into_iter().map(collect).collect();

    let mut reference = engine(4096);
    for (i, (c, r)) in got.iter().zip(&reqs).enumerate() {
        assert_eq!(c.finish, Some(FinishReason::Length), "request {i}: {c:?}");
        assert_eq!(
            c.tokens,
            solo(&mut reference, &r.prompt, r),
            "request {i} differs from its solo run"
        );
        assert_eq!(c.usage.completion_tokens, 24);
        assert_eq!(c.usage.prompt_tokens, r.prompt.len());
    }
    let s = h.stats();
    assert_eq!(s.finished_length, 32);
    assert!(s.steps > 0 && s.generated_tokens >= 32 * 24);
    wait_for(&h, "an idle pool", |s| {
        s.running == 0 && s.kv.used_blocks() == 0
    });
}

#[test]
fn cancelling_half_returns_the_pool_to_idle() {
    let _g = serial();
    let sched = scheduler(8192, SchedulerConfig::default());
    let h = sched.handle();
    let idle = h.stats().kv.available_blocks();
    let streams: Vec<_> = mixed_prompts(16)
        .iter()
        .map(|p| h.submit(greedy(chat_ids(&h, None, p), 160)).unwrap())
        .collect();
    // Cancel half once they are going: four by asking, four by hanging up.
    let mut kept = Vec::new();
    for (i, mut s) in streams.into_iter().enumerate() {
        let p = collect_until(&mut s, |c| c.tokens.len() >= 2);
        match i % 4 {
            0 => {
                s.cancel();
                let c = collect_rest(s, p);
                assert_eq!(c.finish, Some(FinishReason::Cancelled));
                assert!(c.tokens.len() < 160);
            }
            1 => drop(s),
            _ => kept.push((s, p)),
        }
    }
    for (s, p) in kept {
        let c = collect_rest(s, p);
        assert_eq!(c.finish, Some(FinishReason::Length));
        assert_eq!(c.tokens.len(), 160);
    }
    wait_for(&h, "the pool back at its idle count", |s| {
        s.running == 0 && s.waiting == 0 && s.kv.sequences == 0 && s.kv.available_blocks() == idle
    });
    let s = h.stats();
    assert_eq!(s.cancelled, 8);
    assert_eq!(s.finished_length, 8);
}

#[test]
fn a_small_pool_preempts_and_every_stream_still_matches_solo() {
    let _g = serial();
    // 24 blocks (384 tokens) for 8 sequences that each grow to ~100-150 tokens.
    let sched = scheduler(24 * 16, fixed(8));
    let h = sched.handle();
    let prompts: Vec<Vec<u32>> = mixed_prompts(8)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            chat_ids(
                &h,
                None,
                if i % 4 == 3 {
                    "Why is the sky blue?"
                } else {
                    p
                },
            )
        })
        .collect();
    let reqs: Vec<Request> = prompts.iter().map(|p| greedy(p.clone(), 64)).collect();
    let streams: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    let got: Vec<Collected> = streams.into_iter().map(collect).collect();
    let s = h.stats();
    assert!(
        s.preemptions > 0,
        "the pool was meant to be too small: {s:?}"
    );

    let mut reference = engine(4096);
    for (i, (c, r)) in got.iter().zip(&reqs).enumerate() {
        assert_eq!(c.finish, Some(FinishReason::Length), "request {i}: {c:?}");
        assert_eq!(
            c.tokens,
            solo(&mut reference, &r.prompt, r),
            "request {i}: preemption changed its stream (lost, repeated or different tokens)"
        );
    }
    wait_for(&h, "an idle pool", |s| s.kv.used_blocks() == 0);
}

#[test]
fn constrained_sequences_survive_preemption_unchanged() {
    let _g = serial();
    // The pool of the test above, with half the sequences held to a JSON schema (sampled at
    // temperature 0.8 with a seed, so the mask decides many tokens) and two tool-call
    // grammars that start at their trigger.
    let sched = scheduler(24 * 16, fixed(8));
    let h = sched.handle();
    let env = h.constraint_env().unwrap();
    let schema = serde_json::json!({"type": "object", "properties": {"words": {"type": "array",
        "items": {"type": "string", "maxLength": 6}, "minItems": 8, "maxItems": 8}},
        "required": ["words"], "additionalProperties": false});
    let lazy = "start: \"<tool_call>\" /[a-z]{3,6}/ \"</tool_call>\"";
    let reqs: Vec<Request> = mixed_prompts(8)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = if i % 4 == 3 {
                "Why is the sky blue?"
            } else {
                p
            };
            let mut r = greedy(chat_ids(&h, None, p), 96);
            match i % 4 {
                0 | 1 => {
                    let c = rill_engine::Constraint::JsonSchema {
                        schema: schema.clone(),
                        strict: true,
                    };
                    r.sampling = SamplingParams {
                        temperature: 0.8,
                        seed: Some(i as u64),
                        ..SamplingParams::default()
                    };
                    r.constraint = Some(rill_scheduler::Constrained::new(env.compile(&c).unwrap()));
                }
                2 => {
                    let c = rill_engine::Constraint::Lark(lazy.into());
                    let state = env.compile(&c).unwrap();
                    r.constraint = Some(rill_scheduler::Constrained::lazy(state, "<tool_call>"));
                }
                _ => {}
            }
            r
        })
        .collect();
    let streams: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    let got: Vec<Collected> = streams.into_iter().map(collect).collect();
    let s = h.stats();
    assert!(
        s.preemptions > 0,
        "the pool was meant to be too small: {s:?}"
    );
    // Each equals its run alone on a pool that never preempts (the same masks, the same
    // seeded draws), and the constrained ones match their constraints.
    let alone = scheduler(8192, fixed(1));
    for (i, (c, r)) in got.iter().zip(&reqs).enumerate() {
        let solo = collect(alone.handle().submit(r.clone()).unwrap());
        assert_eq!(c.tokens, solo.tokens, "request {i}: preemption changed it");
        assert_eq!(c.finish, solo.finish, "request {i}");
        if i % 4 < 2 {
            assert_eq!(c.finish, Some(FinishReason::Stop), "request {i}: {c:?}");
            let v: serde_json::Value = serde_json::from_str(&c.text).unwrap();
            assert_eq!(v["words"].as_array().unwrap().len(), 8, "{}", c.text);
        }
    }
    wait_for(&h, "an idle pool", |s| s.kv.used_blocks() == 0);
}

#[test]
fn impossible_and_invalid_requests_are_rejected_up_front() {
    let _g = serial();
    let sched = scheduler(1024, SchedulerConfig::default());
    let h = sched.handle();
    let limits = h.limits();
    assert_eq!(limits.max_sequence_tokens, 1024);
    let prompt = chat_ids(&h, None, "Hello");
    match h.submit(greedy(prompt.clone(), 1024)) {
        Err(SubmitError::TooLong {
            limit: 1024, what, ..
        }) => assert_eq!(what, "the KV cache"),
        other => panic!("expected TooLong, got {:?}", other.map(|s| s.id())),
    }
    assert!(matches!(
        h.submit(greedy(Vec::new(), 8)),
        Err(SubmitError::EmptyPrompt)
    ));
    assert!(matches!(
        h.submit(greedy(vec![u32::MAX], 8)),
        Err(SubmitError::BadToken(_))
    ));
    let mut bad = greedy(prompt.clone(), 8);
    bad.sampling.temperature = -1.0;
    match h.submit(bad) {
        Err(SubmitError::InvalidParameter { field, .. }) => assert_eq!(field, "temperature"),
        other => panic!("expected InvalidParameter, got {:?}", other.map(|s| s.id())),
    }
    assert!(matches!(
        h.submit(greedy(prompt.clone(), 0)),
        Err(SubmitError::InvalidParameter { .. })
    ));
    // The scheduler keeps serving.
    let c = collect(h.submit(greedy(prompt, 4)).unwrap());
    assert_eq!(c.tokens.len(), 4);
    assert_eq!(h.stats().rejected_invalid, 5);
}

#[test]
fn a_full_queue_yields_overload_with_retry_after_and_positions() {
    let _g = serial();
    let sched = scheduler(
        4096,
        SchedulerConfig {
            queue_capacity: 2,
            ..fixed(1)
        },
    );
    let h = sched.handle();
    let p = chat_ids(&h, None, "Tell me a long story about a lighthouse.");
    let mut first = h.submit(greedy(p.clone(), 400)).unwrap();
    collect_until(&mut first, |c| c.started);
    let second = h.submit(greedy(p.clone(), 8)).unwrap();
    let third = h.submit(greedy(p.clone(), 8)).unwrap();
    wait_for(&h, "two waiting", |s| s.waiting == 2);
    let t = std::time::Instant::now();
    while third.queue_position().is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(second.queue_position(), Some(1));
    assert_eq!(third.queue_position(), Some(2));
    match h.submit(greedy(p.clone(), 8)) {
        Err(SubmitError::Overloaded {
            retry_after,
            waiting,
        }) => {
            assert!(retry_after >= Duration::from_secs(1));
            assert_eq!(waiting, 2);
        }
        other => panic!("expected Overloaded, got {:?}", other.map(|s| s.id())),
    }
    assert_eq!(h.stats().rejected_overload, 1);
    first.cancel();
    let c2 = collect(second);
    assert_eq!(c2.finish, Some(FinishReason::Length));
    assert_eq!(collect(third).tokens.len(), 8);
}

#[test]
fn a_shared_system_prompt_is_computed_once() {
    let _g = serial();
    let sched = scheduler(8192, fixed(8));
    let h = sched.handle();
    let system = "You are a careful assistant for a harbour town. ".repeat(12);
    let questions = [
        "What time does the ferry leave?",
        "Where can I buy fish?",
        "Is the lighthouse open today?",
        "How deep is the harbour?",
        "Who mends the nets?",
    ];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| chat_ids(&h, Some(&system), q))
        .collect();
    let common = prompts[0]
        .iter()
        .zip(&prompts[1])
        .take_while(|(a, b)| a == b)
        .count();
    let shareable = common / 16 * 16;
    assert!(
        shareable >= 128,
        "the system prompt should span many blocks"
    );

    // The first request computes the system prompt; the others reuse it.
    let first = collect(h.submit(greedy(prompts[0].clone(), 8)).unwrap());
    assert_eq!(first.cached_tokens, 0);
    let reqs: Vec<Request> = prompts[1..].iter().map(|p| greedy(p.clone(), 8)).collect();
    let streams: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    let got: Vec<Collected> = streams.into_iter().map(collect).collect();
    let s = h.stats();
    let prompt_total: usize = prompts.iter().map(|p| p.len()).sum();
    for c in &got {
        assert!(
            c.cached_tokens >= shareable,
            "{} < {shareable}",
            c.cached_tokens
        );
        assert_eq!(c.usage.cached_tokens, c.cached_tokens);
    }
    assert!(s.prefix_hit_tokens >= 4 * shareable as u64);
    assert_eq!(
        s.prefill_tokens + s.prefix_hit_tokens,
        prompt_total as u64,
        "every prompt token is either computed or reused, once"
    );
    assert!(s.kv.prefix_hit_blocks >= 4 * (shareable as u64 / 16));

    // Reuse does not change the output.
    let mut reference = engine(4096);
    for (c, r) in got.iter().zip(&reqs) {
        assert_eq!(c.tokens, solo(&mut reference, &r.prompt, r));
    }
}

#[test]
fn a_slow_consumer_is_cut_off_while_others_finish() {
    let _g = serial();
    let sched = scheduler(
        8192,
        SchedulerConfig {
            stream_capacity: 2,
            max_pending_tokens: 8,
            ..fixed(8)
        },
    );
    let h = sched.handle();
    let p = chat_ids(&h, None, "Count from one to fifty in words.");
    let stalled = h.submit(greedy(p.clone(), 64)).unwrap();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let s = h.submit(greedy(p.clone(), 48)).unwrap();
            std::thread::spawn(move || collect(s))
        })
        .collect();
    for r in readers {
        let c = r.join().unwrap();
        assert_eq!(c.finish, Some(FinishReason::Length));
        assert_eq!(c.tokens.len(), 48);
    }
    // Only now read the stalled stream: a bounded backlog, then the typed error.
    let c = collect(stalled);
    assert_eq!(c.error, Some(ErrorCode::SlowConsumer));
    assert!(
        c.events <= 2 + 1 + 1,
        "backlog must stay bounded: {} events",
        c.events
    );
    assert_eq!(h.stats().errors_of(ErrorCode::SlowConsumer), 1);
}

#[test]
fn shutdown_ends_running_streams_with_a_typed_error() {
    let _g = serial();
    let sched = scheduler(4096, SchedulerConfig::default());
    let h = sched.handle();
    let p = chat_ids(&h, None, "Tell me a long story.");
    let mut s = h.submit(greedy(p.clone(), 500)).unwrap();
    let part = collect_until(&mut s, |c| !c.tokens.is_empty());
    sched.shutdown(Duration::ZERO);
    let c = collect_rest(s, part);
    assert_eq!(c.error, Some(ErrorCode::ServerShutdown));
    assert!(matches!(
        h.submit(greedy(p, 4)),
        Err(SubmitError::ShuttingDown)
    ));
}
