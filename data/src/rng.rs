//! Seeded randomness: independent, named streams derived from one seed.
//!
//! Every generator draws from `sub_rng(seed, "what")`, a ChaCha8 stream whose key mixes the seed
//! with a label, so adding draws to one stream never shifts another (the world does not change
//! when the corpus grows). Output never depends on hash-map iteration order.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser: a well-mixed 64-bit hash of `x`.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a of a label, for naming streams.
pub fn label_hash(label: &str) -> u64 {
    label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The stream `label` of `seed`.
pub fn sub_rng(seed: u64, label: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix64(seed ^ mix64(label_hash(label))))
}

/// A uniform `f64` in `[0, 1)` from a counter-based hash (no state to carry).
pub fn unit_f64(seed: u64, counter: u64) -> f64 {
    (mix64(seed ^ mix64(counter.wrapping_add(0x5851_F42D_4C95_7F2D))) >> 11) as f64 / (1u64 << 53) as f64
}
