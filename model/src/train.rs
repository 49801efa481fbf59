//! One optimisation step: forward, backward, AdamW.

use crate::batch::TokenBatch;
use crate::error::Result;
use crate::qwen3::{ag, Qwen3, RunOptions};
use autograd::optim::AdamW;
use autograd::{profile, Tape};

/// What a step measured.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Mean loss before the update.
    pub loss: f32,
    /// Global L2 norm of the gradient.
    pub grad_norm: f32,
    /// Tokens that counted towards the loss.
    pub tokens: usize,
}

/// Gradients of the objective, flat in the layout of `model.params`, plus the objective and
/// the number of counted tokens. The ops run on `run.device`, the step itself on a worker of
/// the rayon pool (see `kernels_cpu::pool`).
pub fn loss_and_grads(
    model: &Qwen3,
    batch: &TokenBatch,
    targets: &[i32],
    run: &RunOptions,
) -> Result<(f32, usize, Vec<f32>)> {
    kernels_cpu::pool::on_pool(|| loss_and_grads_here(model, batch, targets, run))
}

fn loss_and_grads_here(
    model: &Qwen3,
    batch: &TokenBatch,
    targets: &[i32],
    run: &RunOptions,
) -> Result<(f32, usize, Vec<f32>)> {
    let tape = Tape::new_on(run.device).map_err(ag)?;
    let bound = model.bind(&tape);
    let out = model.loss(&tape, &bound, batch, targets, run)?;
    let loss = out.loss.item();
    let mut grads = tape.backward(&out.loss);
    let flat = profile::stage("flatten_grads", || model.params.flat_grads_at(&bound.leaves, &mut grads));
    Ok((loss, out.count, flat))
}

/// Forward + backward + one AdamW update, all on `run.device`.
pub fn train_step(
    model: &mut Qwen3,
    opt: &mut AdamW,
    batch: &TokenBatch,
    targets: &[i32],
    run: &RunOptions,
) -> Result<StepStats> {
    let (loss, tokens, grads) = loss_and_grads(model, batch, targets, run)?;
    let grad_norm = profile::stage("grad_norm", || kernels_cpu::adamw::global_norm(&grads));
    profile::stage("adamw", || opt.step_on(run.device, &mut model.params, &grads)).map_err(ag)?;
    Ok(StepStats { loss, grad_norm, tokens })
}
