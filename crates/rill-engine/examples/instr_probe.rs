//! Fixed workloads for the instruction-count gate (`tools/perf-gate.sh` runs each under
//! valgrind's callgrind, counting only inside `matmul_rows` or `Engine::step`):
//! - `kernel FORMAT BATCH`: one 64 x 1024 weight matrix of seeded random blocks in FORMAT times
//!   BATCH activation rows, 8 times, with the AVX2 kernels;
//! - `step MODEL BATCH`: one decode step of BATCH sequences on MODEL, AVX2 kernels,
//!   1 thread;
//! - `speed FORMAT BATCH`: `kernel`'s workload repeated for half a second, printing the
//!   single-thread multiply-accumulate rate (GMAC/s) with the matrix hot in cache: the
//!   kernel's own speed, apart from memory (a timing, so noisy; not part of the gate);
//! - `attention HEAD_DIM GROUP RUN`: the causal attention of a 512-token prompt over an f16
//!   cache, in calls of RUN consecutive tokens (1: the per-token kernel), repeated for half a
//!   second, printing nanoseconds per (query head, key) pair (a timing, like `speed`).
//!
//! Instruction counts do not move with machine noise, so a 3% change is a real change.
#![allow(clippy::unwrap_used)] // a probe: a panic is the report

use rill_engine::gguf::GgmlType;
use rill_engine::quant::blocks::{f32_to_bf16, f32_to_f16};
use rill_engine::quant::{Kernels, QMatrix, QuantActs};
use rill_engine::{Engine, EngineConfig, SeqId, StepItem};

fn parse_type(name: &str) -> GgmlType {
    (0..64)
        .map(GgmlType::from_raw)
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown format {name}"))
}

/// A deterministic byte pattern with small finite f16 scales where the format has them.
fn weights(dtype: GgmlType, rows: usize, cols: usize) -> Vec<u64> {
    let (be, bb) = dtype.block_layout().unwrap();
    let n = rows * cols / be;
    let mut words = vec![0u64; (n * bb).div_ceil(8)];
    // SAFETY: u64 storage viewed as bytes.
    let bytes: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
    let mut s = 0x9e37_79b9u32;
    for b in bytes.iter_mut() {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        *b = s as u8;
    }
    let scale_offsets: &[usize] = match dtype {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[0],
    };
    for i in 0..n {
        let v = ((i % 7) as f32 - 3.0) * 0.01;
        let put = |b: &mut [u8], off: usize, bits: u16| {
            b[off..off + 2].copy_from_slice(&bits.to_le_bytes())
        };
        match dtype {
            GgmlType::F16 => put(bytes, i * bb, f32_to_f16(v)),
            GgmlType::Bf16 => put(bytes, i * bb, f32_to_bf16(v)),
            GgmlType::F32 => bytes[i * bb..i * bb + 4].copy_from_slice(&v.to_le_bytes()),
            _ => {
                for &o in scale_offsets {
                    put(bytes, i * bb + o, f32_to_f16(v));
                }
            }
        }
    }
    words
}

/// The `kernel` workload: the matrix (its backing words) and quantized activations.
fn workload(format: &str, batch: usize) -> (Kernels, Vec<u64>, GgmlType, QuantActs) {
    // The gate counts the AVX2 tier; `speed` may time another (`PROBE_KERNELS=avx512`).
    let tier = std::env::var("PROBE_KERNELS").unwrap_or_else(|_| "avx2".into());
    let k = Kernels::by_name(&tier).expect("a CPU with that tier");
    let dtype = parse_type(format);
    let (rows, cols) = (ROWS, COLS);
    let w = weights(dtype, rows, cols);
    let m = matrix(&w, dtype);
    let x: Vec<f32> = (0..batch * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.02)
        .collect();
    let mut acts = QuantActs::new(m.act_format());
    acts.quantize(&k, &x, batch, cols);
    (k, w, dtype, acts)
}

const ROWS: usize = 64;
const COLS: usize = 1024;

fn matrix(w: &[u64], dtype: GgmlType) -> QMatrix<'_> {
    // SAFETY: u64 storage viewed as bytes, read-only.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len() * 8) };
    let rb = dtype.bytes_for(COLS, "w").unwrap();
    QMatrix::new("w", dtype, ROWS, COLS, &bytes[..ROWS * rb]).unwrap()
}

fn kernel(format: &str, batch: usize) {
    let (k, w, dtype, acts) = workload(format, batch);
    let m = matrix(&w, dtype);
    println!("{format} x{batch}: {}", measured_kernel(&k, &m, &acts));
}

fn speed(format: &str, batch: usize) {
    let (k, w, dtype, acts) = workload(format, batch);
    let m = matrix(&w, dtype);
    let t0 = std::time::Instant::now();
    let mut reps = 0u64;
    let mut sink = 0f32;
    while t0.elapsed().as_secs_f64() < 0.5 {
        sink += measured_kernel(&k, &m, &acts);
        reps += 8;
    }
    let macs = (reps * (ROWS * COLS * batch) as u64) as f64;
    println!(
        "{format} x{batch}: {:.1} GMAC/s (checksum {sink:.3e})",
        macs / t0.elapsed().as_secs_f64() / 1e9
    );
}

fn step(model: &str, batch: usize) {
    let mut e = Engine::load(
        std::path::Path::new(model),
        &EngineConfig {
            threads: 1,
            kv_tokens: 4096,
            kv_bytes: 0,
            kernels: Some("avx2".into()),
            chat_template: None,
            kv_type: Default::default(),
        },
    )
    .unwrap();
    let seqs: Vec<SeqId> = (0..batch as u64).map(|i| SeqId(100 + i)).collect();
    let prompt: Vec<u32> = (0..16).map(|i| 1000 + i * 37).collect();
    for &s in &seqs {
        e.add_sequence(s).unwrap();
        e.step(&[StepItem {
            seq: s,
            tokens: &prompt,
            logits: 0,
        }])
        .unwrap();
    }
    let tok = [504u32];
    let items: Vec<StepItem> = seqs
        .iter()
        .map(|&s| StepItem {
            seq: s,
            tokens: &tok,
            logits: 1,
        })
        .collect();
    measured_step(&mut e, &items);
    println!("step x{batch}");
}

/// What the gate counts for `kernel` (callgrind collects inside this function only).
#[inline(never)]
fn measured_kernel(k: &Kernels, m: &QMatrix<'_>, acts: &QuantActs) -> f32 {
    let mut sum = 0f32;
    for _ in 0..8 {
        m.matmul_rows(k, acts, 0..m.rows, &mut |_, _, v| {
            sum += v.iter().sum::<f32>()
        });
    }
    sum
}

/// What the gate counts for `step`.
#[inline(never)]
fn measured_step(e: &mut Engine, items: &[StepItem<'_>]) {
    e.step(items).unwrap();
}

fn attention(hd: usize, group: usize, run: usize) {
    use rill_engine::nn::attention::{AttendBlock, KvRows};
    let tier = std::env::var("PROBE_KERNELS").unwrap_or_else(|_| "avx2".into());
    let k = Kernels::by_name(&tier).expect("a CPU with that tier");
    const N: usize = 512;
    let f16s = |n: usize, salt: usize| -> Vec<u16> {
        (0..n)
            .map(|i| f32_to_f16((((i * 37 + salt) % 101) as f32 - 50.0) * 0.02))
            .collect()
    };
    let (keys, values) = (f16s(N * hd, 1), f16s(N * hd, 7));
    let offsets: Vec<usize> = (0..N).map(|j| j * hd).collect();
    let stride = group * hd;
    let q: Vec<f32> = (0..N * stride)
        .map(|i| ((i * 13 % 97) as f32 - 48.0) * 0.03)
        .collect();
    let mut out = vec![0f32; N * stride];
    // The best of 10 windows of 50 ms: the host's speed drifts.
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let t0 = std::time::Instant::now();
        let mut reps = 0u64;
        while t0.elapsed().as_secs_f64() < 0.05 {
            for t0 in (0..N).step_by(run) {
                let toks = t0..(t0 + run).min(N);
                let ranges: Vec<std::ops::Range<usize>> = toks.clone().map(|t| 0..t + 1).collect();
                let b = AttendBlock {
                    q: &q[toks.start * stride..toks.end * stride],
                    stride,
                    heads: 0..group,
                    head_dim: hd,
                    scale: 0.125,
                    kv: KvRows {
                        keys: &keys,
                        values: &values,
                        offsets: &offsets[..toks.end],
                    },
                    keys: &ranges,
                };
                let o = &mut out[toks.start * stride..toks.end * stride];
                if run == 1 {
                    k.attend(b.q, 0..group, hd, 0.125, &b.kv, o);
                } else {
                    k.attend_block(&b, o);
                }
            }
            reps += 1;
        }
        let pairs = (reps * (N * (N + 1) / 2 * group) as u64) as f64;
        best = best.min(t0.elapsed().as_secs_f64() * 1e9 / pairs);
    }
    println!(
        "attention hd={hd} group={group} run={run}: {best:.2} ns/pair (checksum {:.3e})",
        out.iter().sum::<f32>()
    );
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["kernel", f, b] => kernel(f, b.parse().unwrap()),
        ["step", m, b] => step(m, b.parse().unwrap()),
        ["speed", f, b] => speed(f, b.parse().unwrap()),
        ["attention", d, g, r] => attention(d.parse().unwrap(), g.parse().unwrap(), r.parse().unwrap()),
        _ => panic!(
            "usage: instr_probe kernel|speed FORMAT BATCH | step MODEL BATCH | attention HEAD_DIM GROUP RUN"
        ),
    }
}
