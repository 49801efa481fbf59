//! Contamination check: a corpus document is removed when it shares a word n-gram (13 by default)
//! with an eval item, or is a near duplicate of one (MinHash-LSH over 3-word shingles).
//!
//! An item is its question and right answer (as `eval::overlap`); words as in `words.rs`. Items
//! shorter than n words cannot be caught by the n-gram test and are counted (`short_items`); the
//! near-duplicate test still covers them. The near-duplicate test is skipped for documents more
//! than twice as long as the longest item: their Jaccard similarity with any item is below 1/2.

use super::config::ContaminationConfig;
use super::minhash::{LshIndex, MinHasher, PreHashedMap};
use super::words::{ngram_hashes, word_hashes};
use crate::error::{DataError, Result};
use crate::eval::McqItem;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One eval set as indexed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSetInfo {
    /// Set name from the config.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Items read.
    pub items: usize,
    /// Items shorter than the n-gram (near-duplicate check only).
    pub short_items: usize,
}

/// How a document matched an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    /// A shared word n-gram.
    Ngram,
    /// MinHash-LSH near duplicate of the item.
    NearDup,
}

/// A document's first match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Global item index (see [`EvalIndex::item`]).
    pub item: u32,
    /// How it matched.
    pub kind: HitKind,
    /// For n-gram hits: index of the first word of the shared n-gram in the document.
    pub word: usize,
}

/// The n-gram and near-duplicate indexes of every eval set.
#[derive(Debug)]
pub struct EvalIndex {
    /// The sets, in config order.
    pub sets: Vec<EvalSetInfo>,
    items: Vec<(u16, String)>,
    n: usize,
    grams: PreHashedMap<u64, u32>,
    near: Option<(MinHasher, LshIndex)>,
    near_max_words: usize,
}

impl EvalIndex {
    /// Indexes `sets` (name, path, items).
    pub fn new(sets: Vec<(String, PathBuf, Vec<McqItem>)>, config: &ContaminationConfig) -> Result<Self> {
        if sets.len() > u16::MAX as usize {
            return Err(DataError::config("eval", "more than 65535 eval files"));
        }
        let near = config.near_dup.then(|| (MinHasher::new(&config.minhash), LshIndex::default()));
        let mut index = EvalIndex {
            sets: Vec::new(),
            items: Vec::new(),
            n: config.ngram,
            grams: PreHashedMap::default(),
            near,
            near_max_words: 0,
        };
        let (mut words, mut grams) = (Vec::new(), Vec::new());
        for (s, (name, path, items)) in sets.into_iter().enumerate() {
            let mut info = EvalSetInfo { name, path, items: items.len(), short_items: 0 };
            for it in items {
                let idx = index.items.len() as u32;
                word_hashes(&format!("{} {}", it.question, it.answer_text()), &mut words);
                ngram_hashes(&words, index.n, &mut grams);
                if grams.is_empty() {
                    info.short_items += 1;
                }
                for &g in &grams {
                    index.grams.entry(g).or_insert(idx);
                }
                if let Some((mh, lsh)) = &mut index.near {
                    lsh.insert(&mh.band_keys(&mh.signature(&words, &mut grams)), idx as u64);
                }
                index.near_max_words = index.near_max_words.max(2 * words.len());
                index.items.push((s as u16, it.id));
            }
            index.sets.push(info);
        }
        Ok(index)
    }

    /// No items at all.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items over all sets.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// `(set index, item id)` of a global item index.
    pub fn item(&self, i: u32) -> (usize, &str) {
        let (s, id) = &self.items[i as usize];
        (*s as usize, id)
    }

    /// The n-gram length.
    pub fn ngram(&self) -> usize {
        self.n
    }

    /// The first item a document (given its word hashes) matches.
    pub fn check(&self, words: &[u64], scratch: &mut Vec<u64>) -> Option<Hit> {
        if self.items.is_empty() {
            return None;
        }
        ngram_hashes(words, self.n, scratch);
        if let Some((j, &item)) = scratch.iter().enumerate().find_map(|(j, g)| self.grams.get(g).map(|i| (j, i))) {
            return Some(Hit { item, kind: HitKind::Ngram, word: j });
        }
        let (mh, lsh) = self.near.as_ref()?;
        if words.is_empty() || words.len() > self.near_max_words {
            return None;
        }
        let keys = mh.band_keys(&mh.signature(words, scratch));
        lsh.query(&keys).map(|v| Hit { item: v as u32, kind: HitKind::NearDup, word: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn item(id: &str, q: &str, right: &str) -> McqItem {
        let options: BTreeMap<String, String> = [("A", right), ("B", "something else entirely")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        McqItem {
            id: id.into(),
            set: "t".into(),
            domain: "medical".into(),
            question: q.into(),
            context: None,
            options,
            answer: "A".into(),
            meta: BTreeMap::new(),
        }
    }

    fn index() -> EvalIndex {
        let items = vec![
            item(
                "q1",
                "A 45-year-old man presents with crushing chest pain radiating to the left arm and diaphoresis. \
                 What is the most likely diagnosis?",
                "Acute myocardial infarction",
            ),
            item("q2", "Which vitamin deficiency causes scurvy?", "Vitamin C"),
        ];
        EvalIndex::new(vec![("medqa".into(), "medqa.jsonl".into(), items)], &ContaminationConfig::default()).unwrap()
    }

    fn check(ix: &EvalIndex, text: &str) -> Option<Hit> {
        let mut w = Vec::new();
        word_hashes(text, &mut w);
        ix.check(&w, &mut Vec::new())
    }

    #[test]
    fn a_shared_13_gram_is_caught_anywhere_in_a_document() {
        let ix = index();
        assert_eq!(ix.sets[0].short_items, 1, "q2 has fewer than 13 words");
        let doc = "Case notes. A 45 year old man presents with crushing chest pain radiating to the LEFT arm, \
                   and more text follows about the ward round and other things.";
        let hit = check(&ix, doc).expect("13-gram shared");
        assert_eq!((hit.item, hit.kind, hit.word), (0, HitKind::Ngram, 2));
        assert_eq!(ix.item(hit.item), (0, "q1"));
    }

    #[test]
    fn a_near_copy_of_a_short_item_is_caught() {
        let ix = index();
        let hit = check(&ix, "Which vitamin deficiency causes scurvy? Vitamin C.").expect("near duplicate");
        assert_eq!((hit.item, hit.kind), (1, HitKind::NearDup));
    }

    #[test]
    fn related_text_without_overlap_is_kept() {
        let ix = index();
        // Same topic and many of the same words, no 12 words in a row, not a near copy.
        assert_eq!(
            check(
                &ix,
                "Chest pain radiating to the arm with diaphoresis suggests myocardial infarction in a man of 45; \
                 scurvy follows a lack of vitamin C in the diet over months."
            ),
            None
        );
        // Twelve shared words in a row are not enough for n = 13.
        assert_eq!(
            check(
                &ix,
                "the man presents with crushing chest pain radiating to the left arm and sweating, \
                 so the team ordered an electrocardiogram, troponin levels and a chest radiograph at once"
            ),
            None
        );
        let empty = EvalIndex::new(vec![], &ContaminationConfig::default()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(check(&empty, "anything at all"), None);
    }
}
