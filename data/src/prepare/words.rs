//! Word hashes and word n-gram hashes: the shared unit of near-duplicate and contamination checks.
//!
//! A word is a maximal run of alphanumeric characters, lowercased (the same words as
//! `eval::overlap::words`); its hash is FNV-1a over the lowercased UTF-8 bytes, finalised by
//! SplitMix64. An n-gram hash is a polynomial over the word hashes (mod 2^64, rolling), finalised
//! by SplitMix64, so equal word sequences hash equal whatever the punctuation, case or spacing.

use crate::rng::mix64;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;
/// Base of the rolling n-gram polynomial (odd).
const BASE: u64 = 0x9E37_79B9_7F4A_7C15 | 1;

/// Appends the hash of every word of `text` to `out` (cleared first).
pub fn word_hashes(text: &str, out: &mut Vec<u64>) {
    out.clear();
    word_spans(text, |_, h| out.push(h));
}

/// Calls `f(byte_range, hash)` for each word of `text`.
pub fn word_spans(text: &str, mut f: impl FnMut(std::ops::Range<usize>, u64)) {
    let mut h = FNV_OFFSET;
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() {
                start.get_or_insert(i);
                h = (h ^ c.to_ascii_lowercase() as u64).wrapping_mul(FNV_PRIME);
                continue;
            }
        } else if c.is_alphanumeric() {
            start.get_or_insert(i);
            for l in c.to_lowercase() {
                let mut buf = [0u8; 4];
                for &b in l.encode_utf8(&mut buf).as_bytes() {
                    h = (h ^ b as u64).wrapping_mul(FNV_PRIME);
                }
            }
            continue;
        }
        if let Some(s) = start.take() {
            f(s..i, mix64(h));
            h = FNV_OFFSET;
        }
    }
    if let Some(s) = start {
        f(s..text.len(), mix64(h));
    }
}

/// Appends the hash of every window of `n` consecutive words to `out` (cleared first); none when
/// there are fewer than `n` words.
pub fn ngram_hashes(words: &[u64], n: usize, out: &mut Vec<u64>) {
    out.clear();
    if n == 0 || words.len() < n {
        return;
    }
    // h = sum_i w[j+i] * BASE^(n-1-i); top = BASE^(n-1).
    let top = (1..n).fold(1u64, |p, _| p.wrapping_mul(BASE));
    let mut h = 0u64;
    for &w in &words[..n] {
        h = h.wrapping_mul(BASE).wrapping_add(w);
    }
    out.push(mix64(h));
    for j in n..words.len() {
        h = h.wrapping_sub(words[j - n].wrapping_mul(top)).wrapping_mul(BASE).wrapping_add(words[j]);
        out.push(mix64(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(text: &str) -> Vec<u64> {
        let mut v = Vec::new();
        word_hashes(text, &mut v);
        v
    }

    #[test]
    fn words_ignore_case_punctuation_and_spacing() {
        assert_eq!(hashes("The  Heart, the heart!"), hashes("the heart the HEART"));
        assert_eq!(hashes("Ärzte über"), hashes("ärzte ÜBER"));
        assert_eq!(hashes("a-b c").len(), 3);
        assert_ne!(hashes("ab"), hashes("a b"));
        let mut spans = Vec::new();
        word_spans("  Hi, you2!", |r, _| spans.push(r));
        assert_eq!(spans, vec![2..4, 6..10]);
    }

    #[test]
    fn rolling_ngrams_equal_direct_ones() {
        let w = hashes("one two three four five six seven eight nine ten eleven twelve thirteen fourteen");
        let mut rolled = Vec::new();
        ngram_hashes(&w, 13, &mut rolled);
        assert_eq!(rolled.len(), 2);
        for (j, &h) in rolled.iter().enumerate() {
            let mut direct = Vec::new();
            ngram_hashes(&w[j..j + 13], 13, &mut direct);
            assert_eq!(direct, vec![h]);
        }
        ngram_hashes(&w[..5], 13, &mut rolled);
        assert!(rolled.is_empty());
        // Word order matters.
        let mut a = Vec::new();
        let mut b = Vec::new();
        ngram_hashes(&hashes("a b c"), 3, &mut a);
        ngram_hashes(&hashes("c b a"), 3, &mut b);
        assert_ne!(a, b);
    }
}
