//! Element-wise and row operations of the forward pass (RMSNorm, RoPE, SwiGLU, attention), and
//! the per-step scratch buffers. Arithmetic follows ggml's CPU ops where it changes results
//! (RMSNorm sums squares in f64; queries are rounded to f16 before the f16 key dot products).

use half::f16;

use crate::quant::{ActFormat, Kernels, QuantActs};

/// Scratch buffers reused across steps (grown, never shrunk).
pub struct Workspace {
    pub x: Vec<f32>,
    pub xn: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub att: Vec<f32>,
    pub hb: Vec<f32>,
    pub up: Vec<f32>,
    pub out_x: Vec<f32>,
    acts: Vec<QuantActs>,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
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
            out_x: Vec::new(),
            acts: Vec::new(),
        }
    }

    /// A quantized-activation buffer for `format` (one per format, reused).
    pub fn acts(&mut self, format: ActFormat) -> QuantActs {
        match self.acts.iter().position(|a| a.format == format) {
            Some(i) => self.acts.swap_remove(i),
            None => QuantActs::new(format),
        }
    }

    pub fn put_acts(&mut self, a: QuantActs) {
        self.acts.push(a);
    }
}

pub fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// y = x / sqrt(mean(x^2) + eps) * w, the sum of squares in f64 as ggml does.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in y.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

/// Rotary embedding, "normal" mode (adjacent pairs), for one head in place. `cs` holds
/// (cos, sin) per pair from [`rope_table`].
pub fn rope_norm(head: &mut [f32], cs: &[(f32, f32)]) {
    for (i, &(c, s)) in cs.iter().enumerate() {
        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
        head[2 * i] = x0 * c - x1 * s;
        head[2 * i + 1] = x0 * s + x1 * c;
    }
}

/// (cos, sin) for each rotated pair at `pos`. theta is advanced by repeated multiplication, as
/// ggml does, so the angles match bit for bit.
pub fn rope_table(
    pos: usize,
    rope_dim: usize,
    base: f32,
    freq_factors: Option<&[f32]>,
) -> Vec<(f32, f32)> {
    let theta_scale = base.powf(-2.0 / rope_dim as f32);
    let mut theta = pos as f32;
    (0..rope_dim / 2)
        .map(|i| {
            let t = match freq_factors {
                Some(ff) => theta / ff[i],
                None => theta,
            };
            theta *= theta_scale;
            (t.cos(), t.sin())
        })
        .collect()
}

/// Causal attention for the query heads `q_heads` (all sharing one KV head) of one token.
/// `keys(j)` / `values(j)` give the f16 rows of position j. Writes head outputs into `out`.
///
/// This is ggml's CPU flash-attention arithmetic, because matching llama.cpp's greedy output
/// needs it: the query is rounded to f16, scores are f16 dot products summed in f32, and the
/// softmax is online with the value accumulator *kept in f16* (rescaled when a new maximum
/// appears), normalised once at the end.
#[allow(clippy::too_many_arguments)]
pub fn attend<'k>(
    k: &Kernels,
    q: &[f32],
    q_heads: std::ops::Range<usize>,
    head_dim: usize,
    n_pos: usize,
    keys: impl Fn(usize) -> &'k [u16],
    values: impl Fn(usize) -> &'k [u16],
    out: &mut [f32],
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut q16 = vec![0u16; head_dim];
    let mut acc = vec![0u16; head_dim];
    for h in q_heads {
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        for (d, &v) in q16.iter_mut().zip(qh) {
            *d = f16::from_f32(v).to_bits();
        }
        acc.iter_mut().for_each(|a| *a = 0);
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0f32;
        for j in 0..n_pos {
            let s = (k.dot_f16_f16)(&q16, keys(j)) * scale;
            let (ms, vs);
            if s > m {
                ms = (m - s).exp();
                vs = 1.0;
                m = s;
                (k.scale_f16)(&mut acc, ms);
            } else {
                ms = 1.0;
                vs = (s - m).exp();
            }
            (k.mad_f16)(&mut acc, values(j), vs);
            sum = sum * ms + vs;
        }
        let inv = 1.0 / sum;
        for (o, &a) in out[h * head_dim..(h + 1) * head_dim]
            .iter_mut()
            .zip(acc.iter())
        {
            *o = f16::from_bits(a).to_f32() * inv;
        }
    }
}
