//! rill's benchmark run history, shared by `rill bench` (which stores and compares runs) and
//! the server's dashboard (which plots them): every run with its commit, machine, model, URL
//! and settings, and every request's [`Sample`], in an embedded SQLite file ([`History`]); and
//! the statistical comparison of two runs ([`compare::compare`], a Mann-Whitney U test per
//! concurrency level and metric) that decides whether a change is a regression beyond noise.
//! It knows nothing of HTTP or of rill's engine.
#![warn(missing_docs)]

pub mod compare;
pub mod history;
pub mod sample;
pub mod stats;

pub use compare::{compare, MetricDiff, Verdict};
pub use history::{default_db, History, Level, LevelRecord, LevelRow, RunMeta, RunRow};
pub use sample::{Drafts, Sample};

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The SQLite database refused an operation.
    #[error("history database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The database's directory could not be created.
    #[error("history database: cannot create {path}: {source}")]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A run id that is not in the database.
    #[error("no run {0} in the history")]
    NoSuchRun(i64),
}
