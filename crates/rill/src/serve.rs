//! `rill serve`: flags and `RILL_*` environment over a TOML file over defaults; pulls the model
//! if absent, loads it, and serves until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use rill_engine::{Engine, EngineConfig};
use rill_server::{Overrides, ServeConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as printed by --print-config).
    #[arg(long, env = "RILL_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    #[arg(long, env = "RILL_HOST")]
    host: Option<String>,
    #[arg(long, short = 'p', env = "RILL_PORT")]
    port: Option<u16>,
    /// Model: a .gguf path, an http(s) URL or a known name (default: the default model).
    #[arg(long, short = 'm', env = "RILL_MODEL")]
    model: Option<String>,
    /// Model id reported to clients (default: the file name).
    #[arg(long, env = "RILL_SERVED_MODEL_NAME")]
    served_model_name: Option<String>,
    /// This replica's id, carried by every stream id so a balancer can route a stream's
    /// resume and cancel to it (default: the host name).
    #[arg(long, env = "RILL_REPLICA_ID")]
    replica_id: Option<String>,
    /// Compute threads (0: one per physical core).
    #[arg(long, short = 't', env = "RILL_THREADS")]
    threads: Option<usize>,
    /// Force a kernel set: scalar, avx2, avx-vnni, avx512.
    #[arg(long, env = "RILL_KERNELS")]
    kernels: Option<String>,
    /// A Jinja chat template file replacing the model's (a base model has none, and answers
    /// /v1/chat/completions with 400 without one).
    #[arg(long, env = "RILL_CHAT_TEMPLATE")]
    chat_template: Option<PathBuf>,
    /// KV cache size in MiB (default: derived from memory, see `rill info`).
    #[arg(long, env = "RILL_KV_CACHE_MIB")]
    kv_cache_mib: Option<usize>,
    /// KV cache element format: f16, q8_0 or q4_0 (as llama.cpp's -ctk/-ctv; q8_0 holds 1.9x
    /// the tokens of f16 in the same memory, q4_0 3.6x).
    #[arg(long, env = "RILL_KV_TYPE")]
    kv_type: Option<String>,
    /// p95 inter-token latency target of the batch controller.
    #[arg(long, env = "RILL_TARGET_ITL_MS")]
    target_itl_ms: Option<f64>,
    /// Hard cap on concurrently running sequences.
    #[arg(long, env = "RILL_MAX_RUNNING")]
    max_running: Option<usize>,
    /// Requests that may wait; beyond, 429 with Retry-After.
    #[arg(long, env = "RILL_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,
    /// Speculative decoding: ngram (prompt-lookup drafts verified in the batched step; same
    /// tokens as without) or off.
    #[arg(long, env = "RILL_SPECULATIVE")]
    speculative: Option<String>,
    /// Draft tokens a sequence may carry in one step (1-15).
    #[arg(long, env = "RILL_SPEC_MAX_DRAFT")]
    spec_max_draft: Option<usize>,
    /// Shortest suffix the prompt lookup matches.
    #[arg(long, env = "RILL_SPEC_NGRAM_MIN")]
    spec_ngram_min: Option<usize>,
    /// Longest suffix the prompt lookup tries first.
    #[arg(long, env = "RILL_SPEC_NGRAM_MAX")]
    spec_ngram_max: Option<usize>,
    /// An accepted API key (repeatable; comma-separated in RILL_API_KEY).
    #[arg(long, env = "RILL_API_KEY", value_delimiter = ',')]
    api_key: Vec<String>,
    /// A file with one API key per line.
    #[arg(long, env = "RILL_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// An origin allowed by CORS (repeatable; `*` for any).
    #[arg(long, env = "RILL_CORS_ORIGIN", value_delimiter = ',')]
    cors_origin: Vec<String>,
    #[arg(long, env = "RILL_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Requests per minute per API key.
    #[arg(long, env = "RILL_RATE_LIMIT_RPM")]
    rate_limit_rpm: Option<u32>,
    /// Tokens (prompt + max_tokens) per minute per API key.
    #[arg(long, env = "RILL_RATE_LIMIT_TPM")]
    rate_limit_tpm: Option<u32>,
    /// Seconds a resumable stream survives without a client.
    #[arg(long, env = "RILL_RESUME_WINDOW_S")]
    resume_window_s: Option<u64>,
    /// Seconds running streams get to finish on shutdown.
    #[arg(long, env = "RILL_SHUTDOWN_GRACE_S")]
    shutdown_grace_s: Option<u64>,
    /// The `rill bench` history database the dashboard plots.
    #[arg(long, env = "RILL_BENCH_DB")]
    bench_db: Option<PathBuf>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let cfg = ServeConfig::build(
        a.config.as_deref(),
        Overrides {
            host: a.host,
            port: a.port,
            model: a.model,
            served_model_name: a.served_model_name,
            replica_id: a.replica_id,
            threads: a.threads,
            kv_cache_mib: a.kv_cache_mib,
            kv_type: a.kv_type,
            target_itl_ms: a.target_itl_ms,
            max_running: a.max_running,
            queue_capacity: a.queue_capacity,
            speculative: a.speculative,
            spec_max_draft: a.spec_max_draft,
            spec_ngram_min: a.spec_ngram_min,
            spec_ngram_max: a.spec_ngram_max,
            api_keys: a.api_key,
            api_keys_file: a.api_keys_file,
            cors_origins: a.cors_origin,
            max_body_bytes: a.max_body_bytes,
            rate_limit_rpm: a.rate_limit_rpm,
            rate_limit_tpm: a.rate_limit_tpm,
            resume_window_s: a.resume_window_s,
            shutdown_grace_s: a.shutdown_grace_s,
            bench_db: a.bench_db,
        },
    )?;
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let path = crate::resolve_model((!cfg.model.is_empty()).then_some(cfg.model.as_str()))?;
    let machine = rill_engine::sysinfo::machine_info();
    let defaults = rill_scheduler::MachineDefaults::for_machine(&machine);
    let kv_bytes = if cfg.kv_cache_mib > 0 {
        cfg.kv_cache_mib << 20
    } else {
        defaults.kv_cache_bytes as usize
    };
    let engine = Engine::load(
        &path,
        &EngineConfig {
            threads: cfg.threads,
            kv_tokens: 0,
            kv_bytes,
            kernels: a.kernels,
            chat_template: crate::read_chat_template(a.chat_template.as_deref())?,
            kv_type: cfg.kv_type.parse().map_err(anyhow::Error::msg)?,
        },
    )
    .with_context(|| format!("loading {}", path.display()))?;
    let model_id = if cfg.served_model_name.is_empty() {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    } else {
        cfg.served_model_name.clone()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let kv = engine.kv_stats();
        let threads = engine.threads();
        let server = rill_server::start(cfg, engine, model_id.clone(), rill_server::termination_signal()).await?;
        eprintln!(
            "rill serving {model_id} on http://{} ({threads} threads, KV cache {} tokens in {}); Ctrl-C to stop",
            server.addr,
            kv.total_blocks * kv.block_tokens,
            kv.kv_type
        );
        server.wait().await?;
        eprintln!("rill stopped");
        anyhow::Ok(())
    })
}
