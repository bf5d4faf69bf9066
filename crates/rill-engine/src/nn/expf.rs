//! The two exponentials the forward pass reproduces bit for bit: glibc's `expf` ([`expf`]),
//! which llama.cpp's attention softmax calls through libm, and ggml's vectorised polynomial
//! ([`ggml_expf`]), which its SwiGLU uses.

/// ggml's vectorised expf (ARM optimized-routines polynomial, max error ~1.5 ulp), which its
/// SwiGLU uses; reproduced so activations match llama.cpp bit for bit.
#[inline(always)]
pub fn ggml_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3d2b_9f17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0)); // 0x1.ffffecp-1
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    scale_pow2(j, n as i32)
}

/// glibc's `expf` (since 2.27; ARM optimized-routines: `2^(k/32)` from a 32-entry table times a
/// cubic in double precision), as its FMA build computes it (the variant glibc picks on every
/// CPU with FMA, which llama.cpp's attention calls through libm): reproduced so that the
/// softmax weights are libm's bits on every tier, and so that they can be computed 4 at a
/// time (`x86_attention::expf_x4`). The tests compare it with the machine's libm.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let bits = x.to_bits();
    if (bits >> 20) & 0x7ff >= EXPF_SPECIAL_TOP12 {
        return expf_special(x);
    }
    expf_core(x as f64) as f32
}

/// `top12(88.0)`: at or above it (|x| >= 88, inf, NaN) [`expf`] takes [`expf_special`].
pub const EXPF_SPECIAL_TOP12: u32 = 0x42b;

/// `2^(i/32)` minus `i << 47`, glibc's `__exp2f_data.tab`.
pub const EXPF_TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// `32 / ln 2`.
pub const EXPF_INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
/// `0x1.8p52`: adding it rounds to an integer held in the low mantissa bits.
pub const EXPF_SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
/// The cubic's coefficients (glibc's `poly_scaled`).
pub const EXPF_C: [f64; 3] = [
    f64::from_bits(0x3ebc_6af8_4b91_2394),
    f64::from_bits(0x3f2e_bfce_50fa_c4f3),
    f64::from_bits(0x3f96_2e42_ff0c_52d6),
];

/// [`expf`] for |x| < 88, in the FMA build's operation order.
#[inline(always)]
fn expf_core(xd: f64) -> f64 {
    let kds = EXPF_INV_LN2_N.mul_add(xd, EXPF_SHIFT);
    let ki = kds.to_bits();
    let kd = kds - EXPF_SHIFT;
    let r = EXPF_INV_LN2_N.mul_add(xd, -kd);
    let t = EXPF_TABLE[(ki & 31) as usize].wrapping_add(ki << 47);
    let s = f64::from_bits(t);
    let z = EXPF_C[0].mul_add(r, EXPF_C[1]);
    let r2 = r * r;
    let y = r.mul_add(EXPF_C[2], 1.0);
    z.mul_add(r2, y) * s
}

/// [`expf`] for |x| >= 88, infinities and NaN: glibc's special cases (0 for -inf and below
/// `log(2^-150)`, inf above `log(2^128)`, NaN propagated, the subnormal range computed).
#[cold]
pub fn expf_special(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        return 0.0;
    }
    if x.is_nan() || x == f32::INFINITY {
        return x + x;
    }
    if x > f32::from_bits(0x42b1_7217) {
        return f32::INFINITY;
    }
    if x < f32::from_bits(0xc2cf_f1b4) {
        return 0.0;
    }
    if x < f32::from_bits(0xc2ce_8ecf) {
        // glibc's __math_may_uflowf: 0x1.4p-75 squared, rounded to float.
        return f32::from_bits(0x1a20_0000) * f32::from_bits(0x1a20_0000);
    }
    expf_core(x as f64) as f32
}

/// j * 2^n, exact while the result is normal (what `_mm512_scalef_ps` computes).
#[inline(always)]
fn scale_pow2(j: f32, n: i32) -> f32 {
    let half = n / 2;
    let p = |e: i32| f32::from_bits(((e + 127).clamp(0, 255) as u32) << 23);
    j * p(half) * p(n - half)
}
