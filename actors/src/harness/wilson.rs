//! Wilson score interval of a binomial proportion (Wilson 1927; Newcombe 1998, method 3):
//! `(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`. Unlike the normal approximation it
//! stays inside [0, 1] and is not empty at 0 or n successes.

/// The 0.975 quantile of the standard normal distribution (a two-sided 95% interval).
pub const Z95: f64 = 1.959_963_984_540_054;

/// `(lo, hi)` of the Wilson interval of `successes` out of `n` at quantile `z`; `(0, 1)` for
/// `n = 0` (nothing is known).
pub fn wilson_interval(successes: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let nf = n as f64;
    let p = successes.min(n) as f64 / nf;
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let center = (p + z2 / (2.0 * nf)) / denom;
    let half = z * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}
