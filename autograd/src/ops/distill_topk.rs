//! Distillation from a teacher logit cache: KL on the teacher's top-k tokens with the tail mass
//! as one bucket, fused over the student's LM head (kernels-cpu `distill_topk`). Only the
//! student's hidden states and head receive gradients.

use super::distill::DistillLoss;
use super::{ensure, rows};
use crate::backend::kernel;
use crate::error::{AutogradError, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::cross_entropy::{count_targets, default_chunk_rows, IGNORE_INDEX};
use kernels_cpu::distill_topk::{TopkDims, TopkTeacher};
use kernels_cpu::elementwise::axpy;

pub use kernels_cpu::distill_topk::TopkTeacher as CachedTeacher;

/// Mean over the rows whose target is not `-100` of `tau² · KL` between the cached teacher
/// distribution (top-k tokens + tail bucket) and the student's `softmax(h_s · w_sᵀ / tau)` over
/// the same buckets, with `h_s [N, D]`, `w_s [V, D]` and `teacher` holding `[N, k]` ids and
/// logits and the `[N]` log-sum-exps at this `tau`.
pub fn lm_head_topk_distill(
    tape: &Tape,
    h_s: &Tensor,
    w_s: &Tensor,
    teacher: TopkTeacher,
    targets: &[i32],
    tau: f32,
) -> Result<DistillLoss> {
    const OP: &str = "lm_head_topk_distill";
    let (n, d) = (rows(h_s), h_s.last_dim());
    ensure(w_s.shape().len() == 2 && w_s.shape()[1] == d, OP, || {
        format!("h_s {:?}, w_s {:?}", h_s.shape(), w_s.shape())
    })?;
    let v = w_s.shape()[0];
    let k = teacher.ids.len() / n.max(1);
    ensure(
        targets.len() == n && teacher.lse.len() == n && teacher.ids.len() == n * k && teacher.logits.len() == n * k,
        OP,
        || {
            format!(
                "{n} rows: {} targets, {} ids, {} logits, {} lse",
                targets.len(),
                teacher.ids.len(),
                teacher.logits.len(),
                teacher.lse.len()
            )
        },
    )?;
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(AutogradError::Config { op: OP, msg: format!("tau {tau} must be positive and finite") });
    }
    if let Some(&bad) = teacher.ids.iter().find(|&&i| i as usize >= v) {
        return Err(AutogradError::Index {
            op: OP,
            msg: format!("teacher token {bad} is outside the vocabulary of {v}"),
        });
    }
    if let Some(&bad) = targets.iter().find(|&&t| t != IGNORE_INDEX && (t < 0 || t as usize >= v)) {
        return Err(AutogradError::Index { op: OP, msg: format!("target {bad} is outside the vocabulary of {v}") });
    }
    let dims = TopkDims { n, d, v, k };
    let count = count_targets(targets);
    let chunk = default_chunk_rows(v);
    let mut row_kl = vec![0f32; n];
    let (hs, ws) = (h_s.f32s(), w_s.f32s());
    let mean =
        |r: &[f32]| if count == 0 { 0.0 } else { (r.iter().map(|&x| x as f64).sum::<f64>() / count as f64) as f32 };
    if !tape.needs_grad(&[h_s, w_s]) || count == 0 {
        let r = tape.backend().lm_head_topk_kl(&mut row_kl, None, &hs, &ws, teacher, targets, dims, tau, 0.0, chunk);
        kernel(OP, r)?;
        let loss = Tensor::from_vec(vec![mean(&row_kl)], &[]);
        return Ok(DistillLoss { loss, count, row_kl });
    }
    let (mut dh, mut dw) = (vec![0f32; n * d], vec![0f32; v * d]);
    let scale = 1.0 / count as f32;
    let grads = Some((&mut dh[..], &mut dw[..]));
    kernel(
        OP,
        tape.backend().lm_head_topk_kl(&mut row_kl, grads, &hs, &ws, teacher, targets, dims, tau, scale, chunk),
    )?;
    let loss = Tensor::from_vec(vec![mean(&row_kl)], &[]);
    let (hst, wst) = (h_s.clone(), w_s.clone());
    let loss = tape.record(loss, &[h_s, w_s], move |dloss, g| {
        g.accumulate(&hst, |gh| axpy(gh, dloss[0], &dh));
        g.accumulate(&wst, |gw| axpy(gw, dloss[0], &dw));
    });
    Ok(DistillLoss { loss, count, row_kl })
}
