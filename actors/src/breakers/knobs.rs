//! The knobs breakers move, their allowed ranges, and the actions breakers return.

use serde::{Deserialize, Serialize};

/// Allowed router temperature.
pub const TEMPERATURE_RANGE: (f32, f32) = (0.3, 2.0);
/// Allowed capacity factor.
pub const CAPACITY_RANGE: (f32, f32) = (1.0, 4.0);
/// Allowed load-balance coefficient.
pub const LB_COEF_RANGE: (f32, f32) = (0.0, 1.0);
/// Allowed router noise standard deviation.
pub const NOISE_RANGE: (f32, f32) = (0.0, 1.0);
/// Allowed LR multiplier.
pub const LR_SCALE_RANGE: (f32, f32) = (0.0, 1.0);

/// The knobs breakers move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    /// [`RouterKnobs::capacity_factor`].
    CapacityFactor,
    /// [`RouterKnobs::temperature`].
    Temperature,
    /// [`RouterKnobs::lb_coef`].
    LbCoef,
    /// [`RouterKnobs::router_noise`].
    RouterNoise,
    /// [`RouterKnobs::lr_scale`].
    LrScale,
}

impl Knob {
    /// Allowed range of the knob.
    pub fn range(self) -> (f32, f32) {
        match self {
            Knob::CapacityFactor => CAPACITY_RANGE,
            Knob::Temperature => TEMPERATURE_RANGE,
            Knob::LbCoef => LB_COEF_RANGE,
            Knob::RouterNoise => NOISE_RANGE,
            Knob::LrScale => LR_SCALE_RANGE,
        }
    }

    /// Current value in `knobs`.
    pub fn get(self, knobs: &RouterKnobs) -> f32 {
        match self {
            Knob::CapacityFactor => knobs.capacity_factor,
            Knob::Temperature => knobs.temperature,
            Knob::LbCoef => knobs.lb_coef,
            Knob::RouterNoise => knobs.router_noise,
            Knob::LrScale => knobs.lr_scale,
        }
    }

    pub(super) fn slot(self, knobs: &mut RouterKnobs) -> &mut f32 {
        match self {
            Knob::CapacityFactor => &mut knobs.capacity_factor,
            Knob::Temperature => &mut knobs.temperature,
            Knob::LbCoef => &mut knobs.lb_coef,
            Knob::RouterNoise => &mut knobs.router_noise,
            Knob::LrScale => &mut knobs.lr_scale,
        }
    }
}

/// Router and LR settings as the breakers leave them (the schedules add on top in the trainer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterKnobs {
    /// Capacity factor of training.
    pub capacity_factor: f32,
    /// Router softmax temperature.
    pub temperature: f32,
    /// Load-balance loss coefficient.
    pub lb_coef: f32,
    /// Std of the router logit noise.
    pub router_noise: f32,
    /// Multiplier on the scheduled learning rate.
    pub lr_scale: f32,
}

/// One knob change of an action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnobChange {
    /// The knob.
    pub knob: Knob,
    /// Value before.
    pub from: f32,
    /// Value after (finite, inside [`Knob::range`]).
    pub to: f32,
}

/// Which breaker fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerKind {
    /// Tokens dropped over capacity.
    Overflow,
    /// One expert takes most tokens.
    Collapse,
    /// Several experts get almost no tokens.
    Underuse,
    /// The under-use noise window ended.
    NoiseOff,
    /// Dev perplexity rising.
    DevPpl,
    /// A step was skipped for a non-finite loss or gradient.
    Nonfinite,
}

/// What a breaker decided at a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakerAction {
    /// Optimiser step (or eval step) it fired at.
    pub step: u64,
    /// Which breaker.
    pub breaker: BreakerKind,
    /// The numbers that triggered it.
    pub reason: String,
    /// Knob changes, in order (empty when the knobs are already at their limits).
    pub changes: Vec<KnobChange>,
    /// Roll back to the newest complete checkpoint, then apply `changes` on top.
    pub rollback: bool,
}

impl BreakerAction {
    /// Sets every changed knob to its `to` value.
    pub fn apply(&self, knobs: &mut RouterKnobs) {
        for c in &self.changes {
            *c.knob.slot(knobs) = c.to;
        }
    }
}
