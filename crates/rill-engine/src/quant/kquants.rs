//! Reference arithmetic of the 256-element super-block formats: the K-quants (Q2_K..Q6_K) and
//! IQ4_XS, each against Q8_K activations. Always compiled; the SIMD tiers reproduce it bit for
//! bit.
//!
//! Every format is computed the same way: decode a super-block's values to small integers, take
//! the exact integer sum `sumi = sum_g scale_g * (sum of value * activation over group g)` (and
//! for formats with minimums `summ = sum_g min_g * bsum_g`), then fold the super-block into the
//! running f32 total with [`fold`] / [`fold_min`]. Integer sums are exact in any order, so a SIMD
//! kernel is free to use any lane layout for them; only the per-super-block float steps are
//! fixed. (llama.cpp keeps 8 float lanes per row across super-blocks instead; the two differ in
//! the last bits only.)

use super::blocks::*;

/// `total + d * sumi` as one FMA: how a super-block without minimums enters the dot product.
#[inline(always)]
pub fn fold(total: f32, d: f32, sumi: i32) -> f32 {
    d.mul_add(sumi as f32, total)
}

/// [`fold`], then `- dmin * summ` as a second FMA.
#[inline(always)]
pub fn fold_min(total: f32, d: f32, sumi: i32, dmin: f32, summ: i32) -> f32 {
    (-dmin).mul_add(summ as f32, fold(total, d, sumi))
}

/// Sum over groups of `group` consecutive elements of `scale(g) * sum(v * y)`, exactly.
#[inline(always)]
fn grouped_isum(v: &[i8; QK_K], y: &[i8; QK_K], group: usize, scale: impl Fn(usize) -> i32) -> i32 {
    v.chunks_exact(group)
        .zip(y.chunks_exact(group))
        .enumerate()
        .map(|(g, (vg, yg))| {
            let s: i32 = vg.iter().zip(yg).map(|(&a, &b)| a as i32 * b as i32).sum();
            scale(g) * s
        })
        .sum()
}

// ---- Q2_K ----

/// The 2-bit values of a Q2_K block (0..3) in element order.
pub fn q2k_values(b: &BlockQ2K) -> [i8; QK_K] {
    std::array::from_fn(|e| {
        let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
        ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8
    })
}

/// The reference Q2_K dot product against Q8_K activations: exact integer sums per
/// super-block, folded in f32 in ggml's order (pairs up to the shorter operand).
pub fn dot_q2k_q8k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let v = q2k_values(xb);
        let sumi = grouped_isum(&v, &yb.qs, 16, |g| (xb.scales[g] & 0x0f) as i32);
        let summ: i32 = (0..16)
            .map(|g| (xb.scales[g] >> 4) as i32 * yb.bsums[g] as i32)
            .sum();
        let (d, dmin) = (f16_to_f32(xb.d) * yb.d, f16_to_f32(xb.dmin) * yb.d);
        total = fold_min(total, d, sumi, dmin, summ);
    }
    total
}

/// Q2_K blocks to f32, 256 values each into `out`.
pub fn dequantize_q2k(x: &[BlockQ2K], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        let v = q2k_values(b);
        for (e, o) in o.iter_mut().enumerate() {
            let sc = b.scales[e / 16];
            let (dl, ml) = (d * (sc & 0x0f) as f32, dmin * (sc >> 4) as f32);
            *o = dl * v[e] as f32 - ml;
        }
    }
}

// ---- Q3_K ----

/// The 16 group scales of a Q3_K block (6-bit, offset removed: -32..31).
#[inline(always)]
pub fn q3k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let w = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (a0, a1, t) = (w(0), w(1), w(2));
    const K1: u32 = 0x0303_0303;
    const K2: u32 = 0x0f0f_0f0f;
    let words = [
        (a0 & K2) | ((t & K1) << 4),
        (a1 & K2) | (((t >> 2) & K1) << 4),
        ((a0 >> 4) & K2) | (((t >> 4) & K1) << 4),
        ((a1 >> 4) & K2) | (((t >> 6) & K1) << 4),
    ];
    let mut out = [0i8; 16];
    for (g, o) in out.iter_mut().enumerate() {
        *o = words[g / 4].to_le_bytes()[g % 4] as i8 - 32;
    }
    out
}

/// The 12 scale bytes of a Q3_K block from its 16 scales (-32..=31): the exact inverse of
/// [`q3k_scales`].
pub fn q3k_pack_scales(sc: &[i8; 16]) -> [u8; 12] {
    let u: [u8; 16] = std::array::from_fn(|g| (sc[g] as i32 + 32) as u8);
    let mut q = [0u8; 12];
    for k in 0..4 {
        q[k] = (u[k] & 0x0f) | (u[8 + k] & 0x0f) << 4;
        q[4 + k] = (u[4 + k] & 0x0f) | (u[12 + k] & 0x0f) << 4;
        q[8 + k] =
            (u[k] >> 4) | (u[4 + k] >> 4) << 2 | (u[8 + k] >> 4) << 4 | (u[12 + k] >> 4) << 6;
    }
    q
}

/// The 3-bit values of a Q3_K block (-4..3) in element order.
pub fn q3k_values(b: &BlockQ3K) -> [i8; QK_K] {
    std::array::from_fn(|e| {
        let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
        let low = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8;
        let high = (b.hmask[l] >> (4 * n + j)) & 1;
        low - if high == 0 { 4 } else { 0 }
    })
}

/// The reference Q3_K dot product against Q8_K activations: exact integer sums per
/// super-block, folded in f32 in ggml's order (pairs up to the shorter operand).
pub fn dot_q3k_q8k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (v, sc) = (q3k_values(xb), q3k_scales(&xb.scales));
        let sumi = grouped_isum(&v, &yb.qs, 16, |g| sc[g] as i32);
        total = fold(total, f16_to_f32(xb.d) * yb.d, sumi);
    }
    total
}

/// Q3_K blocks to f32, 256 values each into `out`.
pub fn dequantize_q3k(x: &[BlockQ3K], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let (v, sc) = (q3k_values(b), q3k_scales(&b.scales));
        for (e, o) in o.iter_mut().enumerate() {
            *o = (d * sc[e / 16] as f32) * v[e] as f32;
        }
    }
}

// ---- Q4_K / Q5_K ----

/// Scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block (6-bit packed).
#[inline(always)]
pub fn q4k_scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 12 scale bytes of a Q4_K/Q5_K block from its 8 scales and minimums (6 bits each): the
/// exact inverse of [`q4k_scale_min`].
pub fn q4k_pack_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] & 63 | (sc[j + 4] >> 4) << 6;
        q[j + 4] = m[j] & 63 | (m[j + 4] >> 4) << 6;
        q[j + 8] = sc[j + 4] & 0x0f | (m[j + 4] & 0x0f) << 4;
    }
    q
}

/// The 4-bit values of a Q4_K block (0..15) in element order: sub-block `s` of 32 is the low
/// (even `s`) or high (odd `s`) nibbles of bytes `32 * (s / 2)..`.
pub fn q4k_values(qs: &[u8; QK_K / 2]) -> [i8; QK_K] {
    std::array::from_fn(|e| {
        let (s, l) = (e / 32, e % 32);
        ((qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0f) as i8
    })
}

/// The 5-bit values of a Q5_K block (0..31): Q4_K's nibbles plus bit `s` of `qh[l]`.
pub fn q5k_values(b: &BlockQ5K) -> [i8; QK_K] {
    let mut v = q4k_values(&b.qs);
    for (e, x) in v.iter_mut().enumerate() {
        let (s, l) = (e / 32, e % 32);
        *x |= (((b.qh[l] >> s) & 1) << 4) as i8;
    }
    v
}

/// Q4_K and Q5_K share everything but the values.
fn dot_k_with_mins(
    v: &[i8; QK_K],
    scales: &[u8; 12],
    d: u16,
    dmin: u16,
    yb: &BlockQ8K,
    total: f32,
) -> f32 {
    let sm: [(u8, u8); 8] = std::array::from_fn(|s| q4k_scale_min(s, scales));
    let sumi = grouped_isum(v, &yb.qs, 32, |s| sm[s].0 as i32);
    let summ: i32 = (0..8)
        .map(|s| sm[s].1 as i32 * (yb.bsums[2 * s] as i32 + yb.bsums[2 * s + 1] as i32))
        .sum();
    fold_min(
        total,
        f16_to_f32(d) * yb.d,
        sumi,
        f16_to_f32(dmin) * yb.d,
        summ,
    )
}

/// The reference Q4_K dot product against Q8_K activations: exact integer sums per
/// super-block, folded in f32 in ggml's order (pairs up to the shorter operand).
pub fn dot_q4k_q8k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    x.iter().zip(y).fold(0f32, |t, (xb, yb)| {
        dot_k_with_mins(&q4k_values(&xb.qs), &xb.scales, xb.d, xb.dmin, yb, t)
    })
}

/// The reference Q5_K dot product against Q8_K activations: exact integer sums per
/// super-block, folded in f32 in ggml's order (pairs up to the shorter operand).
pub fn dot_q5k_q8k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    x.iter().zip(y).fold(0f32, |t, (xb, yb)| {
        dot_k_with_mins(&q5k_values(xb), &xb.scales, xb.d, xb.dmin, yb, t)
    })
}

fn dequantize_k_with_mins(v: &[i8; QK_K], scales: &[u8; 12], d: u16, dmin: u16, o: &mut [f32]) {
    let (d, dmin) = (f16_to_f32(d), f16_to_f32(dmin));
    for (e, o) in o.iter_mut().enumerate() {
        let (sc, m) = q4k_scale_min(e / 32, scales);
        *o = (d * sc as f32) * v[e] as f32 - dmin * m as f32;
    }
}

/// Q4_K blocks to f32, 256 values each into `out`.
pub fn dequantize_q4k(x: &[BlockQ4K], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK_K)) {
        dequantize_k_with_mins(&q4k_values(&b.qs), &b.scales, b.d, b.dmin, o);
    }
}

/// Q5_K blocks to f32, 256 values each into `out`.
pub fn dequantize_q5k(x: &[BlockQ5K], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK_K)) {
        dequantize_k_with_mins(&q5k_values(b), &b.scales, b.d, b.dmin, o);
    }
}

// ---- Q6_K ----

/// Unpacks the 6-bit values of a Q6_K block (-32..31) in element order.
pub fn q6k_values(xb: &BlockQ6K) -> [i8; QK_K] {
    let mut out = [0i8; QK_K];
    for half in 0..2 {
        let ql = &xb.ql[half * 64..half * 64 + 64];
        let qh = &xb.qh[half * 32..half * 32 + 32];
        let o = &mut out[half * 128..half * 128 + 128];
        for l in 0..32 {
            o[l] = (((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8) - 32;
            o[l + 32] = (((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8) - 32;
            o[l + 64] = (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8) - 32;
            o[l + 96] = (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8) - 32;
        }
    }
    out
}

/// The reference Q6_K dot product against Q8_K activations: exact integer sums per
/// super-block, folded in f32 in ggml's order (pairs up to the shorter operand).
pub fn dot_q6k_q8k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sumi = grouped_isum(&q6k_values(xb), &yb.qs, 16, |g| xb.scales[g] as i32);
        total = fold(total, f16_to_f32(xb.d) * yb.d, sumi);
    }
    total
}

/// Q6_K blocks to f32, 256 values each into `out`.
pub fn dequantize_q6k(x: &[BlockQ6K], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let vals = q6k_values(b);
        for (i, v) in o.iter_mut().enumerate() {
            *v = d * b.scales[i / 16] as f32 * vals[i] as f32;
        }
    }
}

// ---- IQ4_XS ----

/// Sub-block `ib` (0..8) scale of an IQ4_XS block, offset removed (-32..31).
#[inline(always)]
pub fn iq4xs_scale(b: &BlockIq4Xs, ib: usize) -> i32 {
    let lo = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
    let hi = ((b.scales_h >> (2 * ib)) & 3) as u8;
    (lo | (hi << 4)) as i32 - 32
}

/// The values of an IQ4_XS block (code book entries) in element order: sub-block `ib` is the
/// low then high nibbles of bytes `16 * ib..16 * ib + 16`.
pub fn iq4xs_values(b: &BlockIq4Xs) -> [i8; QK_K] {
    std::array::from_fn(|e| {
        let (ib, k) = (e / 32, e % 32);
        let byte = b.qs[16 * ib + k % 16];
        IQ4NL_VALUES[((byte >> (4 * (k / 16))) & 0x0f) as usize]
    })
}

/// The reference IQ4_XS dot product against Q8_K activations: exact integer sums per
/// super-block, folded in f32 in ggml's order (pairs up to the shorter operand).
pub fn dot_iq4xs_q8k(x: &[BlockIq4Xs], y: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sumi = grouped_isum(&iq4xs_values(xb), &yb.qs, 32, |ib| iq4xs_scale(xb, ib));
        total = fold(total, f16_to_f32(xb.d) * yb.d, sumi);
    }
    total
}

/// IQ4_XS blocks to f32, 256 values each into `out`.
pub fn dequantize_iq4xs(x: &[BlockIq4Xs], out: &mut [f32]) {
    for (b, o) in x.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let v = iq4xs_values(b);
        for (e, o) in o.iter_mut().enumerate() {
            *o = (d * iq4xs_scale(b, e / 32) as f32) * v[e] as f32;
        }
    }
}

/// The scalar tier's tile product of a super-block format: each of the tile row's 8 rows,
/// unpacked, through the format's reference dot `dot` (the reference itself).
pub fn tiles<T: super::repack::Tiled, const N: usize>(
    t: &[T],
    y: &[&[BlockQ8K]; N],
    dot: fn(&[T::Row], &[BlockQ8K]) -> f32,
) -> [[f32; TILE_ROWS]; N] {
    let rows: [Vec<T::Row>; TILE_ROWS] =
        std::array::from_fn(|j| t.iter().map(|tile| tile.unpack(j)).collect());
    y.map(|a| std::array::from_fn(|j| dot(&rows[j], a)))
}
