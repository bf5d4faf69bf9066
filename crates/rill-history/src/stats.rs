//! The Mann-Whitney U test (two-sided, normal approximation with tie correction): whether two
//! sets of samples come from distributions where one tends to be larger, without assuming
//! normality. Latency samples are skewed and heavy-tailed, which is why a rank test is used
//! rather than a t-test or a fixed percentage threshold.

/// Two-sided p-value that `a` and `b` come from the same distribution.
pub fn mann_whitney_p(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&x| (x, true))
        .chain(b.iter().map(|&x| (x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Average ranks over ties; accumulate the tie correction.
    let mut rank_a = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        for x in &all[i..=j] {
            if x.1 {
                rank_a += avg;
            }
        }
        i = j + 1;
    }
    let u = rank_a - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)).max(1.0));
    if var <= 0.0 {
        return 1.0;
    }
    // Continuity correction.
    let z = ((u - mean).abs() - 0.5).max(0.0) / var.sqrt();
    2.0 * (1.0 - normal_cdf(z))
}

fn normal_cdf(z: f64) -> f64 {
    0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
}

/// Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
fn erf(x: f64) -> f64 {
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    s * y
}

/// The median (mean of the middle two for an even count; NaN for no values).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_shifted_samples_and_not_equal_ones() {
        let a: Vec<f64> = (0..40).map(|i| 100.0 + (i % 7) as f64).collect();
        let same: Vec<f64> = (0..40).map(|i| 100.0 + ((i + 3) % 7) as f64).collect();
        let slower: Vec<f64> = a.iter().map(|x| x * 1.2).collect();
        assert!(mann_whitney_p(&a, &same) > 0.5);
        assert!(mann_whitney_p(&a, &slower) < 1e-6);
        // Textbook value: U test of two small samples.
        let p = mann_whitney_p(&[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0]);
        assert!((p - 0.012).abs() < 0.002, "{p}");
        assert!((erf(1.0) - 0.842_700_79).abs() < 1e-6);
    }
}
