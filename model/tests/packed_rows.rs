//! Packing is exact: documents packed into one long row (positions from 0 per document, one
//! attention segment each, padding its own segment) give every token the same loss, and the
//! model the same gradient, as the same documents each in its own short row. This is what lets
//! P2 train long rows (`sft.long`) next to its short ones; checked for the dense model and the
//! MoE (evaluation routing, no capacity), at a long row of 1024 and of 2048 tokens.

use autograd::DType;
use model::init::qwen3_init;
use model::qwen3::ForwardOptions;
use model::{presets, Qwen3, TokenBatch};
use std::sync::Arc;

const IGNORE: i32 = -100;

/// A document of `len` tokens (vocabulary 4096) from seed `s`, every next token a target.
fn doc(len: usize, s: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(s * 977) >> 7) % 4096).collect()
}

/// `docs` packed into rows of `t` tokens, `per_row` documents a row in order: (batch, targets,
/// index of each token of each document in the batch).
fn pack(docs: &[Vec<u32>], per_row: usize, t: usize) -> (TokenBatch, Vec<i32>, Vec<Vec<usize>>) {
    let rows = docs.len().div_ceil(per_row);
    let (mut ids, mut pos, mut seg, mut targets) =
        (vec![0u32; rows * t], vec![0u32; rows * t], vec![0u32; rows * t], vec![IGNORE; rows * t]);
    let mut at = Vec::new();
    for (r, group) in docs.chunks(per_row).enumerate() {
        let mut o = r * t;
        let mut next_seg = (r * (t + 1)) as u32;
        for d in group {
            at.push((o..o + d.len()).collect());
            for (i, &x) in d.iter().enumerate() {
                ids[o + i] = x;
                pos[o + i] = i as u32;
                seg[o + i] = next_seg;
                if i + 1 < d.len() {
                    targets[o + i] = d[i + 1] as i32;
                }
            }
            o += d.len();
            next_seg += 1;
        }
        assert!(o <= (r + 1) * t, "documents do not fit a row of {t}");
        // Padding: token 0, its own segment, positions from 0, no target.
        for (i, j) in (o..(r + 1) * t).enumerate() {
            pos[j] = i as u32;
            seg[j] = next_seg;
        }
    }
    let batch = TokenBatch { ids, b: rows, t, pos: pos.into(), seg: Some(Arc::from(seg)) };
    (batch, targets, at)
}

fn check(model: &Qwen3, t_long: usize, t_short: usize) {
    let per_long = t_long / t_short;
    let lens: Vec<usize> = (0..per_long).map(|i| t_short - 7 * (i % 5) - 3).collect();
    let docs: Vec<Vec<u32>> = lens.iter().enumerate().map(|(i, &n)| doc(n, i as u32 + 1)).collect();
    let (long, long_targets, long_at) = pack(&docs, per_long, t_long);
    let (short, short_targets, short_at) = pack(&docs, 1, t_short);
    assert_eq!((long.b, short.b), (1, per_long));
    let opts = ForwardOptions::eval();
    let run = |batch: &TokenBatch, targets: &[i32]| {
        model
            .loss_and_grads(batch, targets, &opts)
            .map(|(out, grads)| (out.ce, out.count, out.row_losses, grads))
            .unwrap()
    };
    let (ce_l, n_l, rows_l, g_l) = run(&long, &long_targets);
    let (ce_s, n_s, rows_s, g_s) = run(&short, &short_targets);
    assert_eq!(n_l, n_s, "the same tokens are trained");
    // Every token's loss, matched by document and position.
    let mut worst = 0f32;
    for (a, b) in long_at.iter().zip(&short_at) {
        for (&i, &j) in a.iter().zip(b) {
            worst = worst.max((rows_l[i] - rows_s[j]).abs() / rows_s[j].abs().max(1.0));
        }
    }
    assert!(
        worst < 2e-5,
        "T {t_long}: a token's loss differs by {worst} (relative) between the long row and its own row"
    );
    assert!((ce_l - ce_s).abs() < 2e-5 * ce_s.abs(), "mean CE {ce_l} vs {ce_s}");
    // The gradient: the same up to summation order.
    let scale = g_s.iter().fold(0f32, |m, g| m.max(g.abs()));
    let diff = g_l.iter().zip(&g_s).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0 && diff < 1e-4 * scale, "T {t_long}: gradient max abs diff {diff} (max |g| {scale})");
}

#[test]
fn a_long_packed_row_trains_like_its_documents_in_their_own_rows() {
    let dense =
        Qwen3::from_init(presets::embedded("tiny-dense").unwrap().unwrap(), None, DType::F32, qwen3_init(3, 0.02));
    let (c, spec) = presets::embedded_moe("tiny-k1p1-n16").unwrap();
    let moe = Qwen3::from_init(c, Some(spec), DType::F32, qwen3_init(4, 0.02));
    for m in [&dense, &moe] {
        check(m, 1024, 256);
        check(m, 2048, 512);
    }
}
