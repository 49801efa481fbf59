//! Phase p3 objectives: preference optimisation on (chosen, rejected) pairs, DPO and SimPO.
//!
//! A batch holds `P` pairs as `2P` sequences, the chosen ones first (`0..P`), then the rejected
//! ones in the same pair order (`P..2P`); `targets` marks the completion tokens (a position's
//! target is the next token when that token belongs to the completion, else -100: prompt and
//! padding never count). `logp` of a sequence is the sum of its completion tokens'
//! log-probabilities (TRL `selective_log_softmax` summed under `completion_mask`).
//!
//! - DPO (`loss_type="sigmoid"`): `u = β[(logπ(y_w) − logπ_ref(y_w)) − (logπ(y_l) − logπ_ref(y_l))]`,
//!   rewards `β(logπ − logπ_ref)`, reference log-probs precomputed from the frozen P2 model.
//! - SimPO: `u = (β/|y_w|) logπ(y_w) − (β/|y_l|) logπ(y_l) − γ` with `γ` absolute (TRL CPO
//!   `simpo_gamma`, `cpo_alpha = 0`), rewards `β·logπ/|y|`, no reference.
//!
//! `L = mean over pairs of −log σ(u)`; `∂L/∂u = −σ(−u)/P`. The per-sequence derivatives go to
//! [`autograd::ops::lm_head_sequence_objective`], which turns them into the fused LM-head
//! backward. MoE router losses are added as in [`Qwen3::loss`].

use crate::batch::TokenBatch;
use crate::error::{ModelError, Result};
use crate::qwen3::{ag, Bound, ForwardOptions, Qwen3};
use autograd::ops::{self, RouterStats, SequenceLogProbs};
use autograd::{Device, Tape, Tensor};
use serde::{Deserialize, Serialize};

/// Which preference loss, with its constants.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum PreferenceLoss {
    /// DPO against a frozen reference.
    Dpo {
        /// β (0.1 in the seed plan).
        beta: f32,
    },
    /// SimPO: length-normalised, reference-free, with a target margin.
    Simpo {
        /// β (2.5 in the SimPO paper).
        beta: f32,
        /// γ/β (0.55): the margin is `γ = β · gamma_beta_ratio`.
        gamma_beta_ratio: f32,
    },
}

impl PreferenceLoss {
    /// Whether the loss needs reference log-probabilities.
    pub fn needs_reference(&self) -> bool {
        matches!(self, PreferenceLoss::Dpo { .. })
    }

    /// Checks the constants (β > 0, ratio >= 0, finite).
    pub fn validate(&self) -> Result<()> {
        let (beta, ratio) = match *self {
            PreferenceLoss::Dpo { beta } => (beta, 0.0),
            PreferenceLoss::Simpo { beta, gamma_beta_ratio } => (beta, gamma_beta_ratio),
        };
        if !(beta > 0.0 && beta.is_finite() && ratio >= 0.0 && ratio.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "preference loss {self:?}: need beta > 0 and gamma_beta_ratio >= 0"
            )));
        }
        Ok(())
    }
}

/// The value of a preference loss on a batch of pairs and its derivatives.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferenceValue {
    /// Mean loss over pairs.
    pub loss: f32,
    /// Reward of each chosen sequence `[P]` (DPO: `β(logπ − logπ_ref)`; SimPO: `β·logπ/|y|`).
    pub chosen_rewards: Vec<f32>,
    /// Reward of each rejected sequence `[P]`.
    pub rejected_rewards: Vec<f32>,
    /// `∂L/∂logp` of every sequence `[2P]` (chosen, then rejected).
    pub dlogp: Vec<f32>,
}

impl PreferenceValue {
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    pub fn accuracy(&self) -> f32 {
        let n = self.chosen_rewards.len().max(1) as f32;
        self.chosen_rewards.iter().zip(&self.rejected_rewards).filter(|(c, r)| c > r).count() as f32 / n
    }

    /// Mean reward margin (chosen − rejected).
    pub fn margin(&self) -> f32 {
        let n = self.chosen_rewards.len().max(1) as f32;
        self.chosen_rewards.iter().zip(&self.rejected_rewards).map(|(c, r)| c - r).sum::<f32>() / n
    }
}

/// `log σ(u)` without overflow.
fn log_sigmoid(u: f64) -> f64 {
    if u >= 0.0 {
        -(-u).exp().ln_1p()
    } else {
        u - u.exp().ln_1p()
    }
}

/// `σ(u)`.
fn sigmoid(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

/// The loss of `2P` sequences' log-probabilities `logp` with completion lengths `counts` (chosen
/// first), against `reference [2P]` for DPO. Computed in f64.
pub fn preference_value(
    loss: &PreferenceLoss,
    logp: &[f32],
    counts: &[usize],
    reference: Option<&[f32]>,
) -> Result<PreferenceValue> {
    loss.validate()?;
    let n = logp.len();
    if n == 0 || !n.is_multiple_of(2) || counts.len() != n {
        return Err(ModelError::Invalid(format!(
            "{n} sequences ({} lengths) are not chosen/rejected pairs",
            counts.len()
        )));
    }
    let p = n / 2;
    if let Some(i) = counts.iter().position(|&c| c == 0) {
        return Err(ModelError::Invalid(format!("sequence {i} of the preference batch has no completion token")));
    }
    // Per-sequence reward r_i = k_i · (logp_i − ref_i) (ref 0 for SimPO); u = r_w − r_l − γ.
    let (k, reference, gamma): (Vec<f64>, Vec<f64>, f64) = match *loss {
        PreferenceLoss::Dpo { beta } => {
            let r = reference.ok_or_else(|| ModelError::Invalid("DPO needs reference log-probabilities".into()))?;
            if r.len() != n {
                return Err(ModelError::Invalid(format!("{} reference log-probabilities for {n} sequences", r.len())));
            }
            (vec![beta as f64; n], r.iter().map(|&x| x as f64).collect(), 0.0)
        }
        PreferenceLoss::Simpo { beta, gamma_beta_ratio } => {
            (counts.iter().map(|&c| beta as f64 / c as f64).collect(), vec![0.0; n], (beta * gamma_beta_ratio) as f64)
        }
    };
    let reward: Vec<f64> = (0..n).map(|i| k[i] * (logp[i] as f64 - reference[i])).collect();
    let mut total = 0.0;
    let mut dlogp = vec![0f32; n];
    for j in 0..p {
        let u = reward[j] - reward[p + j] - gamma;
        total -= log_sigmoid(u);
        let du = -sigmoid(-u) / p as f64;
        dlogp[j] = (du * k[j]) as f32;
        dlogp[p + j] = (-du * k[p + j]) as f32;
    }
    Ok(PreferenceValue {
        loss: (total / p as f64) as f32,
        chosen_rewards: reward[..p].iter().map(|&r| r as f32).collect(),
        rejected_rewards: reward[p..].iter().map(|&r| r as f32).collect(),
        dlogp,
    })
}

/// What [`preference_loss`] produced.
pub struct PreferenceOutput {
    /// Scalar objective `L + lb_coef·lb + z_coef·z` (what backward starts from).
    pub loss: Tensor,
    /// The preference loss, rewards and derivatives.
    pub value: PreferenceValue,
    /// Policy log-probabilities and completion lengths `[2P]`.
    pub logprobs: SequenceLogProbs,
    /// Load-balance loss, mean over MoE layers (0 for dense).
    pub lb: f32,
    /// Router z-loss, mean over MoE layers (0 for dense).
    pub z: f32,
    /// Router statistics per MoE layer.
    pub router: Vec<RouterStats>,
}

/// The preference objective of `model` on `batch` (`2P` rows: chosen then rejected) with the
/// completion `targets [2P*T]`, against `reference [2P]` log-probabilities for DPO.
#[allow(clippy::too_many_arguments)]
pub fn preference_loss(
    model: &Qwen3,
    tape: &Tape,
    bound: &Bound,
    batch: &TokenBatch,
    targets: &[i32],
    opts: &ForwardOptions,
    loss: &PreferenceLoss,
    reference: Option<&[f32]>,
) -> Result<PreferenceOutput> {
    let (hidden, aux) = model.forward_hidden(tape, bound, batch, opts)?;
    let mut value = Err(ModelError::Invalid("the preference objective was not evaluated".into()));
    let (objective, logprobs) =
        ops::lm_head_sequence_objective(tape, &hidden, &bound.lm_head, targets, batch.t, |lp| {
            value = preference_value(loss, &lp.logp, &lp.counts, reference);
            match &value {
                Ok(v) => (v.loss, v.dlogp.clone()),
                Err(_) => (f32::NAN, vec![0.0; lp.logp.len()]),
            }
        })
        .map_err(ag)?;
    let value = value?;
    let (loss, lb, z) = model.add_router_losses(tape, objective, &aux, &opts.router)?;
    Ok(PreferenceOutput { loss, value, logprobs, lb, z, router: aux.into_iter().map(|a| a.stats).collect() })
}

/// Summed completion log-probabilities of every row of `batch` under `model` in evaluation mode
/// (no gradient): the frozen reference of DPO, computed once before training.
pub fn sequence_logprobs(
    model: &Qwen3,
    batch: &TokenBatch,
    targets: &[i32],
    device: Device,
) -> Result<SequenceLogProbs> {
    let tape = Tape::inference_on(device).map_err(ag)?;
    let bound = model.bind(&tape);
    let (hidden, _) = model.forward_hidden(&tape, &bound, batch, &ForwardOptions::eval().on(device))?;
    ops::lm_head_sequence_logprobs(&tape, &hidden, &bound.lm_head, targets, batch.t).map_err(ag)
}
