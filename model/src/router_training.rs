//! Per-step router training settings: one struct, one owner.
//!
//! The trainer computes a [`RouterTraining`] for every optimiser step from the phase's router
//! schedule and the circuit breakers' knobs, passes it to the forward through
//! [`crate::qwen3::ForwardOptions`], and saves it in its state (trainer.json). A model's
//! config.json never holds these values: the model file is architecture + weights only
//! ([`crate::moe_spec::MoeSpec`]). Evaluation is [`RouterTraining::eval`]: dropless, temperature 1,
//! no noise, no dropout, router losses unweighted.

use serde::{Deserialize, Serialize};

/// How the routers of a MoE model behave in one forward (ignored by dense models).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterTraining {
    /// Softmax temperature of the router (> 0; not used by the sigmoid router).
    pub temperature: f32,
    /// Capacity factor: at most `ceil(cf * N / E)` tokens per expert, the rest dropped
    /// (None = dropless).
    pub capacity_factor: Option<f32>,
    /// Weight of the Switch load-balance loss (mean over MoE layers) in the objective.
    pub lb_coef: f32,
    /// Weight of the router z-loss (mean over MoE layers) in the objective.
    pub z_coef: f32,
    /// Probability that a token loses its routed expert.
    pub expert_dropout: f32,
    /// Std of the Gaussian noise added to the router logits.
    pub noise: f32,
}

impl RouterTraining {
    /// Evaluation: dropless, temperature 1, no noise or dropout, router losses weighted 0.
    pub const fn eval() -> Self {
        RouterTraining {
            temperature: 1.0,
            capacity_factor: None,
            lb_coef: 0.0,
            z_coef: 0.0,
            expert_dropout: 0.0,
            noise: 0.0,
        }
    }
}

impl Default for RouterTraining {
    /// [`RouterTraining::eval`].
    fn default() -> Self {
        Self::eval()
    }
}
