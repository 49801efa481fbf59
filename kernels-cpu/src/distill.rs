//! Knowledge distillation through the LM heads, fused over the vocabulary in row chunks, plus
//! the last-hidden-state L2 term.
//!
//! Per counted row, `loss = tau² · KL(p_t ‖ p_s)` with `p_s = softmax(h_s · w_sᵀ / tau)` (student)
//! and `p_t = softmax(h_t · w_tᵀ / tau)` (teacher). The `tau²` factor (Hinton et al.) keeps the
//! gradient's scale independent of `tau`: `∂loss/∂z_s = tau · (p_s − p_t)` for the raw student
//! logits `z_s = h_s · w_sᵀ`. The teacher receives no gradient.
//!
//! As in [`crate::cross_entropy`], the full `[N, V]` logits are never materialised: one chunk of
//! student logits and one chunk of teacher logits (`[rows, V]` each) are the only
//! vocabulary-sized buffers (with [`crate::cross_entropy::default_chunk_rows`], about 16 MiB each).
//!
//! Shapes: `h_s [N, D]` student final hidden, `w_s [V, D]` student head (HF layout), `h_t [N, Dt]`
//! teacher final hidden, `w_t [V, Dt]` teacher head, `targets [N]` where [`IGNORE_INDEX`] marks
//! rows that take no part (their loss is 0 and they get no gradient).

use crate::cross_entropy::{softmax_in_place, IGNORE_INDEX};
use crate::gemm::{matmul_with, GemmBackend, Trans};
use rayon::prelude::*;

/// Sizes of a distillation call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DistillDims {
    /// N: rows.
    pub n: usize,
    /// D: student hidden width.
    pub d: usize,
    /// Dt: teacher hidden width.
    pub dt: usize,
    /// V: vocabulary (shared by student and teacher).
    pub v: usize,
}

impl DistillDims {
    /// Panics (programmer error) unless the slices have the lengths these sizes imply.
    fn check(&self, rows: &[f32], hs: &[f32], ws: &[f32], ht: &[f32], wt: &[f32], targets: &[i32]) {
        let DistillDims { n, d, dt, v } = *self;
        assert!(
            rows.len() == n && targets.len() == n,
            "distill: {} losses / {} targets for {n} rows",
            rows.len(),
            targets.len()
        );
        assert!(hs.len() == n * d && ws.len() == v * d, "distill: student slices do not match {self:?}");
        assert!(ht.len() == n * dt && wt.len() == v * dt, "distill: teacher slices do not match {self:?}");
    }
}

crate::isa_dispatch!(
    /// One row of logits: scales both rows by `inv_tau`, turns `zt` into `p_t` in place and
    /// returns `(Σ_j p_t[j] · (z_t[j] − z_s[j]), logsumexp(z_t))` over the scaled logits; `zs` is
    /// left scaled.
    fn teacher_pass(zs: &mut [f32], zt: &mut [f32], inv_tau: f32) -> (f32, f32) => teacher_pass_body
);

/// Eight-lane loops (as in the cross-entropy softmax) so they vectorise.
#[inline(always)]
fn teacher_pass_body(zs: &mut [f32], zt: &mut [f32], inv_tau: f32) -> (f32, f32) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    for (cs, ct) in zs.chunks_mut(8).zip(zt.chunks_mut(8)) {
        for ((m, s), t) in lanes.iter_mut().zip(cs.iter_mut()).zip(ct.iter_mut()) {
            *s *= inv_tau;
            *t *= inv_tau;
            *m = if *t > *m { *t } else { *m };
        }
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let (mut sums, mut dots) = ([0f32; 8], [0f32; 8]);
    for (cs, ct) in zs.chunks(8).zip(zt.chunks_mut(8)) {
        for (((sum, dot), &s), t) in sums.iter_mut().zip(dots.iter_mut()).zip(cs).zip(ct.iter_mut()) {
            let e = crate::fastmath::exp_fast(*t - max);
            *dot += e * (*t - s);
            *sum += e;
            *t = e;
        }
    }
    let sum: f32 = sums.iter().sum();
    let dot: f32 = dots.iter().sum();
    let inv = 1.0 / sum;
    for x in zt.iter_mut() {
        *x *= inv;
    }
    (dot * inv, max + sum.ln())
}

/// `KL(p_t ‖ p_s)` of one row of raw logits at temperature `1 / inv_tau` (without the `tau²`).
/// Leaves `p_s` in `zs` and `p_t` in `zt`.
///
/// `KL = Σ p_t (z_t − z_s) − lse(z_t) + lse(z_s)` over the scaled logits, so identical rows give
/// exactly 0. Rounding can make a tiny KL slightly negative; it is not clamped (the value stays
/// consistent with its gradient).
fn kl_row(zs: &mut [f32], zt: &mut [f32], inv_tau: f32) -> f32 {
    let (dot, lse_t) = teacher_pass(zs, zt, inv_tau);
    let lse_s = softmax_in_place(zs);
    dot - lse_t + lse_s
}

/// Student and teacher logits of rows `start .. start + rows` into `bs`, `bt` (`[rows, V]`).
#[allow(clippy::too_many_arguments)]
fn chunk_logits(
    gemm: GemmBackend,
    bs: &mut [f32],
    bt: &mut [f32],
    hs: &[f32],
    ws: &[f32],
    ht: &[f32],
    wt: &[f32],
    dims: DistillDims,
    start: usize,
    rows: usize,
) {
    let DistillDims { d, dt, v, .. } = dims;
    let threads = rayon::current_num_threads();
    matmul_with(gemm, threads, bs, &hs[start * d..(start + rows) * d], ws, rows, d, v, Trans::No, Trans::Yes, false);
    matmul_with(gemm, threads, bt, &ht[start * dt..(start + rows) * dt], wt, rows, dt, v, Trans::No, Trans::Yes, false);
}

/// Per-row distillation losses `kl [N]`: `tau² · KL(p_t ‖ p_s)` for counted rows, 0 for rows
/// whose target is [`IGNORE_INDEX`], computed chunk by chunk (`chunk_rows` rows at a time).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_kl_forward(
    kl: &mut [f32],
    hs: &[f32],
    ws: &[f32],
    ht: &[f32],
    wt: &[f32],
    targets: &[i32],
    dims: DistillDims,
    tau: f32,
    chunk_rows: usize,
) {
    lm_head_kl_forward_with(GemmBackend::Auto, kl, hs, ws, ht, wt, targets, dims, tau, chunk_rows);
}

/// [`lm_head_kl_forward`] with its GEMMs on `gemm` (a bf16 backend rounds the hidden states and
/// heads; softmaxes and KL stay f32).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_kl_forward_with(
    gemm: GemmBackend,
    kl: &mut [f32],
    hs: &[f32],
    ws: &[f32],
    ht: &[f32],
    wt: &[f32],
    targets: &[i32],
    dims: DistillDims,
    tau: f32,
    chunk_rows: usize,
) {
    dims.check(kl, hs, ws, ht, wt, targets);
    assert!(tau > 0.0 && tau.is_finite(), "distill: tau {tau} must be positive");
    let (n, v) = (dims.n, dims.v);
    let chunk_rows = chunk_rows.max(1);
    let mut bs = vec![0f32; chunk_rows.min(n) * v];
    let mut bt = vec![0f32; chunk_rows.min(n) * v];
    let (inv_tau, tau2) = (1.0 / tau, tau * tau);
    for start in (0..n).step_by(chunk_rows) {
        let rows = chunk_rows.min(n - start);
        let tc = &targets[start..start + rows];
        let kc = &mut kl[start..start + rows];
        if tc.iter().all(|&t| t == IGNORE_INDEX) {
            kc.fill(0.0);
            continue;
        }
        let (bs, bt) = (&mut bs[..rows * v], &mut bt[..rows * v]);
        chunk_logits(gemm, bs, bt, hs, ws, ht, wt, dims, start, rows);
        bs.par_chunks_mut(v).zip(bt.par_chunks_mut(v)).zip(kc.par_iter_mut()).zip(tc.par_iter()).for_each(
            |(((zs, zt), k), &t)| {
                *k = if t == IGNORE_INDEX { 0.0 } else { tau2 * kl_row(zs, zt, inv_tau) };
            },
        );
    }
}

/// Forward and backward in one pass: per-row `kl [N]` as in [`lm_head_kl_forward`], and
/// `dhs [N, D] += scale * ∂L/∂h_s`, `dws [V, D] += scale * ∂L/∂w_s` for `L = Σ kl`
/// (pass `scale = 1 / count` for the mean). The teacher gets no gradient.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_kl_forward_backward(
    kl: &mut [f32],
    dhs: &mut [f32],
    dws: &mut [f32],
    hs: &[f32],
    ws: &[f32],
    ht: &[f32],
    wt: &[f32],
    targets: &[i32],
    dims: DistillDims,
    tau: f32,
    scale: f32,
    chunk_rows: usize,
) {
    lm_head_kl_forward_backward_with(
        GemmBackend::Auto,
        kl,
        dhs,
        dws,
        hs,
        ws,
        ht,
        wt,
        targets,
        dims,
        tau,
        scale,
        chunk_rows,
    );
}

/// [`lm_head_kl_forward_backward`] with its GEMMs on `gemm` (a bf16 backend also rounds the
/// student logits' gradient as a GEMM operand).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_kl_forward_backward_with(
    gemm: GemmBackend,
    kl: &mut [f32],
    dhs: &mut [f32],
    dws: &mut [f32],
    hs: &[f32],
    ws: &[f32],
    ht: &[f32],
    wt: &[f32],
    targets: &[i32],
    dims: DistillDims,
    tau: f32,
    scale: f32,
    chunk_rows: usize,
) {
    dims.check(kl, hs, ws, ht, wt, targets);
    assert!(tau > 0.0 && tau.is_finite(), "distill: tau {tau} must be positive");
    let DistillDims { n, d, v, .. } = dims;
    assert!(dhs.len() == n * d && dws.len() == v * d, "distill: gradient slices do not match {dims:?}");
    let chunk_rows = chunk_rows.max(1);
    let mut bs = vec![0f32; chunk_rows.min(n) * v];
    let mut bt = vec![0f32; chunk_rows.min(n) * v];
    let (inv_tau, tau2) = (1.0 / tau, tau * tau);
    // ∂(tau² KL)/∂z_s = tau (p_s − p_t); times the caller's scale.
    let gscale = scale * tau;
    for start in (0..n).step_by(chunk_rows) {
        let rows = chunk_rows.min(n - start);
        let tc = &targets[start..start + rows];
        let kc = &mut kl[start..start + rows];
        if tc.iter().all(|&t| t == IGNORE_INDEX) {
            kc.fill(0.0);
            continue;
        }
        let (bs, bt) = (&mut bs[..rows * v], &mut bt[..rows * v]);
        chunk_logits(gemm, bs, bt, hs, ws, ht, wt, dims, start, rows);
        // The student chunk becomes dlogits = gscale * (p_s − p_t) in place.
        bs.par_chunks_mut(v).zip(bt.par_chunks_mut(v)).zip(kc.par_iter_mut()).zip(tc.par_iter()).for_each(
            |(((zs, zt), k), &t)| {
                if t == IGNORE_INDEX {
                    *k = 0.0;
                    zs.fill(0.0);
                    return;
                }
                *k = tau2 * kl_row(zs, zt, inv_tau);
                for (s, &p) in zs.iter_mut().zip(zt.iter()) {
                    *s = gscale * (*s - p);
                }
            },
        );
        let hc = &hs[start * d..(start + rows) * d];
        let threads = rayon::current_num_threads();
        let dhc = &mut dhs[start * d..(start + rows) * d];
        matmul_with(gemm, threads, dhc, bs, ws, rows, v, d, Trans::No, Trans::No, true);
        matmul_with(gemm, threads, dws, bs, hc, v, rows, d, Trans::Yes, Trans::No, true);
    }
}

/// Per-row hidden-state L2 `out [N]`: `‖h_s[i] − h_t[i]‖² / D` for counted rows, 0 for rows whose
/// target is [`IGNORE_INDEX`]. `hs`, `ht` `[N, D]`.
pub fn hidden_l2_forward(out: &mut [f32], hs: &[f32], ht: &[f32], targets: &[i32], n: usize, d: usize) {
    assert!(out.len() == n && targets.len() == n && hs.len() == n * d && ht.len() == n * d, "hidden_l2: lengths");
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let inv_d = 1.0 / d as f32;
    out.par_iter_mut().zip(hs.par_chunks(d)).zip(ht.par_chunks(d)).zip(targets.par_iter()).for_each(
        |(((o, a), b), &t)| {
            *o = if t == IGNORE_INDEX {
                0.0
            } else {
                a.iter().zip(b).map(|(&x, &y)| (x - y) * (x - y)).sum::<f32>() * inv_d
            };
        },
    );
}

/// Backward of [`hidden_l2_forward`]: `dhs [N, D] += dout[i] · 2 (h_s[i] − h_t[i]) / D`
/// (`dout [N]`; give ignored rows 0). The teacher is a constant and gets nothing.
pub fn hidden_l2_backward(dhs: &mut [f32], dout: &[f32], hs: &[f32], ht: &[f32], n: usize, d: usize) {
    assert!(dout.len() == n && dhs.len() == n * d && hs.len() == n * d && ht.len() == n * d, "hidden_l2: lengths");
    if d == 0 {
        return;
    }
    let two_over_d = 2.0 / d as f32;
    dhs.par_chunks_mut(d).zip(hs.par_chunks(d)).zip(ht.par_chunks(d)).zip(dout.par_iter()).for_each(
        |(((g, a), b), &go)| {
            let c = go * two_over_d;
            if c != 0.0 {
                for ((g, &x), &y) in g.iter_mut().zip(a).zip(b) {
                    *g += c * (x - y);
                }
            }
        },
    );
}

/// Reference: per-row `tau² · KL(softmax(zt/tau) ‖ softmax(zs/tau))` of materialised f64 raw
/// logits `zs`, `zt` `[N, V]` (0 for ignored rows).
pub fn kl_naive(zs: &[f64], zt: &[f64], targets: &[i32], v: usize, tau: f64) -> Vec<f64> {
    let log_softmax = |row: &[f64]| -> Vec<f64> {
        let z: Vec<f64> = row.iter().map(|&x| x / tau).collect();
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
        z.iter().map(|&x| x - lse).collect()
    };
    zs.chunks(v)
        .zip(zt.chunks(v))
        .zip(targets)
        .map(|((s, t), &tg)| {
            if tg == IGNORE_INDEX {
                return 0.0;
            }
            let (ls, lt) = (log_softmax(s), log_softmax(t));
            tau * tau * lt.iter().zip(&ls).map(|(&a, &b)| a.exp() * (a - b)).sum::<f64>()
        })
        .collect()
}

/// Reference: per-row `‖h_s[i] − h_t[i]‖² / D` in f64 (0 for ignored rows).
pub fn hidden_l2_naive(hs: &[f64], ht: &[f64], targets: &[i32], d: usize) -> Vec<f64> {
    hs.chunks(d)
        .zip(ht.chunks(d))
        .zip(targets)
        .map(|((a, b), &t)| {
            if t == IGNORE_INDEX {
                0.0
            } else {
                a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / d as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, assert_grad_matches_fd, finite_diff, max_errors, rand_vec, rel_norm_err, to_f64};
    use crate::cross_entropy::{count_targets, lm_head_naive};

    fn targets(n: usize) -> Vec<i32> {
        (0..n).map(|i| if i % 5 == 3 { IGNORE_INDEX } else { (i % 7) as i32 }).collect()
    }

    struct Case {
        dims: DistillDims,
        hs: Vec<f32>,
        ws: Vec<f32>,
        ht: Vec<f32>,
        wt: Vec<f32>,
        t: Vec<i32>,
    }

    fn case(n: usize, d: usize, dt: usize, v: usize, amp: f32) -> Case {
        let amp_vec = |len, seed| rand_vec(len, seed).iter().map(|x| x * amp).collect::<Vec<f32>>();
        Case {
            dims: DistillDims { n, d, dt, v },
            hs: amp_vec(n * d, 11),
            ws: rand_vec(v * d, 12),
            ht: amp_vec(n * dt, 13),
            wt: rand_vec(v * dt, 14),
            t: targets(n),
        }
    }

    /// f64 per-row losses from materialised logits.
    fn naive_rows(hs: &[f64], ws: &[f64], ht: &[f64], wt: &[f64], t: &[i32], dims: DistillDims, tau: f64) -> Vec<f64> {
        let DistillDims { n, d, dt, v } = dims;
        kl_naive(&lm_head_naive(hs, ws, n, d, v), &lm_head_naive(ht, wt, n, dt, v), t, v, tau)
    }

    #[test]
    fn forward_matches_naive_across_chunkings_and_temperatures() {
        // N, D, Dt, V are not multiples of any chunk or GEMM tile.
        let c = case(37, 19, 23, 301, 1.5);
        let mut worst = (0f64, 0f64);
        for tau in [1.0f32, 2.0, 0.5] {
            let (hs, ws, ht, wt) = (to_f64(&c.hs), to_f64(&c.ws), to_f64(&c.ht), to_f64(&c.wt));
            let want: Vec<f32> =
                naive_rows(&hs, &ws, &ht, &wt, &c.t, c.dims, tau as f64).iter().map(|&x| x as f32).collect();
            assert!(want.iter().any(|&x| x > 0.1), "test data gives trivial KL");
            for chunk in [1, 5, 16, 37, 1000] {
                let mut got = vec![7f32; c.dims.n];
                lm_head_kl_forward(&mut got, &c.hs, &c.ws, &c.ht, &c.wt, &c.t, c.dims, tau, chunk);
                // Tolerance: |err| <= 2e-5 + 1e-4 |want| (f32 GEMM + f32 sums over V = 301).
                assert_close(&got, &want, 2e-5, 1e-4, &format!("kl forward tau {tau} chunk {chunk}"));
                let (mut l2, mut dh, mut dw) = (vec![7f32; c.dims.n], vec![0f32; 37 * 19], vec![0f32; 301 * 19]);
                lm_head_kl_forward_backward(
                    &mut l2, &mut dh, &mut dw, &c.hs, &c.ws, &c.ht, &c.wt, &c.t, c.dims, tau, 1.0, chunk,
                );
                assert_close(&l2, &want, 2e-5, 1e-4, &format!("kl fused tau {tau} chunk {chunk}"));
                let (a, _) = max_errors(&got, &want);
                worst.0 = worst.0.max(a);
                worst.1 = worst.1.max(max_errors(&l2, &want).0);
            }
        }
        eprintln!("kl forward max abs err {:.2e}, fused {:.2e}", worst.0, worst.1);
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Tiny awkward shapes, two chunkings, two temperatures; teacher width differs from student.
        let c = case(6, 5, 4, 11, 2.0);
        let DistillDims { n, d, v, .. } = c.dims;
        let scale = 1.0 / count_targets(&c.t) as f32;
        let (hs, ws, ht, wt) = (to_f64(&c.hs), to_f64(&c.ws), to_f64(&c.ht), to_f64(&c.wt));
        for (tau, chunk) in [(1.0f32, 4), (2.5, 1), (0.7, 6)] {
            let mean = |hs: &[f64], ws: &[f64]| {
                naive_rows(hs, ws, &ht, &wt, &c.t, c.dims, tau as f64).iter().sum::<f64>() * scale as f64
            };
            let (mut l, mut dh, mut dw) = (vec![0f32; n], vec![0f32; n * d], vec![0f32; v * d]);
            lm_head_kl_forward_backward(
                &mut l, &mut dh, &mut dw, &c.hs, &c.ws, &c.ht, &c.wt, &c.t, c.dims, tau, scale, chunk,
            );
            let fd_h = finite_diff(|x| mean(x, &ws), &hs, 1e-5);
            let fd_w = finite_diff(|x| mean(&hs, x), &ws, 1e-5);
            // Tolerance: norm-wise relative error <= 1e-5 (f32 analytic vs f64 central differences).
            let fd32 = |fd: &[f64]| fd.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let (eh, ew) = (rel_norm_err(&dh, &fd32(&fd_h)), rel_norm_err(&dw, &fd32(&fd_w)));
            eprintln!("kl tau {tau} chunk {chunk}: dh rel err {eh:.2e}, dw rel err {ew:.2e}");
            assert_grad_matches_fd(&dh, &fd_h, 1e-5, &format!("kl dh tau {tau}"));
            assert_grad_matches_fd(&dw, &fd_w, 1e-5, &format!("kl dw tau {tau}"));
        }
    }

    #[test]
    fn identical_teacher_gives_zero_loss_and_gradient() {
        let c = case(13, 9, 9, 67, 2.0);
        let DistillDims { n, d, v, .. } = c.dims;
        let (mut l, mut dh, mut dw) = (vec![1f32; n], vec![0f32; n * d], vec![0f32; v * d]);
        lm_head_kl_forward_backward(&mut l, &mut dh, &mut dw, &c.hs, &c.ws, &c.hs, &c.ws, &c.t, c.dims, 2.0, 1.0, 5);
        let worst_l = l.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst_g = dh.iter().chain(&dw).fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("identical teacher: max |kl| {worst_l:.2e}, max |grad| {worst_g:.2e}");
        // Same GEMMs on the same data: exactly zero up to summation order (tolerance 1e-6).
        assert!(worst_l <= 1e-6 && worst_g <= 1e-6, "kl {worst_l:.3e}, grad {worst_g:.3e}");
    }

    #[test]
    fn backward_accumulates_and_ignored_rows_get_no_gradient() {
        let c = case(9, 7, 5, 13, 1.0);
        let DistillDims { n, d, v, .. } = c.dims;
        let run = |dh: &mut Vec<f32>, dw: &mut Vec<f32>, l: &mut Vec<f32>| {
            lm_head_kl_forward_backward(l, dh, dw, &c.hs, &c.ws, &c.ht, &c.wt, &c.t, c.dims, 1.3, 1.0, 3);
        };
        let (mut l, mut dh1, mut dw1) = (vec![0f32; n], vec![0f32; n * d], vec![0f32; v * d]);
        run(&mut dh1, &mut dw1, &mut l);
        let (init_h, init_w) = (rand_vec(n * d, 7), rand_vec(v * d, 8));
        let (mut dh2, mut dw2) = (init_h.clone(), init_w.clone());
        run(&mut dh2, &mut dw2, &mut l);
        run(&mut dh2, &mut dw2, &mut l);
        let want_h: Vec<f32> = init_h.iter().zip(&dh1).map(|(a, g)| a + 2.0 * g).collect();
        let want_w: Vec<f32> = init_w.iter().zip(&dw1).map(|(a, g)| a + 2.0 * g).collect();
        assert_close(&dh2, &want_h, 1e-5, 1e-5, "dh accumulates");
        assert_close(&dw2, &want_w, 1e-5, 1e-5, "dw accumulates");
        for (i, &ti) in c.t.iter().enumerate() {
            if ti == IGNORE_INDEX {
                assert!(dh1[i * d..(i + 1) * d].iter().all(|&x| x == 0.0), "ignored row {i} has grad");
                assert_eq!(l[i], 0.0);
            } else {
                assert!(l[i] > 0.0, "counted row {i} has KL {}", l[i]);
            }
        }
        // A fully ignored batch leaves the gradients untouched.
        let all_ignored = vec![IGNORE_INDEX; n];
        let (mut dh3, mut dw3) = (init_h.clone(), init_w.clone());
        lm_head_kl_forward_backward(
            &mut l,
            &mut dh3,
            &mut dw3,
            &c.hs,
            &c.ws,
            &c.ht,
            &c.wt,
            &all_ignored,
            c.dims,
            1.0,
            1.0,
            4,
        );
        assert_eq!((dh3, dw3), (init_h, init_w));
        assert!(l.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn hidden_l2_matches_naive_and_finite_differences() {
        let (n, d) = (11, 13);
        let hs = rand_vec(n * d, 21);
        let ht = rand_vec(n * d, 22);
        let t = targets(n);
        let mut got = vec![0f32; n];
        hidden_l2_forward(&mut got, &hs, &ht, &t, n, d);
        let (hs64, ht64) = (to_f64(&hs), to_f64(&ht));
        let want: Vec<f32> = hidden_l2_naive(&hs64, &ht64, &t, d).iter().map(|&x| x as f32).collect();
        // Tolerance: 1e-6 + 1e-5 relative (sum of 13 f32 squares).
        assert_close(&got, &want, 1e-6, 1e-5, "hidden_l2 forward");
        let dout: Vec<f32> = t.iter().map(|&x| if x == IGNORE_INDEX { 0.0 } else { 0.37 }).collect();
        let mut dh = vec![0f32; n * d];
        hidden_l2_backward(&mut dh, &dout, &hs, &ht, n, d);
        let fd = finite_diff(|x| hidden_l2_naive(x, &ht64, &t, d).iter().sum::<f64>() * 0.37, &hs64, 1e-5);
        // Tolerance: norm-wise relative error <= 1e-5 (the function is quadratic).
        assert_grad_matches_fd(&dh, &fd, 1e-5, "hidden_l2 dh");
    }
}
