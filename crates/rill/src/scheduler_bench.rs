//! `rill bench-scheduler`: the scheduler under concurrent streams, in process (no HTTP).
//! Scenario 1: N concurrent greedy streams of T tokens with mixed prompt lengths. Scenario 2:
//! the same, plus one long prompt arriving once every stream is decoding; it reports the
//! running streams' inter-token gaps while that prompt is prefilled (chunked prefill at work).
//! Latencies are taken where a client would see them: when each event is received.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use rill_engine::{ChatMessage, SamplingParams};
use rill_scheduler::{Event, Request, Scheduler, SchedulerConfig, SchedulerHandle};

use crate::ModelArgs;

#[derive(Args, Clone)]
pub struct SchedulerBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Concurrent streams.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Tokens per stream.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Tokens of the long prompt that arrives mid-run in the second scenario (0: skip it).
    #[arg(long, default_value_t = 2000)]
    long_prompt: usize,
    /// p95 inter-token latency target of the adaptive controller.
    #[arg(long, default_value_t = 100.0)]
    target_itl_ms: f64,
    /// Fixed batch limits instead of the adaptive controller (for comparison).
    #[arg(long)]
    fixed: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What one stream saw.
struct StreamTrace {
    submitted: Instant,
    /// Receive time of every token.
    token_times: Vec<Instant>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn spawn_stream(
    h: &SchedulerHandle,
    req: Request,
    go: Arc<Barrier>,
    decoding: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Result<StreamTrace>> {
    let h = h.clone();
    std::thread::spawn(move || {
        go.wait();
        let submitted = Instant::now();
        let mut s = h.submit(req)?;
        let mut token_times = Vec::new();
        while let Some(ev) = s.blocking_recv() {
            match ev {
                Event::Tokens { tokens, .. } => {
                    let now = Instant::now();
                    if token_times.is_empty() {
                        decoding.fetch_add(1, Ordering::AcqRel);
                    }
                    token_times.extend(tokens.iter().map(|_| now));
                }
                Event::Error { code, message, .. } => {
                    anyhow::bail!("stream failed: {} ({message})", code.as_str())
                }
                _ => {}
            }
        }
        Ok(StreamTrace {
            submitted,
            token_times,
        })
    })
}

/// Mixed-length chat prompts; `salt` makes each scenario's prompts its own (no prefix reuse
/// across scenarios).
fn prompts(h: &SchedulerHandle, n: usize, salt: usize) -> Result<Vec<Vec<u32>>> {
    let filler = "The river flows past old stone bridges, carrying leaves and stories from the \
                  hills to the harbour, where fishermen mend their nets and talk about the weather. ";
    (0..n)
        .map(|i| {
            let user = format!(
                "Question {salt}-{i}. {}Tell me about the {}th lighthouse on this coast.",
                filler.repeat([0, 2, 6, 12][i % 4]),
                i + 1
            );
            let text = h
                .chat_template()
                .render(&[ChatMessage::new("user", &user)], true)?;
            Ok(h.tokenizer().encode(&text, true)?)
        })
        .collect()
}

struct Summary {
    tokens_per_s: f64,
    ttft_p50: f64,
    ttft_p95: f64,
    itl_p50: f64,
    itl_p95: f64,
    itl_max: f64,
}

fn summarize(traces: &[StreamTrace], start: Instant, end: Instant) -> Summary {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut ttft: Vec<f64> = traces
        .iter()
        .filter_map(|t| t.token_times.first().map(|f| ms(*f - t.submitted)))
        .collect();
    let mut gaps: Vec<f64> = traces
        .iter()
        .flat_map(|t| t.token_times.windows(2).map(|w| ms(w[1] - w[0])))
        .collect();
    let tokens: usize = traces.iter().map(|t| t.token_times.len()).sum();
    Summary {
        tokens_per_s: tokens as f64 / (end - start).as_secs_f64(),
        ttft_p50: percentile(&mut ttft, 0.5),
        ttft_p95: percentile(&mut ttft, 0.95),
        itl_p50: percentile(&mut gaps, 0.5),
        itl_p95: percentile(&mut gaps, 0.95),
        itl_max: percentile(&mut gaps, 1.0),
    }
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        sampling: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy()
        },
        ..Request::greedy(prompt, max_tokens)
    }
}

/// Runs the streams; with `long`, submits the long prompt once every stream has its first
/// token and returns the gaps the streams saw between its submission and its first token.
fn scenario(
    h: &SchedulerHandle,
    a: &SchedulerBenchArgs,
    long: Option<Vec<u32>>,
    salt: usize,
) -> Result<(Summary, Option<(Summary, f64)>)> {
    let reqs: Vec<Request> = prompts(h, a.streams, salt)?
        .into_iter()
        .map(|p| greedy(p, a.tokens))
        .collect();
    let go = Arc::new(Barrier::new(a.streams + 1));
    let decoding = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = reqs
        .into_iter()
        .map(|r| spawn_stream(h, r, go.clone(), decoding.clone()))
        .collect();
    go.wait();
    let mut window = None;
    if let Some(long) = long {
        // Wait until every stream is decoding, then send the long prompt.
        let t = Instant::now();
        while decoding.load(Ordering::Acquire) < a.streams {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(300),
                "streams did not start"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let arrived = Instant::now();
        let mut s = h.submit(greedy(long, 8))?;
        let mut first = None;
        while let Some(ev) = s.blocking_recv() {
            if matches!(ev, Event::Tokens { .. }) && first.is_none() {
                first = Some(Instant::now());
            }
        }
        let first = first.context("the long prompt produced no token")?;
        window = Some((arrived, first));
    }
    let traces: Vec<StreamTrace> = workers
        .into_iter()
        .map(|w| {
            w.join()
                .map_err(|_| anyhow::anyhow!("stream thread panicked"))?
        })
        .collect::<Result<_>>()?;
    let end = Instant::now();
    let all = summarize(&traces, start, end);
    let during = window.map(|(a0, a1)| {
        // Only the gaps that end while the long prompt was being prefilled.
        let clipped: Vec<StreamTrace> = traces
            .iter()
            .map(|t| StreamTrace {
                submitted: t.submitted,
                token_times: t
                    .token_times
                    .iter()
                    .copied()
                    .filter(|&x| x >= a0 && x <= a1)
                    .collect(),
            })
            .collect();
        (summarize(&clipped, a0, a1), (a1 - a0).as_secs_f64() * 1e3)
    });
    Ok((all, during))
}

pub fn run(a: SchedulerBenchArgs) -> Result<()> {
    let machine = rill_engine::sysinfo::machine_info();
    let kv_tokens = (a.streams * (a.tokens + 512)).max(a.long_prompt + 512) + 4096;
    let engine = a.model.load(kv_tokens)?;
    let cfg = SchedulerConfig {
        target_itl_ms: a.target_itl_ms,
        adaptive: !a.fixed,
        max_running: a
            .streams
            .max(SchedulerConfig::for_machine(&machine).max_running),
        ..SchedulerConfig::for_machine(&machine)
    };
    let threads = engine.threads();
    let sched = Scheduler::start(engine, cfg)?;
    let h = sched.handle();
    // Warm up (page in the weights, size the scratch buffers), outside the measurement.
    scenario(
        &h,
        &SchedulerBenchArgs {
            streams: 2,
            tokens: 8,
            ..a.clone()
        },
        None,
        0,
    )?;
    let (plain, _) = scenario(&h, &a, None, 1)?;
    let long = if a.long_prompt > 0 {
        let text = "The river flows past old stone bridges. ".repeat(a.long_prompt / 7 + 1);
        let mut ids = h.tokenizer().encode(&text, true)?;
        ids.truncate(a.long_prompt);
        Some(scenario(&h, &a, Some(ids), 2)?)
    } else {
        None
    };
    let stats = h.stats();
    sched.shutdown(Duration::from_secs(5));

    let row = |name: &str, s: &Summary| {
        serde_json::json!({
            "scenario": name,
            "tokens_per_s": s.tokens_per_s,
            "ttft_ms": {"p50": s.ttft_p50, "p95": s.ttft_p95},
            "itl_ms": {"p50": s.itl_p50, "p95": s.itl_p95, "max": s.itl_max},
        })
    };
    let mut rows = vec![row("plain", &plain)];
    let mut long_ttft = None;
    if let Some((all, during)) = &long {
        rows.push(row("with_long_prompt", all));
        if let Some((d, ttft)) = during {
            rows.push(row("during_long_prefill", d));
            long_ttft = Some(*ttft);
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "streams": a.streams,
                "tokens": a.tokens,
                "long_prompt": a.long_prompt,
                "target_itl_ms": a.target_itl_ms,
                "adaptive": !a.fixed,
                "threads": threads,
                "long_prompt_ttft_ms": long_ttft,
                "preemptions": stats.preemptions,
                "results": rows,
            }))?
        );
        return Ok(());
    }
    println!(
        "{} streams x {} tokens, mixed prompts, {} threads, target ITL {} ms ({})",
        a.streams,
        a.tokens,
        threads,
        a.target_itl_ms,
        if a.fixed { "fixed limits" } else { "adaptive" }
    );
    println!(
        "{:<22} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "scenario", "tok/s", "TTFT p50", "TTFT p95", "ITL p50", "ITL p95", "ITL max"
    );
    let print = |name: &str, s: &Summary| {
        println!(
            "{name:<22} {:>9.1} {:>10.1} {:>10.1} {:>9.1} {:>9.1} {:>9.1}",
            s.tokens_per_s, s.ttft_p50, s.ttft_p95, s.itl_p50, s.itl_p95, s.itl_max
        )
    };
    print("plain", &plain);
    if let Some((all, during)) = &long {
        print("with long prompt", all);
        if let Some((d, ttft)) = during {
            print("  during its prefill", d);
            println!(
                "long prompt ({} tokens): TTFT {:.0} ms",
                a.long_prompt, ttft
            );
        }
    }
    println!(
        "controller: limit {} running, prefill budget {}, fitted {:.1} ms + {:.2} ms/row; preemptions {}",
        stats.controller.max_running,
        stats.controller.prefill_budget,
        stats.controller.fixed_ms,
        stats.controller.per_row_ms,
        stats.preemptions
    );
    Ok(())
}
