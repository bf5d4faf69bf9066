//! Run history in an embedded SQLite file: every run with its git commit, machine, model, URL
//! and settings, each concurrency level's summary, and every request's sample, so later runs
//! can be compared statistically and the dashboard can plot the history.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use serde::Serialize;

use crate::sample::Sample;
use crate::HistoryError;

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
    /// When the run began (RFC 3339, UTC).
    pub started_at: String,
    /// The short git commit of the client's checkout ("unknown" outside one).
    pub git_commit: String,
    /// The machine the client ran on (CPU, CPUs, memory).
    pub machine: String,
    /// The model the server reported.
    pub model: String,
    /// The server's base URL.
    pub url: String,
    /// The workload settings (runs are comparable when these, the URL and the model match).
    pub settings: serde_json::Value,
    /// A free-form label (`rill bench --label`).
    pub label: String,
}

/// A stored run with per-level headline numbers.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// The run's id (increasing with each stored run).
    pub id: i64,
    /// What identifies it.
    pub meta: RunMeta,
    /// Its levels, by increasing concurrency.
    pub levels: Vec<LevelRow>,
}

/// Headline numbers of one concurrency level of a stored run.
#[derive(Debug, Clone, Serialize)]
pub struct LevelRow {
    /// Concurrent streams.
    pub concurrency: usize,
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Output tokens per second of wall time, over all streams.
    pub output_tokens_per_s: f64,
    /// Median time to first token.
    pub ttft_p50_ms: f64,
    /// 95th percentile of time to first token.
    pub ttft_p95_ms: f64,
    /// Median gap between content chunks.
    pub itl_p50_ms: f64,
    /// 95th percentile of the gaps between content chunks.
    pub itl_p95_ms: f64,
}

/// One concurrency level of a run, as [`History::store`] takes it.
pub trait LevelRecord {
    /// Concurrent streams at this level.
    fn concurrency(&self) -> usize;
    /// The level's summary as JSON. The history reads back `concurrency`, `requests`, `errors`,
    /// `output_tokens_per_s`, `ttft_ms.p50`, `ttft_ms.p95`, `itl_ms.p50` and `itl_ms.p95`
    /// (missing fields read as 0) and keeps the rest as stored.
    fn summary(&self) -> serde_json::Value;
    /// Every request's sample.
    fn samples(&self) -> &[Sample];
}

/// A level given as plain data.
#[derive(Debug, Clone, Default)]
pub struct Level {
    /// Concurrent streams.
    pub concurrency: usize,
    /// The summary (see [`LevelRecord::summary`]).
    pub summary: serde_json::Value,
    /// Every request's sample.
    pub samples: Vec<Sample>,
}

impl LevelRecord for Level {
    fn concurrency(&self) -> usize {
        self.concurrency
    }
    fn summary(&self) -> serde_json::Value {
        self.summary.clone()
    }
    fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

/// An open history database.
pub struct History {
    conn: Connection,
}

impl History {
    /// Opens (creating the file, its directory and the tables if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
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
        )?;
        Ok(Self { conn })
    }

    /// Stores a run; returns its id.
    pub fn store<L: LevelRecord>(
        &mut self,
        meta: &RunMeta,
        levels: &[L],
    ) -> Result<i64, HistoryError> {
        let tx = self.conn.transaction()?;
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
        )?;
        let id = tx.last_insert_rowid();
        for l in levels {
            let concurrency = l.concurrency() as i64;
            tx.execute(
                "INSERT INTO levels (run_id, concurrency, summary) VALUES (?1, ?2, ?3)",
                params![id, concurrency, l.summary().to_string()],
            )?;
            for s in l.samples() {
                tx.execute(
                    "INSERT INTO samples (run_id, concurrency, sample) VALUES (?1, ?2, ?3)",
                    params![
                        id,
                        concurrency,
                        serde_json::to_string(s).unwrap_or_default()
                    ],
                )?;
            }
        }
        tx.commit()?;
        Ok(id)
    }

    /// All runs, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRow>, HistoryError> {
        let mut st = self
            .conn
            .prepare("SELECT id, started_at, git_commit, machine, model, url, settings, label FROM runs ORDER BY id")?;
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
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for mut run in rows {
            run.levels = self.levels(run.id)?;
            out.push(run);
        }
        Ok(out)
    }

    fn levels(&self, run: i64) -> Result<Vec<LevelRow>, HistoryError> {
        let mut st = self
            .conn
            .prepare("SELECT summary FROM levels WHERE run_id = ?1 ORDER BY concurrency")?;
        let v = st
            .query_map([run], |r| r.get::<_, String>(0))?
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

    /// A run's samples with their concurrency level; [`HistoryError::NoSuchRun`] for an
    /// unknown run.
    pub fn samples(&self, run: i64) -> Result<Vec<(usize, Sample)>, HistoryError> {
        let exists: i64 =
            self.conn
                .query_row("SELECT COUNT(*) FROM runs WHERE id = ?1", [run], |r| {
                    r.get(0)
                })?;
        if exists == 0 {
            return Err(HistoryError::NoSuchRun(run));
        }
        let mut st = self
            .conn
            .prepare("SELECT concurrency, sample FROM samples WHERE run_id = ?1")?;
        let v = st
            .query_map([run], |r| {
                Ok((r.get::<_, i64>(0)? as usize, r.get::<_, String>(1)?))
            })?
            .filter_map(|r| r.ok())
            .filter_map(|(c, s)| serde_json::from_str(&s).ok().map(|s| (c, s)))
            .collect();
        Ok(v)
    }
}
