//! Row operations of the forward pass that are not kernels (RMSNorm, RoPE tables), and
//! the per-step scratch buffers. Arithmetic follows ggml's CPU ops where it changes results
//! (RMSNorm sums squares in f64; queries are rounded to f16 before the f16 key dot products).

use crate::quant::{ActFormat, QuantActs};

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
