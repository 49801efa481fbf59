//! Helpers for checking kernels against references: deterministic random data, closeness
//! reports (max abs / rel error) and central finite differences in f64.
//!
//! Public so the other crates' tests use the same yardsticks.

/// Deterministic uniform values in [-1, 1) from a seed (SplitMix64; no dependency).
pub fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x1234_5678);
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Widens to f64.
pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Largest absolute difference and largest relative difference `|a-b| / max(|b|, 1e-30)`.
pub fn max_errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let mut abs = 0f64;
    let mut rel = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        let d = (g as f64 - w as f64).abs();
        abs = abs.max(d);
        rel = rel.max(d / (w as f64).abs().max(1e-30));
    }
    (abs, rel)
}

/// Norm-wise relative error `||got - want|| / ||want||` (0 when both are zero).
pub fn rel_norm_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Panics with a report unless every element satisfies `|got - want| <= atol + rtol * |want|`.
pub fn assert_close(got: &[f32], want: &[f32], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length mismatch");
    let (abs, rel) = max_errors(got, want);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        assert!(
            d <= atol + rtol * (w as f64).abs() && d.is_finite() || g == w,
            "{what}: element {i}: got {g}, want {w} (max abs {abs:.3e}, max rel {rel:.3e})"
        );
    }
}

/// Central finite differences of a scalar f64 function at `x` (step `h`).
pub fn finite_diff(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let up = f(&xp);
            xp[i] = orig - h;
            let down = f(&xp);
            xp[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Compares an analytic f32 gradient with f64 finite differences: norm-wise relative error <= `tol`.
pub fn assert_grad_matches_fd(analytic: &[f32], fd: &[f64], tol: f64, what: &str) {
    let fd32: Vec<f32> = fd.iter().map(|&v| v as f32).collect();
    let err = rel_norm_err(analytic, &fd32);
    assert!(err <= tol, "{what}: gradient vs finite differences rel err {err:.3e} > {tol:.1e}");
}

/// `sum(out * r)`: the scalar the finite-difference tests differentiate, so `dout = r`.
pub fn dot64(out: &[f64], r: &[f32]) -> f64 {
    out.iter().zip(r).map(|(&o, &w)| o * w as f64).sum()
}
