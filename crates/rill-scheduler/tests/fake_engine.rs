//! The scheduler against the fake engine ([`rill_scheduler::fake`]): thousands of requests per
//! seed under random interleavings of submission, reading, slow reading, cancellation (by
//! message and by dropping the stream), a KV pool small enough to preempt, a queue small
//! enough to overflow, speculative decoding on and off, and the adaptive controller. After
//! every run: each accepted request ended exactly once, its tokens are exactly the fake
//! model's output (a prefix of it where it ended early), no KV block and no sequence leaked,
//! no step exceeded the running cap, and the fake saw no broken backend invariant.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rill_engine::SamplingParams;
use rill_scheduler::fake::{FakeConfig, FakeEngine, FakeProbe};
use rill_scheduler::{
    ErrorCode, Event, FinishReason, Request, RequestStream, Scheduler, SchedulerConfig, SpecConfig,
    SpecMode, SubmitError,
};

const VOCAB: usize = 64;

/// The fake model's greedy output for `r`: its tokens, and whether it ends by the stop token
/// before `max_tokens`.
fn reference(r: &Request) -> (Vec<u32>, bool) {
    let mut ctx = r.prompt.clone();
    let mut out = Vec::new();
    while out.len() < r.max_tokens {
        let t = FakeEngine::next_token(VOCAB, &ctx);
        if t == FakeEngine::STOP && !r.sampling.ignore_eos {
            return (out, true);
        }
        ctx.push(t);
        out.push(t);
    }
    (out, false)
}

/// What one request's consumer saw.
struct Client {
    request: Request,
    stream: Option<RequestStream>,
    started: usize,
    tokens: Vec<u32>,
    text: String,
    terminal: Option<Event>,
    /// Reads nothing until this round (a slow or stalled consumer).
    deaf_until: usize,
    cancelled: bool,
}

impl Client {
    /// Takes every ready event; panics on anything after the terminal one.
    fn read(&mut self) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        while let Some(ev) = s.try_recv() {
            assert!(
                self.terminal.is_none(),
                "an event after the terminal one: {ev:?}"
            );
            match &ev {
                Event::Started { .. } => {
                    assert!(self.tokens.is_empty(), "Started after tokens");
                    self.started += 1;
                }
                Event::Tokens { tokens, text, .. } => {
                    self.tokens.extend(tokens.iter().map(|t| t.id));
                    self.text.push_str(text);
                }
                Event::Finished { .. } | Event::Error { .. } => self.terminal = Some(ev),
            }
        }
    }

    fn check(&self, i: usize) {
        let (want, stops) = reference(&self.request);
        let got = &self.tokens;
        let ctx = format!("request {i} ({:?})", self.terminal);
        assert!(self.started <= 1, "{ctx}: Started {} times", self.started);
        assert!(
            got.len() <= want.len() && got[..] == want[..got.len()],
            "{ctx}: tokens {got:?} are not a prefix of the model's output {want:?}"
        );
        let decoded: String = got.iter().map(|t| format!(" t{t}")).collect();
        let decoded = decoded.replace(" t0", "</s>");
        assert!(
            decoded.starts_with(&self.text),
            "{ctx}: text {:?} is not what its tokens spell {decoded:?}",
            self.text
        );
        match self.terminal.as_ref().expect("ended") {
            Event::Finished { reason, usage, .. } => {
                assert_eq!(usage.prompt_tokens, self.request.prompt.len(), "{ctx}");
                match reason {
                    FinishReason::Length => {
                        assert!(!stops, "{ctx}: ran to length past the stop token");
                        assert_eq!(got, &want, "{ctx}");
                        assert_eq!(usage.completion_tokens, self.request.max_tokens, "{ctx}");
                        assert_eq!(self.text, decoded, "{ctx}: text lost");
                    }
                    FinishReason::Stop => {
                        assert!(stops, "{ctx}: stopped where the model does not");
                        assert_eq!(got, &want, "{ctx}");
                        assert_eq!(usage.completion_tokens, want.len() + 1, "{ctx}");
                        assert_eq!(self.text, decoded, "{ctx}: text lost");
                    }
                    FinishReason::Cancelled => {
                        assert!(self.cancelled, "{ctx}: cancelled without being asked")
                    }
                }
            }
            Event::Error { code, .. } => match code {
                ErrorCode::NumericalError => {
                    assert_eq!(
                        self.request.prompt.last(),
                        Some(&FakeEngine::POISON),
                        "{ctx}"
                    );
                    assert!(got.is_empty(), "{ctx}");
                }
                ErrorCode::SlowConsumer | ErrorCode::PreemptedTooOften => {}
                other => panic!("{ctx}: unexpected error {other:?}"),
            },
            other => panic!("{ctx}: terminal {other:?}"),
        }
        if self.request.prompt.last() == Some(&FakeEngine::POISON) && !self.cancelled {
            assert!(
                matches!(
                    self.terminal,
                    Some(Event::Error {
                        code: ErrorCode::NumericalError,
                        ..
                    })
                ) || matches!(
                    self.terminal,
                    Some(Event::Error {
                        code: ErrorCode::SlowConsumer | ErrorCode::PreemptedTooOften,
                        ..
                    })
                ),
                "{ctx}: NaN logits did not fail the request"
            );
        }
    }
}

fn random_request(rng: &mut StdRng, prefixes: &[Vec<u32>]) -> Request {
    let mut prompt = if rng.gen_bool(0.5) {
        prefixes[rng.gen_range(0..prefixes.len())].clone()
    } else {
        Vec::new()
    };
    let tail = rng.gen_range(1..40);
    prompt.extend((0..tail).map(|_| rng.gen_range(2..VOCAB as u32)));
    if rng.gen_bool(0.02) {
        prompt.push(FakeEngine::POISON);
    }
    Request {
        sampling: SamplingParams {
            ignore_eos: rng.gen_bool(0.3),
            ..SamplingParams::greedy()
        },
        priority: if rng.gen_bool(0.1) { 1 } else { 0 },
        speculative: rng.gen_bool(0.7),
        ..Request::greedy(prompt, rng.gen_range(1..48))
    }
}

struct Outcome {
    accepted: usize,
    overloaded: usize,
    preempted: u64,
    ends: [usize; 4],
}

/// One seeded run of `requests` submissions; returns what happened (after the invariants).
fn run(seed: u64, requests: usize, spec: bool) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let (engine, probe) = FakeEngine::new(FakeConfig {
        vocab: VOCAB,
        kv_blocks: 40,
        context_length: 256,
        step_time: Duration::from_micros(50),
        per_row: Duration::from_micros(2),
    })
    .unwrap();
    let cfg = SchedulerConfig {
        target_itl_ms: 2.0,
        max_running: 12,
        max_prefill_chunk: 64,
        min_prefill_chunk: 4,
        queue_capacity: 10,
        max_preemptions: 6,
        stream_capacity: 2,
        max_pending_tokens: 24,
        max_consumer_stall: Duration::from_millis(300),
        spec: SpecConfig {
            mode: if spec { SpecMode::Ngram } else { SpecMode::Off },
            ..SpecConfig::default()
        },
        ..SchedulerConfig::default()
    };
    let max_running = cfg.max_running;
    let sched = Scheduler::start(engine, cfg).unwrap();
    let h = sched.handle();
    let prefixes: Vec<Vec<u32>> = (0..3)
        .map(|_| {
            (0..rng.gen_range(16..56))
                .map(|_| rng.gen_range(2..VOCAB as u32))
                .collect()
        })
        .collect();
    let mut clients: Vec<Client> = Vec::new();
    let mut overloaded = 0;
    let mut submitted = 0;
    let mut round = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while submitted < requests || clients.iter().any(|c| c.terminal.is_none()) {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the run did not end"
        );
        round += 1;
        let unfinished = clients.iter().filter(|c| c.terminal.is_none()).count();
        // Mostly a steady trickle; now and then a burst that overflows the queue.
        let arrivals = if rng.gen_bool(0.004) {
            24
        } else {
            usize::from(rng.gen_bool(if unfinished < 16 { 0.6 } else { 0.05 }))
        };
        for _ in 0..arrivals.min(requests - submitted) {
            submitted += 1;
            let request = random_request(&mut rng, &prefixes);
            match h.submit(request.clone()) {
                Ok(stream) => clients.push(Client {
                    request,
                    stream: Some(stream),
                    started: 0,
                    tokens: Vec::new(),
                    text: String::new(),
                    terminal: None,
                    deaf_until: if rng.gen_bool(0.05) { round + 400 } else { 0 },
                    cancelled: false,
                }),
                Err(SubmitError::Overloaded { .. }) => overloaded += 1,
                Err(e) => panic!("seed {seed}: refused {e}"),
            }
        }
        let live: Vec<usize> = (0..clients.len())
            .filter(|&i| clients[i].terminal.is_none() && clients[i].stream.is_some())
            .collect();
        if !live.is_empty() && rng.gen_bool(0.03) {
            let c = &mut clients[live[rng.gen_range(0..live.len())]];
            c.cancelled = true;
            if rng.gen_bool(0.5) {
                c.stream.as_ref().unwrap().cancel();
            } else {
                // Dropping the stream cancels silently: nothing more can be read.
                c.stream = None;
            }
        }
        for c in clients.iter_mut() {
            if round >= c.deaf_until && rng.gen_bool(0.7) {
                c.read();
            }
        }
        // Dropped streams end without a terminal event the client could see.
        for c in clients.iter_mut().filter(|c| c.stream.is_none()) {
            let usage = rill_scheduler::Usage {
                prompt_tokens: c.request.prompt.len(),
                ..Default::default()
            };
            c.terminal.get_or_insert(Event::Finished {
                reason: FinishReason::Cancelled,
                stop: None,
                usage,
                timings: Default::default(),
            });
        }
        if rng.gen_bool(0.3) {
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..400)));
        }
    }
    let mut ends = [0usize; 4];
    for (i, c) in clients.iter_mut().enumerate() {
        if let Some(s) = c.stream.as_mut() {
            // The terminal event was the last: the channel is closed behind it.
            assert!(
                s.try_recv().is_none(),
                "seed {seed} request {i}: events after the end"
            );
        }
        c.check(i);
        ends[match &c.terminal {
            Some(Event::Finished {
                reason: FinishReason::Length,
                ..
            }) => 0,
            Some(Event::Finished {
                reason: FinishReason::Stop,
                ..
            }) => 1,
            Some(Event::Finished { .. }) => 2,
            _ => 3,
        }] += 1;
    }
    wait_idle(&h, &probe);
    let s = h.stats();
    let ended = s.finished_stop + s.finished_length + s.cancelled + s.errors.iter().sum::<u64>();
    assert_eq!(
        ended as usize,
        clients.len(),
        "seed {seed}: the scheduler ended {ended} requests of {} accepted",
        clients.len()
    );
    assert_eq!(s.rejected_overload as usize, overloaded, "seed {seed}");
    assert_eq!(
        s.kv.used_blocks(),
        0,
        "seed {seed}: KV blocks leaked: {:?}",
        s.kv
    );
    assert_eq!(s.kv.sequences, 0, "seed {seed}: sequences leaked");
    assert_eq!(
        probe.live_sequences(),
        0,
        "seed {seed}: the backend holds sequences"
    );
    assert!(
        probe.max_items() <= max_running,
        "seed {seed}: a step carried {} sequences (cap {max_running})",
        probe.max_items()
    );
    assert_eq!(probe.violations(), Vec::<String>::new(), "seed {seed}");
    sched.shutdown(Duration::ZERO);
    Outcome {
        accepted: clients.len(),
        overloaded,
        preempted: s.preemptions,
        ends,
    }
}

fn wait_idle(h: &rill_scheduler::SchedulerHandle, probe: &FakeProbe) {
    let t = Instant::now();
    loop {
        let s = h.stats();
        if s.running == 0 && s.waiting == 0 && probe.live_sequences() == 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the scheduler never went idle"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn random_interleavings_keep_every_invariant() {
    let mut total = Outcome {
        accepted: 0,
        overloaded: 0,
        preempted: 0,
        ends: [0; 4],
    };
    for seed in 0..6 {
        let o = run(seed, 800, seed % 2 == 0);
        total.accepted += o.accepted;
        total.overloaded += o.overloaded;
        total.preempted += o.preempted;
        for k in 0..4 {
            total.ends[k] += o.ends[k];
        }
    }
    println!(
        "accepted {} overloaded {} preemptions {} length/stop/cancelled/error {:?}",
        total.accepted, total.overloaded, total.preempted, total.ends
    );
    // The workload reached every path it is meant to test.
    assert!(total.accepted > 3000);
    assert!(total.overloaded > 0, "the queue never overflowed");
    assert!(total.preempted > 0, "the pool never preempted");
    assert!(
        total.ends.iter().all(|&n| n > 0),
        "an ending never happened: {:?}",
        total.ends
    );
}

#[test]
fn shutdown_mid_flight_ends_every_request_once() {
    let (engine, probe) = FakeEngine::new(FakeConfig {
        vocab: VOCAB,
        step_time: Duration::from_micros(200),
        ..FakeConfig::default()
    })
    .unwrap();
    let sched = Scheduler::start(engine, SchedulerConfig::default()).unwrap();
    let h = sched.handle();
    let mut rng = StdRng::seed_from_u64(7);
    let mut streams: Vec<RequestStream> = (0..40)
        .map(|_| {
            let mut r = random_request(&mut rng, &[vec![2, 3, 4]]);
            r.max_tokens = 200;
            r.sampling.ignore_eos = true;
            r.prompt.retain(|&t| t != FakeEngine::POISON);
            h.submit(r).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    h.shutdown(Duration::ZERO);
    assert!(matches!(
        h.submit(Request::greedy(vec![5, 6], 4)),
        Err(SubmitError::ShuttingDown)
    ));
    for (i, s) in streams.iter_mut().enumerate() {
        let mut terminal = 0;
        while let Some(ev) = s.blocking_recv() {
            if ev.is_terminal() {
                terminal += 1;
                assert!(
                    matches!(
                        ev,
                        Event::Error {
                            code: ErrorCode::ServerShutdown,
                            ..
                        } | Event::Finished { .. }
                    ),
                    "request {i}: {ev:?}"
                );
            }
        }
        assert_eq!(terminal, 1, "request {i} ended {terminal} times");
    }
    sched.shutdown(Duration::ZERO);
    assert_eq!(probe.live_sequences(), 0);
    assert_eq!(probe.violations(), Vec::<String>::new());
}

/// The adaptive controller, driven by the real engine loop over a backend whose steps cost 1 ms
/// plus 1 ms per token: 32 streams against a 10 ms inter-token target must bring the running
/// limit well under the cap (a 32-row step alone takes 33 ms), and every stream still ends
/// with the model's exact tokens.
#[test]
fn the_controller_shrinks_the_batch_when_steps_are_slow() {
    let (engine, probe) = FakeEngine::new(FakeConfig {
        vocab: VOCAB,
        step_time: Duration::from_millis(1),
        per_row: Duration::from_millis(1),
        ..FakeConfig::default()
    })
    .unwrap();
    let cfg = SchedulerConfig {
        target_itl_ms: 10.0,
        max_running: 32,
        spec: SpecConfig {
            mode: SpecMode::Off,
            ..SpecConfig::default()
        },
        ..SchedulerConfig::default()
    };
    let sched = Scheduler::start(engine, cfg).unwrap();
    let h = sched.handle();
    let mut rng = StdRng::seed_from_u64(11);
    let mut clients: Vec<Client> = (0..32)
        .map(|_| {
            let mut request = random_request(&mut rng, &[vec![2, 3, 4]]);
            request.prompt.retain(|&t| t != FakeEngine::POISON);
            request.max_tokens = 40;
            request.sampling.ignore_eos = true;
            Client {
                stream: Some(h.submit(request.clone()).unwrap()),
                request,
                started: 0,
                tokens: Vec::new(),
                text: String::new(),
                terminal: None,
                deaf_until: 0,
                cancelled: false,
            }
        })
        .collect();
    let t = Instant::now();
    while clients.iter().any(|c| c.terminal.is_none()) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the streams did not end"
        );
        clients.iter_mut().for_each(Client::read);
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, c) in clients.iter().enumerate() {
        c.check(i);
    }
    let limit = h.stats().controller.max_running;
    println!(
        "limit {limit}, most sequences in a step {}",
        probe.max_items()
    );
    assert!(
        limit <= 16,
        "the running limit stayed at {limit} with 33 ms steps against a 10 ms target"
    );
    assert!(
        probe.max_items() < 32,
        "a step carried every stream at once"
    );
    sched.shutdown(Duration::ZERO);
}
