//! MinHash signatures over word shingles and a banded LSH index.
//!
//! Hash function `i` maps a shingle hash `x` to `(a_i * x + b_i) >> 32` (multiply-shift, `a_i`
//! odd), with `a_i, b_i` drawn from the seed; the signature keeps the minimum of each over the
//! document's shingles. Band `k` is rows `k*r .. (k+1)*r` of the signature, hashed with its index
//! into one `u64` key. Two documents whose word-shingle sets have Jaccard similarity `s` agree on
//! one signature row with probability `s`, so they share some band with probability
//! `1 - (1 - s^r)^b` (see `MinHashConfig::detection_probability`). A document with fewer words
//! than a shingle is one shingle of all its words.

use super::config::MinHashConfig;
use super::words::ngram_hashes;
use crate::rng::{mix64, sub_rng};
use rand::Rng;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// How signatures are computed: both give the same values (tested).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigPath {
    /// Portable loop.
    Scalar,
    /// AVX-512 (8 hash functions per instruction: `vpmullq`, `vpminuq`).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl SigPath {
    /// The fastest path this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            return SigPath::Avx512;
        }
        SigPath::Scalar
    }
}

/// The hash functions of one [`MinHashConfig`].
#[derive(Clone, Debug)]
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
    shingle_words: usize,
    bands: usize,
    rows: usize,
    path: SigPath,
}

/// `sig[i] = min(sig[i], (a[i] * x + b[i]) >> 32)` over the shingles `xs`.
fn min_hashes_scalar(a: &[u64], b: &[u64], xs: &[u64], sig: &mut [u64]) {
    for &x in xs {
        for ((s, &a), &b) in sig.iter_mut().zip(a).zip(b) {
            *s = (*s).min(a.wrapping_mul(x).wrapping_add(b) >> 32);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::min_hashes_scalar`] eight lanes at a time.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512DQ; `a`, `b` and `sig` have equal lengths.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn min_hashes(a: &[u64], b: &[u64], xs: &[u64], sig: &mut [u64]) {
        let k = sig.len();
        assert!(a.len() == k && b.len() == k);
        let full = k / 8 * 8;
        for &x in xs {
            let vx = _mm512_set1_epi64(x as i64);
            let mut i = 0;
            while i < full {
                // SAFETY: i + 8 <= full <= k, the length of all three slices; unaligned loads.
                unsafe {
                    let va = _mm512_loadu_si512(a.as_ptr().add(i) as *const _);
                    let vb = _mm512_loadu_si512(b.as_ptr().add(i) as *const _);
                    let h = _mm512_srli_epi64::<32>(_mm512_add_epi64(_mm512_mullo_epi64(va, vx), vb));
                    let p = sig.as_mut_ptr().add(i) as *mut _;
                    _mm512_storeu_si512(p, _mm512_min_epu64(_mm512_loadu_si512(p as *const _), h));
                }
                i += 8;
            }
            super::min_hashes_scalar(&a[full..], &b[full..], &[x], &mut sig[full..]);
        }
    }
}

impl MinHasher {
    /// Draws `bands * rows` hash functions from `config.seed`.
    pub fn new(config: &MinHashConfig) -> Self {
        let k = config.bands * config.rows;
        let mut rng = sub_rng(config.seed, "minhash");
        let a = (0..k).map(|_| rng.gen::<u64>() | 1).collect();
        let b = (0..k).map(|_| rng.gen::<u64>()).collect();
        MinHasher {
            a,
            b,
            shingle_words: config.shingle_words,
            bands: config.bands,
            rows: config.rows,
            path: SigPath::detect(),
        }
    }

    /// Number of bands.
    pub fn bands(&self) -> usize {
        self.bands
    }

    /// The signature of a document given its word hashes (`scratch` holds the shingles).
    /// Empty for a document without words.
    pub fn signature(&self, words: &[u64], scratch: &mut Vec<u64>) -> Vec<u32> {
        if words.is_empty() {
            return Vec::new();
        }
        ngram_hashes(words, self.shingle_words.min(words.len()), scratch);
        let mut sig = vec![u64::MAX; self.a.len()];
        match self.path {
            #[cfg(target_arch = "x86_64")]
            SigPath::Avx512 => {
                // SAFETY: `Avx512` is only chosen when the CPU has AVX-512F and AVX-512DQ.
                unsafe { avx512::min_hashes(&self.a, &self.b, scratch, &mut sig) }
            }
            SigPath::Scalar => min_hashes_scalar(&self.a, &self.b, scratch, &mut sig),
        }
        sig.into_iter().map(|v| v as u32).collect()
    }

    /// The same hasher on the portable path (tests compare the paths).
    pub fn scalar(mut self) -> Self {
        self.path = SigPath::Scalar;
        self
    }

    /// The band keys of a signature (empty for an empty signature).
    pub fn band_keys(&self, sig: &[u32]) -> Vec<u64> {
        if sig.is_empty() {
            return Vec::new();
        }
        sig.chunks(self.rows)
            .enumerate()
            .map(|(k, rows)| rows.iter().fold(mix64(k as u64 ^ 0xB4D5), |h, &v| mix64(h ^ v as u64)))
            .collect()
    }

    /// Estimated Jaccard similarity: the fraction of equal signature rows.
    pub fn estimate(a: &[u32], b: &[u32]) -> f64 {
        if a.is_empty() || a.len() != b.len() {
            return 0.0;
        }
        a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
    }
}

/// A hasher for keys that are hashes already (identity on `u64`, mixing for anything else).
#[derive(Default)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 ^= x;
    }
    fn write_u128(&mut self, x: u128) {
        self.0 ^= x as u64 ^ (x >> 64) as u64;
    }
}

/// `HashMap` keyed by pre-hashed values.
pub type PreHashedMap<K, V> = HashMap<K, V, BuildHasherDefault<PreHashed>>;

/// Band key -> value (a document reference) of every document inserted.
#[derive(Debug, Default)]
pub struct LshIndex {
    table: PreHashedMap<u64, u64>,
}

impl LshIndex {
    /// The value of the first inserted document sharing a band with `keys`, if any.
    pub fn query(&self, keys: &[u64]) -> Option<u64> {
        keys.iter().find_map(|k| self.table.get(k).copied())
    }

    /// Inserts a document's band keys (keeps the earlier value of a key already present).
    pub fn insert(&mut self, keys: &[u64], value: u64) {
        for &k in keys {
            self.table.entry(k).or_insert(value);
        }
    }

    /// Band keys stored.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests;
