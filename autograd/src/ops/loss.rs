//! Mean causal-LM cross-entropy through the LM head, fused over the vocabulary.

use super::{ensure, rows};
use crate::error::{AutogradError, Result};
use crate::sim::{sim, sim_matmul};
use crate::tape::Tape;
use crate::tensor::{Device, Tensor};
use kernels_cpu::buffer::zeroed;
use kernels_cpu::cross_entropy::{
    count_targets, default_chunk_rows, lm_head_ce_forward, lm_head_ce_forward_backward, IGNORE_INDEX,
};
use kernels_cpu::gemm::Trans;

/// Result of [`lm_head_cross_entropy`].
pub struct CrossEntropyOutput {
    /// Scalar mean loss over counted rows (0 if none count), `[]`.
    pub loss: Tensor,
    /// Per-row losses `[N]` (0 for ignored rows).
    pub row_losses: Vec<f32>,
    /// Rows that count (targets other than `IGNORE_INDEX`).
    pub count: usize,
}

/// Mean cross-entropy of `logits = h · wᵀ` against `targets [N]` (`-100` = ignore), with
/// `h [N, D]`, `w [V, D]`. Never materialises `[N, V]`: when recording, the gradients are
/// computed in the same chunked pass and scaled by the upstream gradient in backward. On
/// `Device::Sim` each chunk runs as simulated GEMM → softmax-CE kernel → two GEMMs.
pub fn lm_head_cross_entropy(tape: &Tape, h: &Tensor, w: &Tensor, targets: &[i32]) -> Result<CrossEntropyOutput> {
    let (n, d) = (rows(h), h.last_dim());
    ensure(w.shape().len() == 2 && w.shape()[1] == d && targets.len() == n, "cross_entropy", || {
        format!("h {:?}, w {:?}, {} targets", h.shape(), w.shape(), targets.len())
    })?;
    let v = w.shape()[0];
    if let Some(&bad) = targets.iter().find(|&&t| t != IGNORE_INDEX && (t < 0 || t as usize >= v)) {
        return Err(AutogradError::Index {
            op: "cross_entropy",
            msg: format!("target {bad} is outside the vocabulary of {v}"),
        });
    }
    let count = count_targets(targets);
    let chunk = default_chunk_rows(v);
    let mut row_losses = zeroed(n);
    let (hf, wf) = (h.f32s(), w.f32s());
    let mean = |losses: &[f32]| {
        if count == 0 {
            0.0
        } else {
            (losses.iter().map(|&x| x as f64).sum::<f64>() / count as f64) as f32
        }
    };
    let on_sim = tape.device() == Device::Sim;
    if !tape.needs_grad(&[h, w]) || count == 0 {
        if on_sim {
            sim("cross_entropy", sim_lm_head_ce(&mut row_losses, None, &hf, &wf, targets, d, v, 0.0, chunk))?;
        } else {
            lm_head_ce_forward(&mut row_losses, &hf, &wf, targets, n, d, v, chunk);
        }
        let loss = Tensor::from_vec(vec![mean(&row_losses)], &[]);
        return Ok(CrossEntropyOutput { loss, row_losses, count });
    }
    let (mut dh, mut dw) = (zeroed(n * d), zeroed(v * d));
    let scale = 1.0 / count as f32;
    if on_sim {
        let grads = Some((&mut dh[..], &mut dw[..]));
        sim("cross_entropy", sim_lm_head_ce(&mut row_losses, grads, &hf, &wf, targets, d, v, scale, chunk))?;
    } else {
        lm_head_ce_forward_backward(&mut row_losses, &mut dh, &mut dw, &hf, &wf, targets, n, d, v, scale, chunk);
    }
    let loss = Tensor::from_vec(vec![mean(&row_losses)], &[]);
    let (ht, wt) = (h.clone(), w.clone());
    let loss = tape.record(loss, &[h, w], move |dloss, g| {
        g.add_scaled(&ht, dloss[0], dh);
        g.add_scaled(&wt, dloss[0], dw);
    });
    Ok(CrossEntropyOutput { loss, row_losses, count })
}

/// The fused LM-head cross-entropy on the simulator, chunk by chunk over rows as kernels-cpu does
/// (`[N, V]` logits are never materialised): per chunk of `chunk` rows, `logits = h_c · wᵀ`
/// (one-group FMA GEMM), the softmax-CE kernel (row losses and `dlogits = scale * (softmax -
/// onehot)`), then, when `grads = (dh [N, D], dw [V, D])` is given, `dh_c = dlogits · w` and
/// `dw += dlogitsᵀ · h_c`.
#[allow(clippy::too_many_arguments)]
fn sim_lm_head_ce(
    losses: &mut [f32],
    mut grads: Option<(&mut [f32], &mut [f32])>,
    h: &[f32],
    w: &[f32],
    targets: &[i32],
    d: usize,
    v: usize,
    scale: f32,
    chunk: usize,
) -> std::result::Result<(), kernels_gpu::sim::SimError> {
    let (n, chunk) = (targets.len(), chunk.max(1));
    let mut logits = zeroed(chunk.min(n) * v); // [rows, V]
    let mut dlogits = zeroed(chunk.min(n) * v); // [rows, V]
    for r0 in (0..n).step_by(chunk) {
        let r1 = (r0 + chunk).min(n);
        let (rows, hc) = (r1 - r0, &h[r0 * d..r1 * d]);
        let (lg, dl) = (&mut logits[..rows * v], &mut dlogits[..rows * v]);
        sim_matmul(lg, hc, w, rows, d, v, Trans::No, Trans::Yes, false)?;
        kernels_gpu::sim::ops::softmax_ce_forward_backward(&mut losses[r0..r1], dl, lg, &targets[r0..r1], v, scale)?;
        if let Some((dh, dw)) = grads.as_mut() {
            sim_matmul(&mut dh[r0 * d..r1 * d], dl, w, rows, v, d, Trans::No, Trans::No, false)?;
            sim_matmul(dw, dl, hc, v, rows, d, Trans::Yes, Trans::No, true)?;
        }
    }
    Ok(())
}
