//! The forward pass's non-matrix kernels, which are not quantization: attention over the KV
//! cache ([`attention`], its x86-64 kernels in [`x86_attention`]), rotary position embedding
//! ([`rope`]), SwiGLU ([`swiglu`]) and the exponentials they reproduce bit for bit ([`expf`]).
//! Each has a portable reference and, on x86-64, kernels for the AVX2 and AVX-512 VNNI tiers
//! that give the same bits; `quant::Kernels` picks the tier.

pub mod attention;
pub mod expf;
pub mod rope;
pub mod swiglu;
#[cfg(target_arch = "x86_64")]
pub mod x86_attention;
