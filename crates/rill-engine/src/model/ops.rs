//! Row operations of the forward pass that are not kernels (RMSNorm, RoPE tables, GeGLU, the
//! Hadamard rotation of a quantized KV cache's heads), and
//! the per-step scratch buffers. Arithmetic follows ggml's CPU ops where it changes results
//! (RMSNorm sums squares in f64; GELU is looked up in an f16 table; queries are rounded to f16
//! before the f16 key dot products).

use std::sync::OnceLock;

use half::f16;

use crate::quant::{ActFormat, Kernels, QMatrix, QuantActs};
use crate::threadpool::ThreadPool;

/// Scratch buffers reused across steps (grown, never shrunk).
pub struct Workspace {
    /// The residual stream, a row per token.
    pub x: Vec<f32>,
    /// `x` normalised (the projections' input).
    pub xn: Vec<f32>,
    /// Queries.
    pub q: Vec<f32>,
    /// Keys.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
    /// Attention output, the query heads side by side.
    pub att: Vec<f32>,
    /// Feed-forward gate, then the activation.
    pub hb: Vec<f32>,
    /// Feed-forward up projection.
    pub up: Vec<f32>,
    /// A projection's output before its post-norm (Gemma).
    pub proj: Vec<f32>,
    /// The rows whose logits are wanted, normalised.
    pub out_x: Vec<f32>,
    /// Quantized activation buffers.
    pub acts: ActPool,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// Empty buffers (sized by the first step).
    pub fn new() -> Self {
        Self {
            x: Vec::new(),
            xn: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            att: Vec::new(),
            hb: Vec::new(),
            up: Vec::new(),
            proj: Vec::new(),
            out_x: Vec::new(),
            acts: ActPool::default(),
        }
    }
}

/// Quantized-activation buffers, one per format, reused across steps.
#[derive(Default)]
pub struct ActPool(Vec<QuantActs>);

impl ActPool {
    /// A buffer for `format`.
    pub fn take(&mut self, format: ActFormat) -> QuantActs {
        match self.0.iter().position(|a| a.format == format) {
            Some(i) => self.0.swap_remove(i),
            None => QuantActs::new(format),
        }
    }

    pub fn put(&mut self, a: QuantActs) {
        self.0.push(a);
    }

    /// Quantizes `rows` rows of `x` (on `pool`'s threads, if given) once for each distinct
    /// activation format that `mats` need (mixed files pair e.g. a Q4_K `attn_q` with a Q5_0
    /// `attn_v`).
    pub fn quantize_for(
        &mut self,
        pool: Option<&ThreadPool>,
        k: &Kernels,
        mats: &[&QMatrix<'_>],
        x: &[f32],
        rows: usize,
        cols: usize,
    ) -> ActsByFormat {
        let mut sets: Vec<QuantActs> = Vec::with_capacity(mats.len());
        for m in mats {
            let f = m.act_format();
            if !sets.iter().any(|a| a.format == f) {
                let mut a = self.take(f);
                a.quantize_on(pool, k, x, rows, cols);
                sets.push(a);
            }
        }
        ActsByFormat { sets }
    }

    /// Returns the buffers of [`Self::quantize_for`] for reuse.
    pub fn put_all(&mut self, a: ActsByFormat) {
        self.0.extend(a.sets);
    }
}

/// One step's activations in every format the consuming matrices need.
pub struct ActsByFormat {
    sets: Vec<QuantActs>,
}

impl ActsByFormat {
    /// The activations in `m`'s format.
    pub fn for_matrix(&self, m: &QMatrix<'_>) -> &QuantActs {
        let f = m.act_format();
        self.sets
            .iter()
            .find(|a| a.format == f)
            .expect("quantize_for covered every matrix it was given")
    }
}

pub fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// y = x / sqrt(mean(x^2) + eps) * w, the sum of squares in f64 as ggml does.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let scale = rms_scale(x, eps);
    for ((o, &v), &g) in y.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

/// 1 / sqrt(mean(x^2) + eps), the sum of squares in f64.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// [`rms_norm`] in place.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (v, &g) in x.iter_mut().zip(w) {
        *v = (*v * scale) * g;
    }
}

/// The orthonormal Walsh-Hadamard transform of every `n` consecutive elements (`n` a power of
/// two), as llama.cpp's `ggml_compute_forward_fwht` computes it: each element scaled by
/// `1 / sqrt(n)` first, then butterflies of widths 1, 2, 4, ... (`u + v`, `u - v`). The
/// transform is its own inverse up to rounding.
pub fn hadamard_rotate(x: &mut [f32], n: usize) {
    debug_assert!(n.is_power_of_two() && x.len().is_multiple_of(n));
    let scale = 1.0 / (n as f32).sqrt();
    for row in x.chunks_exact_mut(n) {
        row.iter_mut().for_each(|v| *v *= scale);
        let mut len = 1;
        while len < n {
            for pair in row.chunks_exact_mut(2 * len) {
                let (lo, hi) = pair.split_at_mut(len);
                for (u, v) in lo.iter_mut().zip(hi.iter_mut()) {
                    (*u, *v) = (*u + *v, *u - *v);
                }
            }
            len *= 2;
        }
    }
}

/// (cos, sin) for each rotated pair at `pos`, angles multiplied by `freq_scale` (linear RoPE
/// scaling; 1 for none). theta is advanced by repeated multiplication, as ggml does, so the
/// angles match bit for bit.
pub fn rope_table(
    pos: usize,
    rope_dim: usize,
    base: f32,
    freq_scale: f32,
    freq_factors: Option<&[f32]>,
) -> Vec<(f32, f32)> {
    let theta_scale = base.powf(-2.0 / rope_dim as f32);
    let mut theta = pos as f32;
    (0..rope_dim / 2)
        .map(|i| {
            let t = match freq_factors {
                Some(ff) => theta / ff[i],
                None => theta,
            } * freq_scale;
            theta *= theta_scale;
            (t.cos(), t.sin())
        })
        .collect()
}

/// tanh-approximated GELU of every f16 value, as f16 bits: ggml's `ggml_table_gelu_f16`, which
/// its CPU GELU and GeGLU read (the input rounded to f16, the result widened back). GCC
/// contracts `1 + a*x*x` of `ggml_gelu_f32` into one FMA (checked on its -O3 -march=native
/// code: with it all 65536 entries agree, without it one differs), so this does too.
fn gelu_table() -> &'static [u16] {
    static TABLE: OnceLock<Vec<u16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        #[allow(clippy::excessive_precision)] // ggml's literal, rounded to f32 like its own
        const SQRT_2_OVER_PI: f32 = 0.797_884_560_802_865_355_879_892_119_868_76;
        const GELU_COEF_A: f32 = 0.044715;
        (0..=u16::MAX)
            .map(|b| {
                let x = f16::from_bits(b).to_f32();
                let inner = (GELU_COEF_A * x).mul_add(x, 1.0);
                let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh());
                f16::from_f32(y).to_bits()
            })
            .collect()
    })
}

/// gate = GELU(gate) * up, ggml's `ggml_vec_geglu_f32` (table look-up between -10 and 10).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            f16::from_bits(table[f16::from_f32(x).to_bits() as usize]).to_f32() * u
        };
    }
}
