//! Train / val / test assignment: a source's own split when it has one, else by a hash of the
//! cleaned text, so the same document always lands in the same split (whatever the order, the
//! thread count or a resume) and exact duplicates could never straddle two splits.

use super::config::{Split, SplitConfig};

/// The split of a document with cleaned-text hash `text_hash` under `shares`.
pub fn split_by_hash(text_hash: u128, shares: &SplitConfig) -> Split {
    // 53 bits of the hash as a uniform number in [0, 1).
    let u = ((text_hash >> 64) as u64 >> 11) as f64 / (1u64 << 53) as f64;
    if u < shares.train {
        Split::Train
    } else if u < shares.train + shares.val {
        Split::Val
    } else {
        Split::Test
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare::dedup::text_hash;

    #[test]
    fn shares_are_met_and_assignment_is_stable() {
        let shares = SplitConfig::default();
        let mut counts = [0usize; 3];
        for i in 0..20_000 {
            let s = split_by_hash(text_hash(&format!("document {i}")), &shares);
            assert_eq!(s, split_by_hash(text_hash(&format!("document {i}")), &shares));
            counts[s.index()] += 1;
        }
        // Binomial standard deviation for 10% of 20000 is 42; allow 5 of them.
        assert!((counts[0] as i64 - 16_000).abs() < 300, "{counts:?}");
        assert!((counts[1] as i64 - 2_000).abs() < 210, "{counts:?}");
        assert!((counts[2] as i64 - 2_000).abs() < 210, "{counts:?}");
        let all_train = SplitConfig { train: 1.0, val: 0.0, test: 0.0 };
        assert!((0..100).all(|i| split_by_hash(text_hash(&i.to_string()), &all_train) == Split::Train));
    }
}
