//! Token permutation: a stable counting sort of tokens by expert, capacity dropping, gathering
//! rows into contiguous per-expert blocks, and the weighted combine back into token order.
//!
//! Shapes: `expert_of_token` `[N]` (`NONE`: no expert); `order` `[Nk]` token of each permuted row,
//! grouped by expert; `offsets` `[E+1]` (expert `i` owns rows `offsets[i]..offsets[i+1]`);
//! `inv` [N, K] permuted row of each token's K slots (`NONE`: empty; K = 1 for top-1, E in
//! dense-equivalent mode); `xp`, `yp` [Nk, D]; `weights` `[Nk]`.

use super::router::NONE;
use rayon::prelude::*;

/// Stable counting sort: `(order [Nk], offsets [E+1])`, tokens of one expert in token order;
/// tokens marked `NONE` are left out.
pub fn sort_by_expert(expert_of_token: &[u32], e: usize) -> (Vec<u32>, Vec<usize>) {
    let mut offsets = vec![0usize; e + 1];
    for &x in expert_of_token.iter().filter(|&&x| x != NONE) {
        offsets[x as usize + 1] += 1;
    }
    for i in 0..e {
        offsets[i + 1] += offsets[i];
    }
    let mut next = offsets[..e].to_vec();
    let mut order = vec![0u32; offsets[e]];
    for (t, &x) in expert_of_token.iter().enumerate() {
        if x != NONE {
            order[next[x as usize]] = t as u32;
            next[x as usize] += 1;
        }
    }
    (order, offsets)
}

/// Keeps, per expert, the `cap` tokens with the highest `score` `[N]` (ties: the earlier token is
/// kept, so the later one is dropped first). Dropped tokens become `NONE` in `expert_of_token`;
/// `order` and `offsets` are compacted (still stable). Returns how many were dropped.
pub fn apply_capacity(
    order: &mut Vec<u32>,
    offsets: &mut [usize],
    expert_of_token: &mut [u32],
    score: &[f32],
    cap: usize,
) -> usize {
    let e = offsets.len() - 1;
    let mut dropped = 0;
    for i in 0..e {
        let block = &order[offsets[i]..offsets[i + 1]];
        if block.len() <= cap {
            continue;
        }
        let mut ranked = block.to_vec();
        ranked.sort_by(|&a, &b| score[b as usize].total_cmp(&score[a as usize]).then(a.cmp(&b)));
        for &t in &ranked[cap..] {
            expert_of_token[t as usize] = NONE;
        }
        dropped += ranked.len() - cap;
    }
    if dropped > 0 {
        let (kept, kept_offsets) = sort_by_expert(expert_of_token, e);
        *order = kept;
        offsets.copy_from_slice(&kept_offsets);
    }
    dropped
}

/// `inv` `[N]` (K = 1): the permuted row of each token, `NONE` if it has none.
pub fn inverse_positions(order: &[u32], n: usize) -> Vec<u32> {
    let mut inv = vec![NONE; n];
    for (p, &t) in order.iter().enumerate() {
        inv[t as usize] = p as u32;
    }
    inv
}

/// Dense-equivalent layout: every expert takes every token. `(order [E*N], offsets, inv [N, E])`.
pub fn dense_layout(n: usize, e: usize) -> (Vec<u32>, Vec<usize>, Vec<u32>) {
    let order = (0..e).flat_map(|_| 0..n as u32).collect();
    let offsets = (0..=e).map(|i| i * n).collect();
    let inv = (0..n).flat_map(|t| (0..e).map(move |i| (i * n + t) as u32)).collect();
    (order, offsets, inv)
}

/// `xp[p] = x[order[p]]`: rows gathered into per-expert blocks.
pub fn gather_rows_forward(xp: &mut [f32], x: &[f32], order: &[u32], d: usize) {
    assert_eq!(xp.len(), order.len() * d, "gather: xp is not [Nk, D]");
    xp.par_chunks_mut(d).zip(order).for_each(|(row, &t)| {
        let t = t as usize;
        row.copy_from_slice(&x[t * d..(t + 1) * d]);
    });
}

/// Accumulates `dx[t] += sum over t's K slots of dxp[inv[t, slot]]`.
pub fn gather_rows_backward(dx: &mut [f32], dxp: &[f32], inv: &[u32], k: usize, d: usize) {
    assert!(k > 0 && inv.len() * d == dx.len() * k, "gather backward: inv is not [N, K]");
    dx.par_chunks_mut(d).zip(inv.par_chunks(k)).for_each(|(row, slots)| {
        for &p in slots.iter().filter(|&&p| p != NONE) {
            let p = p as usize;
            for (o, &v) in row.iter_mut().zip(&dxp[p * d..(p + 1) * d]) {
                *o += v;
            }
        }
    });
}

/// `out[t] = sum over t's K slots of weights[p] * yp[p]` (zero rows for tokens without a slot).
pub fn combine_forward(out: &mut [f32], yp: &[f32], weights: &[f32], inv: &[u32], k: usize, d: usize) {
    assert!(k > 0 && inv.len() * d == out.len() * k, "combine: inv is not [N, K]");
    out.par_chunks_mut(d).zip(inv.par_chunks(k)).for_each(|(row, slots)| {
        row.fill(0.0);
        for &p in slots.iter().filter(|&&p| p != NONE) {
            let (p, w) = (p as usize, weights[p as usize]);
            for (o, &v) in row.iter_mut().zip(&yp[p * d..(p + 1) * d]) {
                *o += w * v;
            }
        }
    });
}

/// Accumulates `dyp[p] += weights[p] * dout[order[p]]` and `dweights[p] += <dout[order[p]], yp[p]>`.
pub fn combine_backward(
    dyp: &mut [f32],
    dweights: &mut [f32],
    dout: &[f32],
    yp: &[f32],
    weights: &[f32],
    order: &[u32],
    d: usize,
) {
    dyp.par_chunks_mut(d)
        .zip(dweights.par_iter_mut())
        .zip(yp.par_chunks(d).zip(weights.par_iter().zip(order)))
        .for_each(|((dy, dw), (y, (&w, &t)))| {
            let t = t as usize;
            let g = &dout[t * d..(t + 1) * d];
            let mut dot = 0f32;
            for ((o, &gv), &yv) in dy.iter_mut().zip(g).zip(y) {
                *o += w * gv;
                dot += gv * yv;
            }
            *dw += dot;
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::rand_vec;

    #[test]
    fn counting_sort_is_stable_and_skips_dropped_tokens() {
        let ex = [2, 0, NONE, 2, 1, 0, 2, NONE, 0];
        let (order, offsets) = sort_by_expert(&ex, 4);
        assert_eq!(offsets, [0, 3, 4, 7, 7]);
        assert_eq!(order, [1, 5, 8, 4, 0, 3, 6]);
    }

    #[test]
    fn permute_then_unpermute_is_the_identity_on_kept_tokens() {
        let (n, d, e) = (37, 5, 6);
        let ex: Vec<u32> =
            rand_vec(n, 1).iter().map(|v| if *v > 0.8 { NONE } else { ((v + 1.0) * 3.0) as u32 }).collect();
        let x = rand_vec(n * d, 2);
        let (order, offsets) = sort_by_expert(&ex, e);
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[e] == order.len());
        for i in 0..e {
            let block = &order[offsets[i]..offsets[i + 1]];
            assert!(block.windows(2).all(|w| w[0] < w[1]) && block.iter().all(|&t| ex[t as usize] == i as u32));
        }
        let inv = inverse_positions(&order, n);
        let mut xp = vec![0.0; order.len() * d];
        gather_rows_forward(&mut xp, &x, &order, d);
        let mut back = vec![7.0; n * d];
        combine_forward(&mut back, &xp, &vec![1.0; order.len()], &inv, 1, d);
        for t in 0..n {
            let want = if ex[t] == NONE { vec![0.0; d] } else { x[t * d..(t + 1) * d].to_vec() };
            assert_eq!(back[t * d..(t + 1) * d], want[..], "token {t}");
        }
    }

    #[test]
    fn capacity_drops_exactly_the_lowest_scores_later_token_first_on_ties() {
        // Expert 0 holds tokens 0,1,3,4,6 with scores .9 .2 .5 .2 .7; capacity 3 drops the two
        // lowest: the tie at .2 between tokens 1 and 4 leaves both out; capacity 4 drops token 4
        // only (the later one of the tie). Expert 1 (tokens 2, 5) fits.
        let mut ex = vec![0, 0, 1, 0, 0, 1, 0];
        let score = [0.9, 0.2, 0.4, 0.5, 0.2, 0.1, 0.7];
        let (mut order, mut offsets) = sort_by_expert(&ex, 2);
        let dropped = apply_capacity(&mut order, &mut offsets, &mut ex, &score, 4);
        assert_eq!((dropped, ex.clone()), (1, vec![0, 0, 1, 0, NONE, 1, 0]));
        assert_eq!((order.clone(), offsets.clone()), (vec![0, 1, 3, 6, 2, 5], vec![0, 4, 6]));
        let dropped = apply_capacity(&mut order, &mut offsets, &mut ex, &score, 3);
        assert_eq!((dropped, ex.clone()), (1, vec![0, NONE, 1, 0, NONE, 1, 0]));
        let dropped = apply_capacity(&mut order, &mut offsets, &mut ex, &score, 1);
        assert_eq!((dropped, ex.clone()), (3, vec![0, NONE, 1, NONE, NONE, NONE, NONE]));
        assert_eq!((order, offsets), (vec![0, 2], vec![0, 1, 2]));
    }

    /// `<combine(yp), dout> = <yp, dyp>` and `<gather(x), g> = <x, gather_backward(g)>`.
    #[test]
    fn backward_is_the_adjoint_of_forward_in_dense_layout() {
        let (n, d, e) = (9, 4, 3);
        let (order, offsets, inv) = dense_layout(n, e);
        assert_eq!(offsets, [0, 9, 18, 27]);
        let (yp, w, dout, x) = (rand_vec(27 * d, 3), rand_vec(27, 4), rand_vec(n * d, 5), rand_vec(n * d, 6));
        let mut out = vec![0.0; n * d];
        combine_forward(&mut out, &yp, &w, &inv, e, d);
        let (mut dyp, mut dw) = (vec![0.0; 27 * d], vec![0.0; 27]);
        combine_backward(&mut dyp, &mut dw, &dout, &yp, &w, &order, d);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&u, &v)| u as f64 * v as f64).sum::<f64>();
        assert!((dot(&out, &dout) - dot(&yp, &dyp)).abs() < 1e-5);
        // d out / d w_p = <dout[t], yp[p]>: the weights enter linearly.
        let wy: f64 = (0..27).map(|p| w[p] as f64 * dw[p] as f64).sum();
        assert!((dot(&out, &dout) - wy).abs() < 1e-5);
        let mut xp = vec![0.0; 27 * d];
        gather_rows_forward(&mut xp, &x, &order, d);
        let mut dx = vec![0.0; n * d];
        gather_rows_backward(&mut dx, &dyp, &inv, e, d);
        assert!((dot(&xp, &dyp) - dot(&x, &dx)).abs() < 1e-5);
    }
}
