//! The live performance dashboard's data (its page and assets are static files, served by
//! [`crate::static_files`]): one sampler task takes a snapshot of the server every second (TTFT
//! and inter-token p50/p95 over the last 10 s, tokens/s from the tokens sampled in that second,
//! running and waiting sequences with the controller's limit, KV use, RSS, errors by code) and
//! keeps the last five minutes. Viewers get that history, then each new snapshot, over SSE at
//! `/dashboard/live`; however many are open, the sampling work is the same.
//! `/dashboard/history` serves the `rill bench` runs from SQLite (`rill-history`) with
//! regressions (Mann-Whitney U against the previous comparable run) flagged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::protocol::ApiError;
use crate::state::SharedState;

const HISTORY: usize = 300;

/// The sampler's output: recent snapshots (JSON) and a signal for new ones.
pub struct Snapshots {
    ring: Mutex<VecDeque<Arc<str>>>,
    latest: watch::Sender<u64>,
}

impl Default for Snapshots {
    fn default() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(HISTORY)),
            latest: watch::channel(0).0,
        }
    }
}

impl Snapshots {
    fn push(&self, s: Arc<str>) {
        {
            let mut r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            if r.len() == HISTORY {
                r.pop_front();
            }
            r.push_back(s);
        }
        self.latest.send_modify(|v| *v += 1);
    }

    fn all(&self) -> Vec<Arc<str>> {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn last(&self) -> Option<Arc<str>> {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
    }
}

fn finite_ms(x: f64) -> Value {
    if x.is_finite() {
        json!(x * 1e3)
    } else {
        Value::Null
    }
}

/// Takes a snapshot every second until shutdown. Tokens/s counts the tokens sampled since the
/// last snapshot (live, while requests run), not those of requests that ended.
pub async fn sampler(state: SharedState) {
    let mut shutdown = state.shutdown.subscribe();
    let mut last_tokens = state.metrics.sampled_tokens_total();
    let mut last_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // A late tick is not followed by a catch-up burst (near-empty intervals would read 0).
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let s = state.sched.stats();
        let [(ttft50, ttft95), (itl50, itl95)] = state.metrics.recent_percentiles();
        let tokens = state.metrics.sampled_tokens_total();
        let now = Instant::now();
        let dt = now.duration_since(last_at).as_secs_f64().max(1e-3);
        let tps = (tokens - last_tokens) as f64 / dt;
        (last_tokens, last_at) = (tokens, now);
        let errors: serde_json::Map<String, Value> = state
            .metrics
            .errors_by_code()
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let snap = json!({
            "t": t,
            "ttft_p50_ms": finite_ms(ttft50),
            "ttft_p95_ms": finite_ms(ttft95),
            "itl_p50_ms": finite_ms(itl50),
            "itl_p95_ms": finite_ms(itl95),
            "target_itl_ms": state.sched.config().target_itl_ms,
            "tokens_per_s": tps,
            "running": s.running,
            "waiting": s.waiting,
            "batch_limit": s.controller.max_running,
            "kv_used": s.kv.used_blocks(),
            "kv_total": s.kv.total_blocks,
            "rss_mib": s.rss_bytes as f64 / (1u64 << 20) as f64,
            "pressure": s.pressure.as_str(),
            "preemptions": s.preemptions,
            "errors": errors,
        });
        state.snapshots.push(Arc::from(snap.to_string()));
    }
}

/// SSE: every stored snapshot as one `history` event, then each new one as `snapshot`.
pub async fn live(State(state): State<SharedState>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let all = state.snapshots.all();
        let hist = format!("event: history\ndata: [{}]\n\n", all.join(","));
        if tx.send(Bytes::from(hist)).await.is_err() {
            return;
        }
        let mut latest = state.snapshots.latest.subscribe();
        let mut shutdown = state.shutdown.subscribe();
        loop {
            tokio::select! {
                r = latest.changed() => {
                    if r.is_err() { return; }
                    if let Some(s) = state.snapshots.last() {
                        if tx.send(Bytes::from(format!("event: snapshot\ndata: {s}\n\n"))).await.is_err() {
                            return;
                        }
                    }
                }
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    crate::sse::event_stream(rx)
}

/// The bench history with regressions flagged.
pub async fn history(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    let path = state
        .cfg
        .bench_db
        .clone()
        .unwrap_or_else(rill_history::default_db);
    let v = tokio::task::spawn_blocking(move || bench_history(&path))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(v))
}

fn bench_history(path: &std::path::Path) -> Result<Value, rill_history::HistoryError> {
    if !path.is_file() {
        return Ok(json!({"db": path.display().to_string(), "runs": []}));
    }
    let h = rill_history::History::open(path)?;
    let runs = h.runs()?;
    let start = runs.len().saturating_sub(50);
    let mut out = Vec::new();
    for (i, r) in runs.iter().enumerate().skip(start) {
        // The previous run of the same server, model and settings is the baseline.
        let base = runs[..i].iter().rev().find(|p| {
            p.meta.url == r.meta.url
                && p.meta.model == r.meta.model
                && p.meta.settings == r.meta.settings
        });
        let mut regressions = Vec::new();
        if let Some(b) = base {
            for d in rill_history::compare(&h.samples(b.id)?, &h.samples(r.id)?, 0.01) {
                if d.verdict == rill_history::Verdict::Regression {
                    regressions.push(json!({"concurrency": d.concurrency, "metric": d.metric, "change_pct": d.change_pct, "p": d.p_value}));
                }
            }
        }
        out.push(json!({
            "id": r.id,
            "started_at": r.meta.started_at,
            "commit": r.meta.git_commit,
            "model": r.meta.model,
            "url": r.meta.url,
            "label": r.meta.label,
            "baseline": base.map(|b| b.id),
            "levels": r.levels,
            "regressions": regressions,
        }));
    }
    Ok(json!({"db": path.display().to_string(), "runs": out}))
}
