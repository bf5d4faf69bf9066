//! Every kernel set this CPU supports against the scalar reference, on seeded random inputs of
//! awkward sizes (one block, odd block counts, large magnitudes, zero blocks), and the scalar
//! dot products against dequantize-then-f32 within each format's quantization error.
#![allow(clippy::unwrap_used)] // test and debug code: a panic is the failure report

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rill_engine::quant::blocks::*;
use rill_engine::quant::{kquants, scalar, Kernels};

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
        let (a, b) = (scalar::ggml_expf(x), x.exp());
        assert!(
            (a - b).abs() <= 4.0 * f32::EPSILON * b,
            "exp({x}): {a} vs {b}"
        );
    }
    assert_eq!(scalar::ggml_expf(-200.0), 0.0);
    assert_eq!(scalar::ggml_expf(200.0), f32::INFINITY);
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
                (k.quantize_q8_0)(&x, &mut b);
                for (p, q) in a.iter().zip(&b) {
                    assert_eq!((p.d, p.qs), (q.d, q.qs), "{} q8_0", k.tier);
                }
                let mut a = vec![BlockQ8_1::default(); nb];
                let mut b = vec![BlockQ8_1::default(); nb];
                scalar::quantize_q8_1(&x, &mut a);
                (k.quantize_q8_1)(&x, &mut b);
                for (p, q) in a.iter().zip(&b) {
                    assert_eq!((p.d, p.s, p.qs), (q.d, q.s, q.qs), "{} q8_1", k.tier);
                }
            }
        }
        // an all-zero block
        let x = vec![0f32; QK];
        let mut b = vec![BlockQ8_1::default(); 1];
        (k.quantize_q8_1)(&x, &mut b);
        assert!(b[0].qs.iter().all(|&q| q == 0));
    }
}

#[test]
fn simd_dots_match_scalar() {
    let mut rng = StdRng::seed_from_u64(2);
    let sets = Kernels::all_supported();
    let s = Kernels::scalar();
    for k in &sets {
        for &nb in &BLOCK_COUNTS {
            let x = rand_f32(&mut rng, nb * QK, 4.0);
            let mut a8 = vec![BlockQ8_0::default(); nb];
            let mut a81 = vec![BlockQ8_1::default(); nb];
            scalar::quantize_q8_0(&x, &mut a8);
            scalar::quantize_q8_1(&x, &mut a81);
            let w40: Vec<BlockQ4_0> = rand_bytes(&mut rng, nb, |b: &mut BlockQ4_0, r| {
                b.d = f16r(r, -0.1, 0.1)
            });
            let w41: Vec<BlockQ4_1> = rand_bytes(&mut rng, nb, |b: &mut BlockQ4_1, r| {
                b.d = f16r(r, 0.0, 0.1);
                b.m = f16r(r, -1.0, 0.0);
            });
            let w80: Vec<BlockQ8_0> = rand_bytes(&mut rng, nb, |b: &mut BlockQ8_0, r| {
                b.d = f16r(r, -0.01, 0.01)
            });
            // The 32-block formats and the f16 dot share one summation order: bit-identical.
            assert_eq!(
                (s.dot_q4_0_q8_0)(&w40, &a8).to_bits(),
                (k.dot_q4_0_q8_0)(&w40, &a8).to_bits(),
                "{} q4_0 nb={nb}",
                k.tier
            );
            assert_eq!(
                (s.dot_q4_1_q8_1)(&w41, &a81).to_bits(),
                (k.dot_q4_1_q8_1)(&w41, &a81).to_bits(),
                "{} q4_1 nb={nb}",
                k.tier
            );
            assert_eq!(
                (s.dot_q8_0_q8_0)(&w80, &a8).to_bits(),
                (k.dot_q8_0_q8_0)(&w80, &a8).to_bits(),
                "{} q8_0 nb={nb}",
                k.tier
            );
            let w41b: Vec<Vec<BlockQ4_1>> = (0..4)
                .map(|i| {
                    if i == 0 {
                        w41.clone()
                    } else {
                        rand_bytes(&mut rng, nb, |b: &mut BlockQ4_1, r| {
                            b.d = f16r(r, 0.0, 0.1);
                            b.m = f16r(r, -1.0, 0.0);
                        })
                    }
                })
                .collect();
            // 2 rows x 4 activation rows, scales widened through QuantActs.
            let xs: Vec<f32> = (0..4)
                .flat_map(|_| rand_f32(&mut rng, nb * QK, 3.0))
                .collect();
            let mut acts = rill_engine::quant::QuantActs::new(rill_engine::quant::ActFormat::Q8_1);
            acts.quantize(k, &xs, 4, nb * QK);
            let rows: Vec<&[BlockQ8_1]> = (0..4).map(|t| unsafe_cast(acts.row(t))).collect();
            let sc = |t: usize| acts.row_scales(t);
            let got = (k.dot2x4_q4_1_q8_1)(
                [&w41b[1], &w41b[2]],
                [rows[0], rows[1], rows[2], rows[3]],
                [sc(0), sc(1), sc(2), sc(3)],
            );
            for i in 0..2 {
                for t in 0..4 {
                    assert_eq!(
                        got[i][t].to_bits(),
                        (s.dot_q4_1_q8_1)(&w41b[i + 1], rows[t]).to_bits(),
                        "{} dot2x4 q4_1",
                        k.tier
                    );
                }
            }
            let mut acts8 = rill_engine::quant::QuantActs::new(rill_engine::quant::ActFormat::Q8_0);
            acts8.quantize(k, &xs, 4, nb * QK);
            let rows8: Vec<&[BlockQ8_0]> = (0..4).map(|t| unsafe_cast(acts8.row(t))).collect();
            let sc8 = |t: usize| acts8.row_scales(t);
            let got = (k.dot2x4_q8_0_q8_0)(
                [&w80, &w80],
                [rows8[0], rows8[1], rows8[2], rows8[3]],
                [sc8(0), sc8(1), sc8(2), sc8(3)],
            );
            for t in 0..4 {
                assert_eq!(
                    got[1][t].to_bits(),
                    (s.dot_q8_0_q8_0)(&w80, rows8[t]).to_bits(),
                    "{} dot2x4 q8_0",
                    k.tier
                );
            }
            let xf = rand_f32(&mut rng, nb * QK + 3, 1.0);
            let yf = rand_f32(&mut rng, nb * QK + 3, 1.0);
            assert!(
                close((s.dot_f32)(&xf, &yf), (k.dot_f32)(&xf, &yf), 1e-5),
                "{} f32",
                k.tier
            );
            let xh: Vec<u16> = xf.iter().map(|&v| f32_to_f16(v)).collect();
            let yh: Vec<u16> = yf.iter().map(|&v| f32_to_f16(v)).collect();
            assert_eq!(
                (s.dot_f16_f16)(&xh, &yh).to_bits(),
                (k.dot_f16_f16)(&xh, &yh).to_bits(),
                "{} f16",
                k.tier
            );
            let g = rand_f32(&mut rng, nb * QK + 5, 30.0);
            let (mut g1, mut g2) = (g.clone(), g.clone());
            (s.swiglu)(&mut g1, &yf[..g.len().min(yf.len())]);
            (k.swiglu)(&mut g2, &yf[..g.len().min(yf.len())]);
            assert_eq!(g1, g2, "{} swiglu", k.tier);
        }
        for nbk in [1usize, 2, 3] {
            let x = rand_f32(&mut rng, nbk * QK_K, 2.0);
            let mut a = vec![BlockQ8K::default(); nbk];
            scalar::quantize_q8k(&x, &mut a);
            let w4k: Vec<BlockQ4K> = rand_bytes(&mut rng, nbk, |b: &mut BlockQ4K, r| {
                b.d = f16r(r, 0.0, 0.01);
                b.dmin = f16r(r, 0.0, 0.01);
            });
            let w6k: Vec<BlockQ6K> = rand_bytes(&mut rng, nbk, |b: &mut BlockQ6K, r| {
                b.d = f16r(r, -0.01, 0.01)
            });
            assert!(
                close((s.dot_q4k_q8k)(&w4k, &a), (k.dot_q4k_q8k)(&w4k, &a), 1e-5),
                "{} q4k",
                k.tier
            );
            assert!(
                close((s.dot_q6k_q8k)(&w6k, &a), (k.dot_q6k_q8k)(&w6k, &a), 1e-5),
                "{} q6k",
                k.tier
            );
        }
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
