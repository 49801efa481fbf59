//! Distillation from a teacher's cached top-k logits: KL over the k teacher tokens plus one
//! bucket for the tail, fused over the student's LM head in row chunks (as
//! [`crate::distill`]).
//!
//! Per counted row, with the teacher's top-k token ids `K`, their raw logits `l_i` and the
//! teacher's log-sum-exp `lse_t` of all its logits divided by `tau` (from the cache), the teacher
//! distribution is `p_i = exp(l_i / tau − lse_t)` on `K` and the tail mass `p_T = 1 − Σ_K p_i`.
//! The student's `q = softmax(z_s / tau)` gives `q_i` on `K` and `q_T = 1 − Σ_K q_i`. The loss is
//! `tau² · [Σ_K p_i (log p_i − log q_i) + p_T (log p_T − log q_T)]` (`0 · log 0 = 0`), the KL of
//! the two distributions over the k + 1 buckets. When `K` is the whole vocabulary it is the full
//! KL. Its gradient with respect to the raw student logits is `tau · (q_j − p_j)` on `K` and
//! `tau · q_j · (1 − p_T / q_T)` elsewhere.
//!
//! Shapes: `hs [N, D]`, `ws [V, D]` (student head), `ids [N, k]` (distinct tokens per row),
//! `tl [N, k]` teacher logits, `tlse [N]`, `targets [N]` ([`IGNORE_INDEX`] rows take no part).

use crate::cross_entropy::{softmax_in_place, IGNORE_INDEX};
use crate::gemm::{matmul_with, GemmBackend, Trans};
use rayon::prelude::*;

/// Smallest student tail mass used in `log q_T` and `p_T / q_T` (f32 rounding can make
/// `1 − Σ_K q_i` zero or negative when the student puts all its mass on `K`).
const MIN_TAIL: f32 = 1e-30;

/// Sizes of a top-k distillation call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopkDims {
    /// N: rows.
    pub n: usize,
    /// D: student hidden width.
    pub d: usize,
    /// V: vocabulary.
    pub v: usize,
    /// k: cached teacher tokens per row.
    pub k: usize,
}

/// The teacher side of one call: cached top-k ids and logits and the log-sum-exp.
#[derive(Clone, Copy, Debug)]
pub struct TopkTeacher<'a> {
    /// Token ids `[N, k]`.
    pub ids: &'a [u32],
    /// Raw logits of those tokens `[N, k]`.
    pub logits: &'a [f32],
    /// `logsumexp(z_t / tau)` over the whole vocabulary `[N]`.
    pub lse: &'a [f32],
}

impl TopkDims {
    fn check(&self, kl: &[f32], hs: &[f32], ws: &[f32], t: &TopkTeacher, targets: &[i32]) {
        let TopkDims { n, d, v, k } = *self;
        assert!(kl.len() == n && targets.len() == n && t.lse.len() == n, "distill_topk: rows of {self:?}");
        assert!(hs.len() == n * d && ws.len() == v * d, "distill_topk: student slices do not match {self:?}");
        assert!(t.ids.len() == n * k && t.logits.len() == n * k, "distill_topk: teacher slices do not match {self:?}");
        assert!(t.ids.iter().all(|&i| (i as usize) < v), "distill_topk: a teacher id is outside the vocabulary");
    }
}

/// One row: `q` holds the student's scaled logits on entry and its softmax on exit; returns the
/// KL (without `tau²`) and, when `grad`, turns `q` into `∂KL/∂(scaled logits)`.
fn row(q: &mut [f32], ids: &[u32], tl: &[f32], lse_t: f32, inv_tau: f32, grad: bool) -> f32 {
    let zk: Vec<f32> = ids.iter().map(|&i| q[i as usize]).collect();
    let lse_s = softmax_in_place(q);
    let qk: Vec<f32> = ids.iter().map(|&i| q[i as usize]).collect();
    let log_p: Vec<f32> = tl.iter().map(|&l| l * inv_tau - lse_t).collect();
    // The student's tail mass summed directly (1 − Σ_K q_i would cancel when K holds nearly all).
    for &i in ids {
        q[i as usize] = 0.0;
    }
    let q_t = q.iter().map(|&x| x as f64).sum::<f64>().max(MIN_TAIL as f64) as f32;
    let mut kl = 0f32;
    let mut p_k = 0f32;
    for (&lp, &z) in log_p.iter().zip(&zk) {
        let p = lp.exp();
        p_k += p;
        if p > 0.0 {
            kl += p * (lp - (z - lse_s));
        }
    }
    // No tail bucket when K is the whole vocabulary.
    let p_t = if ids.len() == q.len() { 0.0 } else { (1.0 - p_k).max(0.0) };
    if p_t > 0.0 {
        kl += p_t * (p_t.ln() - q_t.ln());
    }
    if grad {
        let tail = 1.0 - p_t / q_t;
        for x in q.iter_mut() {
            *x *= tail;
        }
        for (j, &i) in ids.iter().enumerate() {
            q[i as usize] = qk[j] - log_p[j].exp();
        }
    } else {
        for (j, &i) in ids.iter().enumerate() {
            q[i as usize] = qk[j];
        }
    }
    kl
}

/// Per-row losses `kl [N]` (`tau² · KL` over the k + 1 buckets; 0 for ignored rows) and, when
/// `grads = (dhs [N, D], dws [V, D])`, their gradients times `scale` accumulated, chunk by chunk
/// (`chunk_rows` rows of student logits at a time). GEMMs on `gemm`.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_topk_kl_with(
    gemm: GemmBackend,
    kl: &mut [f32],
    mut grads: Option<(&mut [f32], &mut [f32])>,
    hs: &[f32],
    ws: &[f32],
    teacher: TopkTeacher,
    targets: &[i32],
    dims: TopkDims,
    tau: f32,
    scale: f32,
    chunk_rows: usize,
) {
    dims.check(kl, hs, ws, &teacher, targets);
    assert!(tau > 0.0 && tau.is_finite(), "distill_topk: tau {tau} must be positive");
    let TopkDims { n, d, v, k } = dims;
    if let Some((dhs, dws)) = &grads {
        assert!(dhs.len() == n * d && dws.len() == v * d, "distill_topk: gradient slices do not match {dims:?}");
    }
    let chunk_rows = chunk_rows.max(1);
    let mut bs = vec![0f32; chunk_rows.min(n) * v];
    let (inv_tau, tau2, gscale) = (1.0 / tau, tau * tau, scale * tau);
    let threads = rayon::current_num_threads();
    let want_grad = grads.is_some();
    for start in (0..n).step_by(chunk_rows) {
        let rows = chunk_rows.min(n - start);
        let tc = &targets[start..start + rows];
        let kc = &mut kl[start..start + rows];
        if tc.iter().all(|&t| t == IGNORE_INDEX) {
            kc.fill(0.0);
            continue;
        }
        let bs = &mut bs[..rows * v];
        let hc = &hs[start * d..(start + rows) * d];
        matmul_with(gemm, threads, bs, hc, ws, rows, d, v, Trans::No, Trans::Yes, false);
        let ids = &teacher.ids[start * k..(start + rows) * k];
        let tl = &teacher.logits[start * k..(start + rows) * k];
        let lse = &teacher.lse[start..start + rows];
        bs.par_chunks_mut(v)
            .zip(kc.par_iter_mut())
            .zip(tc.par_iter())
            .zip(ids.par_chunks(k).zip(tl.par_chunks(k)).zip(lse.par_iter()))
            .for_each(|(((q, out), &t), ((ids, tl), &lse_t))| {
                if t == IGNORE_INDEX {
                    *out = 0.0;
                    q.fill(0.0);
                    return;
                }
                for x in q.iter_mut() {
                    *x *= inv_tau;
                }
                *out = tau2 * row(q, ids, tl, lse_t, inv_tau, want_grad);
                if want_grad {
                    for x in q.iter_mut() {
                        *x *= gscale;
                    }
                }
            });
        if let Some((dhs, dws)) = &mut grads {
            let dhc = &mut dhs[start * d..(start + rows) * d];
            matmul_with(gemm, threads, dhc, bs, ws, rows, v, d, Trans::No, Trans::No, true);
            matmul_with(gemm, threads, dws, bs, hc, v, rows, d, Trans::Yes, Trans::No, true);
        }
    }
}

/// The top-k of one row of raw teacher logits `z [V]` (ids by decreasing logit, ties to the
/// lower id) and `logsumexp(z / tau)`: what a teacher logit cache stores per token.
pub fn topk_row(z: &[f32], k: usize, tau: f32) -> (Vec<u32>, Vec<f32>, f32) {
    let mut idx: Vec<u32> = (0..z.len() as u32).collect();
    let k = k.min(z.len());
    let cmp = |a: &u32, b: &u32| z[*b as usize].total_cmp(&z[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    let inv_tau = 1.0 / tau;
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * inv_tau;
    let sum: f64 = z.iter().map(|&x| ((x * inv_tau - max) as f64).exp()).sum();
    let logits = idx.iter().map(|&i| z[i as usize]).collect();
    (idx, logits, max + sum.ln() as f32)
}

/// f64 reference of one row's loss (`tau² · KL` over the k + 1 buckets) from raw student logits.
pub fn topk_kl_naive(zs: &[f64], ids: &[u32], tl: &[f64], lse_t: f64, tau: f64) -> f64 {
    let max = zs.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x / tau));
    let lse_s = max + zs.iter().map(|&x| (x / tau - max).exp()).sum::<f64>().ln();
    let (mut kl, mut p_k) = (0.0, 0.0);
    for (&i, &l) in ids.iter().zip(tl) {
        let (log_p, log_q) = (l / tau - lse_t, zs[i as usize] / tau - lse_s);
        kl += log_p.exp() * (log_p - log_q);
        p_k += log_p.exp();
    }
    // The tail summed directly (no bucket when K is the whole vocabulary).
    let q_t: f64 = (0..zs.len()).filter(|j| !ids.contains(&(*j as u32))).map(|j| (zs[j] / tau - lse_s).exp()).sum();
    let p_t = if ids.len() == zs.len() { 0.0 } else { (1.0 - p_k).max(0.0) };
    if p_t > 0.0 {
        kl += p_t * (p_t.ln() - q_t.ln());
    }
    tau * tau * kl
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{finite_diff, rand_vec, rel_norm_err, to_f64};
    use crate::cross_entropy::lm_head_naive;
    use crate::distill::kl_naive;

    /// Teacher logits `[N, V]` and their cache rows.
    fn teacher(n: usize, v: usize, k: usize, tau: f32) -> (Vec<f32>, Vec<u32>, Vec<f32>, Vec<f32>) {
        let z: Vec<f32> = rand_vec(n * v, 9).iter().map(|x| 3.0 * x).collect();
        let (mut ids, mut tl, mut lse) = (Vec::new(), Vec::new(), Vec::new());
        for r in z.chunks(v) {
            let (i, l, s) = topk_row(r, k, tau);
            ids.extend(i);
            tl.extend(l);
            lse.push(s);
        }
        (z, ids, tl, lse)
    }

    fn run(
        hs: &[f32],
        ws: &[f32],
        t: (&[u32], &[f32], &[f32]),
        targets: &[i32],
        dims: TopkDims,
        tau: f32,
        chunk: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let TopkDims { n, d, v, .. } = dims;
        let (mut kl, mut dh, mut dw) = (vec![0f32; n], vec![0f32; n * d], vec![0f32; v * d]);
        let teacher = TopkTeacher { ids: t.0, logits: t.1, lse: t.2 };
        let grads = Some((&mut dh[..], &mut dw[..]));
        lm_head_topk_kl_with(GemmBackend::Auto, &mut kl, grads, hs, ws, teacher, targets, dims, tau, 1.0, chunk);
        (kl, dh, dw)
    }

    #[test]
    fn topk_row_sorts_and_breaks_ties_by_id() {
        let (ids, l, lse) = topk_row(&[1.0, 3.0, 3.0, -1.0, 2.0], 3, 1.0);
        assert_eq!(ids, [1, 2, 4]);
        assert_eq!(l, [3.0, 3.0, 2.0]);
        let want = [1.0f64, 3.0, 3.0, -1.0, 2.0].iter().map(|x| x.exp()).sum::<f64>().ln();
        assert!((lse as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn matches_the_reference_and_with_k_equal_v_the_full_kl() {
        let (n, d, v, tau) = (7, 6, 37, 1.5f32);
        let hs: Vec<f32> = rand_vec(n * d, 1).iter().map(|x| 2.0 * x).collect();
        let ws = rand_vec(v * d, 2);
        let targets = [1, IGNORE_INDEX, 0, 3, 4, 5, 6];
        let zs = lm_head_naive(&to_f64(&hs), &to_f64(&ws), n, d, v);
        for k in [1, 5, v] {
            let (z, ids, tl, lse) = teacher(n, v, k, tau);
            let dims = TopkDims { n, d, v, k };
            let (kl, _, _) = run(&hs, &ws, (&ids, &tl, &lse), &targets, dims, tau, 3);
            for r in 0..n {
                let want = if targets[r] == IGNORE_INDEX {
                    0.0
                } else {
                    let row = |x: &[u32]| x[r * k..(r + 1) * k].to_vec();
                    let tlr = to_f64(&tl[r * k..(r + 1) * k]);
                    topk_kl_naive(&zs[r * v..(r + 1) * v], &row(&ids), &tlr, lse[r] as f64, tau as f64)
                };
                assert!((kl[r] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "k {k} row {r}: {} vs {want}", kl[r]);
            }
            if k == v {
                let zt = to_f64(&z);
                let want = kl_naive(&zs, &zt, &targets, v, tau as f64);
                for r in 0..n {
                    assert!((kl[r] as f64 - want[r]).abs() < 1e-4, "k = V row {r}: {} vs full KL {}", kl[r], want[r]);
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (n, d, v, k, tau) = (4, 5, 19, 4, 0.8f32);
        let hs: Vec<f32> = rand_vec(n * d, 3).iter().map(|x| 2.0 * x).collect();
        let ws = rand_vec(v * d, 4);
        let targets = [2, 0, IGNORE_INDEX, 1];
        let (_, ids, tl, lse) = teacher(n, v, k, tau);
        let dims = TopkDims { n, d, v, k };
        let (_, dh, dw) = run(&hs, &ws, (&ids, &tl, &lse), &targets, dims, tau, 2);
        let loss = |h: &[f64], w: &[f64]| {
            let zs = lm_head_naive(h, w, n, d, v);
            (0..n)
                .filter(|&r| targets[r] != IGNORE_INDEX)
                .map(|r| {
                    let tlr = to_f64(&tl[r * k..(r + 1) * k]);
                    topk_kl_naive(&zs[r * v..(r + 1) * v], &ids[r * k..(r + 1) * k], &tlr, lse[r] as f64, tau as f64)
                })
                .sum::<f64>()
        };
        let (h64, w64) = (to_f64(&hs), to_f64(&ws));
        let fd_h = finite_diff(|h| loss(h, &w64), &h64, 1e-5);
        let fd_w = finite_diff(|w| loss(&h64, w), &w64, 1e-5);
        let to32 = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        assert!(rel_norm_err(&dh, &to32(&fd_h)) < 1e-3, "dh {}", rel_norm_err(&dh, &to32(&fd_h)));
        assert!(rel_norm_err(&dw, &to32(&fd_w)) < 1e-3, "dw {}", rel_norm_err(&dw, &to32(&fd_w)));
    }
}
