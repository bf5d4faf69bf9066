//! `rill bench-engine`: the engine's own throughput, without HTTP. Reports prefill tokens/s for
//! a 512-token prompt (like llama-bench pp512), single-stream decode tokens/s over 128 tokens
//! (like tg128) and aggregate decode tokens/s with B sequences decoding together.

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

pub fn run(a: BenchArgs) -> Result<()> {
    let max_b = a.batch.iter().copied().max().unwrap_or(1);
    let kv_tokens = (a.prompt + a.gen + 16).max(max_b * (a.gen + 32));
    let mut e = a.model.load(kv_tokens)?;
    let prompt = prompt_tokens(&e, a.prompt)?;
    let mut next = 1u64;
    let mut seq = || {
        next += 1;
        SeqId(next)
    };

    // Prefill: one step with the whole prompt (chunked at 512 like the scheduler).
    let mut pp = Vec::new();
    for _ in 0..a.reps {
        let s = seq();
        e.add_sequence(s)?;
        let t = Instant::now();
        for (i, c) in prompt.chunks(512).enumerate() {
            let last = (i + 1) * 512 >= prompt.len();
            e.step(&[StepItem {
                seq: s,
                tokens: c,
                want_logits: last,
            }])?;
        }
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
                e.add_sequence(s)?;
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
                        want_logits: true,
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
                "kernels": e.kernels().tier.to_string(),
                "contention_fallbacks": e.contention_fallbacks(),
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
        "model {} | {} threads | kernels {} | median of {} | contention fallbacks {}",
        e.config().name,
        e.threads(),
        e.kernels().tier,
        a.reps,
        e.contention_fallbacks()
    );
    println!("{:<28} {:>10}", "test", "tokens/s");
    println!("{:<28} {:>10.1}", format!("prefill pp{}", a.prompt), pp);
    for (b, r) in &rows {
        let label = if *b == 1 {
            format!("decode tg{}", a.gen)
        } else {
            format!("decode tg{} x batch {b}", a.gen)
        };
        let ratio = single
            .map(|s| format!("  ({:.2}x single)", r / s))
            .unwrap_or_default();
        println!("{label:<28} {r:>10.1}{ratio}");
    }
    Ok(())
}
