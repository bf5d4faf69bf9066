//! rill's server: `rill serve`. OpenAI-compatible `/v1/chat/completions` and `/v1/completions`
//! (JSON and SSE), Anthropic's `/v1/messages` and `/v1/messages/count_tokens`, resumable
//! streams (`GET`/`DELETE /v1/streams/{id}`), the WebSocket protocol at `/v1/ws`, health and
//! readiness, `/v1/models`, `/openapi.json`; API keys, CORS, body and prompt limits, per-key
//! rate limits; graceful shutdown. The engine runs on the scheduler's thread; handlers only
//! submit requests and relay events.

#![warn(missing_docs)]

pub mod anthropic;
pub mod config;
pub mod dashboard;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod params;
pub mod protocol;
pub mod relay;
pub mod resume;
pub mod sse;
pub mod state;
pub mod static_files;
pub mod tools;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rill_engine::Engine;
use rill_scheduler::{Scheduler, SchedulerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use config::{ConfigError, Overrides, ServeConfig};
pub use state::{AppState, SharedState};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid (or an API key file could not be read).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The scheduler rejected its settings or could not start its thread.
    #[error(transparent)]
    Scheduler(#[from] rill_scheduler::SchedulerError),
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The `host:port` that was asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O error while serving (or the server task panicked).
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// The scheduler settings a server configuration implies on this machine.
pub fn scheduler_config(cfg: &ServeConfig) -> SchedulerConfig {
    let base = SchedulerConfig::for_machine(&rill_engine::sysinfo::machine_info());
    SchedulerConfig {
        target_itl_ms: cfg.target_itl_ms,
        max_running: if cfg.max_running > 0 {
            cfg.max_running
        } else {
            base.max_running
        },
        max_prefill_chunk: cfg.max_prefill_chunk,
        min_prefill_chunk: base.min_prefill_chunk.min(cfg.max_prefill_chunk),
        queue_capacity: cfg.queue_capacity,
        stream_capacity: cfg.stream_capacity,
        max_pending_tokens: cfg.max_pending_tokens,
        spec: cfg.spec_config().unwrap_or_default(),
        ..base
    }
}

/// A running server.
pub struct ServerHandle {
    /// The address actually bound (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// The state shared with every handler (scheduler handle, config, metrics).
    pub state: SharedState,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl ServerHandle {
    /// Begins a graceful shutdown (as SIGTERM does).
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits for the server to finish.
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?
    }
}

/// Starts serving `engine` on `cfg.host:cfg.port` (port 0: any free port). Shuts down
/// gracefully when [`ServerHandle::shutdown`] is called or `signal` completes.
pub async fn start(
    cfg: ServeConfig,
    engine: Engine,
    model_id: String,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<ServerHandle, ServeError> {
    cfg.validate()?;
    let keys = cfg.all_api_keys()?;
    let scheduler = Scheduler::start(engine, scheduler_config(&cfg))?;
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = bind(&addr, cfg.send_buffer_bytes)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr()?;
    let grace = Duration::from_secs(cfg.shutdown_grace_s);
    let state: SharedState = Arc::new(AppState::new(scheduler.handle(), cfg, model_id, keys));
    let app = http::router(state.clone());
    tokio::spawn(dashboard::sampler(state.clone()));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let st = state.clone();
    let task = tokio::spawn(async move {
        let begin_shutdown = {
            let st = st.clone();
            async move {
                tokio::select! {
                    _ = stop_rx => {}
                    _ = signal => {}
                }
                tracing::info!("shutting down: no new requests; running streams get {grace:?}");
                st.set_ready(false);
                st.sched.shutdown(grace);
                let _ = st.shutdown.send(true);
            }
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(begin_shutdown)
            .await;
        scheduler.shutdown(Duration::ZERO);
        served.map_err(ServeError::Io)
    });
    Ok(ServerHandle {
        addr: local,
        state,
        stop: Some(stop_tx),
        task,
    })
}

/// Binds the listener; accepted sockets inherit its send buffer size.
async fn bind(addr: &str, send_buffer: u32) -> std::io::Result<TcpListener> {
    if send_buffer == 0 {
        return TcpListener::bind(addr).await;
    }
    let sock_addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} does not resolve")))?;
    let socket = if sock_addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(send_buffer)?;
    socket.bind(sock_addr)?;
    socket.listen(1024)
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
