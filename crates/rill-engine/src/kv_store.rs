//! The KV cache's storage: its element format ([`KvType`]: f16, or llama.cpp's Q8_0 / Q4_0
//! blocks), the key and value buffers in that format, writing token rows into them
//! (quantize-on-write, as llama.cpp's `set_rows` does) and attention over them. Page
//! bookkeeping (which slots belong to which layer and sequence) is [`crate::kv_cache`]'s.
//!
//! The buffers hold token slots (`BLOCK_TOKENS` per page, the pages of every layer side by
//! side); slot `s` is the row `s * units_per_row ..` of `kv_dim` elements, where a unit is one
//! f16 element or one block of 32 elements. A head's row is a whole number of units (block formats need head dims that
//! are multiples of 32, checked when the cache is sized).

use crate::error::{EngineError, Result};
use crate::nn::attention::{AttendBlock, KvRows};
use crate::quant::blocks::{BlockQ4_0, BlockQ8_0, QK};
use crate::quant::Kernels;

/// The element format of the KV cache (`--kv-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum KvType {
    /// IEEE half precision, 2 bytes per element (llama.cpp's default).
    #[default]
    F16,
    /// ggml's Q8_0: 32 int8 and an f16 scale, 34 bytes per 32 elements.
    Q8_0,
    /// ggml's Q4_0: 32 nibbles and an f16 scale, 18 bytes per 32 elements.
    Q4_0,
}

impl KvType {
    /// Every format, in the order `rill info` lists them.
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// The name used on the command line, in config files and by llama.cpp (`-ctk`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// Elements per storage unit (1 for f16, 32 for the block formats).
    pub fn unit_elems(self) -> usize {
        match self {
            KvType::F16 => 1,
            KvType::Q8_0 | KvType::Q4_0 => QK,
        }
    }

    /// Bytes of one row of `dim` elements.
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            KvType::F16 => dim * 2,
            KvType::Q8_0 => dim / QK * std::mem::size_of::<BlockQ8_0>(),
            KvType::Q4_0 => dim / QK * std::mem::size_of::<BlockQ4_0>(),
        }
    }

    /// Checks that heads of `head_dim` elements fit the format's blocks.
    pub fn check_head_dim(self, head_dim: usize) -> Result<()> {
        if head_dim.is_multiple_of(self.unit_elems()) {
            return Ok(());
        }
        Err(EngineError::InvalidInput(format!(
            "kv_type {} needs a head dimension that is a multiple of {}; this model's is {} \
             (use kv_type f16)",
            self.name(),
            self.unit_elems(),
            head_dim
        )))
    }
}

/// llama.cpp's attention rotation for a quantized cache (on by default since b11434): queries
/// and keys are multiplied by an orthonormal Walsh-Hadamard matrix of size `k`, values by one
/// of size `v`, before the keys and values are quantized, and the attention output by the `v`
/// matrix again (its own inverse). Scores are unchanged in exact arithmetic, while each
/// quantization block sees its outliers spread over the whole rotation width, which is what
/// makes a 4-bit cache usable. Applied where the head dim is a multiple of 64.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvRotation {
    /// Rotation width of queries and keys: 64, doubled while it divides the head dim twice.
    pub k: Option<usize>,
    /// Rotation width of values and the attention output: 64.
    pub v: Option<usize>,
}

impl KvType {
    /// The rotation a cache of this type applies to heads of `head_dim` ([`KvRotation`]).
    pub fn rotation(self, head_dim: usize) -> KvRotation {
        if self == KvType::F16 || !head_dim.is_multiple_of(64) {
            return KvRotation::default();
        }
        let mut k = 64;
        while head_dim.is_multiple_of(2 * k) {
            k *= 2;
        }
        KvRotation {
            k: Some(k),
            v: Some(64),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown KV type `{s}` (supported: f16, q8_0, q4_0)"))
    }
}

/// A storage unit of the cache: how rows are written and which attention kernel reads them.
trait KvUnit: Copy + Send + Sync + 'static {
    const ELEMS: usize;
    const ZERO: Self;
    /// Writes one row of `src.len()` elements (a whole number of units).
    fn store(k: &Kernels, src: &[f32], dst: &mut [Self]);
    /// The per-token attention kernel over rows of this unit (`Kernels::attend`'s arguments).
    #[allow(clippy::too_many_arguments)] // the kernels plus the per-token kernel's arguments
    fn attend(
        k: &Kernels,
        q: &[f32],
        heads: std::ops::Range<usize>,
        head_dim: usize,
        scale: f32,
        kv: &KvRows<'_, Self>,
        out: &mut [f32],
    );
    /// Attention of a block of tokens: each token through the per-token kernel unless the
    /// format has a block kernel.
    fn attend_block(k: &Kernels, b: &AttendBlock<'_, Self>, out: &mut [f32]) {
        b.per_token(out, |q, hs, hd, sc, kv, o| {
            Self::attend(k, q, hs, hd, sc, kv, o)
        })
    }
}

impl KvUnit for u16 {
    const ELEMS: usize = 1;
    const ZERO: Self = 0;
    fn store(_: &Kernels, src: &[f32], dst: &mut [Self]) {
        // `half`'s slice conversion: F16C 8 at a time where the CPU has it, `f32_to_f16`'s
        // bits (per element, `half` checks the CPU's features on every call).
        use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
        let n = src.len().min(dst.len());
        dst[..n]
            .reinterpret_cast_mut::<half::f16>()
            .convert_from_f32_slice(&src[..n]);
    }
    fn attend(
        k: &Kernels,
        q: &[f32],
        heads: std::ops::Range<usize>,
        head_dim: usize,
        scale: f32,
        kv: &KvRows<'_, Self>,
        out: &mut [f32],
    ) {
        k.attend(q, heads, head_dim, scale, kv, out)
    }
    fn attend_block(k: &Kernels, b: &AttendBlock<'_, Self>, out: &mut [f32]) {
        k.attend_block(b, out)
    }
}

impl KvUnit for BlockQ8_0 {
    const ELEMS: usize = QK;
    const ZERO: Self = BlockQ8_0 { d: 0, qs: [0; QK] };
    fn store(k: &Kernels, src: &[f32], dst: &mut [Self]) {
        k.quantize_q8_0(src, dst)
    }
    fn attend(
        k: &Kernels,
        q: &[f32],
        heads: std::ops::Range<usize>,
        head_dim: usize,
        scale: f32,
        kv: &KvRows<'_, Self>,
        out: &mut [f32],
    ) {
        k.attend_q8_0(q, heads, head_dim, scale, kv, out)
    }
}

impl KvUnit for BlockQ4_0 {
    const ELEMS: usize = QK;
    const ZERO: Self = BlockQ4_0 {
        d: 0,
        qs: [0; QK / 2],
    };
    fn store(k: &Kernels, src: &[f32], dst: &mut [Self]) {
        k.quantize_q4_0(src, dst)
    }
    fn attend(
        k: &Kernels,
        q: &[f32],
        heads: std::ops::Range<usize>,
        head_dim: usize,
        scale: f32,
        kv: &KvRows<'_, Self>,
        out: &mut [f32],
    ) {
        k.attend_q4_0(q, heads, head_dim, scale, kv, out)
    }
}

/// Keys and values of every token slot in one unit type.
struct Slots<T> {
    k: Vec<T>,
    v: Vec<T>,
    /// Units per token row (`kv_dim / T::ELEMS`).
    row: usize,
}

impl<T: KvUnit> Slots<T> {
    fn new(kv_dim: usize, slots: usize) -> Self {
        let row = kv_dim / T::ELEMS;
        Self {
            k: vec![T::ZERO; slots * row],
            v: vec![T::ZERO; slots * row],
            row,
        }
    }

    fn copy_slots(&mut self, src: usize, dst: usize, n: usize) {
        let (s, d, len) = (src * self.row, dst * self.row, n * self.row);
        self.k.copy_within(s..s + len, d);
        self.v.copy_within(s..s + len, d);
    }

    fn write(&mut self, k: &Kernels, slots: &[usize], keys: &[f32], vals: &[f32]) {
        let dim = self.row * T::ELEMS;
        for (t, &slot) in slots.iter().enumerate() {
            let dst = slot * self.row..(slot + 1) * self.row;
            T::store(k, &keys[t * dim..(t + 1) * dim], &mut self.k[dst.clone()]);
            T::store(k, &vals[t * dim..(t + 1) * dim], &mut self.v[dst]);
        }
    }

    fn attend(
        &self,
        k: &Kernels,
        kv_head: usize,
        head_dim: usize,
        slots: &[usize],
        q: &AttendQuery<'_>,
        out: &mut [f32],
    ) {
        let head = kv_head * head_dim / T::ELEMS;
        let offsets: Vec<usize> = slots.iter().map(|&s| s * self.row + head).collect();
        let block = AttendBlock {
            q: q.q,
            stride: q.stride,
            heads: q.heads.clone(),
            head_dim,
            scale: q.scale,
            kv: KvRows {
                keys: &self.k,
                values: &self.v,
                offsets: &offsets,
            },
            keys: q.keys,
        };
        T::attend_block(k, &block, out)
    }
}

/// The query side of one attention call: consecutive tokens of one sequence, the query heads
/// that share the KV head, the score scale, and which of the call's positions each token sees.
pub struct AttendQuery<'a> {
    /// Token `i`'s query row starts at `i * stride`.
    pub q: &'a [f32],
    /// Floats between consecutive tokens' rows (in the output too).
    pub stride: usize,
    /// The query heads sharing the KV head.
    pub heads: std::ops::Range<usize>,
    /// Score scale (llama.cpp's `kq_scale`).
    pub scale: f32,
    /// Per token, the indices of the call's positions it attends.
    pub keys: &'a [std::ops::Range<usize>],
}

enum Buffers {
    F16(Slots<u16>),
    Q8_0(Slots<BlockQ8_0>),
    Q4_0(Slots<BlockQ4_0>),
}

/// Runs `$body` with `$b` bound to the buffers whatever their unit type.
macro_rules! with_slots {
    ($self:expr, $b:ident => $body:expr) => {
        match $self {
            Buffers::F16($b) => $body,
            Buffers::Q8_0($b) => $body,
            Buffers::Q4_0($b) => $body,
        }
    };
}

/// The key and value buffers of every token slot, in one [`KvType`].
pub struct KvStore {
    head_dim: usize,
    bufs: Buffers,
}

impl KvStore {
    /// Buffers for `slots` token slots of `kv_dim` elements.
    pub fn new(kv_type: KvType, kv_dim: usize, head_dim: usize, slots: usize) -> Self {
        let bufs = match kv_type {
            KvType::F16 => Buffers::F16(Slots::new(kv_dim, slots)),
            KvType::Q8_0 => Buffers::Q8_0(Slots::new(kv_dim, slots)),
            KvType::Q4_0 => Buffers::Q4_0(Slots::new(kv_dim, slots)),
        };
        Self { head_dim, bufs }
    }

    /// Copies `n` slots from `src ..` over `dst ..`.
    pub fn copy_slots(&mut self, src: usize, dst: usize, n: usize) {
        with_slots!(&mut self.bufs, b => b.copy_slots(src, dst, n))
    }

    /// Stores the key and value rows of tokens (row `t` of `keys`/`values`, `kv_dim` f32 each)
    /// into `slots[t]`, converting to the cache's format.
    pub fn write(&mut self, kernels: &Kernels, slots: &[usize], keys: &[f32], values: &[f32]) {
        with_slots!(&mut self.bufs, b => b.write(kernels, slots, keys, values))
    }

    /// Attention of `query`'s tokens and heads over KV head `kv_head` at the token `slots` (in
    /// position order; token `i` sees `slots[query.keys[i]]`), into `out` (the tokens' whole
    /// attention rows, laid out like the queries).
    pub fn attend(
        &self,
        kernels: &Kernels,
        kv_head: usize,
        slots: &[usize],
        query: &AttendQuery<'_>,
        out: &mut [f32],
    ) {
        let hd = self.head_dim;
        with_slots!(&self.bufs, b => b.attend(kernels, kv_head, hd, slots, query, out))
    }
}

#[cfg(test)]
impl KvStore {
    /// Slot `slot`'s key and value rows widened to f32 (f16 caches only; tests).
    pub(crate) fn rows_f16(&self, slot: usize) -> (Vec<f32>, Vec<f32>) {
        use crate::quant::blocks::f16_to_f32;
        let Buffers::F16(b) = &self.bufs else {
            unimplemented!("rows_f16 reads f16 caches")
        };
        let at = slot * b.row..(slot + 1) * b.row;
        let widen = |v: &[u16]| v.iter().map(|&h| f16_to_f32(h)).collect();
        (widen(&b.k[at.clone()]), widen(&b.v[at]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_follow_ggml() {
        for t in KvType::ALL {
            assert_eq!(t.name().parse::<KvType>(), Ok(t));
        }
        assert_eq!("Q8_0".parse::<KvType>(), Ok(KvType::Q8_0));
        assert!("q5_0"
            .parse::<KvType>()
            .unwrap_err()
            .contains("f16, q8_0, q4_0"));
        // SmolLM2-135M: 3 KV heads of 64.
        assert_eq!(KvType::F16.row_bytes(192), 384);
        assert_eq!(KvType::Q8_0.row_bytes(192), 204);
        assert_eq!(KvType::Q4_0.row_bytes(192), 108);
        assert!(KvType::Q8_0.check_head_dim(64).is_ok());
        let e = KvType::Q4_0.check_head_dim(80).unwrap_err().to_string();
        assert!(e.contains("q4_0") && e.contains("80"), "{e}");
        assert!(KvType::F16.check_head_dim(80).is_ok());
        // llama.cpp's widths: keys the largest power-of-two divisor from 64, values 64.
        let r = |t: KvType, hd| (t.rotation(hd).k, t.rotation(hd).v);
        assert_eq!(r(KvType::F16, 64), (None, None));
        assert_eq!(r(KvType::Q8_0, 64), (Some(64), Some(64)));
        assert_eq!(r(KvType::Q4_0, 256), (Some(256), Some(64)));
        assert_eq!(r(KvType::Q4_0, 192), (Some(64), Some(64)));
        assert_eq!(r(KvType::Q8_0, 96), (None, None));
    }
}
