//! Per-sequence log-probabilities through the LM head, fused over the vocabulary: the
//! building block of sequence-level objectives (DPO, SimPO), whose gradient differs per
//! sequence.
//!
//! `logp_b = Σ_{rows r of sequence b, targets[r] ≠ -100} log softmax(h_r · wᵀ)[targets[r]]`
//! with `h [B*T, D]` (sequence `b` is rows `b*T .. (b+1)*T`), `w [V, D]`. The objective is a
//! function of the `B` values, given by the caller as its value and its derivative
//! `∂J/∂logp [B]`; backward then needs, per row of sequence `b`,
//! `∂J/∂z_r = -∂J/∂logp_b · (softmax(z_r) - onehot(targets[r]))`, which is the chunked
//! cross-entropy's backward with the scale `-∂J/∂logp_b`: one fused call per sequence, so the
//! `[N, V]` logits are never materialised (forward and backward each compute a chunk's logits).

use super::{ensure, rows};
use crate::backend::{kernel, kernel_bwd};
use crate::error::{AutogradError, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::buffer::zeroed;
use kernels_cpu::cross_entropy::{default_chunk_rows, IGNORE_INDEX};

/// The per-sequence log-probabilities of [`lm_head_sequence_objective`].
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceLogProbs {
    /// `logp [B]`: summed target log-probabilities of each sequence.
    pub logp: Vec<f32>,
    /// Counted rows (targets other than `-100`) of each sequence `[B]`.
    pub counts: Vec<usize>,
}

/// Checks shapes and targets; returns `(n, d, v, b)`.
fn check(h: &Tensor, w: &Tensor, targets: &[i32], seq_rows: usize) -> Result<(usize, usize, usize, usize)> {
    const OP: &str = "lm_head_sequence_objective";
    let (n, d) = (rows(h), h.last_dim());
    ensure(w.shape().len() == 2 && w.shape()[1] == d && targets.len() == n, OP, || {
        format!("h {:?}, w {:?}, {} targets", h.shape(), w.shape(), targets.len())
    })?;
    ensure(seq_rows > 0 && n.is_multiple_of(seq_rows), OP, || format!("{n} rows are not sequences of {seq_rows}"))?;
    let v = w.shape()[0];
    if let Some(&bad) = targets.iter().find(|&&t| t != IGNORE_INDEX && (t < 0 || t as usize >= v)) {
        return Err(AutogradError::Index { op: OP, msg: format!("target {bad} is outside the vocabulary of {v}") });
    }
    Ok((n, d, v, n / seq_rows))
}

/// Per-sequence log-probabilities (no gradient; any tape, an inference one included).
pub fn lm_head_sequence_logprobs(
    tape: &Tape,
    h: &Tensor,
    w: &Tensor,
    targets: &[i32],
    seq_rows: usize,
) -> Result<SequenceLogProbs> {
    let (n, d, v, b) = check(h, w, targets, seq_rows)?;
    let mut row_losses = zeroed(n);
    let (hf, wf) = (h.f32s(), w.f32s());
    let chunk = default_chunk_rows(v);
    kernel(
        "lm_head_sequence_objective",
        tape.backend().lm_head_ce(&mut row_losses, None, &hf, &wf, targets, d, v, 0.0, chunk),
    )?;
    let logp = (0..b)
        .map(|s| -(row_losses[s * seq_rows..(s + 1) * seq_rows].iter().map(|&x| x as f64).sum::<f64>()) as f32)
        .collect();
    let counts = (0..b)
        .map(|s| targets[s * seq_rows..(s + 1) * seq_rows].iter().filter(|&&t| t != IGNORE_INDEX).count())
        .collect();
    Ok(SequenceLogProbs { logp, counts })
}

/// A scalar objective `J(logp)` of the per-sequence log-probabilities: `objective` gets them and
/// returns `(J, ∂J/∂logp [B])`; the result is `J` as a `[]` tensor whose backward sends the
/// gradient to `h` and `w`, and the log-probabilities.
pub fn lm_head_sequence_objective(
    tape: &Tape,
    h: &Tensor,
    w: &Tensor,
    targets: &[i32],
    seq_rows: usize,
    objective: impl FnOnce(&SequenceLogProbs) -> (f32, Vec<f32>),
) -> Result<(Tensor, SequenceLogProbs)> {
    const OP: &str = "lm_head_sequence_objective";
    let lp = lm_head_sequence_logprobs(tape, h, w, targets, seq_rows)?;
    let (value, dlogp) = objective(&lp);
    ensure(dlogp.len() == lp.logp.len(), OP, || {
        format!("{} derivatives for {} sequences", dlogp.len(), lp.logp.len())
    })?;
    let out = Tensor::from_vec(vec![value], &[]);
    if !tape.needs_grad(&[h, w]) {
        return Ok((out, lp));
    }
    let (ht, wt) = (h.clone(), w.clone());
    let targets = targets.to_vec();
    let be = tape.backend().clone();
    let out = tape.record(out, &[h, w], move |dout, g| {
        let (n, d, v) = (rows(&ht), ht.last_dim(), wt.shape()[0]);
        let (hf, wf) = (ht.f32s(), wt.f32s());
        let chunk = default_chunk_rows(v);
        let (mut dh, mut dw) = (zeroed(n * d), zeroed(v * d));
        let mut scratch = zeroed(seq_rows);
        for (s, &dl) in dlogp.iter().enumerate() {
            let scale = -dl * dout[0];
            let t = &targets[s * seq_rows..(s + 1) * seq_rows];
            if scale == 0.0 || t.iter().all(|&x| x == IGNORE_INDEX) {
                continue;
            }
            let rows = s * seq_rows..(s + 1) * seq_rows;
            let hs = &hf[rows.start * d..rows.end * d];
            let grads = Some((&mut dh[rows.start * d..rows.end * d], &mut dw[..]));
            kernel_bwd(OP, be.lm_head_ce(&mut scratch, grads, hs, &wf, t, d, v, scale, chunk));
        }
        g.add_scaled(&ht, 1.0, dh);
        g.add_scaled(&wt, 1.0, dw);
    });
    Ok((out, lp))
}
