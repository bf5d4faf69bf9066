//! Every weight format through the public matrix product (`QMatrix::matmul_rows`), on seeded
//! random weights of awkward shapes:
//! - every kernel tier this CPU has gives the scalar reference's bits, for every batch size
//!   1..=33 (so the 4-row and one-row kernels, tile-row padding and leftovers all agree);
//! - a batch gives the same bits as each activation row multiplied alone (batch invariance);
//! - the scalar reference is within the 8-bit activation rounding of the plain f32 product of
//!   the dequantized weights (so the decoding of every format is right, not only consistent).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rill_engine::gguf::GgmlType;
use rill_engine::quant::blocks::{f32_to_bf16, f32_to_f16};
use rill_engine::quant::{ActFormat, Kernels, QMatrix, QuantActs};
use rill_engine::threadpool::ThreadPool;

/// Every format rill computes with, with the byte offsets of its f16 scale fields per block
/// (random bytes there could be NaN or huge; they are rewritten with small finite scales).
const FORMATS: &[(GgmlType, &[usize])] = &[
    (GgmlType::Q4_0, &[0]),
    (GgmlType::Q4_1, &[0, 2]),
    (GgmlType::Q5_0, &[0]),
    (GgmlType::Q5_1, &[0, 2]),
    (GgmlType::Q8_0, &[0]),
    (GgmlType::Iq4Nl, &[0]),
    (GgmlType::Q2K, &[80, 82]),
    (GgmlType::Q3K, &[108]),
    (GgmlType::Q4K, &[0, 2]),
    (GgmlType::Q5K, &[0, 2]),
    (GgmlType::Q6K, &[208]),
    (GgmlType::Iq4Xs, &[0]),
    (GgmlType::F16, &[]),
    (GgmlType::Bf16, &[]),
    (GgmlType::F32, &[]),
];

/// A random weight matrix in `dtype`, in u64 storage (aligned like the mmap'd file).
fn random_weights(
    rng: &mut StdRng,
    dtype: GgmlType,
    scales: &[usize],
    rows: usize,
    cols: usize,
) -> Vec<u64> {
    let (block_elems, block_bytes) = dtype.block_layout().unwrap();
    let n_blocks = rows * cols / block_elems;
    let mut words = vec![0u64; (n_blocks * block_bytes).div_ceil(8)];
    let bytes = as_bytes_mut(&mut words);
    rng.fill(&mut bytes[..n_blocks * block_bytes]);
    for b in 0..n_blocks {
        let base = b * block_bytes;
        let v: f32 = rng.gen_range(-1.0..1.0);
        match dtype {
            GgmlType::F16 => bytes[base..base + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes()),
            GgmlType::Bf16 => bytes[base..base + 2].copy_from_slice(&f32_to_bf16(v).to_le_bytes()),
            GgmlType::F32 => bytes[base..base + 4].copy_from_slice(&v.to_le_bytes()),
            _ => {
                for &off in scales {
                    let d = f32_to_f16(rng.gen_range(-0.05..0.05));
                    bytes[base + off..base + off + 2].copy_from_slice(&d.to_le_bytes());
                }
            }
        }
    }
    words
}

fn as_bytes_mut(w: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 storage viewed as bytes; every bit pattern is a valid u8.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast(), w.len() * 8) }
}

fn as_bytes(w: &[u64]) -> &[u8] {
    // SAFETY: as above, read-only.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len() * 8) }
}

/// `out[t][r]` for all activation rows `t` and weight rows `r`.
fn product(k: &Kernels, m: &QMatrix<'_>, x: &[f32], n_rows: usize) -> Vec<Vec<f32>> {
    let mut acts = QuantActs::new(m.act_format());
    acts.quantize(k, x, n_rows, m.cols);
    let mut out = vec![vec![f32::NAN; m.rows]; n_rows];
    m.matmul_rows(k, &acts, 0..m.rows, &mut |t, r, v| {
        out[t][r..r + v.len()].copy_from_slice(v)
    });
    out
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|r| r.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn cols_for(dtype: GgmlType) -> usize {
    match ActFormat::for_weights(dtype).unwrap() {
        ActFormat::Q8K => 512,
        // 35 blocks: the ggml-order tile kernels work in chunks of 32.
        _ => 1120,
    }
}

#[test]
fn every_tier_and_batch_shape_gives_the_reference_bits() {
    let mut rng = StdRng::seed_from_u64(10);
    let scalar = Kernels::scalar();
    let tiers = Kernels::all_supported();
    eprintln!(
        "tiers: {}",
        tiers
            .iter()
            .map(|k| k.tier().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for &(dtype, scales) in FORMATS {
        let cols = cols_for(dtype);
        for rows in [1usize, 3, 17, 31] {
            let w = random_weights(&mut rng, dtype, scales, rows, cols);
            let row_bytes = dtype.bytes_for(cols, "w").unwrap();
            let m =
                QMatrix::new("w", dtype, rows, cols, &as_bytes(&w)[..rows * row_bytes]).unwrap();
            let x: Vec<f32> = (0..33 * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
            // The reference: each activation row alone, scalar kernels.
            let alone: Vec<Vec<f32>> = (0..33)
                .map(|t| product(&scalar, &m, &x[t * cols..(t + 1) * cols], 1).remove(0))
                .collect();
            for k in &tiers {
                for batch in 1..=33 {
                    let got = product(k, &m, &x[..batch * cols], batch);
                    assert_eq!(
                        bits(&got),
                        bits(&alone[..batch]),
                        "{} {} rows={rows} batch={batch}",
                        dtype.name(),
                        k.tier()
                    );
                }
            }
        }
        eprintln!("{}: every tier bit-identical to scalar", dtype.name());
    }
}

/// How the decoder splits a prefill product across threads: activations quantized in chunks
/// of rows on the pool (`QuantActs::quantize_on`, the same bytes as one serial pass), then
/// blocks of weight rows times blocks of activation rows (`QMatrix::matmul_block`), each
/// written once.
#[test]
fn blocks_of_rows_and_tokens_give_the_whole_products_bits() {
    let mut rng = StdRng::seed_from_u64(12);
    let pool = ThreadPool::new(2);
    for &(dtype, scales) in FORMATS {
        let cols = cols_for(dtype);
        let rows = 40;
        let w = random_weights(&mut rng, dtype, scales, rows, cols);
        let row_bytes = dtype.bytes_for(cols, "w").unwrap();
        let m = QMatrix::new("w", dtype, rows, cols, &as_bytes(&w)[..rows * row_bytes]).unwrap();
        let n = 70;
        let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
        for k in Kernels::all_supported() {
            let whole = product(&k, &m, &x, n);
            let mut serial = QuantActs::new(m.act_format());
            serial.quantize(&k, &x, n, m.cols);
            let mut acts = QuantActs::new(m.act_format());
            acts.quantize_on(Some(&pool), &k, &x, n, m.cols);
            for r in 0..n {
                assert_eq!(acts.row(r), serial.row(r), "{} row {r}", dtype.name());
            }
            let mut got = vec![vec![f32::NAN; rows]; n];
            let mut seen = vec![vec![0u8; rows]; n];
            for r in [0..16, 16..24, 24..40] {
                for t in [0..3, 3..20, 20..64, 64..70] {
                    m.matmul_block(&k, &acts, r.clone(), t.clone(), &mut |t, r, v| {
                        got[t][r..r + v.len()].copy_from_slice(v);
                        seen[t][r..r + v.len()].iter_mut().for_each(|s| *s += 1);
                    });
                }
            }
            assert!(
                seen.iter().flatten().all(|&s| s == 1),
                "{} {}",
                dtype.name(),
                k.tier()
            );
            assert_eq!(bits(&got), bits(&whole), "{} {}", dtype.name(), k.tier());
        }
    }
}

#[test]
fn reference_matches_dequantized_f32_within_activation_rounding() {
    let mut rng = StdRng::seed_from_u64(11);
    let scalar = Kernels::scalar();
    for &(dtype, scales) in FORMATS {
        let cols = cols_for(dtype);
        let rows = 17;
        let w = random_weights(&mut rng, dtype, scales, rows, cols);
        let row_bytes = dtype.bytes_for(cols, "w").unwrap();
        let m = QMatrix::new("w", dtype, rows, cols, &as_bytes(&w)[..rows * row_bytes]).unwrap();
        let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let got = product(&scalar, &m, &x, 1).remove(0);
        // Per element, the activation's rounding error is at most half a quantization step
        // (block amax / 254 for the 8-bit formats; 2^-8 relative for bf16, the coarsest float).
        let block = match ActFormat::for_weights(dtype).unwrap() {
            ActFormat::Q8K => 256,
            ActFormat::Q8_0 | ActFormat::Q8_1 => 32,
            _ => 1,
        };
        let step: Vec<f32> = x
            .chunks(block)
            .flat_map(|c| {
                let amax = c.iter().fold(0f32, |a, v| a.max(v.abs()));
                c.iter().map(move |v| (amax / 254.0).max(v.abs() / 256.0))
            })
            .collect();
        let mut wf = vec![0f32; cols];
        for (r, &g) in got.iter().enumerate() {
            m.dequantize_row(r, &mut wf);
            let exact: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let bound: f64 = wf
                .iter()
                .zip(&step)
                .map(|(&a, &s)| (a.abs() * s) as f64)
                .sum();
            let mag: f64 = wf.iter().zip(&x).map(|(&a, &b)| (a * b).abs() as f64).sum();
            assert!(
                (g as f64 - exact).abs() <= 1.01 * bound + 1e-5 * mag + 1e-6,
                "{} row {r}: {g} vs exact {exact} (bound {bound})",
                dtype.name()
            );
        }
    }
}

#[test]
fn unsupported_types_are_named() {
    let err = QMatrix::new(
        "blk.0.attn_q.weight",
        GgmlType::from_raw(17),
        1,
        256,
        &[0u8; 66],
    )
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("IQ2_XS") && msg.contains("blk.0.attn_q.weight"),
        "{msg}"
    );
}
