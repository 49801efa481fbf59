//! Mean causal-LM cross-entropy through the LM head, fused over the vocabulary.

use super::{ensure, rows};
use crate::backend::kernel;
use crate::error::{AutogradError, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::buffer::zeroed;
use kernels_cpu::cross_entropy::{count_targets, default_chunk_rows, IGNORE_INDEX};

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
/// computed in the same chunked pass and scaled by the upstream gradient in backward (on a GPU
/// backend each chunk is GEMM → softmax-CE kernel → two GEMMs).
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
    let be = tape.backend();
    if !tape.needs_grad(&[h, w]) || count == 0 {
        kernel("cross_entropy", be.lm_head_ce(&mut row_losses, None, &hf, &wf, targets, d, v, 0.0, chunk))?;
        let loss = Tensor::from_vec(vec![mean(&row_losses)], &[]);
        return Ok(CrossEntropyOutput { loss, row_losses, count });
    }
    let (mut dh, mut dw) = (zeroed(n * d), zeroed(v * d));
    let scale = 1.0 / count as f32;
    let grads = Some((&mut dh[..], &mut dw[..]));
    kernel("cross_entropy", be.lm_head_ce(&mut row_losses, grads, &hf, &wf, targets, d, v, scale, chunk))?;
    let loss = Tensor::from_vec(vec![mean(&row_losses)], &[]);
    let (ht, wt) = (h.clone(), w.clone());
    let loss = tape.record(loss, &[h, w], move |dloss, g| {
        g.add_scaled(&ht, dloss[0], dh);
        g.add_scaled(&wt, dloss[0], dw);
    });
    Ok(CrossEntropyOutput { loss, row_losses, count })
}
