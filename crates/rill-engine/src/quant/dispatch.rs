//! Runtime kernel selection. [`Kernels::detect`] checks the CPU once and is the only way to reach
//! the `unsafe` SIMD functions; [`Kernels::scalar`] is always available and is the reference.

use super::blocks::*;
use super::{kquants, scalar, ActMeta};

/// The instruction-set tier a kernel set was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelTier {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl std::fmt::Display for KernelTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelTier::Scalar => "scalar",
            KernelTier::Avx2 => "avx2+fma",
            KernelTier::Avx512Vnni => "avx512-vnni",
        })
    }
}

/// A weight row against one activation row.
pub type Dot<W, A> = fn(&[W], &[A]) -> f32;
/// A weight row against four activation rows, each pair bit-identical to [`Dot`].
pub type Dot4<W, A> = fn(&[W], [&[A]; 4]) -> [f32; 4];
/// One tile row (8 weight rows, `repack`) against N activation rows with their per-block
/// values (`QuantActs::row_meta`): `out[n][j]` is row j against activation n, bit-identical
/// to `scalar::dot32` on the unpacked rows.
pub type TileMul<T, A, const N: usize> =
    fn(&[T], &[&[A]; N], &[ActMeta<'_>; N]) -> [[f32; TILE_ROWS]; N];

/// The float formats' GEMM (prefill and batched decode of F16/BF16/F32 weights): `m` weight
/// rows (row-major, `k` wide) against `n` activation rows widened to f32, `out[j * m + i]` the
/// dot of weight row i and activation row j, each bit-identical to the format's single-row dot
/// (`scalar::gemm_f16` and its siblings).
pub type FloatGemm<W> = fn(w: &[W], a: &[f32], k: usize, out: &mut [f32]);

/// Two consecutive tile rows (16 weight rows) against N activation rows: `out[n][j]` is row j
/// of the pair (0..8 the first tile row's) against activation n, bit-identical to [`TileMul`].
pub type TilePairMul<T, A, const N: usize> =
    fn(&[T], &[T], &[&[A]; N], &[ActMeta<'_>; N]) -> [[f32; 2 * TILE_ROWS]; N];

/// A format's two-tile-row kernels (AVX-512: 16 rows per zmm), for 4 and 16 activation rows.
#[derive(Clone, Copy)]
pub struct TilePair<T, A> {
    /// Against 4 activation rows.
    pub x4: TilePairMul<T, A, 4>,
    /// Against 16 activation rows.
    pub x16: TilePairMul<T, A, 16>,
}

/// Attention for a group of query heads over one sequence's K/V rows: queries, query heads,
/// head dim, score scale, rows, output (see `scalar::attend`).
pub type AttendFn<T = u16> =
    fn(&[f32], std::ops::Range<usize>, usize, f32, &scalar::KvRows<'_, T>, &mut [f32]);

/// Attention for a block of consecutive query tokens of one sequence over one KV head (see
/// `scalar::AttendBlock`), into the output rows laid out like the queries.
pub type AttendBlockFn = fn(&scalar::AttendBlock<'_>, &mut [f32]);

/// One function pointer per (weight, activation) pair and batch shape, plus activation
/// quantizers and the attention primitives.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub tier: KernelTier,
    pub dot_q5k_q8k: Dot<BlockQ5K, BlockQ8K>,
    pub dot4_q5k_q8k: Dot4<BlockQ5K, BlockQ8K>,
    pub tile1_q4_0: TileMul<TileQ4_0, BlockQ8_0, 1>,
    pub tile4_q4_0: TileMul<TileQ4_0, BlockQ8_0, 4>,
    pub tile1_q4_1: TileMul<TileQ4_1, BlockQ8_1, 1>,
    pub tile4_q4_1: TileMul<TileQ4_1, BlockQ8_1, 4>,
    pub tile1_q5_0: TileMul<TileQ5_0, BlockQ8_0, 1>,
    pub tile4_q5_0: TileMul<TileQ5_0, BlockQ8_0, 4>,
    /// 16 activation rows per pass (the 5-bit lane formats, whose weight decoding costs most,
    /// decode each block once for all 16; measured with `tools/perf-gate.sh`: Q5_0 -11%, Q5_1
    /// -8% instructions at batch 16, Q4_1 +3%, Q8_0 0%).
    pub tile16_q5_0: TileMul<TileQ5_0, BlockQ8_0, 16>,
    pub tile1_q5_1: TileMul<TileQ5_1, BlockQ8_1, 1>,
    pub tile4_q5_1: TileMul<TileQ5_1, BlockQ8_1, 4>,
    pub tile16_q5_1: TileMul<TileQ5_1, BlockQ8_1, 16>,
    pub tile1_q8_0: TileMul<TileQ8_0, BlockQ8_0, 1>,
    pub tile4_q8_0: TileMul<TileQ8_0, BlockQ8_0, 4>,
    pub tile1_iq4nl: TileMul<TileIq4Nl, BlockQ8_0, 1>,
    pub tile1_q4k: TileMul<TileQ4K, BlockQ8K, 1>,
    pub tile4_q4k: TileMul<TileQ4K, BlockQ8K, 4>,
    pub tile1_q6k: TileMul<TileQ6K, BlockQ8K, 1>,
    pub tile4_q6k: TileMul<TileQ6K, BlockQ8K, 4>,
    pub tile1_iq4xs: TileMul<TileIq4Xs, BlockQ8K, 1>,
    pub tile1_q2k: TileMul<TileQ2K, BlockQ8K, 1>,
    pub tile4_q2k: TileMul<TileQ2K, BlockQ8K, 4>,
    pub tile1_q3k: TileMul<TileQ3K, BlockQ8K, 1>,
    pub tile4_q3k: TileMul<TileQ3K, BlockQ8K, 4>,
    pub tile4_iq4xs: TileMul<TileIq4Xs, BlockQ8K, 4>,
    pub tile4_iq4nl: TileMul<TileIq4Nl, BlockQ8_0, 4>,
    /// Two tile rows per call (AVX-512 with VNNI only; `None` elsewhere).
    pub tiles2_q5_0: Option<TilePair<TileQ5_0, BlockQ8_0>>,
    pub tiles2_q8_0: Option<TilePair<TileQ8_0, BlockQ8_0>>,
    pub tiles2_q4_0: Option<TilePair<TileQ4_0, BlockQ8_0>>,
    pub tiles2_iq4nl: Option<TilePair<TileIq4Nl, BlockQ8_0>>,
    pub tiles2_q4_1: Option<TilePair<TileQ4_1, BlockQ8_1>>,
    pub tiles2_q5_1: Option<TilePair<TileQ5_1, BlockQ8_1>>,
    pub tiles2_iq4xs: Option<TilePair<TileIq4Xs, BlockQ8K>>,
    pub dot_f32: Dot<f32, f32>,
    pub dot_bf16: Dot<u16, u16>,
    pub dot_f16_f16: Dot<u16, u16>,
    /// The float formats' batched path.
    pub gemm_f32: FloatGemm<f32>,
    pub gemm_bf16: FloatGemm<u16>,
    pub gemm_f16: FloatGemm<u16>,
    pub quantize_q8_0: fn(&[f32], &mut [BlockQ8_0]),
    pub quantize_q8_1: fn(&[f32], &mut [BlockQ8_1]),
    pub quantize_q8k: fn(&[f32], &mut [BlockQ8K]),
    pub swiglu: fn(&mut [f32], &[f32]),
    pub mad_f16: fn(&mut [u16], &[u16], f32),
    pub scale_f16: fn(&mut [u16], f32),
    pub rope_norm: fn(&mut [f32], &[(f32, f32)]),
    pub rope_neox: fn(&mut [f32], &[(f32, f32)]),
    /// Attention over an f16 KV cache.
    pub attend: AttendFn,
    /// Attention over an f16 KV cache for a block of consecutive tokens of one sequence
    /// (each token's result bit-identical to `attend`'s).
    pub attend_block: AttendBlockFn,
    /// Attention over a Q8_0 KV cache.
    pub attend_q8_0: AttendFn<BlockQ8_0>,
    /// Attention over a Q4_0 KV cache.
    pub attend_q4_0: AttendFn<BlockQ4_0>,
    /// The Q4_0 KV cache writer (ggml's reference quantizer).
    pub quantize_q4_0: fn(&[f32], &mut [BlockQ4_0]),
}

impl Kernels {
    pub fn scalar() -> Self {
        Self {
            tier: KernelTier::Scalar,
            dot_q5k_q8k: kquants::dot_q5k_q8k,
            dot4_q5k_q8k: |x, y| y.map(|a| kquants::dot_q5k_q8k(x, a)),
            tile1_q4_0: |t, y, _| scalar::tiles(t, y),
            tile4_q4_0: |t, y, _| scalar::tiles(t, y),
            tile1_q4_1: |t, y, _| scalar::tiles(t, y),
            tile4_q4_1: |t, y, _| scalar::tiles(t, y),
            tile1_q5_0: |t, y, _| scalar::tiles(t, y),
            tile4_q5_0: |t, y, _| scalar::tiles(t, y),
            tile16_q5_0: |t, y, _| scalar::tiles(t, y),
            tile1_q5_1: |t, y, _| scalar::tiles(t, y),
            tile4_q5_1: |t, y, _| scalar::tiles(t, y),
            tile16_q5_1: |t, y, _| scalar::tiles(t, y),
            tile1_q8_0: |t, y, _| scalar::tiles(t, y),
            tile4_q8_0: |t, y, _| scalar::tiles(t, y),
            tile1_iq4nl: |t, y, _| scalar::tiles(t, y),
            tile1_q4k: |t, y, _| kquants::tiles_q4k(t, y),
            tile4_q4k: |t, y, _| kquants::tiles_q4k(t, y),
            tile1_q6k: |t, y, _| kquants::tiles_q6k(t, y),
            tile4_q6k: |t, y, _| kquants::tiles_q6k(t, y),
            tile1_iq4xs: |t, y, _| kquants::tiles_iq4xs(t, y),
            tile1_q2k: |t, y, _| kquants::tiles_q2k(t, y),
            tile4_q2k: |t, y, _| kquants::tiles_q2k(t, y),
            tile1_q3k: |t, y, _| kquants::tiles_q3k(t, y),
            tile4_q3k: |t, y, _| kquants::tiles_q3k(t, y),
            tile4_iq4xs: |t, y, _| kquants::tiles_iq4xs(t, y),
            tile4_iq4nl: |t, y, _| scalar::tiles(t, y),
            tiles2_q5_0: None,
            tiles2_q8_0: None,
            tiles2_q4_0: None,
            tiles2_iq4nl: None,
            tiles2_q4_1: None,
            tiles2_q5_1: None,
            tiles2_iq4xs: None,
            dot_f32: scalar::dot_f32,
            gemm_f32: scalar::gemm_f32,
            gemm_bf16: scalar::gemm_bf16,
            gemm_f16: scalar::gemm_f16,
            dot_bf16: scalar::dot_bf16,
            dot_f16_f16: scalar::dot_f16_f16,
            quantize_q8_0: scalar::quantize_q8_0,
            quantize_q8_1: scalar::quantize_q8_1,
            quantize_q8k: scalar::quantize_q8k,
            swiglu: scalar::swiglu,
            mad_f16: scalar::mad_f16,
            scale_f16: scalar::scale_f16,
            rope_norm: scalar::rope_norm,
            rope_neox: scalar::rope_neox,
            attend: scalar::attend,
            attend_block: scalar::attend_block,
            attend_q8_0: scalar::attend_q8_0,
            attend_q4_0: scalar::attend_q4_0,
            quantize_q4_0: scalar::quantize_q4_0,
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

    /// A set by name (`scalar`, `avx2`, `avx512-vnni`), if this CPU supports it.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::all_supported().into_iter().find(|k| {
            k.tier.to_string() == name
                || matches!(
                    (name, k.tier),
                    ("avx2", KernelTier::Avx2) | ("avx512", KernelTier::Avx512Vnni)
                )
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_sets {
    use super::*;

    use crate::quant::x86;
    use crate::quant::x86_attention;
    use crate::quant::x86_gemm;
    use crate::quant::x86_kquants::avx2 as xk;
    use crate::quant::x86_tiles;

    /// Wraps each `unsafe` ISA function of module `$m` in a safe fn. Only reachable through
    /// `all_supported`, which checked the features first.
    macro_rules! set {
        ($m:ident, $tier:expr) => {{
            Kernels {
                tier: $tier,
                // SAFETY (all below): `all_supported` verified this tier's CPU features before
                // building this set. The block kernels check slice lengths themselves (asserts
                // and bounds-checked indexing).
                dot_q5k_q8k: |x, y| unsafe { xk::dot_q5k_q8k::<1>(x, &[y])[0] },
                dot4_q5k_q8k: |x, y| unsafe { xk::dot_q5k_q8k::<4>(x, &y) },
                tile1_q4_0: |t, y, m| unsafe { x86_tiles::$m::tiles_q4_0::<1>(t, y, m) },
                tile4_q4_0: |t, y, m| unsafe { x86_tiles::$m::tiles_q4_0::<4>(t, y, m) },
                tile1_q4_1: |t, y, m| unsafe { x86_tiles::$m::tiles_q4_1::<1>(t, y, m) },
                tile4_q4_1: |t, y, m| unsafe { x86_tiles::$m::tiles_q4_1::<4>(t, y, m) },
                tile1_q5_0: |t, y, m| unsafe { x86_tiles::$m::tiles_q5_0::<1>(t, y, m) },
                tile4_q5_0: |t, y, m| unsafe { x86_tiles::$m::tiles_q5_0::<4>(t, y, m) },
                tile16_q5_0: |t, y, m| unsafe { x86_tiles::$m::tiles_q5_0::<16>(t, y, m) },
                tile1_q5_1: |t, y, m| unsafe { x86_tiles::$m::tiles_q5_1::<1>(t, y, m) },
                tile4_q5_1: |t, y, m| unsafe { x86_tiles::$m::tiles_q5_1::<4>(t, y, m) },
                tile16_q5_1: |t, y, m| unsafe { x86_tiles::$m::tiles_q5_1::<16>(t, y, m) },
                tile1_q8_0: |t, y, m| unsafe { x86_tiles::$m::tiles_q8_0::<1>(t, y, m) },
                tile4_q8_0: |t, y, m| unsafe { x86_tiles::$m::tiles_q8_0::<4>(t, y, m) },
                tile1_iq4nl: |t, y, m| unsafe { x86_tiles::$m::tiles_iq4nl::<1>(t, y, m) },
                tile1_q4k: |t, y, m| unsafe { x86_tiles::$m::tiles_q4k::<1>(t, y, m) },
                tile4_q4k: |t, y, m| unsafe { x86_tiles::$m::tiles_q4k::<4>(t, y, m) },
                tile1_q6k: |t, y, m| unsafe { x86_tiles::$m::tiles_q6k::<1>(t, y, m) },
                tile4_q6k: |t, y, m| unsafe { x86_tiles::$m::tiles_q6k::<4>(t, y, m) },
                tile1_iq4xs: |t, y, m| unsafe { x86_tiles::$m::tiles_iq4xs::<1>(t, y, m) },
                tile1_q2k: |t, y, m| unsafe { x86_tiles::$m::tiles_q2k::<1>(t, y, m) },
                tile4_q2k: |t, y, m| unsafe { x86_tiles::$m::tiles_q2k::<4>(t, y, m) },
                tile1_q3k: |t, y, m| unsafe { x86_tiles::$m::tiles_q3k::<1>(t, y, m) },
                tile4_q3k: |t, y, m| unsafe { x86_tiles::$m::tiles_q3k::<4>(t, y, m) },
                tile4_iq4xs: |t, y, m| unsafe { x86_tiles::$m::tiles_iq4xs::<4>(t, y, m) },
                tile4_iq4nl: |t, y, m| unsafe { x86_tiles::$m::tiles_iq4nl::<4>(t, y, m) },
                tiles2_q5_0: None,
                tiles2_q8_0: None,
                tiles2_q4_0: None,
                tiles2_iq4nl: None,
                tiles2_q4_1: None,
                tiles2_q5_1: None,
                tiles2_iq4xs: None,
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
                swiglu: |g, u| unsafe { x86::$m::swiglu(g, u) },
                mad_f16: |a, v, s| {
                    assert_eq!(a.len(), v.len(), "mad_f16 operand lengths");
                    unsafe { x86::$m::mad_f16(a, v, s) }
                },
                scale_f16: |a, s| unsafe { x86::$m::scale_f16(a, s) },
                rope_norm: |h, cs| unsafe { x86::$m::rope_norm(h, cs) },
                rope_neox: |h, cs| unsafe { x86::$m::rope_neox(h, cs) },
                // One token through the block kernel (shapes checked by `AttendBlock::check`).
                attend: |q, hs, hd, sc, kv, o| {
                    let keys = [0..kv.offsets.len()];
                    let b = scalar::AttendBlock::one_token(q, hs, hd, sc, kv, &keys);
                    unsafe { x86_attention::$m::attend_block(&b, o) }
                },
                // SAFETY: shapes checked by `AttendBlock::check` inside.
                attend_block: |b, o| unsafe { x86_attention::$m::attend_block(b, o) },
                attend_q8_0: |q, hs, hd, sc, kv, o| {
                    check_quant_attend(q, &hs, hd, o);
                    unsafe { x86::$m::attend_q8_0(q, hs, hd, sc, kv, o) }
                },
                attend_q4_0: |q, hs, hd, sc, kv, o| {
                    check_quant_attend(q, &hs, hd, o);
                    unsafe { x86::$m::attend_q4_0(q, hs, hd, sc, kv, o) }
                },
                quantize_q4_0: |x, y| {
                    assert_eq!(x.len(), y.len() * QK);
                    unsafe { x86::$m::quantize_q4_0(x, y) }
                },
            }
        }};
    }

    /// What the quantized attention kernels assume: whole blocks per head, queries and
    /// outputs covering the heads (the K/V rows themselves are bounds-checked slices).
    fn check_quant_attend(q: &[f32], hs: &std::ops::Range<usize>, hd: usize, o: &[f32]) {
        assert!(hd.is_multiple_of(QK) && q.len() >= hs.end * hd && o.len() >= hs.end * hd);
    }

    pub fn avx2() -> Kernels {
        set!(avx2, KernelTier::Avx2)
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
                    x4: |a, b, y, m| unsafe { z::$f::<4>(a, b, y, m) },
                    x16: |a, b, y, m| unsafe { z::$f::<16>(a, b, y, m) },
                })
            };
        }
        Kernels {
            tiles2_q5_0: pair!(tiles2_q5_0),
            tiles2_q8_0: pair!(tiles2_q8_0),
            tiles2_q4_0: pair!(tiles2_q4_0),
            tiles2_iq4nl: pair!(tiles2_iq4nl),
            tiles2_q4_1: pair!(tiles2_q4_1),
            tiles2_q5_1: pair!(tiles2_q5_1),
            tiles2_iq4xs: pair!(tiles2_iq4xs),
            gemm_f32: |w, a, k, o| unsafe { crate::quant::x86_gemm::avx512::gemm_f32(w, a, k, o) },
            gemm_bf16: |w, a, k, o| unsafe {
                crate::quant::x86_gemm::avx512::gemm_bf16(w, a, k, o)
            },
            gemm_f16: |w, a, k, o| unsafe { crate::quant::x86_gemm::avx512::gemm_f16(w, a, k, o) },
            ..set!(vnni, KernelTier::Avx512Vnni)
        }
    }
}
