//! Parses the GGUF header, metadata and tensor directory from a byte slice (normally an mmap).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::{GgmlType, Value};
use crate::error::{EngineError, Result};

const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
const DEFAULT_ALIGNMENT: usize = 32;
/// Upper bounds that keep a corrupt length field from asking for absurd allocations.
const MAX_STRING_LEN: u64 = 1 << 28;
const MAX_ARRAY_LEN: u64 = 1 << 28;
const MAX_DIMS: u32 = 4;
/// How deep metadata arrays may nest (an array of arrays is depth 2). Real files nest at most
/// once; the bound keeps a crafted file from recursing the parser off the stack.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// The fewest bytes a tensor's directory entry takes: name length, dimension count, one
/// dimension, type and offset.
const MIN_TENSOR_ENTRY: u64 = 8 + 4 + 8 + 4 + 8;
/// The fewest bytes a metadata entry takes: key length, value type and a one-byte value.
const MIN_KV_ENTRY: u64 = 8 + 4 + 1;

/// Where one tensor lives inside the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`, ...).
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<usize>,
    /// Element type.
    pub dtype: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    /// Bytes of data.
    pub size_bytes: usize,
}

impl TensorInfo {
    /// Elements: the product of the dimensions.
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An opened GGUF file: metadata parsed, tensor data left in the mmap.
pub struct GgufFile {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// The metadata key/value store.
    pub metadata: HashMap<String, Value>,
    /// The tensor directory, by name.
    pub tensors: HashMap<String, TensorInfo>,
    /// Tensor names in file order.
    pub tensor_order: Vec<String>,
    data: Arc<Mmap>,
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| EngineError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the file is opened read-only; rill never writes to model files while they are
        // mapped. A concurrent external truncation is the usual mmap caveat.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(Arc::new(map))
    }

    /// Parses from an already-mapped file.
    pub fn parse(data: Arc<Mmap>) -> Result<Self> {
        let mut c = Cursor { buf: &data, pos: 0 };
        let magic = c.u32("magic")?;
        if magic != GGUF_MAGIC {
            return Err(EngineError::BadMagic(magic));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(EngineError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Every entry takes some bytes: counts the rest of the file cannot hold are corrupt
        // (and would otherwise size allocations).
        let fits = |n: u64, min: u64| n.saturating_mul(min) <= c.remaining() as u64;
        if n_tensors > 1 << 20
            || n_kv > 1 << 20
            || !fits(n_kv, MIN_KV_ENTRY)
            || !fits(n_tensors, MIN_TENSOR_ENTRY)
        {
            return Err(EngineError::Truncated {
                what: format!("header (implausible counts: {n_tensors} tensors, {n_kv} keys)"),
                offset: c.pos,
            });
        }
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&format!("type of `{key}`"))?;
            let value = c.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .and_then(|a| usize::try_from(a).ok())
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| EngineError::BadMetadata {
                    key: "general.alignment".into(),
                    reason: format!("{v:?} is not a power of two"),
                })?,
            None => DEFAULT_ALIGNMENT,
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&format!("dims of tensor `{name}`"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(EngineError::BadTensor {
                    name,
                    reason: format!("{n_dims} dimensions (1..=4 allowed)"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64(&format!("shape of tensor `{name}`"))?;
                dims.push(usize::try_from(d).map_err(|_| EngineError::BadTensor {
                    name: name.clone(),
                    reason: format!("dimension {d} too large"),
                })?);
            }
            let dtype = GgmlType::from_raw(c.u32(&format!("type of tensor `{name}`"))?);
            let rel = c.u64(&format!("offset of tensor `{name}`"))?;
            raw.push((name, dims, dtype, rel));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = HashMap::new();
        let mut tensor_order = Vec::new();
        for (name, dims, dtype, rel) in raw {
            let n: usize = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| EngineError::BadTensor {
                    name: name.clone(),
                    reason: "element count overflows".into(),
                })?;
            let size_bytes = dtype.bytes_for(n, &name)?;
            let offset = usize::try_from(rel)
                .ok()
                .and_then(|r| r.checked_add(data_start))
                .ok_or_else(|| EngineError::BadTensor {
                    name: name.clone(),
                    reason: format!("offset {rel} overflows"),
                })?;
            if offset % alignment != 0 {
                return Err(EngineError::BadTensor {
                    name,
                    reason: format!("offset {rel} is not aligned to {alignment}"),
                });
            }
            let end = offset.checked_add(size_bytes);
            if end.is_none_or(|e| e > data.len()) {
                return Err(EngineError::BadTensor {
                    name,
                    reason: format!(
                        "data [{offset}, +{size_bytes}) lies beyond the end of the file ({} bytes): truncated or bad offset",
                        data.len()
                    ),
                });
            }
            tensor_order.push(name.clone());
            let info = TensorInfo {
                name: name.clone(),
                dims,
                dtype,
                offset,
                size_bytes,
            };
            if tensors.insert(name.clone(), info).is_some() {
                return Err(EngineError::BadTensor {
                    name,
                    reason: "appears twice".into(),
                });
            }
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            tensor_order,
            data,
        })
    }

    /// The raw bytes of a tensor (bounds were checked at parse time).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.data[info.offset..info.offset + info.size_bytes]
    }

    /// The mapped file (tensor data is borrowed from it).
    pub fn mmap(&self) -> &Arc<Mmap> {
        &self.data
    }

    /// Drops the file's pages from this process's resident set (best effort): after the
    /// loader has copied what it needs (repacked tiles, norms), the mapping is only read for
    /// a few rows (embeddings), which fault back in on demand.
    pub fn release_resident_pages(&self) {
        #[cfg(unix)]
        // SAFETY: the mapping is read-only and file-backed (`Mmap::map`), so MADV_DONTNEED only
        // discards clean pages; a later read of any byte faults the same file contents back
        // in, so every `&[u8]` into the map stays valid and keeps its value.
        let _ = unsafe {
            self.data
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }

    /// [`Self::release_resident_pages`] for one tensor's bytes (and the pages they share with
    /// their neighbours): the loader calls it as soon as a tensor has been repacked, so the
    /// original and its copy are not resident together for the whole load.
    pub fn release_tensor_pages(&self, info: &TensorInfo) {
        let bytes = self.tensor_bytes(info);
        let offset = bytes.as_ptr() as usize - self.data.as_ptr() as usize;
        #[cfg(unix)]
        // SAFETY: as in `release_resident_pages`: clean read-only file pages, faulted back in
        // with the same contents on the next read.
        let _ = unsafe {
            self.data.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                offset,
                bytes.len(),
            )
        };
    }

    /// The tensor called `name`, or [`EngineError::MissingTensor`].
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))
    }

    /// Metadata value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Metadata value of `key`, or [`EngineError::MissingKey`].
    pub fn req(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| EngineError::MissingKey(key.to_string()))
    }

    /// A required unsigned integer (any integer type that fits).
    pub fn req_u64(&self, key: &str) -> Result<u64> {
        let v = self.req(key)?;
        v.as_u64().ok_or_else(|| EngineError::BadMetadata {
            key: key.into(),
            reason: format!("expected an unsigned integer, found {v:?}"),
        })
    }

    /// A required string.
    pub fn req_str(&self, key: &str) -> Result<&str> {
        let v = self.req(key)?;
        v.as_str().ok_or_else(|| EngineError::BadMetadata {
            key: key.into(),
            reason: "expected a string".into(),
        })
    }

    /// An optional number as f32: None if absent, an error if not a number.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f32()
                .map(Some)
                .ok_or_else(|| EngineError::BadMetadata {
                    key: key.into(),
                    reason: format!("expected a number, found {v:?}"),
                }),
        }
    }

    /// An optional unsigned integer: None if absent, an error if not one.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.req_u64(key).map(Some),
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The fewest bytes one value of GGUF type `ty` takes in the file, or None for an unknown type.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,     // the string's length
        9 => 4 + 8, // an array's element type and length
        10..=12 => 8,
        _ => return None,
    })
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| EngineError::Truncated {
                what: what.to_string(),
                offset: self.pos,
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > MAX_STRING_LEN {
            return Err(EngineError::Truncated {
                what: format!("{what} (implausible length {len})"),
                offset: self.pos,
            });
        }
        let bytes = self.take(len as usize, what)?;
        // Vocabularies can hold invalid UTF-8 fragments; keep them lossily rather than fail.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// A value of type `ty` of metadata key `key`, inside `depth` enclosing arrays.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(key)?[0]),
            1 => Value::I8(self.arr::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => match self.arr::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(EngineError::BadMetadata {
                        key: key.into(),
                        reason: format!("bool byte {b}"),
                    })
                }
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth + 1 > MAX_ARRAY_DEPTH {
                    return Err(EngineError::BadMetadata {
                        key: key.into(),
                        reason: format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
                    });
                }
                let elem_ty = self.u32(key)?;
                let n = self.u64(key)?;
                let min = min_value_bytes(elem_ty).ok_or_else(|| EngineError::BadMetadata {
                    key: key.into(),
                    reason: format!("unknown array element type {elem_ty}"),
                })?;
                // Checked before allocating: the elements must fit in the rest of the file.
                if n > MAX_ARRAY_LEN || n.saturating_mul(min) > self.remaining() as u64 {
                    return Err(EngineError::Truncated {
                        what: format!("array `{key}` (implausible length {n})"),
                        offset: self.pos,
                    });
                }
                let mut items = Vec::with_capacity((n as usize).min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_le_bytes(self.arr(key)?)),
            t => {
                return Err(EngineError::BadMetadata {
                    key: key.into(),
                    reason: format!("unknown value type {t}"),
                })
            }
        })
    }
}
