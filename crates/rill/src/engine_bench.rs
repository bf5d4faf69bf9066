//! `rill bench-engine`: the engine's own throughput, without HTTP. Reports prefill tokens/s for
//! a 512-token prompt (like llama-bench pp512), single-stream decode tokens/s over 128 tokens
//! (like tg128) and aggregate decode tokens/s with B sequences decoding together, optionally
//! after `--depth` tokens of context (like llama-bench `-d`; the sequences of a batch share that
//! context through the prefix cache, computed once and not timed).

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use rill_engine::{Engine, SeqId, StepItem};

use crate::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Tokens generated in the decode measurements.
    #[arg(long, default_value_t = 128)]
    gen: usize,
    /// Batch sizes for aggregate decode.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32")]
    batch: Vec<usize>,
    /// Tokens of context before each measurement (llama-bench's `-d`).
    #[arg(long, default_value_t = 0)]
    depth: usize,
    /// Repetitions (the median is reported).
    #[arg(long, short = 'r', default_value_t = 3)]
    reps: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Token ids of ordinary text, cycled to `n`.
fn prompt_tokens(e: &Engine, n: usize) -> Result<Vec<u32>> {
    let text = "The river carried the boat past fields and towns, and the people on the banks \
                waved as it went by. ";
    let base = e.tokenizer.encode(text, false)?;
    Ok(base.iter().copied().cycle().take(n).collect())
}

/// Prefills `tokens` into `seq` in chunks of 512 (the scheduler's), returning after the
/// last chunk's logits.
fn prefill(e: &mut Engine, seq: SeqId, tokens: &[u32]) -> Result<()> {
    let n = tokens.chunks(512).count();
    for (i, c) in tokens.chunks(512).enumerate() {
        e.step(&[StepItem {
            seq,
            tokens: c,
            logits: usize::from(i + 1 == n),
        }])?;
    }
    Ok(())
}

/// A new sequence holding `context` (attached from the prefix cache where another sequence
/// computed it already).
fn with_context(e: &mut Engine, seq: SeqId, context: &[u32]) -> Result<()> {
    e.add_sequence(seq)?;
    if !context.is_empty() {
        let reused = e.attach_prefix(seq, context)?;
        prefill(e, seq, &context[reused..])?;
    }
    Ok(())
}

pub fn run(a: BenchArgs) -> Result<()> {
    let max_b = a.batch.iter().copied().max().unwrap_or(1);
    // Room for the shared context plus every sequence's own tokens (and a partial block each).
    let kv_tokens = a.depth + (a.prompt + a.gen + 32).max(max_b * (a.gen + 32));
    let mut e = a.model.load(kv_tokens)?;
    let prompt = prompt_tokens(&e, a.prompt)?;
    let context = prompt_tokens(&e, a.depth)?;
    let mut next = 1u64;
    let mut seq = || {
        next += 1;
        SeqId(next)
    };

    // Prefill: one step with the whole prompt (chunked at 512 like the scheduler).
    let mut pp = Vec::new();
    for _ in 0..a.reps {
        let s = seq();
        with_context(&mut e, s, &context)?;
        let t = Instant::now();
        prefill(&mut e, s, &prompt)?;
        pp.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
        e.free_sequence(s);
    }

    // Decode: B sequences, each from a 1-token context, `gen` steps.
    let mut rows = Vec::new();
    for &b in &a.batch {
        let mut rates = Vec::new();
        for _ in 0..a.reps {
            let seqs: Vec<SeqId> = (0..b).map(|_| seq()).collect();
            for &s in &seqs {
                with_context(&mut e, s, &context)?;
            }
            let toks: Vec<u32> = (0..b).map(|i| prompt[i % prompt.len()]).collect();
            let t = Instant::now();
            for step in 0..a.gen {
                let items: Vec<StepItem> = seqs
                    .iter()
                    .zip(&toks)
                    .map(|(&s, tok)| StepItem {
                        seq: s,
                        tokens: std::slice::from_ref(tok),
                        logits: 1,
                    })
                    .collect();
                let out = e.step(&items)?;
                std::hint::black_box(out.row(0)[step % 7]);
            }
            rates.push((b * a.gen) as f64 / t.elapsed().as_secs_f64());
            for &s in &seqs {
                e.free_sequence(s);
            }
        }
        rows.push((b, median(rates)));
    }
    let pp = median(pp);
    let single = rows.iter().find(|r| r.0 == 1).map(|r| r.1);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "threads": e.threads(),
                "kernels": e.kernels().tier().to_string(),
                "contention_fallbacks": e.contention_fallbacks(),
                "kv_type": e.kv_stats().kv_type.to_string(),
                "depth": a.depth,
                "prefill_tokens": a.prompt,
                "prefill_tok_s": pp,
                "decode_tokens": a.gen,
                "decode_tok_s": single,
                "batched": rows.iter().map(|(b, r)| serde_json::json!({"batch": b, "tok_s": r})).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!(
        "model {} | {} threads | kernels {} | KV {} | median of {} | contention fallbacks {}",
        e.config().name,
        e.threads(),
        e.kernels().tier(),
        e.kv_stats().kv_type,
        a.reps,
        e.contention_fallbacks()
    );
    let at = if a.depth > 0 {
        format!(" @ d{}", a.depth)
    } else {
        String::new()
    };
    println!("{:<28} {:>10}", "test", "tokens/s");
    println!("{:<28} {:>10.1}", format!("prefill pp{}{at}", a.prompt), pp);
    for (b, r) in &rows {
        let label = if *b == 1 {
            format!("decode tg{}{at}", a.gen)
        } else {
            format!("decode tg{}{at} x batch {b}", a.gen)
        };
        let ratio = single
            .map(|s| format!("  ({:.2}x single)", r / s))
            .unwrap_or_default();
        println!("{label:<28} {r:>10.1}{ratio}");
    }
    Ok(())
}
