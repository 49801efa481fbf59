//! Knowledge-distillation losses: KL from a teacher's LM-head distribution (fused over the
//! vocabulary, like the cross-entropy) and the last-hidden-state L2. The teacher is a constant:
//! only the student's hidden states and head receive gradients.

use super::{ensure, rows};
use crate::backend::{kernel, kernel_bwd};
use crate::error::{AutogradError, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::cross_entropy::{count_targets, default_chunk_rows, IGNORE_INDEX};
use kernels_cpu::distill::DistillDims;
use kernels_cpu::elementwise::axpy;

/// Result of [`lm_head_distill`].
pub struct DistillLoss {
    /// Scalar mean of `tau² · KL(p_t ‖ p_s)` over counted rows (0 if none count), `[]`.
    pub loss: Tensor,
    /// Rows that count (targets other than `IGNORE_INDEX`).
    pub count: usize,
    /// Per-row `tau² · KL` `[N]` (0 for ignored rows).
    pub row_kl: Vec<f32>,
}

/// Mean over counted rows of the mask `targets`.
fn masked_mean(rows: &[f32], count: usize) -> f32 {
    if count == 0 {
        0.0
    } else {
        (rows.iter().map(|&x| x as f64).sum::<f64>() / count as f64) as f32
    }
}

/// Checks that `targets [n]` are `IGNORE_INDEX` or tokens below `v`.
fn check_targets(op: &'static str, targets: &[i32], v: usize) -> Result<()> {
    match targets.iter().find(|&&t| t != IGNORE_INDEX && (t < 0 || t as usize >= v)) {
        Some(&bad) => Err(AutogradError::Index { op, msg: format!("target {bad} is outside the vocabulary of {v}") }),
        None => Ok(()),
    }
}

/// Mean distillation loss `tau² · KL(softmax(h_t · w_tᵀ / tau) ‖ softmax(h_s · w_sᵀ / tau))` over
/// the rows whose target is not `-100`, with `h_s [N, D]`, `w_s [V, D]` (student) and `h_t [N, Dt]`,
/// `w_t [V, Dt]` (teacher). `targets [N]` only selects rows. Gradients flow to `h_s` and `w_s`
/// only; like the cross-entropy, they are computed in the same chunked pass as the loss and the
/// `[N, V]` logits are never materialised.
pub fn lm_head_distill(
    tape: &Tape,
    h_s: &Tensor,
    w_s: &Tensor,
    h_t: &Tensor,
    w_t: &Tensor,
    targets: &[i32],
    tau: f32,
) -> Result<DistillLoss> {
    const OP: &str = "lm_head_distill";
    let (n, d, dt) = (rows(h_s), h_s.last_dim(), h_t.last_dim());
    ensure(w_s.shape().len() == 2 && w_s.shape()[1] == d, OP, || {
        format!("h_s {:?}, w_s {:?}", h_s.shape(), w_s.shape())
    })?;
    let v = w_s.shape()[0];
    ensure(w_t.shape() == [v, dt] && rows(h_t) == n, OP, || {
        format!("h_s {:?}, w_s {:?}, h_t {:?}, w_t {:?}", h_s.shape(), w_s.shape(), h_t.shape(), w_t.shape())
    })?;
    ensure(targets.len() == n, OP, || format!("{} targets for {n} rows", targets.len()))?;
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(AutogradError::Config { op: OP, msg: format!("tau {tau} must be positive and finite") });
    }
    check_targets(OP, targets, v)?;
    let dims = DistillDims { n, d, dt, v };
    let count = count_targets(targets);
    let chunk = default_chunk_rows(v);
    let mut row_kl = vec![0f32; n];
    let (hs, ws, ht, wt) = (h_s.f32s(), w_s.f32s(), h_t.f32s(), w_t.f32s());
    if !tape.needs_grad(&[h_s, w_s]) || count == 0 {
        let r = tape.backend().lm_head_kl(&mut row_kl, None, &hs, &ws, &ht, &wt, targets, dims, tau, 0.0, chunk);
        kernel(OP, r)?;
        let loss = Tensor::from_vec(vec![masked_mean(&row_kl, count)], &[]);
        return Ok(DistillLoss { loss, count, row_kl });
    }
    let (mut dh, mut dw) = (vec![0f32; n * d], vec![0f32; v * d]);
    let scale = 1.0 / count as f32;
    let grads = Some((&mut dh[..], &mut dw[..]));
    kernel(OP, tape.backend().lm_head_kl(&mut row_kl, grads, &hs, &ws, &ht, &wt, targets, dims, tau, scale, chunk))?;
    let loss = Tensor::from_vec(vec![masked_mean(&row_kl, count)], &[]);
    let (hst, wst) = (h_s.clone(), w_s.clone());
    let loss = tape.record(loss, &[h_s, w_s], move |dloss, g| {
        g.accumulate(&hst, |gh| axpy(gh, dloss[0], &dh));
        g.accumulate(&wst, |gw| axpy(gw, dloss[0], &dw));
    });
    Ok(DistillLoss { loss, count, row_kl })
}

/// Mean over the rows whose target is not `-100` of `‖h_s[i] − h_t[i]‖² / D` (`h_s`, `h_t`
/// `[N, D]`), a scalar `[]` (0 if no row counts). `h_t` is a constant: only `h_s` gets a gradient.
pub fn hidden_l2(tape: &Tape, h_s: &Tensor, h_t: &Tensor, targets: &[i32]) -> Result<Tensor> {
    const OP: &str = "hidden_l2";
    let (n, d) = (rows(h_s), h_s.last_dim());
    ensure(h_t.last_dim() == d && rows(h_t) == n && targets.len() == n, OP, || {
        format!("h_s {:?}, h_t {:?}, {} targets", h_s.shape(), h_t.shape(), targets.len())
    })?;
    let count = count_targets(targets);
    let mut row = vec![0f32; n];
    kernel(OP, tape.backend().hidden_l2_forward(&mut row, &h_s.f32s(), &h_t.f32s(), targets, d))?;
    let loss = Tensor::from_vec(vec![masked_mean(&row, count)], &[]);
    if count == 0 {
        return Ok(loss);
    }
    let (hst, htt, mask) = (h_s.clone(), h_t.clone(), targets.to_vec());
    let be = tape.backend().clone();
    Ok(tape.record(loss, &[h_s], move |dloss, g| {
        let per_row = dloss[0] / count as f32;
        let dout: Vec<f32> = mask.iter().map(|&t| if t == IGNORE_INDEX { 0.0 } else { per_row }).collect();
        let (hs, ht) = (hst.f32s(), htt.f32s());
        g.accumulate(&hst, |gh| kernel_bwd(OP, be.hidden_l2_backward(gh, &dout, &hs, &ht, d)));
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels_cpu::check::{finite_diff, rand_vec, rel_norm_err, to_f64};
    use kernels_cpu::cross_entropy::lm_head_naive;
    use kernels_cpu::distill::{hidden_l2_naive, kl_naive};

    const T: [i32; 7] = [3, IGNORE_INDEX, 0, 10, 5, IGNORE_INDEX, 1];

    /// `(n, d, v)`: student; the teacher's width is `d + 2`, except for the L2 tensor.
    fn inputs(n: usize, d: usize, v: usize) -> [Vec<f32>; 5] {
        let scaled = |len, seed, a: f32| rand_vec(len, seed).iter().map(|x| x * a).collect::<Vec<f32>>();
        [
            scaled(n * d, 1, 2.0),
            rand_vec(v * d, 2),
            scaled(n * (d + 2), 3, 2.0),
            rand_vec(v * (d + 2), 4),
            rand_vec(n * d, 5),
        ]
    }

    #[test]
    fn gradients_through_the_tape_match_finite_differences() {
        let (n, d, v, tau, c2) = (7, 5, 11, 1.7f32, 0.3f32);
        let [hs, ws, ht, wt, hl] = inputs(n, d, v);
        let tape = Tape::new();
        let leaf = |x: &Vec<f32>, shape: &[usize]| tape.leaf(&Tensor::from_vec(x.clone(), shape));
        let (hs_t, ws_t, ht_t, wt_t, hl_t) = (
            leaf(&hs, &[n, d]),
            leaf(&ws, &[v, d]),
            leaf(&ht, &[n, d + 2]),
            leaf(&wt, &[v, d + 2]),
            leaf(&hl, &[n, d]),
        );
        let kd = lm_head_distill(&tape, &hs_t, &ws_t, &ht_t, &wt_t, &T, tau).unwrap();
        let l2 = hidden_l2(&tape, &hs_t, &hl_t, &T).unwrap();
        assert_eq!(kd.count, 5);
        let total = crate::ops::add_scaled(&tape, &kd.loss, &l2, c2).unwrap();
        let g = tape.backward_with(&total, &[0.8]);
        // The teacher tensors are constants even when they are leaves of the tape.
        assert!(g.get(&ht_t).is_none() && g.get(&wt_t).is_none() && g.get(&hl_t).is_none());

        let (hs64, ws64, ht64, wt64, hl64) = (to_f64(&hs), to_f64(&ws), to_f64(&ht), to_f64(&wt), to_f64(&hl));
        let objective = |hs: &[f64], ws: &[f64]| {
            let zt = lm_head_naive(&ht64, &wt64, n, d + 2, v);
            let kl = kl_naive(&lm_head_naive(hs, ws, n, d, v), &zt, &T, v, tau as f64);
            let l2 = hidden_l2_naive(hs, &hl64, &T, d);
            0.8 * (kl.iter().sum::<f64>() + c2 as f64 * l2.iter().sum::<f64>()) / 5.0
        };
        let want = objective(&hs64, &ws64);
        let got = total.item() as f64 * 0.8;
        assert!((got - want).abs() <= 1e-5 * want.abs(), "loss {got} vs naive {want}");
        let fd32 = |v: Vec<f64>| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let fd_h = fd32(finite_diff(|x| objective(x, &ws64), &hs64, 1e-5));
        let fd_w = fd32(finite_diff(|x| objective(&hs64, x), &ws64, 1e-5));
        let (eh, ew) = (rel_norm_err(g.get(&hs_t).unwrap(), &fd_h), rel_norm_err(g.get(&ws_t).unwrap(), &fd_w));
        eprintln!("distill op: dh_s rel err {eh:.2e}, dw_s rel err {ew:.2e}");
        // Tolerance: norm-wise relative error <= 1e-5 (f32 analytic vs f64 central differences).
        assert!(eh <= 1e-5 && ew <= 1e-5, "dh_s {eh:.3e}, dw_s {ew:.3e}");
        for (i, &t) in T.iter().enumerate() {
            assert_eq!(kd.row_kl[i] == 0.0, t == IGNORE_INDEX, "row {i}");
        }
    }

    #[test]
    fn inference_tape_gives_the_same_value_and_records_nothing() {
        let (n, d, v) = (7, 4, 11);
        let [hs, ws, ht, wt, hl] = inputs(n, d, v);
        let t = |x: &Vec<f32>, shape: &[usize]| Tensor::from_vec(x.clone(), shape);
        let (hs, ws, ht, wt, hl) =
            (t(&hs, &[n, d]), t(&ws, &[v, d]), t(&ht, &[n, d + 2]), t(&wt, &[v, d + 2]), t(&hl, &[n, d]));
        let tape = Tape::inference();
        let a = lm_head_distill(&tape, &hs, &ws, &ht, &wt, &T, 2.0).unwrap();
        let l2 = hidden_l2(&tape, &hs, &hl, &T).unwrap();
        assert!(tape.is_empty() && !a.loss.requires_grad() && !l2.requires_grad());
        let rec = Tape::new();
        let (hsl, wsl) = (rec.leaf(&hs), rec.leaf(&ws));
        let b = lm_head_distill(&rec, &hsl, &wsl, &ht, &wt, &T, 2.0).unwrap();
        assert_eq!(a.row_kl, b.row_kl);
        assert_eq!(a.loss.item(), b.loss.item());
        assert!(a.loss.item() > 0.0 && l2.item() > 0.0);
        // No counted row: zero loss.
        let none = [IGNORE_INDEX; 7];
        let z = lm_head_distill(&rec, &hsl, &wsl, &ht, &wt, &none, 2.0).unwrap();
        assert_eq!((z.loss.item(), z.count), (0.0, 0));
        assert_eq!(hidden_l2(&rec, &hsl, &hl, &none).unwrap().item(), 0.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (n, d, v) = (7, 4, 11);
        let [hs, ws, ht, wt, _] = inputs(n, d, v);
        let t = |x: &Vec<f32>, shape: &[usize]| Tensor::from_vec(x.clone(), shape);
        let (hs, ws, ht, wt) = (t(&hs, &[n, d]), t(&ws, &[v, d]), t(&ht, &[n, d + 2]), t(&wt, &[v, d + 2]));
        let tape = Tape::new();
        let call = |ws: &Tensor, ht: &Tensor, wt: &Tensor, tg: &[i32], tau: f32| {
            lm_head_distill(&tape, &hs, ws, ht, wt, tg, tau).err().map(|e| e.to_string())
        };
        assert_eq!(call(&ws, &ht, &wt, &T, 1.0), None);
        for tau in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(call(&ws, &ht, &wt, &T, tau).unwrap().contains("tau"), "tau {tau} accepted");
        }
        assert!(call(&ws, &ht, &wt, &T[..6], 1.0).unwrap().contains("targets"));
        assert!(call(&ws, &ht, &wt, &[0, 1, 2, 3, 4, 5, 11], 1.0).unwrap().contains("target 11"));
        assert!(call(&ws, &ht, &wt, &[0, 1, 2, 3, 4, 5, -2], 1.0).unwrap().contains("target -2"));
        assert!(call(&ws.reshape(&[v * 2, d / 2]), &ht, &wt, &T, 1.0).unwrap().contains("shape"));
        assert!(call(&ws, &ht, &Tensor::zeros(&[v + 1, d + 2]), &T, 1.0).unwrap().contains("shape"));
        assert!(call(&ws, &Tensor::zeros(&[n + 1, d + 2]), &wt, &T, 1.0).unwrap().contains("shape"));
        assert!(hidden_l2(&tape, &hs, &ht, &T).unwrap_err().to_string().contains("shape"));
        assert!(hidden_l2(&tape, &hs, &hs, &T[..3]).is_err());
    }
}
