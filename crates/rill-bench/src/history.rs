//! Run history in an embedded SQLite file: every run with its git commit, machine, model, URL
//! and settings, and every request's sample, so later runs can be compared statistically and
//! the dashboard can plot the history.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use serde::Serialize;

use crate::client::Sample;
use crate::runner::LevelResult;
use crate::BenchError;

/// Default database: `$RILL_HOME/bench.sqlite` or `~/.cache/rill/bench.sqlite`.
pub fn default_db() -> PathBuf {
    std::env::var_os("RILL_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("rill")))
        .unwrap_or_else(|| PathBuf::from(".rill"))
        .join("bench.sqlite")
}

/// What identifies a run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunMeta {
    pub started_at: String,
    pub git_commit: String,
    pub machine: String,
    pub model: String,
    pub url: String,
    pub settings: serde_json::Value,
    pub label: String,
}

/// A stored run with per-level headline numbers.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub meta: RunMeta,
    pub levels: Vec<LevelRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelRow {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub output_tokens_per_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p95_ms: f64,
    pub itl_p50_ms: f64,
    pub itl_p95_ms: f64,
}

pub struct History {
    conn: Connection,
}

fn db_err(e: rusqlite::Error) -> BenchError {
    BenchError::Db(e.to_string())
}

impl History {
    pub fn open(path: &Path) -> Result<Self, BenchError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| BenchError::Db(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS runs (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 started_at TEXT NOT NULL, git_commit TEXT NOT NULL, machine TEXT NOT NULL,
                 model TEXT NOT NULL, url TEXT NOT NULL, settings TEXT NOT NULL, label TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS levels (
                 run_id INTEGER NOT NULL REFERENCES runs(id), concurrency INTEGER NOT NULL,
                 summary TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS samples (
                 run_id INTEGER NOT NULL REFERENCES runs(id), concurrency INTEGER NOT NULL,
                 sample TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS samples_run ON samples(run_id, concurrency);",
        )
        .map_err(db_err)?;
        Ok(Self { conn })
    }

    /// Stores a run; returns its id.
    pub fn store(&mut self, meta: &RunMeta, levels: &[LevelResult]) -> Result<i64, BenchError> {
        let tx = self.conn.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT INTO runs (started_at, git_commit, machine, model, url, settings, label)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                meta.started_at,
                meta.git_commit,
                meta.machine,
                meta.model,
                meta.url,
                meta.settings.to_string(),
                meta.label
            ],
        )
        .map_err(db_err)?;
        let id = tx.last_insert_rowid();
        for l in levels {
            let summary = crate::report::summarize(l);
            tx.execute(
                "INSERT INTO levels (run_id, concurrency, summary) VALUES (?1, ?2, ?3)",
                params![
                    id,
                    l.concurrency as i64,
                    serde_json::to_string(&summary).unwrap_or_default()
                ],
            )
            .map_err(db_err)?;
            for s in &l.samples {
                tx.execute(
                    "INSERT INTO samples (run_id, concurrency, sample) VALUES (?1, ?2, ?3)",
                    params![
                        id,
                        l.concurrency as i64,
                        serde_json::to_string(s).unwrap_or_default()
                    ],
                )
                .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(id)
    }

    /// All runs, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRow>, BenchError> {
        let mut st = self
            .conn
            .prepare("SELECT id, started_at, git_commit, machine, model, url, settings, label FROM runs ORDER BY id")
            .map_err(db_err)?;
        let rows = st
            .query_map([], |r| {
                Ok(RunRow {
                    id: r.get(0)?,
                    meta: RunMeta {
                        started_at: r.get(1)?,
                        git_commit: r.get(2)?,
                        machine: r.get(3)?,
                        model: r.get(4)?,
                        url: r.get(5)?,
                        settings: serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or_default(),
                        label: r.get(7)?,
                    },
                    levels: Vec::new(),
                })
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        let mut out = Vec::new();
        for mut run in rows {
            run.levels = self.levels(run.id)?;
            out.push(run);
        }
        Ok(out)
    }

    fn levels(&self, run: i64) -> Result<Vec<LevelRow>, BenchError> {
        let mut st = self
            .conn
            .prepare("SELECT summary FROM levels WHERE run_id = ?1 ORDER BY concurrency")
            .map_err(db_err)?;
        let v = st
            .query_map([run], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .filter_map(|s| s.ok())
            .filter_map(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .map(|v| LevelRow {
                concurrency: v["concurrency"].as_u64().unwrap_or(0) as usize,
                requests: v["requests"].as_u64().unwrap_or(0) as usize,
                errors: v["errors"].as_u64().unwrap_or(0) as usize,
                output_tokens_per_s: v["output_tokens_per_s"].as_f64().unwrap_or(0.0),
                ttft_p50_ms: v["ttft_ms"]["p50"].as_f64().unwrap_or(0.0),
                ttft_p95_ms: v["ttft_ms"]["p95"].as_f64().unwrap_or(0.0),
                itl_p50_ms: v["itl_ms"]["p50"].as_f64().unwrap_or(0.0),
                itl_p95_ms: v["itl_ms"]["p95"].as_f64().unwrap_or(0.0),
            })
            .collect();
        Ok(v)
    }

    /// A run's samples by concurrency level.
    pub fn samples(&self, run: i64) -> Result<Vec<(usize, Sample)>, BenchError> {
        let exists: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM runs WHERE id = ?1", [run], |r| {
                r.get(0)
            })
            .map_err(db_err)?;
        if exists == 0 {
            return Err(BenchError::Usage(format!("no run {run} in the history")));
        }
        let mut st = self
            .conn
            .prepare("SELECT concurrency, sample FROM samples WHERE run_id = ?1")
            .map_err(db_err)?;
        let v = st
            .query_map([run], |r| {
                Ok((r.get::<_, i64>(0)? as usize, r.get::<_, String>(1)?))
            })
            .map_err(db_err)?
            .filter_map(|r| r.ok())
            .filter_map(|(c, s)| serde_json::from_str(&s).ok().map(|s| (c, s)))
            .collect();
        Ok(v)
    }
}
