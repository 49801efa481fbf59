//! Random initialisation for training from scratch (HF Qwen3 style: normal(0, std) weights,
//! norm weights 1).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `n` samples of normal(0, std) from a seeded generator (Box-Muller).
pub fn normal(n: usize, std: f32, rng: &mut StdRng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.gen::<f64>().max(1e-300);
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32 * std);
        out.push((r * a.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

/// An initialiser for [`crate::Qwen3::from_init`]: norms (names ending in `norm.weight`) get
/// ones, everything else normal(0, `std`), deterministic in `seed` and parameter order.
pub fn qwen3_init(seed: u64, std: f32) -> impl FnMut(&str, usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    move |name, n| {
        if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            normal(n, std, &mut rng)
        }
    }
}
