//! Breaker thresholds and windows of one phase, and their validation.

use serde::{Deserialize, Serialize};

/// Breaker thresholds and windows of one phase (JSON, every field optional).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Master switch; `false` makes every `observe_*` return nothing.
    pub enabled: bool,
    /// Overflow fraction a layer must exceed.
    pub overflow_frac: f32,
    /// Steps the overflow must persist.
    pub overflow_window: usize,
    /// Capacity factor added by the overflow breaker.
    pub capacity_step: f32,
    /// Expert share that counts as collapse.
    pub collapse_share: f32,
    /// Steps the collapse must persist.
    pub collapse_window: usize,
    /// Load-balance coefficient added by the collapse breaker.
    pub lb_step: f32,
    /// Share below which an expert is under-used.
    pub underuse_share: f32,
    /// Under-used experts (in one layer) that trigger the breaker.
    pub underuse_experts: usize,
    /// Steps the under-use must persist.
    pub underuse_window: usize,
    /// Router noise (std of the logit noise) switched on by the under-use breaker.
    pub noise_value: f32,
    /// Steps the noise stays on.
    pub noise_steps: usize,
    /// Temperature step of the overflow / collapse (down) and under-use (up) breakers.
    pub temp_step: f32,
    /// Consecutive rising dev-PPL evals that halve the LR (and, after a halving, roll back).
    pub ppl_rising_evals: usize,
    /// LR multiplier of the dev-PPL breaker.
    pub lr_factor: f32,
    /// Steps after an action before the same breaker may fire again.
    pub cooldown: usize,
}

impl Default for BreakerConfig {
    /// The seed plan's values, with windows at full scale (P1: 2M tokens per step).
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            overflow_frac: 0.005,
            overflow_window: 1000,
            capacity_step: 0.05,
            collapse_share: 0.40,
            collapse_window: 2000,
            lb_step: 0.002,
            underuse_share: 0.03,
            underuse_experts: 4,
            underuse_window: 2000,
            noise_value: 0.01,
            noise_steps: 10000,
            temp_step: 0.05,
            ppl_rising_evals: 3,
            lr_factor: 0.5,
            cooldown: 1000,
        }
    }
}

/// A config value out of its domain.
#[derive(Debug, thiserror::Error)]
#[error("breakers.{field} = {value}: {why}")]
pub struct BreakerConfigError {
    /// The field.
    pub field: &'static str,
    /// Its value, as text.
    pub value: String,
    /// The allowed domain.
    pub why: &'static str,
}

impl BreakerConfig {
    /// Checks every field's domain (fractions in [0, 1], steps finite and >= 0, `lr_factor` in (0, 1]).
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        let fracs = [
            ("overflow_frac", self.overflow_frac),
            ("collapse_share", self.collapse_share),
            ("underuse_share", self.underuse_share),
        ];
        for (field, v) in fracs {
            if !(0.0..=1.0).contains(&v) {
                return Err(BreakerConfigError { field, value: v.to_string(), why: "must be in [0, 1]" });
            }
        }
        let steps = [
            ("capacity_step", self.capacity_step),
            ("lb_step", self.lb_step),
            ("noise_value", self.noise_value),
            ("temp_step", self.temp_step),
        ];
        for (field, v) in steps {
            if !(v.is_finite() && v >= 0.0) {
                return Err(BreakerConfigError { field, value: v.to_string(), why: "must be finite and >= 0" });
            }
        }
        if !(self.lr_factor > 0.0 && self.lr_factor <= 1.0) {
            let value = self.lr_factor.to_string();
            return Err(BreakerConfigError { field: "lr_factor", value, why: "must be in (0, 1]" });
        }
        Ok(())
    }
}
