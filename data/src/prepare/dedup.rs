//! Duplicate removal over the whole run: exact (SHA-256 of the cleaned text, first 128 bits) and
//! near (MinHash-LSH band collision with a document kept earlier).
//!
//! Only kept documents enter the index, so its contents are a function of the kept documents
//! alone, whatever their order: resume rebuilds it by reading the finished shards back. Memory is
//! about `32 + 20 * bands` bytes per kept document (hash tables of pre-hashed keys), independent of
//! document length.

use super::minhash::{LshIndex, PreHashedMap};
use serde::{Deserialize, Serialize};

/// Where a kept document is: unit of work, split, line in that unit's shard (packed in a `u64`:
/// 24 bits unit, 2 bits split, 38 bits line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocRef {
    /// Unit index.
    pub unit: u32,
    /// Split index (`Split::index`).
    pub split: u8,
    /// 0-based line in the unit's shard of that split.
    pub line: u64,
}

impl DocRef {
    /// Packed form.
    pub fn pack(self) -> u64 {
        ((self.unit as u64) << 40) | ((self.split as u64) << 38) | (self.line & ((1 << 38) - 1))
    }

    /// Inverse of [`DocRef::pack`].
    pub fn unpack(x: u64) -> Self {
        DocRef { unit: (x >> 40) as u32, split: ((x >> 38) & 3) as u8, line: x & ((1 << 38) - 1) }
    }
}

/// Why a document is a duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DupKind {
    /// Same cleaned text as a kept document.
    Exact,
    /// Shares a MinHash-LSH band with a kept document.
    Near,
}

/// The run's duplicate index.
#[derive(Debug, Default)]
pub struct Deduper {
    exact: Option<PreHashedMap<u128, u64>>,
    near: Option<LshIndex>,
}

impl Deduper {
    /// An empty index; `exact` / `near` switch the two checks.
    pub fn new(exact: bool, near: bool) -> Self {
        Deduper { exact: exact.then(PreHashedMap::default), near: near.then(LshIndex::default) }
    }

    /// The kept document a new one duplicates, if any.
    pub fn check(&self, text_hash: u128, band_keys: &[u64]) -> Option<(DupKind, DocRef)> {
        if let Some(v) = self.exact.as_ref().and_then(|m| m.get(&text_hash)) {
            return Some((DupKind::Exact, DocRef::unpack(*v)));
        }
        self.near.as_ref().and_then(|l| l.query(band_keys)).map(|v| (DupKind::Near, DocRef::unpack(v)))
    }

    /// Records a kept document.
    pub fn insert(&mut self, text_hash: u128, band_keys: &[u64], at: DocRef) {
        if let Some(m) = &mut self.exact {
            m.entry(text_hash).or_insert(at.pack());
        }
        if let Some(l) = &mut self.near {
            l.insert(band_keys, at.pack());
        }
    }

    /// Documents in the exact index and band keys in the LSH index.
    pub fn sizes(&self) -> (usize, usize) {
        (self.exact.as_ref().map_or(0, |m| m.len()), self.near.as_ref().map_or(0, |l| l.len()))
    }
}

/// First 128 bits of the SHA-256 of `text`.
pub fn text_hash(text: &str) -> u128 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(text.as_bytes());
    u128::from_le_bytes(d[..16].try_into().expect("32-byte digest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip() {
        for r in [
            DocRef { unit: 0, split: 0, line: 0 },
            DocRef { unit: (1 << 24) - 1, split: 2, line: (1 << 38) - 1 },
            DocRef { unit: 7, split: 1, line: 123_456 },
        ] {
            assert_eq!(DocRef::unpack(r.pack()), r);
        }
    }

    #[test]
    fn exact_before_near_and_only_kept_documents_count() {
        let mut d = Deduper::new(true, true);
        let a = DocRef { unit: 0, split: 0, line: 0 };
        assert_eq!(d.check(text_hash("x"), &[1, 2]), None);
        d.insert(text_hash("x"), &[1, 2], a);
        assert_eq!(d.check(text_hash("x"), &[1, 2]), Some((DupKind::Exact, a)));
        assert_eq!(d.check(text_hash("y"), &[9, 2]), Some((DupKind::Near, a)));
        assert_eq!(d.check(text_hash("y"), &[9, 8]), None);
        let exact_only = Deduper::new(true, false);
        assert_eq!(exact_only.check(text_hash("y"), &[1, 2]), None);
        assert_eq!(d.sizes(), (1, 2));
    }
}
