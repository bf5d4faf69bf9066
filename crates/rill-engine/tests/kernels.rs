//! Every kernel set this CPU supports against the scalar reference, on seeded random inputs of
//! awkward sizes (one block, odd block counts, large magnitudes, zero blocks), and the scalar
//! dot products against dequantize-then-f32 within each format's quantization error. The
//! interleaved tiles: packing is exactly invertible, and the tile GEMM (4 activation rows) and
//! GEMV (1 row) of every tier give the bits of the scalar row-by-row dot products on the
//! original GGUF blocks. Attention: every tier gives the scalar reference's bits.
#![allow(clippy::unwrap_used)] // test and debug code: a panic is the failure report

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rill_engine::nn::attention::{AttendBlock, KvRows};
use rill_engine::nn::expf;
use rill_engine::quant::blocks::*;
use rill_engine::quant::repack::{Tiled, Tiles};
use rill_engine::quant::{kquants, scalar, ActFormat, ActMeta, Kernels, QuantActs};

fn rand_f32(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

fn rand_bytes<T: Copy>(
    rng: &mut StdRng,
    n: usize,
    fix_scales: impl Fn(&mut T, &mut StdRng),
) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    let mut bytes = vec![0u8; n * size];
    rng.fill(&mut bytes[..]);
    // SAFETY: T is a plain-old-data block (integers only), any bit pattern is valid.
    let mut v: Vec<T> = (0..n)
        .map(|i| unsafe { std::ptr::read_unaligned(bytes[i * size..].as_ptr().cast::<T>()) })
        .collect();
    for b in v.iter_mut() {
        fix_scales(b, rng);
    }
    v
}

fn f16r(rng: &mut StdRng, lo: f32, hi: f32) -> u16 {
    f32_to_f16(lo + rng.gen::<f32>() * (hi - lo))
}

/// Views a quantized activation row as its blocks (rows are 8-byte aligned by QuantActs).
fn unsafe_cast<T>(b: &[u8]) -> &[T] {
    assert_eq!(b.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    // SAFETY: alignment checked; T is a POD activation block and b holds whole blocks.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len() / std::mem::size_of::<T>()) }
}

const BLOCK_COUNTS: [usize; 5] = [1, 2, 3, 18, 48];

fn close(a: f32, b: f32, rel: f32) -> bool {
    (a - b).abs() <= rel * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn ggml_expf_is_accurate() {
    for i in -1700..1760 {
        let x = i as f32 * 0.05; // -85..88: results stay finite normal floats
        let (a, b) = (expf::ggml_expf(x), x.exp());
        assert!(
            (a - b).abs() <= 4.0 * f32::EPSILON * b,
            "exp({x}): {a} vs {b}"
        );
    }
    assert_eq!(expf::ggml_expf(-200.0), 0.0);
    assert_eq!(expf::ggml_expf(200.0), f32::INFINITY);
}

#[test]
fn quantizers_match_scalar_exactly() {
    let mut rng = StdRng::seed_from_u64(1);
    for k in Kernels::all_supported() {
        for &nb in &BLOCK_COUNTS {
            for scale in [1e-3f32, 1.0, 300.0] {
                let mut x = rand_f32(&mut rng, nb * QK, scale);
                x[0] = 0.5 * scale; // exact ties exercise the rounding mode
                let mut a = vec![BlockQ8_0::default(); nb];
                let mut b = vec![BlockQ8_0::default(); nb];
                scalar::quantize_q8_0(&x, &mut a);
                k.quantize_q8_0(&x, &mut b);
                for (p, q) in a.iter().zip(&b) {
                    assert_eq!((p.d, p.qs), (q.d, q.qs), "{} q8_0", k.tier());
                }
                let mut a = vec![BlockQ8_1::default(); nb];
                let mut b = vec![BlockQ8_1::default(); nb];
                scalar::quantize_q8_1(&x, &mut a);
                k.quantize_q8_1(&x, &mut b);
                for (p, q) in a.iter().zip(&b) {
                    assert_eq!((p.d, p.s, p.qs), (q.d, q.s, q.qs), "{} q8_1", k.tier());
                }
            }
        }
        // an all-zero block
        let x = vec![0f32; QK];
        let mut b = vec![BlockQ8_1::default(); 1];
        k.quantize_q8_1(&x, &mut b);
        assert!(b[0].qs.iter().all(|&q| q == 0));
    }
}

#[test]
fn q8k_quantizer_matches_scalar_exactly() {
    let mut rng = StdRng::seed_from_u64(11);
    for k in Kernels::all_supported() {
        for scale in [1e-3f32, 1.0, 300.0] {
            let mut x = rand_f32(&mut rng, 6 * QK_K, scale);
            // Block 1: the largest magnitude twice with opposite signs (the first one's sign
            // sets the scale's); block 2: ties at half steps; block 3: all zero; block 4: -0.0
            // and one tiny value; block 5: a NaN beside ordinary values.
            x[QK_K + 7] = -2.0 * scale;
            x[QK_K + 200] = 2.0 * scale;
            for (i, v) in x[2 * QK_K..3 * QK_K].iter_mut().enumerate() {
                *v = (i as f32 - 128.0) * 0.5;
            }
            x[3 * QK_K..4 * QK_K].fill(0.0);
            x[4 * QK_K..5 * QK_K].fill(-0.0);
            x[4 * QK_K + 31] = 1e-30;
            x[5 * QK_K + 3] = f32::NAN;
            let mut a = vec![BlockQ8K::default(); 6];
            let mut b = vec![BlockQ8K::default(); 6];
            scalar::quantize_q8k(&x, &mut a);
            k.quantize_q8k(&x, &mut b);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert_eq!(
                    (p.d.to_bits(), p.qs, p.bsums),
                    (q.d.to_bits(), q.qs, q.bsums),
                    "{} q8k block {i} at scale {scale}",
                    k.tier()
                );
            }
        }
    }
}

/// rill's `expf` is glibc's FMA build bit for bit: against this machine's libm (what `f32::exp`
/// calls, and llama.cpp's attention) over every 31st float of the softmax's range (-inf..=0,
/// including the subnormal results below -87.3), every 97th positive one, and the special
/// values. Only where libm is glibc's FMA variant (a GNU target on a CPU with FMA).
#[test]
fn expf_is_glibcs() {
    let glibc_fma =
        cfg!(all(target_env = "gnu", target_arch = "x86_64")) && Kernels::all_supported().len() > 1;
    if !glibc_fma {
        eprintln!("skipped: libm here is not glibc's FMA build");
        return;
    }
    let check = |x: f32| {
        let (want, got) = (x.exp(), expf::expf(x));
        assert!(
            want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
            "expf({x:e}) = {got:e}, libm {want:e}"
        );
    };
    // Negative floats: 0x8000_0000 (-0.0) up to 0xff80_0000 (-inf).
    for b in (0x8000_0000u32..=0xff80_0000).step_by(31) {
        check(f32::from_bits(b));
    }
    for b in (0u32..0x7f80_0000).step_by(97) {
        check(f32::from_bits(b));
    }
    for x in [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        88.72,
        -103.5,
        -103.0,
        -88.0,
        -87.5,
    ] {
        check(x);
    }
}

#[test]
fn simd_dots_match_scalar() {
    let mut rng = StdRng::seed_from_u64(2);
    let sets = Kernels::all_supported();
    let s = Kernels::scalar();
    for k in &sets {
        for &nb in &BLOCK_COUNTS {
            let xf = rand_f32(&mut rng, nb * QK + 3, 1.0);
            let yf = rand_f32(&mut rng, nb * QK + 3, 1.0);
            assert!(
                close(s.dot_f32(&xf, &yf), k.dot_f32(&xf, &yf), 1e-5),
                "{} f32",
                k.tier()
            );
            let xh: Vec<u16> = xf.iter().map(|&v| f32_to_f16(v)).collect();
            let yh: Vec<u16> = yf.iter().map(|&v| f32_to_f16(v)).collect();
            assert_eq!(
                s.dot_f16_f16(&xh, &yh).to_bits(),
                k.dot_f16_f16(&xh, &yh).to_bits(),
                "{} f16",
                k.tier()
            );
            let g = rand_f32(&mut rng, nb * QK + 5, 30.0);
            let (mut g1, mut g2) = (g.clone(), g.clone());
            s.swiglu(&mut g1, &yf[..g.len().min(yf.len())]);
            k.swiglu(&mut g2, &yf[..g.len().min(yf.len())]);
            assert_eq!(g1, g2, "{} swiglu", k.tier());
        }
    }
}

/// Every tier's SwiGLU equals the scalar reference bit for bit, past ggml's `expf` limits too:
/// gates where `exp(-g)` overflows or underflows (|n| > 192), infinities, zeros of both signs,
/// subnormals, and lengths with a scalar tail.
#[test]
fn swiglu_matches_scalar_bits_at_the_extremes() {
    let mut rng = StdRng::seed_from_u64(8);
    let s = Kernels::scalar();
    let mut g = rand_f32(&mut rng, 200, 150.0);
    g.extend([
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        88.0,
        -88.0,
        133.0,
        -133.5,
        140.0,
        -140.0,
        1e4,
        -1e4,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        87.3,
    ]);
    let u = rand_f32(&mut rng, g.len(), 2.0);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for n in [g.len(), g.len() - 3, 7, 1] {
        let mut want = g[..n].to_vec();
        s.swiglu(&mut want, &u[..n]);
        for k in Kernels::all_supported() {
            let mut got = g[..n].to_vec();
            k.swiglu(&mut got, &u[..n]);
            assert_eq!(bits(&got), bits(&want), "{} swiglu n={n}", k.tier());
        }
    }
}

/// F16 activations (rounded by `half`'s slice conversion) are `f32_to_f16` per element, and
/// their f32 rows (`wide_rows`) are those values widened: ties, subnormals, overflow and signed
/// zeros included.
#[test]
fn f16_activations_round_and_widen_per_element() {
    let mut rng = StdRng::seed_from_u64(5);
    let cols = 1024;
    let mut x = rand_f32(&mut rng, 3 * cols, 70_000.0);
    let special = [
        0.0,
        -0.0,
        65504.0,
        65520.0,
        -65520.0,
        1e-8,
        -6.0e-5,
        5.96e-8,
        2.98e-8,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    x[..special.len()].copy_from_slice(&special);
    for v in x[cols..2 * cols].iter_mut() {
        *v *= 1e-9;
    }
    let k = Kernels::detect();
    let mut acts = QuantActs::new(ActFormat::F16);
    acts.quantize(&k, &x, 3, cols);
    let wide = acts.wide_rows(0..3);
    for r in 0..3 {
        let got: &[u16] = unsafe_cast(acts.row(r));
        for (c, &v) in x[r * cols..(r + 1) * cols].iter().enumerate() {
            assert_eq!(got[c], f32_to_f16(v), "row {r} col {c}: {v:e}");
            assert_eq!(wide[r * cols + c].to_bits(), f16_to_f32(got[c]).to_bits());
        }
    }
}

/// The float GEMMs of every tier give each pair the single-row dot's bits (the scalar one on
/// the rounded activations), for awkward row counts, batches and lengths with and without tails.
#[test]
fn float_gemms_match_the_single_row_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    let s = Kernels::scalar();
    for k in Kernels::all_supported() {
        for (cols, rows, batch) in [
            (64usize, 1usize, 1usize),
            (96, 3, 2),
            (100, 17, 7),
            (1120, 31, 33),
            (1157, 5, 13),
            (576, 8, 6),
            (640, 4, 12),
            // Several weight panels (the last one short, an odd row count), activation
            // tiles with 1-3 leftover rows, and a tail past the lanes.
            (576, 37, 20),
            (640, 30, 9),
            (600, 29, 11),
        ] {
            let w = rand_f32(&mut rng, rows * cols, 1.0);
            let a = rand_f32(&mut rng, batch * cols, 1.0);
            let mut got = vec![0f32; rows * batch];
            k.gemm_f32(&w, &a, cols, &mut got);
            for (j, ar) in a.chunks(cols).enumerate() {
                for (i, wr) in w.chunks(cols).enumerate() {
                    let want = s.dot_f32(wr, ar);
                    assert_eq!(
                        got[j * rows + i].to_bits(),
                        want.to_bits(),
                        "{} f32 {cols}x{rows}x{batch}",
                        k.tier()
                    );
                }
            }
            for (name, conv, widen, dot, gemm) in [
                (
                    "f16",
                    f32_to_f16 as fn(f32) -> u16,
                    f16_to_f32 as fn(u16) -> f32,
                    Kernels::dot_f16_f16 as fn(&Kernels, &[u16], &[u16]) -> f32,
                    Kernels::gemm_f16 as fn(&Kernels, &[u16], &[f32], usize, &mut [f32]),
                ),
                (
                    "bf16",
                    f32_to_bf16,
                    bf16_to_f32,
                    Kernels::dot_bf16,
                    Kernels::gemm_bf16,
                ),
            ] {
                let wh: Vec<u16> = w.iter().map(|&v| conv(v)).collect();
                let ah: Vec<u16> = a.iter().map(|&v| conv(v)).collect();
                let aw: Vec<f32> = ah.iter().map(|&v| widen(v)).collect();
                gemm(&k, &wh, &aw, cols, &mut got);
                for (j, ar) in ah.chunks(cols).enumerate() {
                    for (i, wr) in wh.chunks(cols).enumerate() {
                        let want = dot(&s, wr, ar);
                        assert_eq!(
                            got[j * rows + i].to_bits(),
                            want.to_bits(),
                            "{} {name} {cols}x{rows}x{batch} pair ({i}, {j})",
                            k.tier()
                        );
                    }
                }
            }
        }
        eprintln!(
            "{}: float GEMMs bit-identical to the single-row dots",
            k.tier()
        );
    }
}

/// The scalar reference against plain f32 arithmetic on dequantized weights: the only
/// difference is the 8-bit activation rounding, bounded by a small fraction of |w|.|x|.
#[test]
fn scalar_dots_match_dequantized_f32() {
    let mut rng = StdRng::seed_from_u64(3);
    let nb = 8;
    let x = rand_f32(&mut rng, nb * QK, 1.0);
    let abs_x: f32 = x.iter().map(|v| v.abs()).sum();
    let mut a81 = vec![BlockQ8_1::default(); nb];
    scalar::quantize_q8_1(&x, &mut a81);
    let w41: Vec<BlockQ4_1> = rand_bytes(&mut rng, nb, |b: &mut BlockQ4_1, r| {
        b.d = f16r(r, 0.0, 0.1);
        b.m = f16r(r, -0.8, 0.0);
    });
    let mut wf = vec![0f32; nb * QK];
    scalar::dequantize_q4_1(&w41, &mut wf);
    let exact: f32 = wf.iter().zip(&x).map(|(a, b)| a * b).sum();
    let got = scalar::dot_q4_1_q8_1(&w41, &a81);
    let wmax = wf.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        (exact - got).abs() <= 0.01 * wmax * abs_x,
        "q4_1: {exact} vs {got}"
    );

    let xk = rand_f32(&mut rng, 2 * QK_K, 1.0);
    let mut ak = vec![BlockQ8K::default(); 2];
    scalar::quantize_q8k(&xk, &mut ak);
    let w6k: Vec<BlockQ6K> = rand_bytes(&mut rng, 2, |b: &mut BlockQ6K, r| {
        b.d = f16r(r, -0.01, 0.01)
    });
    let mut wf = vec![0f32; 2 * QK_K];
    kquants::dequantize_q6k(&w6k, &mut wf);
    let exact: f32 = wf.iter().zip(&xk).map(|(a, b)| a * b).sum();
    let got = kquants::dot_q6k_q8k(&w6k, &ak);
    let wmax = wf.iter().fold(0f32, |m, v| m.max(v.abs()));
    let abs_x: f32 = xk.iter().map(|v| v.abs()).sum();
    assert!(
        (exact - got).abs() <= 0.01 * wmax * abs_x,
        "q6k: {exact} vs {got}"
    );

    let w4k: Vec<BlockQ4K> = rand_bytes(&mut rng, 2, |b: &mut BlockQ4K, r| {
        b.d = f16r(r, 0.0, 0.01);
        b.dmin = f16r(r, 0.0, 0.01);
    });
    kquants::dequantize_q4k(&w4k, &mut wf);
    let exact: f32 = wf.iter().zip(&xk).map(|(a, b)| a * b).sum();
    let got = kquants::dot_q4k_q8k(&w4k, &ak);
    let wmax = wf.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        (exact - got).abs() <= 0.01 * wmax * abs_x,
        "q4k: {exact} vs {got}"
    );
}

/// Random blocks of 8 * `tile_rows` - `short` rows (the last tile zero-padded) of `nb` blocks.
fn rows_of<T: Copy>(
    rng: &mut StdRng,
    rows: usize,
    nb: usize,
    fix: impl Fn(&mut T, &mut StdRng) + Copy,
) -> Vec<Vec<T>> {
    (0..rows).map(|_| rand_bytes(rng, nb, fix)).collect()
}

/// Packs `rows`, checks the round trip, and returns the tiles.
fn packed<T: Tiled>(rows: &[Vec<T::Row>], nb: usize) -> Tiles
where
    T::Row: PartialEq + std::fmt::Debug,
{
    let tiles = Tiles::pack::<T>(rows.len(), nb, |r| &rows[r]);
    assert_eq!(tiles.tile_rows, rows.len().div_ceil(TILE_ROWS));
    for (r, row) in rows.iter().enumerate() {
        let t = tiles.tile_row::<T>(r / TILE_ROWS);
        let back: Vec<T::Row> = t.iter().map(|tile| tile.unpack(r % TILE_ROWS)).collect();
        assert_eq!(&back, row, "row {r} round trip");
    }
    tiles
}

/// Every tier's tile kernels against the scalar dot of each original row, for 1 and 4
/// activation rows.
macro_rules! check_tiles {
    ($rng:expr, $tile:ty, $act:ty, $fmt:expr, $dot:path, $fix:expr) => {{
        for nb in [1usize, 3, 18, 35, 48] {
            let rows = rows_of($rng, 13, nb, $fix);
            let tiles = packed::<$tile>(&rows, nb);
            let cols = nb * <$tile as Tiled>::ELEMS;
            let x = rand_f32($rng, 4 * cols, 3.0);
            for k in Kernels::all_supported() {
                let mut acts = QuantActs::new($fmt);
                acts.quantize(&k, &x, 4, cols);
                let a: Vec<&[$act]> = (0..4).map(|t| unsafe_cast(acts.row(t))).collect();
                let m: Vec<ActMeta<'_>> = (0..4).map(|t| acts.row_meta(t)).collect();
                for rt in 0..tiles.tile_rows {
                    let w = tiles.tile_row::<$tile>(rt);
                    let got4 = k.tiles::<$tile>().x4.mul(
                        w,
                        &[a[0], a[1], a[2], a[3]],
                        &[m[0], m[1], m[2], m[3]],
                    );
                    for t in 0..4 {
                        let got1 = k.tiles::<$tile>().x1.mul(w, &[a[t]], &[m[t]]);
                        for j in 0..TILE_ROWS {
                            let r = rt * TILE_ROWS + j;
                            let want = if r < rows.len() {
                                $dot(&rows[r], a[t])
                            } else {
                                0.0
                            };
                            let ctx = format!(
                                "{} {} nb={nb} row {r} act {t}",
                                k.tier(),
                                stringify!($tile)
                            );
                            assert_eq!(got4[t][j].to_bits(), want.to_bits(), "GEMM {ctx}");
                            assert_eq!(got1[0][j].to_bits(), want.to_bits(), "GEMV {ctx}");
                        }
                    }
                }
            }
        }
    }};
}

#[test]
fn tiles_round_trip_and_match_row_dots_on_every_tier() {
    let mut rng = StdRng::seed_from_u64(20);
    let rng = &mut rng;
    check_tiles!(
        rng,
        TileQ4K,
        BlockQ8K,
        ActFormat::Q8K,
        kquants::dot_q4k_q8k,
        |b: &mut BlockQ4K, r: &mut StdRng| {
            b.d = f16r(r, 0.0, 0.05);
            b.dmin = f16r(r, 0.0, 0.05);
        }
    );
    check_tiles!(
        rng,
        TileQ5K,
        BlockQ8K,
        ActFormat::Q8K,
        kquants::dot_q5k_q8k,
        |b: &mut BlockQ5K, r: &mut StdRng| {
            b.d = f16r(r, 0.0, 0.05);
            b.dmin = f16r(r, 0.0, 0.05);
        }
    );
    check_tiles!(
        rng,
        TileQ6K,
        BlockQ8K,
        ActFormat::Q8K,
        kquants::dot_q6k_q8k,
        |b: &mut BlockQ6K, r: &mut StdRng| b.d = f16r(r, -0.05, 0.05)
    );
    check_tiles!(
        rng,
        TileQ2K,
        BlockQ8K,
        ActFormat::Q8K,
        kquants::dot_q2k_q8k,
        |b: &mut BlockQ2K, r: &mut StdRng| {
            b.d = f16r(r, 0.0, 0.05);
            b.dmin = f16r(r, 0.0, 0.05);
        }
    );
    check_tiles!(
        rng,
        TileQ3K,
        BlockQ8K,
        ActFormat::Q8K,
        kquants::dot_q3k_q8k,
        |b: &mut BlockQ3K, r: &mut StdRng| b.d = f16r(r, -0.05, 0.05)
    );
    check_tiles!(
        rng,
        TileIq4Xs,
        BlockQ8K,
        ActFormat::Q8K,
        kquants::dot_iq4xs_q8k,
        |b: &mut BlockIq4Xs, r: &mut StdRng| b.d = f16r(r, -0.05, 0.05)
    );
    check_tiles!(
        rng,
        TileQ4_0,
        BlockQ8_0,
        ActFormat::Q8_0,
        scalar::dot_q4_0_q8_0,
        |b: &mut BlockQ4_0, r: &mut StdRng| b.d = f16r(r, -0.1, 0.1)
    );
    check_tiles!(
        rng,
        TileQ4_1,
        BlockQ8_1,
        ActFormat::Q8_1,
        scalar::dot_q4_1_q8_1,
        |b: &mut BlockQ4_1, r: &mut StdRng| {
            b.d = f16r(r, 0.0, 0.1);
            b.m = f16r(r, -1.0, 0.0);
        }
    );
    check_tiles!(
        rng,
        TileQ5_0,
        BlockQ8_0,
        ActFormat::Q8_0,
        scalar::dot_q5_0_q8_0,
        |b: &mut BlockQ5_0, r: &mut StdRng| b.d = f16r(r, -0.1, 0.1)
    );
    check_tiles!(
        rng,
        TileQ5_1,
        BlockQ8_1,
        ActFormat::Q8_1,
        scalar::dot_q5_1_q8_1,
        |b: &mut BlockQ5_1, r: &mut StdRng| {
            b.d = f16r(r, 0.0, 0.1);
            b.m = f16r(r, -1.0, 0.0);
        }
    );
    check_tiles!(
        rng,
        TileQ8_0,
        BlockQ8_0,
        ActFormat::Q8_0,
        scalar::dot_q8_0_q8_0,
        |b: &mut BlockQ8_0, r: &mut StdRng| b.d = f16r(r, -0.01, 0.01)
    );
    check_tiles!(
        rng,
        TileIq4Nl,
        BlockQ8_0,
        ActFormat::Q8_0,
        scalar::dot_iq4nl_q8_0,
        |b: &mut BlockIq4Nl, r: &mut StdRng| b.d = f16r(r, -0.1, 0.1)
    );
}

/// An f16 cache of `n_keys` random key and value rows of `hd` elements: keys growing along
/// the sequence so later scores often raise the running maximum, rows stored out of order (as
/// the paged cache does). Returns keys, values and each position's row offset.
fn f16_cache(rng: &mut StdRng, n_keys: usize, hd: usize) -> (Vec<u16>, Vec<u16>, Vec<usize>) {
    let f16s = |rng: &mut StdRng, n: usize, sc: f32| -> Vec<u16> {
        rand_f32(rng, n, sc)
            .iter()
            .map(|&v| f32_to_f16(v))
            .collect()
    };
    let mut keys = f16s(rng, n_keys * hd, 1.0);
    for (j, k) in keys.chunks_mut(hd).enumerate() {
        for v in k.iter_mut() {
            *v = f32_to_f16(f16_to_f32(*v) * (1.0 + j as f32 * 0.01));
        }
    }
    let values = f16s(rng, n_keys * hd, 2.0);
    let offsets = (0..n_keys).map(|j| ((j * 7) % n_keys) * hd).collect();
    (keys, values, offsets)
}

/// Every tier's attention against the scalar reference, bit for bit: head dims with and without
/// the reorganised path (multiples of 64), KV groups of 1-4 query heads, key counts around the
/// key-block size, scores that keep rescaling the accumulator.
#[test]
fn attention_matches_scalar_on_every_tier() {
    let mut rng = StdRng::seed_from_u64(21);
    let s = Kernels::scalar();
    for hd in [64usize, 128, 96, 256] {
        // llama's 1/sqrt(head_dim), and 1 (Gemma scales the queries beforehand).
        let scale = if hd == 256 {
            1.0
        } else {
            1.0 / (hd as f32).sqrt()
        };
        for group in [1usize, 3, 4] {
            for n_keys in [1usize, 5, 127, 128, 129, 300] {
                let (keys, values, offsets) = f16_cache(&mut rng, n_keys, hd);
                let kv = KvRows {
                    keys: &keys,
                    values: &values,
                    offsets: &offsets,
                };
                let q = rand_f32(&mut rng, (group + 1) * hd, 3.0);
                let heads = 1..group + 1;
                let mut want = vec![0f32; (group + 1) * hd];
                s.attend(&q, heads.clone(), hd, scale, &kv, &mut want);
                for k in Kernels::all_supported() {
                    let mut got = vec![0f32; (group + 1) * hd];
                    k.attend(&q, heads.clone(), hd, scale, &kv, &mut got);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{} hd={hd} group={group} keys={n_keys}",
                        k.tier()
                    );
                }
            }
        }
    }
}

/// Every tier's block attention (runs of consecutive tokens sharing the widened K/V rows)
/// against the per-token scalar reference, bit for bit: runs of 1-11 tokens, causal ranges
/// ending inside and at the edges of the kernels' 64-key blocks, sliding windows (ranges that
/// start past 0 and move), head dims with and without the block path, KV groups of 1-5; and
/// queries large enough that score differences pass 88, where `expf` takes its special cases
/// (underflow to subnormals and zero) in the vector exponentials.
#[test]
fn block_attention_matches_the_per_token_reference_on_every_tier() {
    let mut rng = StdRng::seed_from_u64(55);
    let s = Kernels::scalar();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (hd, q_scale) in [64usize, 128, 96, 256]
        .into_iter()
        .flat_map(|hd| [(hd, 3.0f32), (hd, 300.0)])
    {
        for group in [1usize, 3, 5] {
            for (tokens, before, window) in [
                (1, 0, None),
                (3, 61, None),
                (8, 56, None),
                (11, 120, None),
                (8, 200, Some(70)),
                (5, 0, Some(3)),
            ] {
                let n_keys = before + tokens;
                let (keys, values, offsets) = f16_cache(&mut rng, n_keys, hd);
                // Token i sits at position before + i and sees the window ending there.
                let ranges: Vec<std::ops::Range<usize>> = (0..tokens)
                    .map(|i| {
                        let pos = before + i;
                        window.map_or(0, |w: usize| (pos + 1).saturating_sub(w))..pos + 1
                    })
                    .collect();
                // One head more than the group, as the group of KV head 1 sits in the row.
                let stride = (group + 1) * hd;
                let q = rand_f32(&mut rng, tokens * stride, q_scale);
                let block = AttendBlock {
                    q: &q,
                    stride,
                    heads: 1..group + 1,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    kv: KvRows {
                        keys: &keys,
                        values: &values,
                        offsets: &offsets,
                    },
                    keys: &ranges,
                };
                let mut want = vec![0f32; tokens * stride];
                for (i, r) in ranges.iter().enumerate() {
                    let kv = KvRows {
                        keys: &keys,
                        values: &values,
                        offsets: &offsets[r.clone()],
                    };
                    let row = i * stride..(i + 1) * stride;
                    s.attend(
                        &q[row.clone()],
                        1..group + 1,
                        hd,
                        block.scale,
                        &kv,
                        &mut want[row],
                    );
                }
                for k in Kernels::all_supported() {
                    let mut got = vec![0f32; tokens * stride];
                    k.attend_block(&block, &mut got);
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{} hd={hd} q_scale={q_scale} group={group} tokens={tokens} \
                         before={before} window={window:?}",
                        k.tier()
                    );
                }
            }
        }
    }
}

/// Plain softmax attention in f64 over dequantized rows: what the quantized kernels
/// approximate (their exact arithmetic is checked against the scalar reference below).
fn attention_f64(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], scale: f32) -> Vec<f64> {
    let s: Vec<f64> = keys
        .iter()
        .map(|k| {
            k.iter()
                .zip(q)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale as f64
        })
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
    let z: f64 = w.iter().sum();
    (0..q.len())
        .map(|d| {
            w.iter()
                .zip(values)
                .map(|(w, v)| w * v[d] as f64)
                .sum::<f64>()
                / z
        })
        .collect()
}

/// The Q8_0 and Q4_0 KV caches: the Q4_0 writer on every tier equals ggml's reference
/// quantizer, and every tier's attention over quantized rows equals the scalar reference bit
/// for bit (head dims 32-256, groups of 1-4 heads, rows out of order), and stays close to
/// exact attention over the dequantized rows (which catches a wrong element order).
#[test]
fn quantized_kv_attention_matches_scalar_on_every_tier() {
    let mut rng = StdRng::seed_from_u64(33);
    let s = Kernels::scalar();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for hd in [32usize, 64, 256] {
        let scale = 1.0 / (hd as f32).sqrt();
        for group in [1usize, 3, 4] {
            for n_keys in [1usize, 5, 129] {
                let nb = hd / QK;
                let kf = rand_f32(&mut rng, n_keys * hd, 1.5);
                let vf = rand_f32(&mut rng, n_keys * hd, 2.0);
                let q = rand_f32(&mut rng, (group + 1) * hd, 3.0);
                let heads = 1..group + 1;
                let offsets: Vec<usize> = (0..n_keys).map(|j| ((j * 7) % n_keys) * nb).collect();
                // Q8_0.
                let zero8 = BlockQ8_0 { d: 0, qs: [0; QK] };
                let (mut k8, mut v8) = (vec![zero8; n_keys * nb], vec![zero8; n_keys * nb]);
                s.quantize_q8_0(&kf, &mut k8);
                s.quantize_q8_0(&vf, &mut v8);
                // Q4_0, checked against every tier's writer.
                let mut k4 = vec![BlockQ4_0::default(); n_keys * nb];
                let mut v4 = vec![BlockQ4_0::default(); n_keys * nb];
                s.quantize_q4_0(&kf, &mut k4);
                s.quantize_q4_0(&vf, &mut v4);
                for k in Kernels::all_supported() {
                    let mut got = vec![BlockQ4_0::default(); n_keys * nb];
                    k.quantize_q4_0(&kf, &mut got);
                    assert_eq!(got, k4, "{} quantize_q4_0", k.tier());
                }
                let rows8 = KvRows {
                    keys: &k8,
                    values: &v8,
                    offsets: &offsets,
                };
                let rows4 = KvRows {
                    keys: &k4,
                    values: &v4,
                    offsets: &offsets,
                };
                let mut want8 = vec![0f32; (group + 1) * hd];
                let mut want4 = want8.clone();
                s.attend_q8_0(&q, heads.clone(), hd, scale, &rows8, &mut want8);
                s.attend_q4_0(&q, heads.clone(), hd, scale, &rows4, &mut want4);
                // Heads one at a time: the grouped walk changes nothing per head.
                for h in heads.clone() {
                    let mut one = vec![0f32; (group + 1) * hd];
                    s.attend_q8_0(&q, h..h + 1, hd, scale, &rows8, &mut one);
                    assert_eq!(
                        bits(&one[h * hd..(h + 1) * hd]),
                        bits(&want8[h * hd..(h + 1) * hd])
                    );
                }
                for k in Kernels::all_supported() {
                    let mut got = vec![0f32; (group + 1) * hd];
                    k.attend_q8_0(&q, heads.clone(), hd, scale, &rows8, &mut got);
                    assert_eq!(
                        bits(&got),
                        bits(&want8),
                        "{} q8_0 hd={hd} group={group} keys={n_keys}",
                        k.tier()
                    );
                    k.attend_q4_0(&q, heads.clone(), hd, scale, &rows4, &mut got);
                    assert_eq!(
                        bits(&got),
                        bits(&want4),
                        "{} q4_0 hd={hd} group={group} keys={n_keys}",
                        k.tier()
                    );
                }
                // Close to exact attention over the rows as stored (positions in offset order).
                let deq8 = |b: &[BlockQ8_0]| {
                    let mut o = vec![0f32; hd];
                    scalar::dequantize_q8_0(b, &mut o);
                    o
                };
                let deq4 = |b: &[BlockQ4_0]| {
                    let mut o = vec![0f32; hd];
                    scalar::dequantize_q4_0(b, &mut o);
                    o
                };
                let at = |o: usize| o..o + nb;
                let (ks8, vs8): (Vec<_>, Vec<_>) = offsets
                    .iter()
                    .map(|&o| (deq8(&k8[at(o)]), deq8(&v8[at(o)])))
                    .unzip();
                let (ks4, vs4): (Vec<_>, Vec<_>) = offsets
                    .iter()
                    .map(|&o| (deq4(&k4[at(o)]), deq4(&v4[at(o)])))
                    .unzip();
                for h in heads.clone() {
                    let qh = &q[h * hd..(h + 1) * hd];
                    for (want, ks, vs, got) in
                        [(&want8, &ks8, &vs8, "q8_0"), (&want4, &ks4, &vs4, "q4_0")]
                    {
                        let exact = attention_f64(qh, ks, vs, scale);
                        for (d, e) in exact.iter().enumerate() {
                            // The query's own Q8_0 rounding moves scores by ~1%.
                            let g = want[h * hd + d] as f64;
                            assert!(
                                (g - e).abs() < 0.05 + 0.05 * e.abs(),
                                "{got} hd={hd} d={d}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The 16-row tile kernels of the lane formats that have one (Q5_0, Q5_1, Q8_0) give every
/// pair the scalar dot's bits, as the 1- and 4-row ones do
/// (`tiles_round_trip_and_match_row_dots_on_every_tier`).
#[test]
fn sixteen_row_tiles_match_row_dots_on_every_tier() {
    let mut rng = StdRng::seed_from_u64(23);
    macro_rules! check16 {
        ($tile:ty, $act:ty, $fmt:expr, $dot:path, $fix:expr) => {{
            let nb = 19;
            let rows = rows_of(&mut rng, 11, nb, $fix);
            let tiles = packed::<$tile>(&rows, nb);
            let x = rand_f32(&mut rng, 16 * nb * QK, 3.0);
            for k in Kernels::all_supported() {
                let mut acts = QuantActs::new($fmt);
                acts.quantize(&k, &x, 16, nb * QK);
                let a: [&[$act]; 16] = std::array::from_fn(|t| unsafe_cast(acts.row(t)));
                let m: [ActMeta<'_>; 16] = std::array::from_fn(|t| acts.row_meta(t));
                for rt in 0..tiles.tile_rows {
                    let x16 = k
                        .tiles::<$tile>()
                        .x16
                        .expect("a 16-row kernel on every tier");
                    let got = x16.mul(tiles.tile_row::<$tile>(rt), &a, &m);
                    for (t, row) in got.iter().enumerate() {
                        for (j, v) in row.iter().enumerate() {
                            let r = rt * TILE_ROWS + j;
                            let want = if r < rows.len() {
                                $dot(&rows[r], a[t])
                            } else {
                                0.0
                            };
                            assert_eq!(
                                v.to_bits(),
                                want.to_bits(),
                                "{} {} row {r} act {t}",
                                k.tier(),
                                stringify!($tile)
                            );
                        }
                    }
                }
            }
        }};
    }
    check16!(
        TileQ5_0,
        BlockQ8_0,
        ActFormat::Q8_0,
        scalar::dot_q5_0_q8_0,
        |b: &mut BlockQ5_0, r: &mut StdRng| b.d = f16r(r, -0.1, 0.1)
    );
    check16!(
        TileQ8_0,
        BlockQ8_0,
        ActFormat::Q8_0,
        scalar::dot_q8_0_q8_0,
        |b: &mut BlockQ8_0, r: &mut StdRng| b.d = f16r(r, -0.01, 0.01)
    );
    check16!(
        TileQ5_1,
        BlockQ8_1,
        ActFormat::Q8_1,
        scalar::dot_q5_1_q8_1,
        |b: &mut BlockQ5_1, r: &mut StdRng| {
            b.d = f16r(r, 0.0, 0.1);
            b.m = f16r(r, -1.0, 0.0);
        }
    );
}

/// The safe wrappers of the one-row float kernels refuse operands of different lengths on
/// every tier (the SIMD code reads both by the first one's length).
#[test]
fn float_primitives_refuse_mismatched_lengths() {
    for k in Kernels::all_supported() {
        let (a16, b16) = (vec![0u16; 64], vec![0u16; 63]);
        let (a32, b32) = (vec![0f32; 64], vec![0f32; 63]);
        let refused =
            |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
        assert!(
            refused(&|| {
                k.dot_f16_f16(&a16, &b16);
            }),
            "{} dot_f16_f16",
            k.tier()
        );
        assert!(
            refused(&|| {
                k.dot_bf16(&a16, &b16);
            }),
            "{} dot_bf16",
            k.tier()
        );
        assert!(
            refused(&|| {
                k.dot_f32(&a32, &b32);
            }),
            "{} dot_f32",
            k.tier()
        );
        assert!(
            refused(&|| k.mad_f16(&mut a16.clone(), &b16, 1.0)),
            "{} mad_f16",
            k.tier()
        );
    }
}
