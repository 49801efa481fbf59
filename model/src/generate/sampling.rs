//! Choosing the next token from logits: greedy, or temperature with top-k and top-p (nucleus)
//! filtering, from a seeded generator.
//!
//! Order of the filters (as in transformers' `generate`): logits / temperature, keep the k
//! largest, softmax, keep the smallest set of most probable tokens whose probability reaches
//! `top_p` (always at least one), renormalise, draw. Ties keep the lower token id first, so a
//! run is a pure function of the logits and the seed.

use crate::error::{ModelError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability (1 = all).
    pub top_p: f32,
}

impl Sampling {
    /// Greedy decoding.
    pub const fn greedy() -> Self {
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 }
    }

    /// Checks the ranges: temperature >= 0 and finite, top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(ModelError::Invalid(format!("temperature {} must be finite and >= 0", self.temperature)));
        }
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(ModelError::Invalid(format!("top_p {} must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// The index of the largest value (the lowest index among equals; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// The candidates left after top-k and top-p, with their probabilities (renormalised),
/// most probable first. `temperature` must be > 0.
pub fn filtered_probs(logits: &[f32], s: &Sampling) -> Vec<(u32, f32)> {
    let mut order: Vec<u32> = (0..logits.len() as u32).filter(|&i| logits[i as usize].is_finite()).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let Some(&first) = order.first() else { return Vec::new() };
    let max = logits[first as usize] / s.temperature;
    let mut probs: Vec<(u32, f32)> =
        order.iter().map(|&i| (i, ((logits[i as usize] / s.temperature - max) as f64).exp() as f32)).collect();
    let sum: f32 = probs.iter().map(|p| p.1).sum();
    let (mut cum, total) = (0f32, probs.len());
    let mut keep = total;
    for (i, p) in probs.iter_mut().enumerate() {
        p.1 /= sum;
        cum += p.1;
        if cum >= s.top_p && keep == total {
            keep = i + 1;
        }
    }
    probs.truncate(keep);
    let kept: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= kept);
    probs
}

/// One sequence's token chooser: its settings and its own seeded generator.
#[derive(Clone, Debug)]
pub struct Sampler {
    settings: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for sequence `stream` of a run seeded with `seed` (each sequence draws from
    /// its own stream, so its tokens do not depend on the other prompts of a batch).
    pub fn new(settings: Sampling, seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Sampler { settings, rng }
    }

    /// The next token from `logits [V]`.
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.settings.temperature == 0.0 {
            return argmax(logits);
        }
        let probs = filtered_probs(logits, &self.settings);
        let u: f32 = self.rng.gen();
        let mut cum = 0f32;
        for &(id, p) in &probs {
            cum += p;
            if u < cum {
                return id;
            }
        }
        probs.last().map_or_else(|| argmax(logits), |p| p.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_lowest_index_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
    }

    #[test]
    fn top_k_and_top_p_keep_the_right_sets() {
        let logits = [0.0f32, 2.0, 1.0, 3.0];
        // softmax at T=1: p(3)=0.644, p(1)=0.237, p(2)=0.087, p(0)=0.032.
        let all = filtered_probs(&logits, &Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 });
        let ids: Vec<u32> = all.iter().map(|p| p.0).collect();
        assert_eq!(ids, [3, 1, 2, 0]);
        let e: Vec<f64> = [3.0f64, 2.0, 1.0, 0.0].iter().map(|x| x.exp()).collect();
        let z: f64 = e.iter().sum();
        for (p, want) in all.iter().zip(&e) {
            assert!((p.1 as f64 - want / z).abs() < 1e-6);
        }
        let k2 = filtered_probs(&logits, &Sampling { temperature: 1.0, top_k: 2, top_p: 1.0 });
        assert_eq!(k2.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 1]);
        assert!((k2[0].1 as f64 - e[0] / (e[0] + e[1])).abs() < 1e-6);
        // top_p 0.8: 0.644 < 0.8, 0.644 + 0.237 >= 0.8 -> two tokens.
        let p8 = filtered_probs(&logits, &Sampling { temperature: 1.0, top_k: 0, top_p: 0.8 });
        assert_eq!(p8.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 1]);
        // A tiny top_p keeps the most likely token only.
        let p0 = filtered_probs(&logits, &Sampling { temperature: 1.0, top_k: 0, top_p: 0.01 });
        assert_eq!(p0, [(3, 1.0)]);
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let s = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 };
        let mut a = Sampler::new(s, 7, 0);
        let draws: Vec<u32> = (0..4000).map(|_| a.next(&logits)).collect();
        let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "token 1 drawn {ones}, expected 0.75");
        assert!(!draws.contains(&2), "a -inf logit was drawn");
        let mut b = Sampler::new(s, 7, 0);
        assert!(draws.iter().all(|&t| t == b.next(&logits)), "same seed and stream, different draws");
        let mut c = Sampler::new(s, 7, 1);
        assert!(draws.iter().any(|&t| t != c.next(&logits)), "another stream gave identical draws");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Sampling { temperature: -1.0, ..Sampling::greedy() }.validate().is_err());
        assert!(Sampling { top_p: 0.0, ..Sampling::greedy() }.validate().is_err());
        assert!(Sampling { temperature: 0.7, top_k: 20, top_p: 0.8 }.validate().is_ok());
    }
}
