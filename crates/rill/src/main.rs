//! The `rill` command: parses arguments and hands off to the crates that do the work.

mod bench_cmd;
mod engine_bench;
mod scheduler_bench;
mod serve;
mod telemetry;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rill_engine::{ChatMessage, Engine, EngineConfig, GenerateOptions, SamplingParams};
use rill_store::{ModelRef, Progress};

#[derive(Parser)]
#[command(name = "rill", version, about = "A streaming LLM inference server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Export request spans to this OpenTelemetry collector (OTLP/HTTP, e.g. http://127.0.0.1:4318).
    #[arg(long, global = true, env = "RILL_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch a model into the cache (default: SmolLM2-135M-Instruct Q4_1) and print its path.
    Pull {
        /// A known model name (`--list`), local .gguf path or http(s) URL. Default: the default
        /// model.
        model: Option<String>,
        /// List the known model names and whether each is in the cache.
        #[arg(long, conflicts_with_all = ["model", "sha256"])]
        list: bool,
        /// Expected sha256 of the .gguf (for URLs and paths).
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Serve the model over HTTP (OpenAI-compatible SSE) and WebSocket.
    Serve(serve::ServeArgs),
    /// Stream one completion of a chat prompt to stdout; TTFT and tokens/s go to stderr.
    Generate(GenerateArgs),
    /// Show the machine as rill sees it, the defaults derived from it, and how many tokens of
    /// KV the default budget holds for a model in each KV type.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The model to size the KV cache for (default: the default model, if pulled).
        #[arg(long, short = 'm', env = "RILL_MODEL")]
        model: Option<String>,
    },
    /// Load-test any OpenAI-compatible server; `history` and `compare` work on stored runs.
    Bench(bench_cmd::BenchArgs),
    /// Measure the engine: prefill tokens/s, single-stream decode and batched decode tokens/s.
    BenchEngine(engine_bench::BenchArgs),
    /// Measure the scheduler: concurrent streams (TTFT, inter-token latency, tokens/s), and the
    /// same while a long prompt arrives mid-run.
    BenchScheduler(scheduler_bench::SchedulerBenchArgs),
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model: a .gguf path, an http(s) URL or a known name. Default: the default model (pulled if absent).
    #[arg(long, short = 'm', env = "RILL_MODEL")]
    pub model: Option<String>,
    /// Compute threads (0: one per physical core).
    #[arg(long, short = 't', default_value_t = 0, env = "RILL_THREADS")]
    pub threads: usize,
    /// Force a kernel set: scalar, avx2, avx-vnni, avx512.
    #[arg(long, env = "RILL_KERNELS")]
    pub kernels: Option<String>,
    /// A Jinja chat template file replacing the model's (a base model has none).
    #[arg(long, env = "RILL_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
    /// KV cache element format: f16, q8_0 or q4_0.
    #[arg(long, default_value = "f16", env = "RILL_KV_TYPE")]
    pub kv_type: rill_engine::KvType,
}

/// The text of a `--chat-template` file.
pub fn read_chat_template(path: Option<&std::path::Path>) -> Result<Option<String>> {
    path.map(|p| {
        std::fs::read_to_string(p).with_context(|| format!("reading chat template {}", p.display()))
    })
    .transpose()
}

impl ModelArgs {
    pub fn load(&self, kv_tokens: usize) -> Result<Engine> {
        let path = resolve_model(self.model.as_deref())?;
        let engine = Engine::load(
            &path,
            &EngineConfig {
                threads: self.threads,
                kv_tokens,
                kv_bytes: 0,
                kernels: self.kernels.clone(),
                chat_template: read_chat_template(self.chat_template.as_deref())?,
                kv_type: self.kv_type,
            },
        )
        .with_context(|| format!("loading {}", path.display()))?;
        Ok(engine)
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// The user message.
    prompt: String,
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    /// Send the prompt as raw text (no chat template).
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop sequences (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long)]
    ignore_eos: bool,
}

pub fn resolve_model(model: Option<&str>) -> Result<PathBuf> {
    let r = ModelRef::parse(model)?;
    Ok(rill_store::pull(&r, None, progress())?)
}

/// `rill pull --list`: the known models, the default first.
fn list_models() -> Result<()> {
    for (i, m) in rill_store::KNOWN_MODELS.iter().enumerate() {
        let path = m.path()?;
        let state = if path.is_file() {
            format!("cached at {}", path.display())
        } else {
            "not pulled".to_string()
        };
        let default = if i == 0 { " (default)" } else { "" };
        println!("{:<14} {}{default}; {state}", m.name, m.description);
    }
    Ok(())
}

fn progress() -> Progress {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Progress::Bar
    } else {
        Progress::Quiet
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let _telemetry = telemetry::init(cli.otlp_endpoint.as_deref())?;
    match cli.command {
        Command::Pull { list: true, .. } => list_models()?,
        Command::Pull { model, sha256, .. } => {
            let r = ModelRef::parse(model.as_deref())?;
            let path = rill_store::pull(&r, sha256.as_deref(), progress())?;
            println!("{}", path.display());
        }
        Command::Serve(a) => serve::run(a)?,
        Command::Generate(a) => generate(a)?,
        Command::Info { json, model } => info(json, model.as_deref())?,
        Command::Bench(a) => bench_cmd::run(a)?,
        Command::BenchEngine(a) => engine_bench::run(a)?,
        Command::BenchScheduler(a) => scheduler_bench::run(a)?,
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        frequency_penalty: a.frequency_penalty,
        presence_penalty: a.presence_penalty,
        seed: a.seed,
        ignore_eos: a.ignore_eos,
        ..SamplingParams::default()
    };
    if let Err((field, msg)) = sampling.validate() {
        anyhow::bail!("--{}: {msg}", field.replace('_', "-"));
    }
    let mut engine = a.model.load(4096)?;
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", &a.prompt));
        engine.chat_template.render(&msgs, true)?
    };
    let ids = engine.tokenizer.encode(&text, true)?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling,
        stop: a.stop,
        ..GenerateOptions::default()
    };
    let mut out = std::io::stdout().lock();
    let g = rill_engine::generate(&mut engine, &ids, &opts, |t| {
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
    })?;
    let _ = writeln!(out);
    let decode = g.total.saturating_sub(g.ttft).as_secs_f64();
    eprintln!(
        "[{} prompt tokens, {} generated, finish: {:?}] TTFT {:.1} ms, {:.1} tokens/s decode ({} threads, {} kernels)",
        g.prompt_tokens,
        g.tokens.len(),
        g.finish,
        g.ttft.as_secs_f64() * 1e3,
        (g.tokens.len().saturating_sub(1)) as f64 / decode.max(1e-9),
        engine.threads(),
        engine.kernels().tier()
    );
    Ok(())
}

/// The KV cache a model needs in each type: bytes per token, tokens in `budget` bytes and in
/// one GiB. None where no model is named and the default one is not pulled.
fn kv_sizes(model: Option<&str>, budget: u64) -> Result<Option<serde_json::Value>> {
    let path = match model {
        Some(m) => resolve_model(Some(m))?,
        None => match rill_store::default_model_path() {
            Ok(p) if p.is_file() => p,
            _ => return Ok(None),
        },
    };
    let gguf = rill_engine::gguf::GgufFile::open(&path)?;
    let cfg = rill_engine::model::Model::describe(&gguf)?;
    let mut per_token = serde_json::Map::new();
    let mut in_budget = serde_json::Map::new();
    let mut per_gib = serde_json::Map::new();
    for t in rill_engine::KvType::ALL {
        let layout = cfg.kv_layout(t);
        let bytes = layout.bytes_per_block() / rill_engine::BLOCK_TOKENS;
        per_token.insert(t.to_string(), bytes.into());
        in_budget.insert(t.to_string(), layout.tokens_in(budget as usize).into());
        per_gib.insert(t.to_string(), layout.tokens_in(1 << 30).into());
    }
    Ok(Some(serde_json::json!({
        "name": cfg.name,
        "path": path.display().to_string(),
        "head_dim_fits_blocks": rill_engine::KvType::Q8_0.check_head_dim(cfg.head_dim).is_ok(),
        "kv_bytes_per_token": per_token,
        "kv_tokens_default_budget": in_budget,
        "kv_tokens_per_gib": per_gib,
    })))
}

fn info(json: bool, model: Option<&str>) -> Result<()> {
    let m = rill_engine::sysinfo::machine_info();
    let d = rill_scheduler::MachineDefaults::for_machine(&m);
    let s = rill_scheduler::SchedulerConfig::for_machine(&m);
    let (threads, kv_bytes, max_batch) = (d.threads, d.kv_cache_bytes, d.max_running);
    let kv = kv_sizes(model, kv_bytes)?;
    let defaults = serde_json::json!({
        "threads": threads,
        "kv_cache_bytes": kv_bytes,
        "max_batch": max_batch,
        "target_itl_ms": s.target_itl_ms,
        "queue_capacity": s.queue_capacity,
        "rss_high_bytes": d.rss_high_bytes,
        "rss_critical_bytes": d.rss_critical_bytes,
        "kernels": m.kernel_tier,
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"machine": m, "defaults": defaults, "model": kv})
            )?
        );
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!("CPU:        {}", m.cpu_model);
    println!("features:   {}", m.cpu_features.join(" "));
    println!(
        "cores:      {} physical, {} logical",
        m.physical_cores, m.logical_cores
    );
    println!(
        "memory:     {:.1} GiB total, {:.1} GiB available",
        gib(m.memory_total_bytes),
        gib(m.memory_available_bytes)
    );
    println!(
        "GPU:        {}",
        m.gpu.as_deref().unwrap_or("none (CPU inference)")
    );
    println!(
        "defaults:   threads {threads}, kernels {}, KV cache {:.2} GiB, max batch {max_batch}",
        m.kernel_tier,
        gib(kv_bytes)
    );
    println!(
        "scheduler:  target ITL {} ms (p95), queue {}, admission stops at {:.1} GiB RSS, preemption at {:.1} GiB",
        s.target_itl_ms,
        s.queue_capacity,
        gib(d.rss_high_bytes),
        gib(d.rss_critical_bytes)
    );
    match kv {
        Some(k) => {
            let n = |key: &str, t: &str| k[key][t].as_u64().unwrap_or(0);
            println!(
                "KV tokens:  {} in the default {:.2} GiB: f16 {}, q8_0 {}, q4_0 {} (--kv-type)",
                k["name"].as_str().unwrap_or("model"),
                gib(kv_bytes),
                n("kv_tokens_default_budget", "f16"),
                n("kv_tokens_default_budget", "q8_0"),
                n("kv_tokens_default_budget", "q4_0"),
            );
            if !k["head_dim_fits_blocks"].as_bool().unwrap_or(true) {
                println!(
                    "            (q8_0 and q4_0 need head dims that are multiples of 32: f16 only)"
                );
            }
        }
        None => {
            println!("KV tokens:  pull the default model (rill pull) or pass -m MODEL to see them")
        }
    }
    Ok(())
}
