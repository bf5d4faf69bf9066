//! Rotary position embedding (RoPE) of one head in place, in both of ggml's pair layouts: the
//! portable reference, and the same code compiled with FMA available for the x86-64 tiers
//! ([`avx2`], [`vnni`]; identical arithmetic, `mul_add` one instruction instead of a libm call).
//!
//! SAFETY contract for every `unsafe fn` here: the caller has verified the CPU features named in
//! the function's `target_feature` attribute (only `quant::dispatch::Kernels` builds calls to
//! them, after `Kernels::all_supported` detected them).

#![allow(clippy::missing_safety_doc)] // the contract is the module doc's SAFETY paragraph

/// Rotary embedding, "normal" mode (adjacent pairs), in place. `cs` holds (cos, sin) per pair.
/// The products are fused exactly as llama.cpp's compiled (vectorised, FMA-contracted) RoPE
/// does, found by fitting its dumped tensors: x0*cos - x1*sin is fma(x0, cos, -(x1*sin)) and
/// x0*sin + x1*cos is fma(x0, sin, x1*cos).
#[inline(always)]
pub fn rope_norm(head: &mut [f32], cs: &[(f32, f32)]) {
    for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cs) {
        let (x0, x1) = (pair[0], pair[1]);
        pair[0] = x0.mul_add(c, -(x1 * s));
        pair[1] = x0.mul_add(s, x1 * c);
    }
}

/// Rotary embedding, "neox" mode (pairs `i` and `i + n/2`, as Gemma, Qwen and Phi-3 use), in
/// place, with [`rope_norm`]'s fused products (both modes are one function in ggml).
#[inline(always)]
pub fn rope_neox(head: &mut [f32], cs: &[(f32, f32)]) {
    let (lo, hi) = head.split_at_mut(head.len() / 2);
    for ((a, b), &(c, s)) in lo.iter_mut().zip(hi.iter_mut()).zip(cs) {
        let (x0, x1) = (*a, *b);
        *a = x0.mul_add(c, -(x1 * s));
        *b = x0.mul_add(s, x1 * c);
    }
}

#[cfg(target_arch = "x86_64")]
macro_rules! tier {
    ($modname:ident, $features:literal) => {
        /// The RoPE kernels of one x86-64 tier.
        pub mod $modname {
            /// The scalar RoPE compiled with FMA available (identical arithmetic, fast `mul_add`).
            #[target_feature(enable = $features)]
            pub unsafe fn rope_norm(head: &mut [f32], cs: &[(f32, f32)]) {
                super::rope_norm(head, cs)
            }

            /// The scalar neox RoPE compiled with FMA available (identical arithmetic).
            #[target_feature(enable = $features)]
            pub unsafe fn rope_neox(head: &mut [f32], cs: &[(f32, f32)]) {
                super::rope_neox(head, cs)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
tier!(avx2, "avx2,fma,f16c");
#[cfg(target_arch = "x86_64")]
tier!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl");
