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

/// A GGUF v3 file with `n_tensors` claimed (none present) and the metadata `entries`.
fn gguf(n_tensors: u64, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend((entries.len() as u64).to_le_bytes());
    for e in entries {
        b.extend(e);
    }
    b
}

/// One metadata entry: key, value type, value bytes.
fn entry(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend(key.as_bytes());
    b.extend(ty.to_le_bytes());
    b.extend(value);
    b
}

/// An array value (type 9) of `n` elements of type `elem`, `items` their bytes.
fn array(elem: u32, n: u64, items: &[u8]) -> Vec<u8> {
    let mut b = elem.to_le_bytes().to_vec();
    b.extend(n.to_le_bytes());
    b.extend(items);
    b
}

/// `depth` arrays nested one in the other, the innermost holding one u32.
fn nested(depth: usize) -> Vec<u8> {
    let mut v = array(4, 1, &7u32.to_le_bytes());
    for _ in 1..depth {
        v = array(9, 1, &v);
    }
    v
}

fn open_bytes(bytes: &[u8], name: &str) -> Result<GgufFile, EngineError> {
    GgufFile::open(&write(bytes, name))
}

/// Arrays may nest 8 deep (`MAX_ARRAY_DEPTH`); a 9th level, or a file nesting a hundred
/// thousand levels (which would have recursed the parser off its stack), is a typed error
/// naming the key.
#[test]
fn nested_arrays_are_bounded_and_name_the_key() {
    use rill_engine::gguf::Value;
    let g = open_bytes(&gguf(0, &[entry("ok.nest", 9, &nested(8))]), "nest8.gguf").unwrap();
    let mut v = g.get("ok.nest").unwrap();
    for _ in 0..7 {
        v = &v.as_array().unwrap()[0];
    }
    assert_eq!(v.as_array().unwrap(), &[Value::U32(7)]);
    for depth in [9, 100_000] {
        let bytes = gguf(0, &[entry("evil.nest", 9, &nested(depth))]);
        match open_bytes(&bytes, "nest_deep.gguf") {
            Err(EngineError::BadMetadata { key, reason }) => {
                assert_eq!(key, "evil.nest");
                assert!(reason.contains("nested deeper than 8"), "{reason}");
            }
            other => panic!("depth {depth}: {:?}", other.map(|_| ())),
        }
    }
}

/// An array's length is checked against the bytes left in the file before anything is
/// allocated for it: a 16-byte body claiming 2^27 u64 (1 GiB) or 1000 strings is refused as
/// truncated, naming the array.
#[test]
fn array_lengths_must_fit_in_the_file() {
    for (elem, n, name) in [
        (10u32, 1u64 << 27, "u64s"),
        (8, 1000, "strings"),
        (9, 5, "arrays"),
    ] {
        let bytes = gguf(0, &[entry(name, 9, &array(elem, n, &[0u8; 16]))]);
        match open_bytes(&bytes, &format!("len_{name}.gguf")) {
            Err(EngineError::Truncated { what, .. }) => {
                assert!(what.contains(&format!("array `{name}`")), "{what}")
            }
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }
    // The same lengths with their bytes present parse.
    let g = open_bytes(
        &gguf(0, &[entry("u8s", 9, &array(0, 3, &[1, 2, 3]))]),
        "len_ok.gguf",
    )
    .unwrap();
    assert_eq!(g.get("u8s").unwrap().as_array().unwrap().len(), 3);
}

/// An array of an unknown element type is refused even when empty; tensor and key counts the
/// file cannot hold are refused before any entry is read.
#[test]
fn unknown_element_types_and_implausible_counts() {
    let bytes = gguf(0, &[entry("odd", 9, &array(99, 0, &[]))]);
    match open_bytes(&bytes, "elem.gguf") {
        Err(EngineError::BadMetadata { key, reason }) => {
            assert_eq!(key, "odd");
            assert!(reason.contains("element type 99"), "{reason}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let bytes = gguf(1 << 19, &[entry("a", 4, &1u32.to_le_bytes())]);
    assert!(matches!(
        open_bytes(&bytes, "count.gguf"),
        Err(EngineError::Truncated { .. })
    ));
    let mut bytes = gguf(0, &[]);
    bytes[16..24].copy_from_slice(&(1u64 << 19).to_le_bytes());
    assert!(matches!(
        open_bytes(&bytes, "kvcount.gguf"),
        Err(EngineError::Truncated { .. })
    ));
}
