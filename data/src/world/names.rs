//! Invented names: pronounceable stems from syllables, unique across the whole world.
//!
//! Names are invented so that a pretrained model cannot know the facts in advance: whatever it
//! answers about them it learned from our corpus.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

const ONSETS: &[&str] = &[
    "b", "br", "c", "cl", "d", "dr", "f", "fl", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "qu", "r", "s",
    "st", "t", "tr", "v", "vr", "z", "th", "sk", "pl",
];
const NUCLEI: &[&str] = &["a", "e", "i", "o", "u", "ae", "ei", "ou", "y", "ia"];
const CODAS: &[&str] = &["", "", "", "n", "r", "l", "s", "x", "m", "th", "nd", "rk"];

/// Hands out names that were never handed out before (across all entity kinds).
pub struct NameGen {
    used: BTreeSet<String>,
}

impl NameGen {
    /// An empty registry.
    pub fn new() -> Self {
        NameGen { used: BTreeSet::new() }
    }

    /// A lowercase stem of `min..=max` syllables that no earlier call returned (as a stem or
    /// within a `claim`ed name).
    pub fn stem(&mut self, rng: &mut ChaCha8Rng, min: usize, max: usize) -> String {
        loop {
            let n = rng.gen_range(min..=max);
            let mut s = String::new();
            for i in 0..n {
                s.push_str(ONSETS[rng.gen_range(0..ONSETS.len())]);
                s.push_str(NUCLEI[rng.gen_range(0..NUCLEI.len())]);
                if i + 1 == n || rng.gen_bool(0.3) {
                    s.push_str(CODAS[rng.gen_range(0..CODAS.len())]);
                }
            }
            if s.len() >= 4 && self.used.insert(s.clone()) {
                return s;
            }
        }
    }

    /// Registers a full name; false if it was already taken.
    pub fn claim(&mut self, name: &str) -> bool {
        self.used.insert(name.to_lowercase())
    }
}

impl Default for NameGen {
    fn default() -> Self {
        Self::new()
    }
}

/// `"kolase"` -> `"Kolase"`.
pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
