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

/// Where one tensor lives inside the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<usize>,
    pub dtype: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub size_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An opened GGUF file: metadata parsed, tensor data left in the mmap.
pub struct GgufFile {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    /// Tensor names in file order.
    pub tensor_order: Vec<String>,
    data: Arc<Mmap>,
}

impl GgufFile {
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
        if n_tensors > 1 << 20 || n_kv > 1 << 20 {
            return Err(EngineError::Truncated {
                what: format!("header (implausible counts: {n_tensors} tensors, {n_kv} keys)"),
                offset: c.pos,
            });
        }
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&format!("type of `{key}`"))?;
            let value = c.value(ty, &key)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => {
                let a = v.as_u64().unwrap_or(0) as usize;
                if a == 0 || !a.is_power_of_two() {
                    return Err(EngineError::BadMetadata {
                        key: "general.alignment".into(),
                        reason: format!("{v:?} is not a power of two"),
                    });
                }
                a
            }
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

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn req(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| EngineError::MissingKey(key.to_string()))
    }

    pub fn req_u64(&self, key: &str) -> Result<u64> {
        let v = self.req(key)?;
        v.as_u64().ok_or_else(|| EngineError::BadMetadata {
            key: key.into(),
            reason: format!("expected an unsigned integer, found {v:?}"),
        })
    }

    pub fn req_str(&self, key: &str) -> Result<&str> {
        let v = self.req(key)?;
        v.as_str().ok_or_else(|| EngineError::BadMetadata {
            key: key.into(),
            reason: "expected a string".into(),
        })
    }

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

impl Cursor<'_> {
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

    fn value(&mut self, ty: u32, key: &str) -> Result<Value> {
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
                let elem_ty = self.u32(key)?;
                let n = self.u64(key)?;
                if n > MAX_ARRAY_LEN {
                    return Err(EngineError::Truncated {
                        what: format!("array `{key}` (implausible length {n})"),
                        offset: self.pos,
                    });
                }
                let mut items = Vec::with_capacity((n as usize).min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem_ty, key)?);
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
