//! `rill serve` configuration: defaults < TOML file (`--config`) < `RILL_*` environment < flags.
//! The command line layer (clap) hands over what it parsed as [`Overrides`]; [`ServeConfig::build`]
//! merges, validates (naming the key, the value and what is allowed) and returns the result.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The effective `rill serve` settings; also the schema of the TOML file (unknown keys are
/// rejected, missing ones take the defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on: an IP address or `localhost` (default `127.0.0.1`).
    pub host: String,
    /// TCP port to listen on (default 8080; 0: any free port).
    pub port: u16,
    /// Model: name, .gguf path or URL; empty: the default model.
    pub model: String,
    /// The model id reported by `/v1/models` and in responses; empty: the file's stem.
    pub served_model_name: String,
    /// This replica's id, the suffix of every stream id it makes (`chatcmpl-HEX.ID`), so a
    /// balancer can route `GET`/`DELETE /v1/streams/{id}` to the replica that owns the stream;
    /// empty: the host name. Letters, digits, `-` and `_`, at most 63.
    pub replica_id: String,
    /// Compute threads (0: one per physical core).
    pub threads: usize,
    /// KV cache size in MiB (0: derived from memory, see `rill info`).
    pub kv_cache_mib: usize,
    /// Element format of the KV cache: `f16`, `q8_0` or `q4_0` (llama.cpp's `-ctk/-ctv`).
    pub kv_type: String,
    /// p95 inter-token latency in ms the scheduler keeps running streams under (default 100).
    pub target_itl_ms: f64,
    /// Hard cap on running sequences (0: derived from cores).
    pub max_running: usize,
    /// Most prompt tokens one step may prefill (default 512, at least 1).
    pub max_prefill_chunk: usize,
    /// Requests that may wait for admission before new ones get 429 (default 256).
    pub queue_capacity: usize,
    /// Speculative decoding: `ngram` (prompt-lookup drafts, verified in the batched step; the
    /// output is the same token for token) or `off`.
    pub speculative: String,
    /// Draft tokens a sequence may carry in one step.
    pub spec_max_draft: usize,
    /// Shortest and longest suffix the prompt lookup matches.
    pub spec_ngram_min: usize,
    /// Longest suffix the prompt lookup tries first (`spec_ngram_min`..=8).
    pub spec_ngram_max: usize,
    /// API keys accepted as `Authorization: Bearer KEY` or `x-api-key: KEY` (none: no auth).
    pub api_keys: Vec<String>,
    /// A file with one API key per line (added to `api_keys`).
    pub api_keys_file: Option<PathBuf>,
    /// Origins allowed by CORS (none by default; `*` for any).
    pub cors_origins: Vec<String>,
    /// Largest request body, and WebSocket message, in bytes (default 4 MiB, at least 1024).
    pub max_body_bytes: usize,
    /// Prompt tokens a request may carry (0: the model's limit).
    pub max_prompt_tokens: usize,
    /// `max_tokens` of a request that names none (default 4096; the context may leave less).
    pub default_max_tokens: usize,
    /// Requests per minute per API key (0: unlimited).
    pub rate_limit_rpm: u32,
    /// Prompt + completion tokens per minute per API key (0: unlimited).
    pub rate_limit_tpm: u32,
    /// How long a resumable stream survives without a client.
    pub resume_window_s: u64,
    /// Events kept per resumable stream for replay.
    pub resume_buffer_events: usize,
    /// SSE keep-alive / WebSocket heartbeat period.
    pub keepalive_s: u64,
    /// On shutdown, how long running streams may finish.
    pub shutdown_grace_s: u64,
    /// Unread events per stream before tokens are coalesced.
    pub stream_capacity: usize,
    /// Coalesced tokens a slow client may owe before `slow_consumer`.
    pub max_pending_tokens: usize,
    /// Kernel send buffer per connection in bytes (0: the OS default, which autotunes up to
    /// megabytes). Smaller makes a stalled client show up as `slow_consumer` sooner.
    pub send_buffer_bytes: u32,
    /// The `rill bench` history the dashboard plots (default: `$RILL_HOME/bench.sqlite`).
    pub bench_db: Option<PathBuf>,
}

/// 1-63 ASCII letters, digits, `-` and `_`.
fn valid_replica_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            model: String::new(),
            served_model_name: String::new(),
            replica_id: String::new(),
            threads: 0,
            kv_cache_mib: 0,
            kv_type: "f16".into(),
            target_itl_ms: 100.0,
            max_running: 0,
            max_prefill_chunk: 512,
            queue_capacity: 256,
            speculative: "ngram".into(),
            spec_max_draft: rill_scheduler::SpecConfig::default().max_draft,
            spec_ngram_min: rill_scheduler::SpecConfig::default().ngram_min,
            spec_ngram_max: rill_scheduler::SpecConfig::default().ngram_max,
            api_keys: Vec::new(),
            api_keys_file: None,
            cors_origins: Vec::new(),
            max_body_bytes: 4 << 20,
            max_prompt_tokens: 0,
            default_max_tokens: 4096,
            rate_limit_rpm: 0,
            rate_limit_tpm: 0,
            resume_window_s: 60,
            resume_buffer_events: 4096,
            keepalive_s: 10,
            shutdown_grace_s: 10,
            stream_capacity: 64,
            max_pending_tokens: 1024,
            send_buffer_bytes: 0,
            bench_db: None,
        }
    }
}

/// Values from flags or environment (None: not given). Each replaces the [`ServeConfig`] field
/// of the same name, except `api_keys` and `cors_origins`, which are appended.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces [`ServeConfig::host`].
    pub host: Option<String>,
    /// Replaces [`ServeConfig::port`].
    pub port: Option<u16>,
    /// Replaces [`ServeConfig::model`].
    pub model: Option<String>,
    /// Replaces [`ServeConfig::served_model_name`].
    pub served_model_name: Option<String>,
    /// Replaces [`ServeConfig::replica_id`].
    pub replica_id: Option<String>,
    /// Replaces [`ServeConfig::threads`].
    pub threads: Option<usize>,
    /// Replaces [`ServeConfig::kv_cache_mib`].
    pub kv_cache_mib: Option<usize>,
    /// Replaces [`ServeConfig::kv_type`].
    pub kv_type: Option<String>,
    /// Replaces [`ServeConfig::target_itl_ms`].
    pub target_itl_ms: Option<f64>,
    /// Replaces [`ServeConfig::max_running`].
    pub max_running: Option<usize>,
    /// Replaces [`ServeConfig::queue_capacity`].
    pub queue_capacity: Option<usize>,
    /// Replaces [`ServeConfig::speculative`].
    pub speculative: Option<String>,
    /// Replaces [`ServeConfig::spec_max_draft`].
    pub spec_max_draft: Option<usize>,
    /// Replaces [`ServeConfig::spec_ngram_min`].
    pub spec_ngram_min: Option<usize>,
    /// Replaces [`ServeConfig::spec_ngram_max`].
    pub spec_ngram_max: Option<usize>,
    /// Appended to [`ServeConfig::api_keys`].
    pub api_keys: Vec<String>,
    /// Replaces [`ServeConfig::api_keys_file`].
    pub api_keys_file: Option<PathBuf>,
    /// Appended to [`ServeConfig::cors_origins`].
    pub cors_origins: Vec<String>,
    /// Replaces [`ServeConfig::max_body_bytes`].
    pub max_body_bytes: Option<usize>,
    /// Replaces [`ServeConfig::rate_limit_rpm`].
    pub rate_limit_rpm: Option<u32>,
    /// Replaces [`ServeConfig::rate_limit_tpm`].
    pub rate_limit_tpm: Option<u32>,
    /// Replaces [`ServeConfig::resume_window_s`].
    pub resume_window_s: Option<u64>,
    /// Replaces [`ServeConfig::shutdown_grace_s`].
    pub shutdown_grace_s: Option<u64>,
    /// Replaces [`ServeConfig::bench_db`].
    pub bench_db: Option<PathBuf>,
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file (the TOML config or the API keys file) could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file's path, as given.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML config is malformed or has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file's path, as given.
        path: String,
        /// The TOML parser's message (with line and column).
        message: String,
    },
    /// A setting has a value outside what is allowed.
    #[error("invalid `{key}` = {value}: {allowed}")]
    Invalid {
        /// The setting's key, as in the TOML file.
        key: &'static str,
        /// The rejected value, rendered as text.
        value: String,
        /// What the setting accepts.
        allowed: String,
    },
}

impl ServeConfig {
    /// Defaults, then the TOML file, then the overrides; validated.
    pub fn build(file: Option<&Path>, o: Overrides) -> Result<Self, ConfigError> {
        let mut c = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => ServeConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = o.$f { c.$f = v; } )*};
        }
        set!(
            host,
            port,
            model,
            served_model_name,
            replica_id,
            threads,
            kv_cache_mib,
            kv_type,
            target_itl_ms,
            max_running,
            queue_capacity,
            speculative,
            spec_max_draft,
            spec_ngram_min,
            spec_ngram_max,
            max_body_bytes,
            rate_limit_rpm,
            rate_limit_tpm,
            resume_window_s,
            shutdown_grace_s
        );
        if o.bench_db.is_some() {
            c.bench_db = o.bench_db;
        }
        if o.api_keys_file.is_some() {
            c.api_keys_file = o.api_keys_file;
        }
        c.api_keys.extend(o.api_keys);
        c.cors_origins.extend(o.cors_origins);
        c.validate()?;
        Ok(c)
    }

    /// The speculative-decoding settings (the error names the key).
    pub fn spec_config(&self) -> Result<rill_scheduler::SpecConfig, (String, String)> {
        Ok(rill_scheduler::SpecConfig {
            mode: self
                .speculative
                .parse()
                .map_err(|_| ("speculative".to_string(), "one of off, ngram".to_string()))?,
            max_draft: self.spec_max_draft,
            ngram_min: self.spec_ngram_min,
            ngram_max: self.spec_ngram_max,
        })
    }

    /// The replica id stream ids carry: `replica_id`, else the host name made valid (other
    /// characters become `-`), else `rill`.
    pub fn replica(&self) -> String {
        if !self.replica_id.is_empty() {
            return self.replica_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_default();
        let id: String = host
            .trim()
            .chars()
            .take(63)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if valid_replica_id(&id) {
            id
        } else {
            "rill".into()
        }
    }

    /// Checks every setting's range (host, KV type, replica id, latency target, speculation,
    /// limits, CORS origins, keys file); the first bad one is returned as
    /// [`ConfigError::Invalid`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, value: impl ToString, allowed: &str) -> ConfigError {
            ConfigError::Invalid {
                key,
                value: value.to_string(),
                allowed: allowed.to_string(),
            }
        }
        if self.host.parse::<std::net::IpAddr>().is_err() && self.host != "localhost" {
            return Err(bad(
                "host",
                &self.host,
                "an IP address such as 127.0.0.1 or 0.0.0.0",
            ));
        }
        if self.kv_type.parse::<rill_engine::KvType>().is_err() {
            return Err(bad("kv_type", &self.kv_type, "one of f16, q8_0, q4_0"));
        }
        if !self.replica_id.is_empty() && !valid_replica_id(&self.replica_id) {
            return Err(bad(
                "replica_id",
                &self.replica_id,
                "1-63 letters, digits, `-` and `_`",
            ));
        }
        if !(self.target_itl_ms.is_finite() && self.target_itl_ms > 0.0) {
            return Err(bad(
                "target_itl_ms",
                self.target_itl_ms,
                "a number of milliseconds > 0",
            ));
        }
        if let Err((key, why)) = self.spec_config().and_then(|s| s.validate()) {
            let (key, value) = match key.as_str() {
                "speculative" => ("speculative", self.speculative.clone()),
                "spec_max_draft" => ("spec_max_draft", self.spec_max_draft.to_string()),
                "spec_ngram_min" => ("spec_ngram_min", self.spec_ngram_min.to_string()),
                _ => ("spec_ngram_max", self.spec_ngram_max.to_string()),
            };
            return Err(ConfigError::Invalid {
                key,
                value,
                allowed: why,
            });
        }
        if self.max_prefill_chunk == 0 {
            return Err(bad("max_prefill_chunk", 0, "at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(bad("queue_capacity", 0, "at least 1"));
        }
        if self.max_body_bytes < 1024 {
            return Err(bad("max_body_bytes", self.max_body_bytes, "at least 1024"));
        }
        if self.default_max_tokens == 0 {
            return Err(bad("default_max_tokens", 0, "at least 1"));
        }
        if self.keepalive_s == 0 {
            return Err(bad("keepalive_s", 0, "at least 1 second"));
        }
        if self.resume_buffer_events == 0 {
            return Err(bad("resume_buffer_events", 0, "at least 1"));
        }
        if self.stream_capacity == 0 {
            return Err(bad("stream_capacity", 0, "at least 1"));
        }
        for o in &self.cors_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(bad(
                    "cors_origins",
                    o,
                    "origins like https://example.com, or *",
                ));
            }
        }
        if let Some(p) = &self.api_keys_file {
            if !p.is_file() {
                return Err(bad(
                    "api_keys_file",
                    p.display(),
                    "an existing file, one key per line",
                ));
            }
        }
        Ok(())
    }

    /// All accepted API keys (inline and from the keys file).
    pub fn all_api_keys(&self) -> Result<Vec<String>, ConfigError> {
        let mut keys = self.api_keys.clone();
        if let Some(p) = &self.api_keys_file {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        Ok(keys)
    }

    /// The effective configuration as TOML (`--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_checked_and_default_to_the_host() {
        let o = |id: &str| Overrides {
            replica_id: Some(id.into()),
            ..Overrides::default()
        };
        let c = ServeConfig::build(None, o("r-1_a")).unwrap_or_default();
        assert_eq!(c.replica(), "r-1_a");
        for bad in ["a.b", "a b", &"x".repeat(64)] {
            let e = ServeConfig::build(None, o(bad))
                .err()
                .map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("replica_id")), "{bad}");
        }
        let host = ServeConfig::default().replica();
        assert!(valid_replica_id(&host), "{host}");
    }

    #[test]
    fn layers_and_validation() {
        let dir = std::env::temp_dir().join(format!("rill-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let f = dir.join("rill.toml");
        std::fs::write(&f, "port = 9000\ntarget_itl_ms = 80.0\n").unwrap_or_default();
        let c = ServeConfig::build(
            Some(&f),
            Overrides {
                port: Some(9100),
                ..Overrides::default()
            },
        );
        let c = c.unwrap_or_default();
        assert_eq!((c.port, c.target_itl_ms), (9100, 80.0));
        std::fs::write(&f, "port = 9000\nbogus = 1\n").unwrap_or_default();
        let e = ServeConfig::build(Some(&f), Overrides::default());
        assert!(matches!(e, Err(ConfigError::Parse { .. })));
        let e = ServeConfig::build(
            None,
            Overrides {
                target_itl_ms: Some(-1.0),
                ..Overrides::default()
            },
        );
        assert!(e.is_err_and(|e| e.to_string().contains("target_itl_ms")));
        // The KV type: from the file, overridden by a flag, refused naming the key.
        std::fs::write(&f, "kv_type = \"q4_0\"\n").unwrap_or_default();
        let c = ServeConfig::build(Some(&f), Overrides::default()).unwrap_or_default();
        assert_eq!(c.kv_type, "q4_0");
        let o = |t: &str| Overrides {
            kv_type: Some(t.into()),
            ..Overrides::default()
        };
        let c = ServeConfig::build(Some(&f), o("q8_0")).unwrap_or_default();
        assert_eq!(c.kv_type, "q8_0");
        let e = ServeConfig::build(None, o("q5_1"))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("kv_type") && e.contains("q5_1") && e.contains("q4_0")),
            "{e:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
