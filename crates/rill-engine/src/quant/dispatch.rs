//! Runtime kernel selection. [`Kernels::detect`] checks the CPU once and is the only way to reach
//! the `unsafe` SIMD functions; [`Kernels::scalar`] is always available and is the reference.
//!
//! The table's function pointers are private: callers go through its methods, which check the
//! operand shapes that every tier assumes, so that a wrong shape panics alike on every tier
//! (where the scalar reference would silently stop at the shorter operand and a SIMD kernel
//! would refuse it). The wrappers around the `unsafe` kernels check what those kernels' own
//! asserts do not.

use super::blocks::*;
use super::repack::Tiled;
use super::scalar::{Act32, Block32};
use super::{kquants, scalar, ActMeta};
use crate::nn::attention::{self, AttendBlock, KvRows};
use crate::nn::{rope, swiglu};

/// The instruction-set tier a kernel set was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelTier {
    /// Portable Rust: the reference every other tier reproduces bit for bit.
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-VNNI (the VEX `vpdpbusd` of Alder Lake and later client CPUs, which have no
    /// AVX-512) on top of the AVX2 tier's features: its tile kernels, the AVX2 tier's others.
    AvxVnni,
    /// AVX-512 (F, BW, VL) with VNNI, on top of the AVX2 tier's features.
    Avx512Vnni,
}

impl std::fmt::Display for KernelTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelTier::Scalar => "scalar",
            KernelTier::Avx2 => "avx2+fma",
            KernelTier::AvxVnni => "avx-vnni",
            KernelTier::Avx512Vnni => "avx512-vnni",
        })
    }
}

/// A weight row against one activation row.
type Dot<W, A> = fn(&[W], &[A]) -> f32;
/// One tile row (8 weight rows, `repack`) against N activation rows with their per-block
/// values (`QuantActs::row_meta`): `out[n][j]` is row j against activation n, bit-identical
/// to `scalar::dot32` on the unpacked rows.
type TileMul<T, A, const N: usize> =
    fn(&[T], &[&[A]; N], &[ActMeta<'_>; N]) -> [[f32; TILE_ROWS]; N];
/// Two consecutive tile rows (16 weight rows) against N activation rows: `out[n][j]` is row j
/// of the pair (0..8 the first tile row's) against activation n, bit-identical to [`TileMul`].
type TilePairMul<T, A, const N: usize> =
    fn(&[T], &[T], &[&[A]; N], &[ActMeta<'_>; N]) -> [[f32; 2 * TILE_ROWS]; N];
/// The float formats' GEMM (see [`Kernels::gemm_f32`]).
type FloatGemm<W> = fn(w: &[W], a: &[f32], k: usize, out: &mut [f32]);
/// Attention for a group of query heads over one sequence's K/V rows: queries, query heads,
/// head dim, score scale, rows, output (see [`attention::attend`]).
type AttendFn<T = u16> = fn(&[f32], std::ops::Range<usize>, usize, f32, &KvRows<'_, T>, &mut [f32]);
/// Attention for a block of consecutive query tokens of one sequence over one KV head (see
/// [`AttendBlock`]), into the output rows laid out like the queries.
type AttendBlockFn = fn(&AttendBlock<'_>, &mut [f32]);

/// What every kernel over `nb` weight blocks assumes of its activation rows: each holds at
/// least `nb` blocks (the SIMD tiers index them unchecked; the scalar reference would stop
/// early).
#[inline(always)]
fn check_acts<A>(nb: usize, y: &[&[A]]) {
    assert!(
        y.iter().all(|a| a.len() >= nb),
        "activation rows shorter than the weights' {nb} blocks"
    );
}

/// One tier's kernel of a tiled weight format for N activation rows: one tile row (8 weight
/// rows, [`super::repack`]) against N activation rows.
#[derive(Clone, Copy)]
pub struct TileKernel<T, A, const N: usize>(TileMul<T, A, N>);

impl<T, A, const N: usize> TileKernel<T, A, N> {
    /// `out[n][j]`: weight row j of tile row `t` against activation row `y[n]` (with its
    /// per-block values `m[n]`, [`super::QuantActs::row_meta`]), bit-identical to
    /// `scalar::dot32` on the unpacked rows. Panics if an activation row is shorter than `t`.
    #[inline(always)]
    pub fn mul(&self, t: &[T], y: &[&[A]; N], m: &[ActMeta<'_>; N]) -> [[f32; TILE_ROWS]; N] {
        check_acts(t.len(), y);
        (self.0)(t, y, m)
    }
}

/// One tier's kernel of two consecutive tile rows (16 weight rows, one per zmm lane) against
/// N activation rows (the AVX-512 tier's).
#[derive(Clone, Copy)]
pub struct TilePairKernel<T, A, const N: usize>(TilePairMul<T, A, N>);

impl<T, A, const N: usize> TilePairKernel<T, A, N> {
    /// `out[n][j]`: weight row j of the pair (0..8 from `t0`, 8..16 from `t1`) against
    /// activation row `y[n]`, bit-identical to [`TileKernel::mul`] on each tile row. Panics if
    /// the tile rows differ in length or an activation row is shorter.
    #[inline(always)]
    pub fn mul(
        &self,
        t0: &[T],
        t1: &[T],
        y: &[&[A]; N],
        m: &[ActMeta<'_>; N],
    ) -> [[f32; 2 * TILE_ROWS]; N] {
        assert_eq!(t0.len(), t1.len(), "tile rows of one matrix");
        check_acts(t0.len(), y);
        (self.0)(t0, t1, y, m)
    }
}

/// A format's two-tile-row kernels (AVX-512: 16 rows per zmm), for 4 and 16 activation rows.
#[derive(Clone, Copy)]
pub struct TilePair<T, A> {
    /// Against 4 activation rows.
    pub x4: TilePairKernel<T, A, 4>,
    /// Against 16 activation rows.
    pub x16: TilePairKernel<T, A, 16>,
}

/// One tiled weight format's kernels on one tier, by batch shape.
#[derive(Clone, Copy)]
pub struct TileKernels<T, A> {
    /// One activation row (single-stream decode).
    pub x1: TileKernel<T, A, 1>,
    /// Four activation rows (batched decode and prefill).
    pub x4: TileKernel<T, A, 4>,
    /// Sixteen activation rows, for the formats whose weight decoding costs most (the 5-bit
    /// lane formats Q5_0 and Q5_1, which decode each block once for all 16; measured with
    /// `tools/perf-gate.sh`: Q5_0 -11%, Q5_1 -8% instructions at batch 16, Q4_1 +3%, Q8_0 0%).
    pub x16: Option<TileKernel<T, A, 16>>,
    /// Two tile rows per call (AVX-512 with VNNI only; `None` elsewhere).
    pub pair: Option<TilePair<T, A>>,
}

impl<T, A> TileKernels<T, A>
where
    T: Tiled,
    T::Row: Block32,
    A: Act32,
{
    /// The scalar tier's kernels of a 32-element format: [`scalar::tiles`], the reference itself
    /// on the unpacked rows (`x16`: whether the format has a 16-row kernel on the SIMD tiers).
    fn scalar(x16: bool) -> Self {
        Self {
            x1: TileKernel(|t, y, _| scalar::tiles(t, y)),
            x4: TileKernel(|t, y, _| scalar::tiles(t, y)),
            x16: x16.then_some(TileKernel(|t, y, _| scalar::tiles(t, y))),
            pair: None,
        }
    }
}

/// A tiled weight format whose kernels [`Kernels`] holds: what [`Kernels::tiles`] looks up.
pub trait TileFormat: Tiled {
    /// The activation block the format multiplies with.
    type Act;
    /// This format's kernels in `k` (use [`Kernels::tiles`]).
    fn kernels_in(k: &Kernels) -> &TileKernels<Self, Self::Act>;
}

macro_rules! tile_formats {
    ($($tile:ty, $act:ty, $field:ident;)*) => {
        /// The tiled formats' kernels, one set per format.
        #[derive(Clone, Copy)]
        struct TileTable {
            $($field: TileKernels<$tile, $act>,)*
        }

        $(
            impl TileFormat for $tile {
                type Act = $act;
                fn kernels_in(k: &Kernels) -> &TileKernels<Self, Self::Act> {
                    &k.tiles.$field
                }
            }
        )*
    };
}

tile_formats! {
    TileQ4_0, BlockQ8_0, q4_0;
    TileQ4_1, BlockQ8_1, q4_1;
    TileQ5_0, BlockQ8_0, q5_0;
    TileQ5_1, BlockQ8_1, q5_1;
    TileQ8_0, BlockQ8_0, q8_0;
    TileIq4Nl, BlockQ8_0, iq4nl;
    TileQ2K, BlockQ8K, q2k;
    TileQ3K, BlockQ8K, q3k;
    TileQ4K, BlockQ8K, q4k;
    TileQ5K, BlockQ8K, q5k;
    TileQ6K, BlockQ8K, q6k;
    TileIq4Xs, BlockQ8K, iq4xs;
}

/// The kernels of one tier: one function per (weight, activation) pair and batch shape, the
/// activation quantizers, the KV-cache writer and the [`crate::nn`] primitives (attention,
/// RoPE, SwiGLU). Reached only through its methods, which check operand shapes.
#[derive(Clone, Copy)]
pub struct Kernels {
    tier: KernelTier,
    tiles: TileTable,
    dot_f32: Dot<f32, f32>,
    dot_bf16: Dot<u16, u16>,
    dot_f16_f16: Dot<u16, u16>,
    gemm_f32: FloatGemm<f32>,
    gemm_bf16: FloatGemm<u16>,
    gemm_f16: FloatGemm<u16>,
    quantize_q8_0: fn(&[f32], &mut [BlockQ8_0]),
    quantize_q8_1: fn(&[f32], &mut [BlockQ8_1]),
    quantize_q8k: fn(&[f32], &mut [BlockQ8K]),
    quantize_q4_0: fn(&[f32], &mut [BlockQ4_0]),
    swiglu: fn(&mut [f32], &[f32]),
    mad_f16: fn(&mut [u16], &[u16], f32),
    scale_f16: fn(&mut [u16], f32),
    rope_norm: fn(&mut [f32], &[(f32, f32)]),
    rope_neox: fn(&mut [f32], &[(f32, f32)]),
    attend: AttendFn,
    attend_block: AttendBlockFn,
    attend_q8_0: AttendFn<BlockQ8_0>,
    attend_q4_0: AttendFn<BlockQ4_0>,
}

/// What the quantized-cache attention kernels assume: whole blocks per head, queries and
/// outputs covering the heads (the K/V rows themselves are bounds-checked slices).
fn check_quant_attend(q: &[f32], hs: &std::ops::Range<usize>, hd: usize, o: &[f32]) {
    assert!(
        hd.is_multiple_of(QK) && q.len() >= hs.end * hd && o.len() >= hs.end * hd,
        "quantized-cache attention: head dim {hd} in whole blocks, queries and outputs for \
         heads ..{}",
        hs.end
    );
}

impl Kernels {
    /// The portable reference set, available on every CPU.
    pub fn scalar() -> Self {
        // A super-block format's scalar tile kernels: its reference dot, row by row.
        macro_rules! ktiles {
            ($dot:path) => {
                TileKernels {
                    x1: TileKernel(|t, y, _| kquants::tiles(t, y, $dot)),
                    x4: TileKernel(|t, y, _| kquants::tiles(t, y, $dot)),
                    x16: None,
                    pair: None,
                }
            };
        }
        Self {
            tier: KernelTier::Scalar,
            tiles: TileTable {
                q4_0: TileKernels::scalar(false),
                q4_1: TileKernels::scalar(false),
                q5_0: TileKernels::scalar(true),
                q5_1: TileKernels::scalar(true),
                q8_0: TileKernels::scalar(true),
                iq4nl: TileKernels::scalar(false),
                q2k: ktiles!(kquants::dot_q2k_q8k),
                q3k: ktiles!(kquants::dot_q3k_q8k),
                q4k: ktiles!(kquants::dot_q4k_q8k),
                q5k: ktiles!(kquants::dot_q5k_q8k),
                q6k: ktiles!(kquants::dot_q6k_q8k),
                iq4xs: ktiles!(kquants::dot_iq4xs_q8k),
            },
            dot_f32: scalar::dot_f32,
            dot_bf16: scalar::dot_bf16,
            dot_f16_f16: scalar::dot_f16_f16,
            gemm_f32: scalar::gemm_f32,
            gemm_bf16: scalar::gemm_bf16,
            gemm_f16: scalar::gemm_f16,
            quantize_q8_0: scalar::quantize_q8_0,
            quantize_q8_1: scalar::quantize_q8_1,
            quantize_q8k: scalar::quantize_q8k,
            quantize_q4_0: scalar::quantize_q4_0,
            swiglu: swiglu::swiglu,
            mad_f16: attention::mad_f16,
            scale_f16: attention::scale_f16,
            rope_norm: rope::rope_norm,
            rope_neox: rope::rope_neox,
            attend: attention::attend,
            attend_block: attention::attend_block,
            attend_q8_0: attention::attend_q8_0,
            attend_q4_0: attention::attend_q4_0,
        }
    }

    /// The best set this CPU supports.
    pub fn detect() -> Self {
        Self::all_supported()
            .into_iter()
            .last()
            .unwrap_or_else(Self::scalar)
    }

    /// Every kernel set this CPU can run, scalar first (tests loop over these).
    pub fn all_supported() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut v = vec![Self::scalar()];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                v.push(x86_sets::avx2());
                if std::is_x86_feature_detected!("avxvnni") {
                    v.push(x86_sets::avx_vnni());
                }
                if std::is_x86_feature_detected!("avx512vnni")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                {
                    v.push(x86_sets::vnni());
                }
            }
        }
        v
    }

    /// A set by name (`scalar`, `avx2`, `avx-vnni`, `avx512-vnni`; `avx512` for the last), if
    /// this CPU supports it.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::all_supported().into_iter().find(|k| {
            k.tier.to_string() == name
                || matches!(
                    (name, k.tier),
                    ("avx2", KernelTier::Avx2) | ("avx512", KernelTier::Avx512Vnni)
                )
        })
    }

    /// The instruction-set tier of this set.
    pub fn tier(&self) -> KernelTier {
        self.tier
    }

    /// Whether this tier's Q8_0/Q5_0 tile kernels read the activations' per-group offsets
    /// (`ActMeta::offsets16`/`offsets128`: the `vpdpbusd` tiers multiply those formats as
    /// unsigned `w + K` onto `-K * sum(a)`), so `QuantActs` must compute them.
    pub fn wants_group_offsets(&self) -> bool {
        matches!(self.tier, KernelTier::AvxVnni | KernelTier::Avx512Vnni)
    }

    /// Whether this tier's Q8_0/Q5_0 tile kernels read the activations' quants widened to
    /// i16 (`ActMeta::q16`: AVX2 multiplies those signed formats with `pmaddwd` on i16 pairs,
    /// where `maddubs` would need the sign trick), so `QuantActs` must compute them.
    pub fn wants_wide_quants(&self) -> bool {
        self.tier == KernelTier::Avx2
    }

    /// The kernels of tiled weight format `T` (a 32-element format, a K-quant or IQ4_XS,
    /// repacked by [`super::repack`]).
    pub fn tiles<T: TileFormat>(&self) -> &TileKernels<T, T::Act> {
        T::kernels_in(self)
    }

    /// F32 dot product in `scalar::dot_float_with`'s order. Panics on different lengths.
    #[inline(always)]
    pub fn dot_f32(&self, x: &[f32], y: &[f32]) -> f32 {
        (self.dot_f32)(x, y)
    }

    /// BF16 dot product in `scalar::dot_float_with`'s order. Panics on different lengths.
    #[inline(always)]
    pub fn dot_bf16(&self, x: &[u16], y: &[u16]) -> f32 {
        (self.dot_bf16)(x, y)
    }

    /// F16 dot product with ggml's AVX-512 summation tree (`scalar::dot_f16_f16`). Panics on
    /// different lengths.
    #[inline(always)]
    pub fn dot_f16_f16(&self, x: &[u16], y: &[u16]) -> f32 {
        (self.dot_f16_f16)(x, y)
    }

    /// The F32 weights' GEMM (prefill and batched decode): `m` weight rows (row-major, `k`
    /// wide) against `n` activation rows, `out[j * m + i]` the dot of weight row i and
    /// activation row j, each bit-identical to [`Self::dot_f32`]. Panics unless both operands
    /// are whole rows of `k` and `out` has `m * n` elements (`scalar::check_gemm`).
    #[inline(always)]
    pub fn gemm_f32(&self, w: &[f32], a: &[f32], k: usize, out: &mut [f32]) {
        (self.gemm_f32)(w, a, k, out)
    }

    /// [`Self::gemm_f32`] for BF16 weights against bf16-rounded activations widened to f32,
    /// each result bit-identical to [`Self::dot_bf16`].
    #[inline(always)]
    pub fn gemm_bf16(&self, w: &[u16], a: &[f32], k: usize, out: &mut [f32]) {
        (self.gemm_bf16)(w, a, k, out)
    }

    /// [`Self::gemm_f32`] for F16 weights against f16-rounded activations widened to f32,
    /// each result bit-identical to [`Self::dot_f16_f16`].
    #[inline(always)]
    pub fn gemm_f16(&self, w: &[u16], a: &[f32], k: usize, out: &mut [f32]) {
        (self.gemm_f16)(w, a, k, out)
    }

    /// Quantizes `x` into Q8_0 blocks (ggml's x86 arithmetic, `scalar::quantize_q8_0`).
    /// Panics unless `x` holds exactly `out.len()` blocks of 32.
    #[inline(always)]
    pub fn quantize_q8_0(&self, x: &[f32], out: &mut [BlockQ8_0]) {
        assert_eq!(x.len(), out.len() * QK, "quantize_q8_0: whole blocks");
        (self.quantize_q8_0)(x, out)
    }

    /// Quantizes `x` into Q8_1 blocks (`scalar::quantize_q8_1`). Panics unless `x` holds
    /// exactly `out.len()` blocks of 32.
    #[inline(always)]
    pub fn quantize_q8_1(&self, x: &[f32], out: &mut [BlockQ8_1]) {
        assert_eq!(x.len(), out.len() * QK, "quantize_q8_1: whole blocks");
        (self.quantize_q8_1)(x, out)
    }

    /// Quantizes `x` into Q8_K blocks (`scalar::quantize_q8k`). Panics unless `x` holds
    /// exactly `out.len()` blocks of 256.
    #[inline(always)]
    pub fn quantize_q8k(&self, x: &[f32], out: &mut [BlockQ8K]) {
        assert_eq!(x.len(), out.len() * QK_K, "quantize_q8k: whole blocks");
        (self.quantize_q8k)(x, out)
    }

    /// The Q4_0 KV cache writer (ggml's reference quantizer, `scalar::quantize_q4_0`). Panics
    /// unless `x` holds exactly `out.len()` blocks of 32.
    #[inline(always)]
    pub fn quantize_q4_0(&self, x: &[f32], out: &mut [BlockQ4_0]) {
        assert_eq!(x.len(), out.len() * QK, "quantize_q4_0: whole blocks");
        (self.quantize_q4_0)(x, out)
    }

    /// SwiGLU in place: `gate[i] = silu(gate[i]) * up[i]` ([`swiglu::swiglu`]) over the first
    /// `min(gate.len(), up.len())` elements.
    #[inline(always)]
    pub fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
        (self.swiglu)(gate, up)
    }

    /// `acc = f16(v * s + acc)` ([`attention::mad_f16`]). Panics on different lengths.
    #[inline(always)]
    pub fn mad_f16(&self, acc: &mut [u16], v: &[u16], s: f32) {
        (self.mad_f16)(acc, v, s)
    }

    /// `acc = f16(acc * s)` ([`attention::scale_f16`]).
    #[inline(always)]
    pub fn scale_f16(&self, acc: &mut [u16], s: f32) {
        (self.scale_f16)(acc, s)
    }

    /// RoPE of adjacent pairs in place ([`rope::rope_norm`]), `cs` one (cos, sin) per pair.
    /// Panics unless `head` holds exactly `cs.len()` pairs.
    #[inline(always)]
    pub fn rope_norm(&self, head: &mut [f32], cs: &[(f32, f32)]) {
        assert_eq!(head.len(), 2 * cs.len(), "rope: one (cos, sin) per pair");
        (self.rope_norm)(head, cs)
    }

    /// RoPE of the pairs `i`, `i + n/2` in place ([`rope::rope_neox`]), `cs` one (cos, sin)
    /// per pair. Panics unless `head` holds exactly `cs.len()` pairs.
    #[inline(always)]
    pub fn rope_neox(&self, head: &mut [f32], cs: &[(f32, f32)]) {
        assert_eq!(head.len(), 2 * cs.len(), "rope: one (cos, sin) per pair");
        (self.rope_neox)(head, cs)
    }

    /// Attention of one token's query heads `heads` (sharing one KV head, `head_dim` each in
    /// `q` and `out`) over an f16 cache's rows `kv`, scores scaled by `scale`
    /// ([`attention::attend`]'s bits on every tier).
    #[inline(always)]
    pub fn attend(
        &self,
        q: &[f32],
        heads: std::ops::Range<usize>,
        head_dim: usize,
        scale: f32,
        kv: &KvRows<'_>,
        out: &mut [f32],
    ) {
        (self.attend)(q, heads, head_dim, scale, kv, out)
    }

    /// Attention over an f16 cache for a block of consecutive tokens of one sequence (each
    /// token's result bit-identical to [`Self::attend`]'s). Panics on shapes that
    /// [`AttendBlock::check`] refuses (every tier's kernel runs it first).
    #[inline(always)]
    pub fn attend_block(&self, b: &AttendBlock<'_>, out: &mut [f32]) {
        (self.attend_block)(b, out)
    }

    /// [`Self::attend`] over a Q8_0 cache ([`attention::attend_q8_0`]'s bits on every tier).
    /// Panics unless the head dim is a multiple of 32 and `q` and `out` cover the heads.
    #[inline(always)]
    pub fn attend_q8_0(
        &self,
        q: &[f32],
        heads: std::ops::Range<usize>,
        head_dim: usize,
        scale: f32,
        kv: &KvRows<'_, BlockQ8_0>,
        out: &mut [f32],
    ) {
        check_quant_attend(q, &heads, head_dim, out);
        (self.attend_q8_0)(q, heads, head_dim, scale, kv, out)
    }

    /// [`Self::attend`] over a Q4_0 cache ([`attention::attend_q4_0`]'s bits on every tier).
    /// Panics unless the head dim is a multiple of 32 and `q` and `out` cover the heads.
    #[inline(always)]
    pub fn attend_q4_0(
        &self,
        q: &[f32],
        heads: std::ops::Range<usize>,
        head_dim: usize,
        scale: f32,
        kv: &KvRows<'_, BlockQ4_0>,
        out: &mut [f32],
    ) {
        check_quant_attend(q, &heads, head_dim, out);
        (self.attend_q4_0)(q, heads, head_dim, scale, kv, out)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_sets {
    use super::*;

    use crate::nn::x86_attention;
    use crate::quant::x86;
    use crate::quant::x86_gemm;
    use crate::quant::x86_tiles;

    /// Wraps each `unsafe` ISA function of module `$m` (and the tile kernels of `x86_tiles::$t`)
    /// in a safe fn. Only reachable through `all_supported`, which checked the features first.
    macro_rules! set {
        ($t:ident, $m:ident, $tier:expr) => {{
            // The 1- and 4-row tile kernels of one format.
            macro_rules! tiles {
                ($f:ident, x16 = $x16:tt) => {
                    TileKernels {
                        x1: TileKernel(|t, y, m| unsafe { x86_tiles::$t::$f::<1>(t, y, m) }),
                        x4: TileKernel(|t, y, m| unsafe { x86_tiles::$t::$f::<4>(t, y, m) }),
                        x16: tiles!(@x16 $x16, $f),
                        pair: None,
                    }
                };
                (@x16 false, $f:ident) => { None };
                (@x16 true, $f:ident) => {
                    Some(TileKernel(|t, y, m| unsafe { x86_tiles::$t::$f::<16>(t, y, m) }))
                };
            }
            Kernels {
                tier: $tier,
                // SAFETY (all below): `all_supported` verified this tier's CPU features before
                // building this set. The block kernels check slice lengths themselves (asserts
                // and bounds-checked indexing).
                tiles: TileTable {
                    q4_0: tiles!(tiles_q4_0, x16 = false),
                    q4_1: tiles!(tiles_q4_1, x16 = false),
                    q5_0: tiles!(tiles_q5_0, x16 = true),
                    q5_1: tiles!(tiles_q5_1, x16 = true),
                    q8_0: tiles!(tiles_q8_0, x16 = true),
                    iq4nl: tiles!(tiles_iq4nl, x16 = false),
                    q2k: tiles!(tiles_q2k, x16 = false),
                    q3k: tiles!(tiles_q3k, x16 = false),
                    q4k: tiles!(tiles_q4k, x16 = false),
                    q5k: tiles!(tiles_q5k, x16 = false),
                    q6k: tiles!(tiles_q6k, x16 = false),
                    iq4xs: tiles!(tiles_iq4xs, x16 = false),
                },
                dot_f32: |x, y| {
                    assert_eq!(x.len(), y.len(), "dot_f32 operand lengths");
                    unsafe { x86::$m::dot_f32(x, y) }
                },
                gemm_f32: |w, a, k, o| unsafe { x86_gemm::avx2::gemm_f32(w, a, k, o) },
                gemm_bf16: |w, a, k, o| unsafe { x86_gemm::avx2::gemm_bf16(w, a, k, o) },
                gemm_f16: |w, a, k, o| unsafe { x86_gemm::avx2::gemm_f16(w, a, k, o) },
                dot_bf16: |x, y| {
                    assert_eq!(x.len(), y.len(), "dot_bf16 operand lengths");
                    unsafe { x86::$m::dot_bf16(x, y) }
                },
                dot_f16_f16: |x, y| {
                    assert_eq!(x.len(), y.len(), "dot_f16_f16 operand lengths");
                    unsafe { x86::$m::dot_f16_f16(x, y) }
                },
                quantize_q8_0: |x, y| unsafe { x86::$m::quantize_q8_0(x, y) },
                quantize_q8_1: |x, y| unsafe { x86::$m::quantize_q8_1(x, y) },
                quantize_q8k: |x, y| unsafe { x86::$m::quantize_q8k(x, y) },
                quantize_q4_0: |x, y| {
                    assert_eq!(x.len(), y.len() * QK);
                    unsafe { x86::$m::quantize_q4_0(x, y) }
                },
                swiglu: |g, u| unsafe { swiglu::$m::swiglu(g, u) },
                mad_f16: |a, v, s| {
                    assert_eq!(a.len(), v.len(), "mad_f16 operand lengths");
                    unsafe { x86_attention::$m::mad_f16(a, v, s) }
                },
                scale_f16: |a, s| unsafe { x86_attention::$m::scale_f16(a, s) },
                rope_norm: |h, cs| unsafe { rope::$m::rope_norm(h, cs) },
                rope_neox: |h, cs| unsafe { rope::$m::rope_neox(h, cs) },
                // One token through the block kernel (shapes checked by `AttendBlock::check`).
                attend: |q, hs, hd, sc, kv, o| {
                    let keys = [0..kv.offsets.len()];
                    let b = AttendBlock::one_token(q, hs, hd, sc, kv, &keys);
                    unsafe { x86_attention::$m::attend_block(&b, o) }
                },
                // SAFETY: shapes checked by `AttendBlock::check` inside.
                attend_block: |b, o| unsafe { x86_attention::$m::attend_block(b, o) },
                attend_q8_0: |q, hs, hd, sc, kv, o| {
                    check_quant_attend(q, &hs, hd, o);
                    unsafe { x86_attention::$m::attend_q8_0(q, hs, hd, sc, kv, o) }
                },
                attend_q4_0: |q, hs, hd, sc, kv, o| {
                    check_quant_attend(q, &hs, hd, o);
                    unsafe { x86_attention::$m::attend_q4_0(q, hs, hd, sc, kv, o) }
                },
            }
        }};
    }

    pub fn avx2() -> Kernels {
        set!(avx2, avx2, KernelTier::Avx2)
    }

    /// The AVX-VNNI tier: the 256-bit tile kernels with VEX `vpdpbusd`, the rest AVX2's.
    pub fn avx_vnni() -> Kernels {
        set!(avxvnni, avx2, KernelTier::AvxVnni)
    }

    /// The VNNI tier: the 256-bit kernels with `vpdpbusd`, plus the zmm two-tile-row kernels
    /// and float GEMMs (`all_supported` also checked AVX-512 F and BW for them).
    pub fn vnni() -> Kernels {
        use crate::quant::x86_tiles512 as z;
        // SAFETY (every kernel below): as in `set!`; x86_tiles512 asserts its slice lengths and
        // x86_gemm checks its operands (`scalar::check_gemm`).
        macro_rules! pair {
            ($f:ident) => {
                Some(TilePair {
                    x4: TilePairKernel(|a, b, y, m| unsafe { z::$f::<4>(a, b, y, m) }),
                    x16: TilePairKernel(|a, b, y, m| unsafe { z::$f::<16>(a, b, y, m) }),
                })
            };
        }
        let mut k = set!(vnni, vnni, KernelTier::Avx512Vnni);
        let t = &mut k.tiles;
        t.q5_0.pair = pair!(tiles2_q5_0);
        t.q8_0.pair = pair!(tiles2_q8_0);
        t.q4_0.pair = pair!(tiles2_q4_0);
        t.iq4nl.pair = pair!(tiles2_iq4nl);
        t.q4_1.pair = pair!(tiles2_q4_1);
        t.q5_1.pair = pair!(tiles2_q5_1);
        t.iq4xs.pair = pair!(tiles2_iq4xs);
        k.gemm_f32 = |w, a, k, o| unsafe { x86_gemm::avx512::gemm_f32(w, a, k, o) };
        k.gemm_bf16 = |w, a, k, o| unsafe { x86_gemm::avx512::gemm_bf16(w, a, k, o) };
        k.gemm_f16 = |w, a, k, o| unsafe { x86_gemm::avx512::gemm_f16(w, a, k, o) };
        k
    }
}
