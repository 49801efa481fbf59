//! MinHash-LSH recall and precision on synthetic near-duplicates with known Jaccard similarity.

use super::*;
use crate::prepare::words::word_hashes;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::HashSet;

fn shingle_set(words: &[u64], n: usize) -> HashSet<u64> {
    let mut v = Vec::new();
    ngram_hashes(words, n, &mut v);
    v.into_iter().collect()
}

fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    a.intersection(b).count() as f64 / a.union(b).count() as f64
}

fn hashes(text: &str) -> Vec<u64> {
    let mut v = Vec::new();
    word_hashes(text, &mut v);
    v
}

/// `docs` random documents of 150-300 words from a 3000-word vocabulary, and for each a variant
/// with `rate` of its words replaced.
fn corpus(docs: usize, rate: f64, seed: u64) -> Vec<(String, String)> {
    let mut rng = sub_rng(seed, "minhash-test");
    let vocab: Vec<String> = (0..3000).map(|i| format!("w{i}x{}", rng.gen::<u16>())).collect();
    (0..docs)
        .map(|_| {
            let n = rng.gen_range(150..300);
            let a: Vec<&str> = (0..n).map(|_| vocab.choose(&mut rng).unwrap().as_str()).collect();
            let b: Vec<&str> = a
                .iter()
                .map(|&w| if rng.gen_bool(rate) { vocab.choose(&mut rng).unwrap().as_str() } else { w })
                .collect();
            (a.join(" "), b.join(" "))
        })
        .collect()
}

#[test]
fn near_duplicates_are_found_and_distinct_documents_are_not() {
    let config = MinHashConfig::default();
    let mh = MinHasher::new(&config);
    let mut scratch = Vec::new();
    // Originals go into the index; each variant and each unrelated document is queried.
    let mut index = LshIndex::default();
    let pairs = corpus(300, 0.015, 1);
    for (i, (a, _)) in pairs.iter().enumerate() {
        let keys = mh.band_keys(&mh.signature(&hashes(a), &mut scratch));
        index.insert(&keys, i as u64);
    }
    let (mut high, mut found_high) = (0, 0);
    let (mut flagged, mut flagged_true) = (0, 0);
    for (i, (a, b)) in pairs.iter().enumerate() {
        let j = jaccard(&shingle_set(&hashes(a), 5), &shingle_set(&hashes(b), 5));
        let hit = index.query(&mh.band_keys(&mh.signature(&hashes(b), &mut scratch)));
        if j >= 0.8 {
            high += 1;
            found_high += (hit == Some(i as u64)) as usize;
        }
        if hit.is_some() {
            flagged += 1;
            flagged_true += (hit == Some(i as u64)) as usize;
        }
    }
    let unrelated = corpus(300, 0.0, 2);
    for (a, _) in &unrelated {
        let hit = index.query(&mh.band_keys(&mh.signature(&hashes(a), &mut scratch)));
        flagged += hit.is_some() as usize;
    }
    let recall = found_high as f64 / high as f64;
    let precision = flagged_true as f64 / flagged as f64;
    println!("pairs with J >= 0.8: {high}, recall {recall:.3}; flagged {flagged}, precision {precision:.3}");
    assert!(high >= 200, "most synthetic variants should be near duplicates ({high})");
    assert!(recall >= 0.95, "recall {recall} at J >= 0.8 (theory {:.3})", config.detection_probability(0.8));
    assert!(precision >= 0.99, "precision {precision}");
}

#[test]
fn dissimilar_variants_are_rarely_flagged() {
    // 30% of words replaced: 5-shingle Jaccard about 0.1; the LSH must let them through.
    let config = MinHashConfig::default();
    let mh = MinHasher::new(&config);
    let mut scratch = Vec::new();
    let pairs = corpus(300, 0.3, 3);
    let mut flagged = 0;
    for (a, b) in &pairs {
        let j = jaccard(&shingle_set(&hashes(a), 5), &shingle_set(&hashes(b), 5));
        assert!(j < 0.4, "{j}");
        let ka = mh.band_keys(&mh.signature(&hashes(a), &mut scratch));
        let kb = mh.band_keys(&mh.signature(&hashes(b), &mut scratch));
        flagged += ka.iter().zip(&kb).any(|(x, y)| x == y) as usize;
    }
    assert!(flagged <= 3, "{flagged} of 300 dissimilar pairs flagged");
}

#[test]
fn the_estimate_tracks_the_true_jaccard() {
    let mh = MinHasher::new(&MinHashConfig { bands: 32, rows: 8, ..MinHashConfig::default() });
    let mut scratch = Vec::new();
    for (a, b) in corpus(20, 0.05, 4) {
        let j = jaccard(&shingle_set(&hashes(&a), 5), &shingle_set(&hashes(&b), 5));
        let e = MinHasher::estimate(&mh.signature(&hashes(&a), &mut scratch), &mh.signature(&hashes(&b), &mut scratch));
        // 256 rows: standard error sqrt(j(1-j)/256) < 0.032; allow 4 of them.
        assert!((e - j).abs() < 0.13, "estimate {e} vs true {j}");
    }
    // Identical text, identical signature; no words, no signature.
    let s = mh.signature(&hashes("a b c d e f"), &mut scratch);
    assert_eq!(MinHasher::estimate(&s, &mh.signature(&hashes("A, b c d e f!"), &mut scratch)), 1.0);
    assert!(mh.signature(&[], &mut scratch).is_empty());
    assert!(mh.band_keys(&[]).is_empty());
    // Short documents (fewer words than a shingle) still get a signature.
    assert_eq!(mh.signature(&hashes("two words"), &mut scratch).len(), 256);
}

#[test]
fn the_simd_path_equals_the_scalar_one() {
    let mut scratch = Vec::new();
    for (bands, rows) in [(16, 8), (3, 5), (1, 1), (20, 5)] {
        let config = MinHashConfig { bands, rows, ..MinHashConfig::default() };
        let fast = MinHasher::new(&config);
        let scalar = MinHasher::new(&config).scalar();
        println!("path {:?}", fast.path);
        for (a, _) in corpus(10, 0.0, 5) {
            let w = hashes(&a);
            assert_eq!(fast.signature(&w, &mut scratch), scalar.signature(&w, &mut scratch));
        }
    }
}
