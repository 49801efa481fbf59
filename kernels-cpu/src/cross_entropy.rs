//! LM head + softmax cross-entropy fused over the vocabulary, in row chunks.
//!
//! The logits of a chunk of rows (`[rows, V]`) are the only vocabulary-sized buffer that
//! ever exists; the full `[N, V]` logits are never materialised. The training variant
//! computes the loss and both gradients in the same pass over a chunk (the loss is terminal,
//! so its upstream gradient is a scalar the caller applies through `scale`).
//!
//! Shapes: `h [N, D]` final hidden states, `w [V, D]` LM head in HF layout (row per token),
//! `targets [N]` the token each row must predict, or [`IGNORE_INDEX`].

use crate::gemm::{matmul_with, GemmBackend, Trans};
use rayon::prelude::*;

/// Target value of rows that take no part in the loss (HF's `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// Rows per chunk so a chunk's logits stay within about 4 Mi floats (16 MiB).
pub fn default_chunk_rows(v: usize) -> usize {
    ((4 << 20) / v.max(1)).clamp(1, 1024)
}

/// Turns one row of logits into softmax probabilities in place; returns `logsumexp`.
pub(crate) fn softmax_in_place(row: &mut [f32]) -> f32 {
    scaled_softmax_in_place(row, 1.0)
}

crate::isa_dispatch!(
    /// Turns one row of logits into `scale * softmax` in place (one pass fewer than scaling
    /// afterwards); returns `logsumexp`.
    fn scaled_softmax_in_place(row: &mut [f32], scale: f32) -> f32 => softmax_body
);

/// Eight-lane max / exp-sum / scale so the loops vectorise. Full chunks of eight go through
/// fixed-size lane arrays the compiler keeps in registers; the tail joins lanes `0..r`. The
/// sum's order (lane by lane, then across lanes) is the same for every caller.
#[inline(always)]
fn softmax_body(row: &mut [f32], scale: f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    for (m, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *m = if v > *m { v } else { *m };
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            let e = crate::fastmath::exp_fast(c[i] - max);
            c[i] = e;
            sums[i] += e;
        }
    }
    for (s, x) in sums.iter_mut().zip(chunks.into_remainder()) {
        let e = crate::fastmath::exp_fast(*x - max);
        *x = e;
        *s += e;
    }
    let sum: f32 = sums.iter().sum();
    let inv = scale / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
    max + sum.ln()
}

/// Checks a target and returns it as an index (`None` for ignored rows).
fn target_index(t: i32, v: usize) -> Option<usize> {
    if t == IGNORE_INDEX {
        return None;
    }
    assert!(t >= 0 && (t as usize) < v, "cross-entropy target {t} outside vocab {v}");
    Some(t as usize)
}

/// Number of rows that count towards the loss.
pub fn count_targets(targets: &[i32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}

/// Per-row losses `logsumexp(logits) - logits[target]` (0 for ignored rows), where
/// `logits = h · wᵀ`, computed chunk by chunk. `losses [N]`.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_forward(
    losses: &mut [f32],
    h: &[f32],
    w: &[f32],
    targets: &[i32],
    n: usize,
    d: usize,
    v: usize,
    chunk_rows: usize,
) {
    lm_head_ce_forward_with(GemmBackend::Auto, losses, h, w, targets, n, d, v, chunk_rows);
}

/// [`lm_head_ce_forward`] with its GEMMs on `gemm` (a bf16 backend rounds `h` and `w`; the
/// softmax and the loss stay f32).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_forward_with(
    gemm: GemmBackend,
    losses: &mut [f32],
    h: &[f32],
    w: &[f32],
    targets: &[i32],
    n: usize,
    d: usize,
    v: usize,
    chunk_rows: usize,
) {
    assert!(losses.len() == n && targets.len() == n && h.len() == n * d && w.len() == v * d);
    let chunk_rows = chunk_rows.max(1);
    let mut logits = vec![0f32; chunk_rows.min(n) * v];
    for start in (0..n).step_by(chunk_rows) {
        let rows = chunk_rows.min(n - start);
        let buf = &mut logits[..rows * v];
        let threads = rayon::current_num_threads();
        matmul_with(gemm, threads, buf, &h[start * d..(start + rows) * d], w, rows, d, v, Trans::No, Trans::Yes, false);
        buf.par_chunks_mut(v)
            .zip(losses[start..start + rows].par_iter_mut())
            .zip(targets[start..start + rows].par_iter())
            .for_each(|((row, loss), &t)| {
                *loss = match target_index(t, v) {
                    None => 0.0,
                    Some(t) => {
                        let target_logit = row[t];
                        softmax_in_place(row) - target_logit
                    }
                };
            });
    }
}

/// Forward and backward in one pass: per-row `losses [N]` as in [`lm_head_ce_forward`], and
/// `dh [N, D] += scale * ∂L/∂h`, `dw [V, D] += scale * ∂L/∂w` for `L = Σ losses`
/// (pass `scale = 1 / count_targets` for the mean loss).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_forward_backward(
    losses: &mut [f32],
    dh: &mut [f32],
    dw: &mut [f32],
    h: &[f32],
    w: &[f32],
    targets: &[i32],
    n: usize,
    d: usize,
    v: usize,
    scale: f32,
    chunk_rows: usize,
) {
    lm_head_ce_forward_backward_with(GemmBackend::Auto, losses, dh, dw, h, w, targets, n, d, v, scale, chunk_rows);
}

/// [`lm_head_ce_forward_backward`] with its three GEMMs on `gemm` (a bf16 backend rounds `h`,
/// `w` and the logits' gradient as GEMM operands; softmax, loss and gradients stay f32).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_forward_backward_with(
    gemm: GemmBackend,
    losses: &mut [f32],
    dh: &mut [f32],
    dw: &mut [f32],
    h: &[f32],
    w: &[f32],
    targets: &[i32],
    n: usize,
    d: usize,
    v: usize,
    scale: f32,
    chunk_rows: usize,
) {
    assert!(losses.len() == n && targets.len() == n && h.len() == n * d && w.len() == v * d);
    assert!(dh.len() == n * d && dw.len() == v * d);
    let chunk_rows = chunk_rows.max(1);
    let mut logits = vec![0f32; chunk_rows.min(n) * v];
    for start in (0..n).step_by(chunk_rows) {
        let rows = chunk_rows.min(n - start);
        let hc = &h[start * d..(start + rows) * d];
        let buf = &mut logits[..rows * v];
        let threads = rayon::current_num_threads();
        matmul_with(gemm, threads, buf, hc, w, rows, d, v, Trans::No, Trans::Yes, false);
        // The chunk's logits become dlogits = scale * (softmax - onehot) in place.
        buf.par_chunks_mut(v)
            .zip(losses[start..start + rows].par_iter_mut())
            .zip(targets[start..start + rows].par_iter())
            .for_each(|((row, loss), &t)| match target_index(t, v) {
                None => {
                    *loss = 0.0;
                    row.fill(0.0);
                }
                Some(t) => {
                    let target_logit = row[t];
                    *loss = scaled_softmax_in_place(row, scale) - target_logit;
                    row[t] -= scale;
                }
            });
        let dhc = &mut dh[start * d..(start + rows) * d];
        matmul_with(gemm, threads, dhc, buf, w, rows, v, d, Trans::No, Trans::No, true);
        matmul_with(gemm, threads, dw, buf, hc, v, rows, d, Trans::Yes, Trans::No, true);
    }
}

/// Reference: per-row cross-entropy of materialised f64 logits `[N, V]`.
pub fn cross_entropy_naive(logits: &[f64], targets: &[i32], v: usize) -> Vec<f64> {
    logits
        .chunks(v)
        .zip(targets)
        .map(|(row, &t)| {
            if t == IGNORE_INDEX {
                return 0.0;
            }
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
            lse - row[t as usize]
        })
        .collect()
}

/// Reference: f64 logits `h · wᵀ` `[N, V]`.
pub fn lm_head_naive(h: &[f64], w: &[f64], n: usize, d: usize, v: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * v];
    for i in 0..n {
        for j in 0..v {
            out[i * v + j] = (0..d).map(|p| h[i * d + p] * w[j * d + p]).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, assert_grad_matches_fd, finite_diff, rand_vec, to_f64};

    fn targets(n: usize, v: usize) -> Vec<i32> {
        (0..n).map(|i| if i % 5 == 3 { IGNORE_INDEX } else { ((i * 7919 + 13) % v) as i32 }).collect()
    }

    fn naive_mean_loss(h: &[f64], w: &[f64], t: &[i32], n: usize, d: usize, v: usize) -> f64 {
        let rows = cross_entropy_naive(&lm_head_naive(h, w, n, d, v), t, v);
        rows.iter().sum::<f64>() / count_targets(t) as f64
    }

    #[test]
    fn forward_matches_naive_across_chunkings() {
        let (n, d, v) = (37, 19, 301);
        let h: Vec<f32> = rand_vec(n * d, 1).iter().map(|x| x * 3.0).collect();
        let w = rand_vec(v * d, 2);
        let t = targets(n, v);
        let want = cross_entropy_naive(&lm_head_naive(&to_f64(&h), &to_f64(&w), n, d, v), &t, v);
        let want: Vec<f32> = want.iter().map(|&x| x as f32).collect();
        for chunk in [1, 5, 16, 37, 1000] {
            let mut got = vec![0f32; n];
            lm_head_ce_forward(&mut got, &h, &w, &t, n, d, v, chunk);
            assert_close(&got, &want, 1e-5, 1e-5, &format!("ce forward chunk {chunk}"));
            let (mut l2, mut dh, mut dw) = (vec![0f32; n], vec![0f32; n * d], vec![0f32; v * d]);
            lm_head_ce_forward_backward(&mut l2, &mut dh, &mut dw, &h, &w, &t, n, d, v, 1.0, chunk);
            assert_close(&l2, &want, 1e-5, 1e-5, &format!("ce fused loss chunk {chunk}"));
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (n, d, v) = (6, 5, 11);
        let h = rand_vec(n * d, 3);
        let w = rand_vec(v * d, 4);
        let t = targets(n, v);
        let scale = 1.0 / count_targets(&t) as f32;
        let (mut l, mut dh, mut dw) = (vec![0f32; n], vec![0f32; n * d], vec![0f32; v * d]);
        lm_head_ce_forward_backward(&mut l, &mut dh, &mut dw, &h, &w, &t, n, d, v, scale, 4);
        let (h64, w64) = (to_f64(&h), to_f64(&w));
        let fd_h = finite_diff(|x| naive_mean_loss(x, &w64, &t, n, d, v), &h64, 1e-5);
        let fd_w = finite_diff(|x| naive_mean_loss(&h64, x, &t, n, d, v), &w64, 1e-5);
        assert_grad_matches_fd(&dh, &fd_h, 1e-4, "ce dh");
        assert_grad_matches_fd(&dw, &fd_w, 1e-4, "ce dw");
    }

    #[test]
    fn backward_accumulates_and_ignored_rows_get_no_gradient() {
        let (n, d, v) = (9, 7, 13);
        let h = rand_vec(n * d, 5);
        let w = rand_vec(v * d, 6);
        let t = targets(n, v);
        let (mut l, mut dh1, mut dw1) = (vec![0f32; n], vec![0f32; n * d], vec![0f32; v * d]);
        lm_head_ce_forward_backward(&mut l, &mut dh1, &mut dw1, &h, &w, &t, n, d, v, 1.0, 3);
        let init_h = rand_vec(n * d, 7);
        let init_w = rand_vec(v * d, 8);
        let (mut dh2, mut dw2) = (init_h.clone(), init_w.clone());
        for _ in 0..2 {
            lm_head_ce_forward_backward(&mut l, &mut dh2, &mut dw2, &h, &w, &t, n, d, v, 1.0, 3);
        }
        let want_h: Vec<f32> = init_h.iter().zip(&dh1).map(|(a, g)| a + 2.0 * g).collect();
        let want_w: Vec<f32> = init_w.iter().zip(&dw1).map(|(a, g)| a + 2.0 * g).collect();
        assert_close(&dh2, &want_h, 1e-5, 1e-5, "dh accumulates");
        assert_close(&dw2, &want_w, 1e-5, 1e-5, "dw accumulates");
        for (i, &ti) in t.iter().enumerate() {
            if ti == IGNORE_INDEX {
                assert!(dh1[i * d..(i + 1) * d].iter().all(|&x| x == 0.0), "ignored row {i} has grad");
                assert_eq!(l[i], 0.0);
            }
        }
    }
}
