//! SwiGLU, the gated activation of the Llama-family feed-forward blocks: `silu(gate) * up` with
//! ggml's `expf`. The portable reference, and its x86-64 kernels (8 elements at a time, the same
//! bits) compiled for AVX2+FMA ([`avx2`]) and for the AVX-512 VNNI tier ([`vnni`]).
//!
//! SAFETY contract for every `unsafe fn` here: the caller has verified the CPU features named in
//! the function's `target_feature` attribute (only `quant::dispatch::Kernels` builds calls to
//! them, after `Kernels::all_supported` detected them).

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::expf::ggml_expf;

/// `gate[i] = silu(gate[i]) * up[i]`, `silu(x) = x / (1 + exp(-x))` with ggml's expf.
#[inline(always)]
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = (*g / (1.0 + ggml_expf(-*g))) * u;
    }
}

#[cfg(target_arch = "x86_64")]
macro_rules! tier {
    ($modname:ident, $features:literal) => {
        /// The SwiGLU kernel of one x86-64 tier.
        pub mod $modname {
            use super::*;

            /// [`swiglu`](super::swiglu) 8 elements at a time: ggml's `expf` ([`ggml_expf`](crate::nn::expf::ggml_expf)) with
            /// the same FMAs in the same order, its overflow cases blended in, the power of two
            /// applied as the same two factors; the tail through the scalar code. (The scalar
            /// loop did not vectorize: 5% of Q4_1 prefill in `perf`.)
            #[target_feature(enable = $features)]
            pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
                let n = gate.len().min(up.len());
                let n8 = n / 8 * 8;
                let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
                let r = c(0x4b40_0000);
                for i in (0..n8).step_by(8) {
                    // SAFETY: i + 8 <= n8 <= both lengths.
                    let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                    let u = _mm256_loadu_ps(up.as_ptr().add(i));
                    let x = _mm256_xor_ps(g, _mm256_set1_ps(-0.0));
                    let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), r);
                    let nf = _mm256_sub_ps(z, r);
                    let neg = _mm256_xor_ps(nf, _mm256_set1_ps(-0.0));
                    let b = _mm256_fmadd_ps(
                        neg,
                        c(0x35bf_be8e),
                        _mm256_fmadd_ps(neg, c(0x3f31_7200), x),
                    );
                    let uu = _mm256_mul_ps(b, b);
                    let t1 = _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17));
                    let t2 = _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb));
                    let t4 = _mm256_fmadd_ps(c(0x3f7f_fff6), b, _mm256_set1_ps(1.0));
                    let j = _mm256_fmadd_ps(_mm256_fmadd_ps(t1, uu, t2), uu, t4);
                    // scale_pow2(j, n): j * 2^(n/2) * 2^(n - n/2), exponents clamped to 0..255.
                    let ni = _mm256_cvttps_epi32(nf);
                    let half =
                        _mm256_srai_epi32::<1>(_mm256_add_epi32(ni, _mm256_srli_epi32::<31>(ni)));
                    let pow = |e: __m256i| {
                        let e = _mm256_add_epi32(e, _mm256_set1_epi32(127));
                        let e = _mm256_min_epi32(
                            _mm256_max_epi32(e, _mm256_setzero_si256()),
                            _mm256_set1_epi32(255),
                        );
                        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
                    };
                    let scaled =
                        _mm256_mul_ps(_mm256_mul_ps(j, pow(half)), pow(_mm256_sub_epi32(ni, half)));
                    // |n| > 192: 0 where n <= 0, else infinity.
                    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), nf);
                    let big = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
                    let limit = _mm256_blendv_ps(
                        _mm256_set1_ps(f32::INFINITY),
                        _mm256_setzero_ps(),
                        _mm256_cmp_ps::<_CMP_LE_OQ>(nf, _mm256_setzero_ps()),
                    );
                    let e = _mm256_blendv_ps(scaled, limit, big);
                    let out =
                        _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u);
                    _mm256_storeu_ps(gate.as_mut_ptr().add(i), out);
                }
                super::swiglu(&mut gate[n8..n], &up[n8..n]);
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
tier!(avx2, "avx2,fma,f16c");
#[cfg(target_arch = "x86_64")]
tier!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl");
