//! `rill bench`: the command-line face of `rill-bench` (load runs, `--compare URL_A URL_B`,
//! `history`, `compare RUN_A RUN_B`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use rill_bench::{compare, report, runner, workload, History, RunMeta, Target, Workload};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: Option<BenchCmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// List stored runs.
    History {
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Compare two stored runs; exits with status 1 on a regression beyond noise.
    Compare {
        run_a: i64,
        run_b: i64,
        /// Significance level of the Mann-Whitney U test.
        #[arg(long, default_value_t = 0.01)]
        alpha: f64,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Base URL of an OpenAI-compatible server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrency levels to sweep.
    #[arg(long, short = 'c', value_delimiter = ',', default_value = "1,4,8,16")]
    concurrency: Vec<usize>,
    /// Requests per level (default: 4 per client, at least 8).
    #[arg(long, short = 'n')]
    requests: Option<usize>,
    /// Run each level for this many seconds instead of a request count.
    #[arg(long)]
    duration: Option<f64>,
    /// Poisson arrivals at this many requests per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Prompt set: short, long, mixed (all distinct), shared (mixed lengths with a common
    /// prefix of up to ~1,000 tokens), grounded (copy tasks, with --endpoint completions), open
    /// (open-ended completions), or a .jsonl file ({"prompt": ...} or {"messages": [...]}).
    #[arg(long, default_value = "mixed")]
    prompts: String,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Ask the server to ignore end-of-sequence (rill and llama-server support it).
    #[arg(long)]
    ignore_eos: bool,
    /// chat or completions.
    #[arg(long, default_value = "chat")]
    endpoint: String,
    #[arg(long, env = "RILL_BENCH_API_KEY")]
    api_key: Option<String>,
    /// Model name to send (default: the server's first model).
    #[arg(long)]
    model: Option<String>,
    /// Run the same workload against two servers alternately and print B/A ratios.
    #[arg(long, num_args = 2, value_names = ["URL_A", "URL_B"])]
    compare: Option<Vec<String>>,
    /// Unmeasured requests sent to each server first, one at a time (page faults of a fresh
    /// server's weights, first-use allocations, connection setup).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// History database (default: $RILL_HOME/bench.sqlite).
    #[arg(long, env = "RILL_BENCH_DB")]
    db: Option<PathBuf>,
    /// Do not store the run.
    #[arg(long)]
    no_store: bool,
    /// A label stored with the run.
    #[arg(long, default_value = "")]
    label: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.cmd {
        Some(BenchCmd::History { db, json }) => history(db, json),
        Some(BenchCmd::Compare {
            run_a,
            run_b,
            alpha,
            db,
            json,
        }) => compare_runs(run_a, run_b, alpha, db, json),
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(load(a.run))
        }
    }
}

fn target(r: &RunArgs, url: &str) -> Target {
    Target {
        base_url: url.to_string(),
        api_key: r.api_key.clone(),
        model: r.model.clone().unwrap_or_default(),
        endpoint: r.endpoint.clone(),
    }
}

async fn load(r: RunArgs) -> Result<()> {
    if r.endpoint != "chat" && r.endpoint != "completions" {
        bail!(
            "--endpoint must be chat or completions, not `{}`",
            r.endpoint
        );
    }
    if r.concurrency.contains(&0) {
        bail!("--concurrency levels must be at least 1");
    }
    if r.rate.is_some_and(|x| x.is_nan() || x <= 0.0) {
        bail!("--rate must be > 0 requests per second");
    }
    let prompts = workload::prompts(&r.prompts)?;
    // A fresh connection per request: servers differ in how they treat idle keep-alive
    // connections, and a reused connection the server already closed would count as an error.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let urls: Vec<String> = match &r.compare {
        Some(v) => v.clone(),
        None => vec![r.url.clone()],
    };
    let mut targets = Vec::new();
    for u in &urls {
        let mut t = target(&r, u);
        if t.model.is_empty() {
            t.model = t
                .discover_model(&client)
                .await
                .unwrap_or_else(|| "default".into());
        }
        targets.push(t);
    }
    for t in &targets {
        for i in 0..r.warmup {
            let p = &prompts[i % prompts.len()];
            let s = rill_bench::client::run_one(&client, t, p, r.max_tokens, r.ignore_eos).await;
            if let Some(e) = s.error {
                bail!("warm-up request to {} failed: {e}", t.base_url);
            }
        }
    }
    let mut all: Vec<Vec<runner::LevelResult>> = vec![Vec::new(); targets.len()];
    for &c in &r.concurrency {
        let w = Workload {
            prompts: prompts.clone(),
            max_tokens: r.max_tokens,
            ignore_eos: r.ignore_eos,
            arrival: r.rate.map_or(workload::Arrival::Closed, |rate| {
                workload::Arrival::Poisson { rate }
            }),
            requests: r.requests.unwrap_or((4 * c).max(8)),
            duration: r.duration.map(Duration::from_secs_f64),
        };
        if targets.len() == 1 {
            all[0].push(runner::run_level(&client, &targets[0], &w, c, 0, r.json).await);
        } else {
            // Alternate A, B, A, B with half the requests each, so drift hits both alike.
            let half = Workload {
                requests: w.requests.div_ceil(2),
                duration: w.duration.map(|d| d / 2),
                ..w.clone()
            };
            let mut parts: Vec<Vec<runner::LevelResult>> = vec![Vec::new(); 2];
            for round in 0..2 {
                for (i, t) in targets.iter().enumerate() {
                    parts[i].push(
                        runner::run_level(&client, t, &half, c, round * half.requests, r.json)
                            .await,
                    );
                }
            }
            for (i, p) in parts.into_iter().enumerate() {
                all[i].push(runner::LevelResult {
                    concurrency: c,
                    wall_s: p.iter().map(|x| x.wall_s).sum(),
                    samples: p.into_iter().flat_map(|x| x.samples).collect(),
                });
            }
        }
    }
    let settings = serde_json::json!({
        "concurrency": r.concurrency, "requests": r.requests, "duration_s": r.duration,
        "rate": r.rate, "prompts": r.prompts, "max_tokens": r.max_tokens,
        "ignore_eos": r.ignore_eos, "endpoint": r.endpoint, "warmup": r.warmup,
    });
    let mut run_ids = Vec::new();
    if !r.no_store {
        let path = r.db.clone().unwrap_or_else(rill_bench::history::default_db);
        let mut h = History::open(&path)?;
        for (t, levels) in targets.iter().zip(&all) {
            let meta = RunMeta {
                started_at: rill_bench::now_rfc3339(),
                git_commit: rill_bench::git_commit(),
                machine: rill_bench::machine(),
                model: t.model.clone(),
                url: t.base_url.clone(),
                settings: settings.clone(),
                label: r.label.clone(),
            };
            run_ids.push(h.store(&meta, levels)?);
        }
    }
    let summaries: Vec<Vec<report::Summary>> = all
        .iter()
        .map(|levels| levels.iter().map(report::summarize).collect())
        .collect();
    if r.json {
        let runs: Vec<serde_json::Value> = targets
            .iter()
            .zip(&summaries)
            .enumerate()
            .map(|(i, (t, s))| serde_json::json!({"url": t.base_url, "model": t.model, "run_id": run_ids.get(i), "levels": s}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"settings": settings, "runs": runs}))?
        );
        return Ok(());
    }
    for ((t, s), id) in targets
        .iter()
        .zip(&summaries)
        .zip(run_ids.iter().map(Some).chain(std::iter::repeat(None)))
    {
        println!(
            "{} ({}){}",
            t.base_url,
            t.model,
            id.map_or(String::new(), |i| format!(", stored as run {i}"))
        );
        print!("{}", report::table(s));
    }
    if summaries.len() == 2 {
        println!("\nB/A ratios (B = {}, A = {}):", urls[1], urls[0]);
        println!(
            "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "conc", "tok/s", "TTFT p50", "TTFT p95", "ITL p50", "ITL p95"
        );
        for (a, b) in summaries[0].iter().zip(&summaries[1]) {
            let q = |x: f64, y: f64| if x > 0.0 { y / x } else { f64::NAN };
            println!(
                "{:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                a.concurrency,
                q(a.output_tokens_per_s, b.output_tokens_per_s),
                q(a.ttft_ms.p50, b.ttft_ms.p50),
                q(a.ttft_ms.p95, b.ttft_ms.p95),
                q(a.itl_ms.p50, b.itl_ms.p50),
                q(a.itl_ms.p95, b.itl_ms.p95)
            );
        }
    }
    Ok(())
}

fn history(db: Option<PathBuf>, json: bool) -> Result<()> {
    let h = History::open(&db.unwrap_or_else(rill_bench::history::default_db))?;
    let runs = h.runs()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<20}  {:<9}  {:<28}  {:<26}  levels (conc: tok/s, TTFT p50 ms)",
        "run", "started", "commit", "model", "url"
    );
    for r in runs {
        let levels: Vec<String> = r
            .levels
            .iter()
            .map(|l| {
                format!(
                    "{}: {:.0}, {:.0}",
                    l.concurrency, l.output_tokens_per_s, l.ttft_p50_ms
                )
            })
            .collect();
        println!(
            "{:>4}  {:<20}  {:<9}  {:<28}  {:<26}  {}{}",
            r.id,
            r.meta.started_at,
            r.meta.git_commit,
            r.meta.model.chars().take(28).collect::<String>(),
            r.meta.url.chars().take(26).collect::<String>(),
            levels.join(" | "),
            if r.meta.label.is_empty() {
                String::new()
            } else {
                format!("  [{}]", r.meta.label)
            }
        );
    }
    Ok(())
}

fn compare_runs(a: i64, b: i64, alpha: f64, db: Option<PathBuf>, json: bool) -> Result<()> {
    if !(alpha > 0.0 && alpha < 1.0) {
        bail!("--alpha must be between 0 and 1");
    }
    let h = History::open(&db.unwrap_or_else(rill_bench::history::default_db))?;
    let diffs = compare::compare(&h.samples(a)?, &h.samples(b)?, alpha);
    if diffs.is_empty() {
        bail!("runs {a} and {b} share no concurrency level");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&diffs)?);
    } else {
        println!("run {a} (A) vs run {b} (B), Mann-Whitney U at alpha {alpha}:");
        print!("{}", compare::table(&diffs));
    }
    let regressions = diffs
        .iter()
        .filter(|d| d.verdict == compare::Verdict::Regression)
        .count();
    if regressions > 0 {
        eprintln!("{regressions} regression(s) beyond noise");
        std::process::exit(1);
    }
    Ok(())
}
