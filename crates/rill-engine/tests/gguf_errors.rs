//! Malformed GGUF files give typed errors naming what is wrong, never a panic.
#![allow(clippy::unwrap_used)] // test and debug code: a panic is the failure report

mod support;

use rill_engine::{gguf::GgufFile, Engine, EngineConfig, EngineError};

fn write(bytes: &[u8], name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rill-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn wrong_magic() {
    let p = write(b"GGML\x03\x00\x00\x00rest", "magic.gguf");
    assert!(matches!(GgufFile::open(&p), Err(EngineError::BadMagic(_))));
}

#[test]
fn empty_and_tiny_files() {
    for (i, b) in [&b""[..], b"GG", b"GGUF", b"GGUF\x03\x00\x00\x00\x01"]
        .iter()
        .enumerate()
    {
        let p = write(b, &format!("tiny{i}.gguf"));
        let e = GgufFile::open(&p).err().expect("must fail");
        assert!(
            matches!(e, EngineError::Truncated { .. } | EngineError::BadMagic(_)),
            "{e}"
        );
    }
}

#[test]
fn truncated_real_model_names_the_tensor() {
    let real = std::fs::read(support::model_path()).unwrap();
    for cut in [1000usize, 3_000_000, real.len() / 2, real.len() - 1] {
        let p = write(&real[..cut], "trunc.gguf");
        let err = match Engine::load(&p, &EngineConfig::default()) {
            Err(e) => e,
            Ok(_) => panic!("truncated at {cut} loaded"),
        };
        let msg = err.to_string();
        assert!(
            msg.contains("truncated") || msg.contains("beyond the end"),
            "cut {cut}: {msg}"
        );
    }
}

#[test]
fn bad_tensor_offset() {
    let real = std::fs::read(support::model_path()).unwrap();
    let g = GgufFile::open(&support::model_path()).unwrap();
    // Find the first tensor's offset field in the header and corrupt it.
    let name = &g.tensor_order[0];
    let pos = real
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    let info = &g.tensors[name];
    let off_pos = pos + name.len() + 4 + 8 * info.dims.len() + 4;
    let mut bad = real.clone();
    bad[off_pos..off_pos + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let p = write(&bad, "offset.gguf");
    let err = GgufFile::open(&p).err().expect("bad offset must fail");
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn random_corruption_never_panics() {
    let real = std::fs::read(support::model_path()).unwrap();
    let header_len = 1_800_000.min(real.len());
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for i in 0..40 {
        let mut bad = real[..header_len].to_vec();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % 4096.min(bad.len());
            bad[at] = (x >> 32) as u8;
        }
        let p = write(&bad, &format!("fuzz{i}.gguf"));
        let _ = std::panic::catch_unwind(|| GgufFile::open(&p)).expect("parser panicked");
    }
}
