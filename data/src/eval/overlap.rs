//! Held-out check: no evaluation item shares a word n-gram with the training text.
//!
//! Text is normalised to lowercase alphanumeric words (everything else separates words); each item
//! is checked as `question + right answer`. With n = 13 this is the usual decontamination test
//! (GPT-3); an item is contaminated if any of its n-grams occurs anywhere in the corpus.

use super::McqItem;
use crate::rng::{label_hash, mix64};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Default n-gram length.
pub const DEFAULT_N: usize = 13;

/// Result of an overlap check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverlapReport {
    /// n-gram length in words.
    pub n: usize,
    /// Items checked.
    pub items: usize,
    /// Distinct n-grams in the training text.
    pub train_ngrams: usize,
    /// `(item id, first shared n-gram)` of every contaminated item.
    pub overlapping: Vec<(String, String)>,
}

impl OverlapReport {
    /// True if no item overlaps.
    pub fn is_clean(&self) -> bool {
        self.overlapping.is_empty()
    }
}

/// Lowercase alphanumeric words of `text`.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

fn ngram_hashes(words: &[String], n: usize) -> impl Iterator<Item = (usize, u64)> + '_ {
    let hashes: Vec<u64> = words.iter().map(|w| label_hash(w)).collect();
    (0..(words.len() + 1).saturating_sub(n))
        .map(move |i| (i, hashes[i..i + n].iter().fold(0u64, |h, &w| mix64(h.rotate_left(5) ^ w))))
}

/// The set of n-gram hashes of the training texts.
pub struct NgramIndex {
    n: usize,
    set: HashSet<u64>,
}

impl NgramIndex {
    /// Indexes `texts` with n-grams of `n` words.
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>, n: usize) -> Self {
        let mut set = HashSet::new();
        for t in texts {
            set.extend(ngram_hashes(&words(t), n).map(|(_, h)| h));
        }
        NgramIndex { n, set }
    }

    /// Checks items against the index.
    pub fn check(&self, items: &[McqItem]) -> OverlapReport {
        let mut overlapping = Vec::new();
        for it in items {
            let w = words(&format!("{} {}", it.question, it.answer_text()));
            let hit = ngram_hashes(&w, self.n).find(|(_, h)| self.set.contains(h)).map(|(i, _)| i);
            if let Some(i) = hit {
                overlapping.push((it.id.clone(), w[i..i + self.n].join(" ")));
            }
        }
        OverlapReport { n: self.n, items: items.len(), train_ngrams: self.set.len(), overlapping }
    }
}
