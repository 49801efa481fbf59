//! Packing masked SFT documents into rows of one phase's sequence length.
//!
//! Best-fit decreasing: documents sorted longest first go into the fullest row they fit
//! (padding-free packing, TRL's `bfd`). Every document is its own attention segment with
//! positions from 0; a position's target is the next token of the same document when that
//! token is trained (mask 1), else -100, so no document is predicted from another and prompts
//! are never targets. Padding fills row ends (its own segment, targets -100). Documents longer
//! than a row are not cut (an assistant turn would lose its end): they are counted and left out.

use super::render::MaskedTokens;
use std::collections::BTreeSet;

/// Target of positions that do not count.
pub const IGNORE: i32 = -100;

/// One packed row `[T]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SftRow {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Position within its document.
    pub pos: Vec<u32>,
    /// Segment (document) of each token, numbered from 0 in the row; padding has its own.
    pub seg: Vec<u32>,
    /// The token each position predicts, or -100.
    pub targets: Vec<i32>,
    /// Indices (into the packed list) of the documents in this row, in row order.
    pub docs: Vec<usize>,
}

/// A packing.
#[derive(Clone, Debug, PartialEq)]
pub struct SftPacking {
    /// The rows.
    pub rows: Vec<SftRow>,
    /// Documents longer than a row, left out.
    pub too_long: Vec<usize>,
    /// Positions with a target (the loss's token count).
    pub trained_tokens: usize,
}

/// Packs `docs` into rows of `seq_len` tokens, padding with `pad_id`.
pub fn pack_sft(docs: &[MaskedTokens], seq_len: usize, pad_id: u32) -> SftPacking {
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(docs[i].ids.len()), i));
    pack_in_order(docs, order, seq_len, pad_id)
}

/// Best fit in a seeded random order instead of longest first: each row holds a random mix of
/// documents rather than documents of one length (longest-first packing fills the first rows
/// with the longest conversations and the last with the shortest, so a row is one kind of
/// conversation; fine when a micro-batch draws many rows, not when it holds one or two long ones).
pub fn pack_sft_mixed(docs: &[MaskedTokens], seq_len: usize, pad_id: u32, seed: u64) -> SftPacking {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.shuffle(&mut crate::rng::sub_rng(seed, "sft-pack-mixed"));
    pack_in_order(docs, order, seq_len, pad_id)
}

/// Best-fit packing of `docs` taken in `order`.
fn pack_in_order(docs: &[MaskedTokens], order: Vec<usize>, seq_len: usize, pad_id: u32) -> SftPacking {
    let mut too_long = Vec::new();
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new(); // (used, docs)
    let mut free: BTreeSet<(usize, usize)> = BTreeSet::new(); // (space left, row)
    for i in order {
        let len = docs[i].ids.len();
        if len == 0 {
            continue;
        }
        if len > seq_len {
            too_long.push(i);
            continue;
        }
        // The row with the least space that still fits the document.
        let slot = free.range((len, 0)..).next().copied();
        let r = match slot {
            Some(s) => {
                free.remove(&s);
                s.1
            }
            None => {
                rows.push((0, Vec::new()));
                rows.len() - 1
            }
        };
        rows[r].0 += len;
        rows[r].1.push(i);
        free.insert((seq_len - rows[r].0, r));
    }
    too_long.sort_unstable();
    let mut trained_tokens = 0;
    let rows = rows
        .into_iter()
        .map(|(_, members)| {
            let mut row =
                SftRow { ids: Vec::new(), pos: Vec::new(), seg: Vec::new(), targets: Vec::new(), docs: members };
            for (s, &d) in row.docs.iter().enumerate() {
                let doc = &docs[d];
                let n = doc.ids.len();
                row.ids.extend_from_slice(&doc.ids);
                row.pos.extend(0..n as u32);
                row.seg.extend(std::iter::repeat_n(s as u32, n));
                row.targets.extend((0..n).map(|t| match doc.mask.get(t + 1) {
                    Some(1) => doc.ids[t + 1] as i32,
                    _ => IGNORE,
                }));
            }
            let pad = seq_len - row.ids.len();
            let pad_seg = row.docs.len() as u32;
            row.ids.extend(std::iter::repeat_n(pad_id, pad));
            row.pos.extend(0..pad as u32);
            row.seg.extend(std::iter::repeat_n(pad_seg, pad));
            row.targets.extend(std::iter::repeat_n(IGNORE, pad));
            trained_tokens += row.targets.iter().filter(|&&t| t != IGNORE).count();
            row
        })
        .collect();
    SftPacking { rows, too_long, trained_tokens }
}
