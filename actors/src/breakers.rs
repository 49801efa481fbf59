//! Circuit breakers: pure policies from router statistics and dev perplexity to knob changes.
//!
//! [`Breakers`] holds a phase's [`BreakerConfig`] and the serialisable memory of the policies
//! ([`BreakerState`], saved in checkpoints). Each `observe_*` call takes the current
//! [`RouterKnobs`] and returns the [`BreakerAction`]s that fire, each listing its knob changes
//! `from -> to` (already clamped); the caller applies them in order with [`BreakerAction::apply`]
//! and logs them with the checkpoint to roll back to. Nothing here touches files, clocks or threads.
//!
//! Policies (windows count optimiser steps; a preset scales them in its config):
//! - **overflow**: some layer's `overflow_frac > overflow_frac` on every step of `overflow_window`
//!   -> capacity factor `+capacity_step`, temperature `-temp_step`.
//! - **collapse**: some layer's largest expert share `> collapse_share` on every step of
//!   `collapse_window` -> lb coefficient `+lb_step`, temperature `-temp_step`.
//! - **underuse**: some layer has `>= underuse_experts` experts below `underuse_share` on every step of
//!   `underuse_window` -> temperature `+temp_step`, router noise `noise_value` for `noise_steps`, after
//!   which a `noise_off` action restores the previous noise.
//! - **dev_ppl**: the medical dev perplexity rises on `ppl_rising_evals` consecutive evals -> LR scale
//!   `x lr_factor`; if it rises on as many evals again after that halving -> roll back (the action also
//!   carries a further LR cut, to be applied on top of the restored checkpoint so the replay differs).
//! - **nonfinite**: a skipped step with a non-finite loss or gradient is logged (no knob change).
//!
//! A layer "holds" a condition on a step independently of the others; the window must be held by one
//! layer on consecutive steps. A layer that holds the collapse condition does not count as under-used.
//! After a breaker fires its runs restart, and it cannot fire again until `cooldown` steps have passed.

use kernels_cpu::moe::RouterStats;
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

    fn slot(self, knobs: &mut RouterKnobs) -> &mut f32 {
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

/// Applies `action` to `knobs` (same as [`BreakerAction::apply`]).
pub fn apply(knobs: &mut RouterKnobs, action: &BreakerAction) {
    action.apply(knobs);
}

/// Consecutive steps one layer has held a condition, and the least extreme value over them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Consecutive steps held (0: not holding).
    pub len: usize,
    /// Least extreme value seen during the run (min overflow, min top share, min under-used count).
    pub weakest: f32,
}

impl Run {
    fn observe(&mut self, value: Option<f32>) {
        match value {
            Some(v) if self.len == 0 => *self = Run { len: 1, weakest: v },
            Some(v) => *self = Run { len: self.len + 1, weakest: self.weakest.min(v) },
            None => *self = Run::default(),
        }
    }
}

/// Noise switched on by the under-use breaker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseWindow {
    /// First step at which it is switched off.
    pub until: u64,
    /// Noise to restore.
    pub restore: f32,
}

/// Memory of the dev-PPL breaker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PplState {
    /// Previous eval's perplexity (`f64::MAX` stands for a non-finite one).
    #[serde(serialize_with = "exact::ser_opt", deserialize_with = "exact::de_opt")]
    pub last: Option<f64>,
    /// Consecutive rising evals since the last reset.
    pub rising: usize,
    /// Step of the LR halving being watched (rising again on as many evals rolls back).
    pub halved_at: Option<u64>,
    /// The evals of the current rising streak, oldest first (for the reason).
    #[serde(serialize_with = "exact::ser_vec", deserialize_with = "exact::de_vec")]
    pub streak: Vec<f64>,
}

/// f64 state as its shortest round-trip text: serde_json's default float parser may be one ulp off,
/// which would make a restored state compare differently (resume must be bit-exact). Plain JSON
/// numbers are accepted when reading.
mod exact {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Num(f64),
    }

    fn parse<E: Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Text(s) => s.parse().map_err(|_| E::custom(format!("not a number: {s:?}"))),
            Repr::Num(v) => Ok(v),
        }
    }

    pub fn ser_opt<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|x| format!("{x:?}")).serialize(s)
    }

    pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Repr>::deserialize(d)?.map(parse).transpose()
    }

    pub fn ser_vec<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().serialize(s)
    }

    pub fn de_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Repr>::deserialize(d)?.into_iter().map(parse).collect()
    }
}

/// Serialisable memory of all breakers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BreakerState {
    /// Overflow run per layer.
    pub overflow: Vec<Run>,
    /// Collapse run per layer.
    pub collapse: Vec<Run>,
    /// Under-use run per layer.
    pub underuse: Vec<Run>,
    /// Step each breaker last fired at (overflow, collapse, underuse).
    pub last_fired: [Option<u64>; 3],
    /// Active noise window.
    pub noise: Option<NoiseWindow>,
    /// Dev-PPL memory.
    pub ppl: PplState,
}

/// The breakers of one phase: config plus state (both serialised into checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breakers {
    /// Thresholds and windows.
    pub config: BreakerConfig,
    /// Memory.
    pub state: BreakerState,
}

/// Builds actions against a working copy of the knobs, so several actions of one call chain.
struct Builder {
    knobs: RouterKnobs,
    actions: Vec<BreakerAction>,
}

impl Builder {
    fn change(&mut self, knob: Knob, to: f32, out: &mut Vec<KnobChange>) {
        let (lo, hi) = knob.range();
        let cur = knob.get(&self.knobs);
        let from = if cur.is_finite() { cur } else { lo };
        let to = if to.is_finite() { to.clamp(lo, hi) } else { from.clamp(lo, hi) };
        if to != cur {
            out.push(KnobChange { knob, from, to });
            *knob.slot(&mut self.knobs) = to;
        }
    }

    /// Adds an action whose changes are `(knob, f(current))`, each clamped to the knob's range.
    fn push(
        &mut self,
        step: u64,
        breaker: BreakerKind,
        reason: String,
        rollback: bool,
        ops: &[(Knob, &dyn Fn(f32) -> f32)],
    ) {
        let mut changes = Vec::new();
        for (knob, f) in ops {
            let cur = knob.get(&self.knobs);
            let base = if cur.is_finite() { cur } else { knob.range().0 };
            self.change(*knob, f(base), &mut changes);
        }
        let reason = if changes.is_empty() && !ops.is_empty() { reason + " (knobs at their limits)" } else { reason };
        self.actions.push(BreakerAction { step, breaker, reason, changes, rollback });
    }
}

/// Largest share of a layer and its expert (finite shares only).
fn top_share(s: &RouterStats) -> Option<(usize, f32)> {
    s.share.iter().copied().enumerate().filter(|(_, v)| v.is_finite()).max_by(|a, b| a.1.total_cmp(&b.1))
}

fn under_used(s: &RouterStats, below: f32) -> usize {
    s.share.iter().filter(|v| v.is_finite() && **v < below).count()
}

/// The layer with the longest run if it reaches `window` (ties: the lowest layer).
fn due(runs: &[Run], window: usize) -> Option<(usize, &Run)> {
    let (layer, run) = runs.iter().enumerate().rev().max_by_key(|(_, r)| r.len)?;
    (run.len >= window.max(1)).then_some((layer, run))
}

impl Breakers {
    /// Fresh breakers for a phase.
    pub fn new(config: BreakerConfig) -> Breakers {
        Breakers { config, state: BreakerState::default() }
    }

    fn cooled(&self, i: usize, step: u64) -> bool {
        self.state.last_fired[i].is_none_or(|last| step >= last.saturating_add(self.config.cooldown as u64))
    }

    /// Observes one optimiser step's router statistics (one entry per MoE layer) and returns the
    /// actions that fire, computed against `knobs` (apply them in order).
    pub fn observe_step(&mut self, step: u64, layers: &[RouterStats], knobs: &RouterKnobs) -> Vec<BreakerAction> {
        let mut b = Builder { knobs: knobs.clone(), actions: Vec::new() };
        if let Some(n) = self.state.noise.clone() {
            if step >= n.until {
                self.state.noise = None;
                let reason = format!("router noise window ended at step {}; noise back to {}", n.until, n.restore);
                b.push(step, BreakerKind::NoiseOff, reason, false, &[(Knob::RouterNoise, &|_| n.restore)]);
            }
        }
        if !self.config.enabled {
            return b.actions;
        }
        let c = self.config.clone();
        let st = &mut self.state;
        for runs in [&mut st.overflow, &mut st.collapse, &mut st.underuse] {
            runs.resize(layers.len(), Run::default());
        }
        for (l, s) in layers.iter().enumerate() {
            let o = s.overflow_frac;
            st.overflow[l].observe((o.is_finite() && o > c.overflow_frac).then_some(o));
            let collapsed = top_share(s).map(|t| t.1).filter(|&v| v > c.collapse_share);
            st.collapse[l].observe(collapsed);
            // A collapsed layer's idle experts are the collapse's doing: the two remedies move the
            // temperature in opposite directions, so only the collapse breaker counts that layer.
            let n = under_used(s, c.underuse_share);
            st.underuse[l].observe((collapsed.is_none() && n >= c.underuse_experts.max(1)).then_some(n as f32));
        }
        let nl = layers.len();
        let held = |runs: &[Run], w: usize| runs.iter().filter(|r| r.len >= w.max(1)).count();
        let (t, cs, lb) = (c.temp_step, c.capacity_step, c.lb_step);

        if let Some((l, run)) = due(&self.state.overflow, c.overflow_window) {
            if self.cooled(0, step) {
                let reason = format!(
                    concat!(
                        "layer {l}: overflow_frac > {} on each of the last {} steps ",
                        "(min {:.4}, now {:.4}; {} of {nl} layers)"
                    ),
                    c.overflow_frac,
                    run.len,
                    run.weakest,
                    layers[l].overflow_frac,
                    held(&self.state.overflow, c.overflow_window),
                    l = l,
                    nl = nl,
                );
                let ops: [(Knob, &dyn Fn(f32) -> f32); 2] =
                    [(Knob::CapacityFactor, &|v| v + cs), (Knob::Temperature, &|v| v - t)];
                b.push(step, BreakerKind::Overflow, reason, false, &ops);
                self.fired(0, step);
            }
        }
        if let Some((l, run)) = due(&self.state.collapse, c.collapse_window) {
            if self.cooled(1, step) {
                let (e, share) = top_share(&layers[l]).unwrap_or((0, f32::NAN));
                let reason = format!(
                    concat!(
                        "layer {l}: top expert share > {} on each of the last {} steps ",
                        "(min {:.3}, now expert {e} at {share:.3}; {} of {nl} layers)"
                    ),
                    c.collapse_share,
                    run.len,
                    run.weakest,
                    held(&self.state.collapse, c.collapse_window),
                    l = l,
                    nl = nl,
                    e = e,
                    share = share,
                );
                let ops: [(Knob, &dyn Fn(f32) -> f32); 2] =
                    [(Knob::LbCoef, &|v| v + lb), (Knob::Temperature, &|v| v - t)];
                b.push(step, BreakerKind::Collapse, reason, false, &ops);
                self.fired(1, step);
            }
        }
        if let Some((l, run)) = due(&self.state.underuse, c.underuse_window) {
            if self.cooled(2, step) {
                let low: Vec<usize> = (layers[l].share.iter().enumerate())
                    .filter(|(_, v)| v.is_finite() && **v < c.underuse_share)
                    .map(|(e, _)| e)
                    .collect();
                let reason = format!(
                    concat!(
                        "layer {l}: >= {} experts below {} share on each of the last {} steps ",
                        "(min {}, now experts {low:?}; {} of {nl} layers)"
                    ),
                    c.underuse_experts,
                    c.underuse_share,
                    run.len,
                    run.weakest,
                    held(&self.state.underuse, c.underuse_window),
                    l = l,
                    nl = nl,
                    low = low,
                );
                let noise = c.noise_value;
                let (warmer, noisy) = (|v: f32| v + t, |v: f32| v.max(noise));
                let mut ops: Vec<(Knob, &dyn Fn(f32) -> f32)> = vec![(Knob::Temperature, &warmer)];
                if c.noise_steps > 0 && noise > 0.0 {
                    ops.push((Knob::RouterNoise, &noisy));
                    let restore = self.state.noise.as_ref().map_or(b.knobs.router_noise, |n| n.restore);
                    self.state.noise = Some(NoiseWindow { until: step + c.noise_steps as u64, restore });
                }
                b.push(step, BreakerKind::Underuse, reason, false, &ops);
                self.fired(2, step);
            }
        }
        b.actions
    }

    /// Records that breaker `i` fired: its runs restart and its cooldown begins.
    fn fired(&mut self, i: usize, step: u64) {
        self.state.last_fired[i] = Some(step);
        let runs = match i {
            0 => &mut self.state.overflow,
            1 => &mut self.state.collapse,
            _ => &mut self.state.underuse,
        };
        runs.iter_mut().for_each(|r| *r = Run::default());
    }

    /// Observes one eval's medical dev perplexity (`None`: not measured, ignored).
    pub fn observe_eval(&mut self, step: u64, ppl: Option<f64>, knobs: &RouterKnobs) -> Vec<BreakerAction> {
        let mut b = Builder { knobs: knobs.clone(), actions: Vec::new() };
        let Some(ppl) = ppl else { return b.actions };
        if !self.config.enabled {
            return b.actions;
        }
        let p = &mut self.state.ppl;
        let value = if ppl.is_finite() { ppl } else { f64::MAX };
        let rising = p.last.is_some_and(|last| !ppl.is_finite() || ppl > last);
        if rising {
            p.rising += 1;
        } else {
            *p = PplState { halved_at: None, ..PplState::default() };
        }
        p.last = Some(value);
        p.streak.push(value);
        let n = self.config.ppl_rising_evals.max(1);
        if p.rising < n {
            return b.actions;
        }
        let f = self.config.lr_factor;
        let evals: Vec<String> =
            p.streak.iter().map(|v| if *v == f64::MAX { "non-finite".into() } else { format!("{v:.4}") }).collect();
        let lr: [(Knob, &dyn Fn(f32) -> f32); 1] = [(Knob::LrScale, &|v| v * f)];
        match p.halved_at {
            None => {
                let reason = format!("medical dev PPL rose on {n} consecutive evals: {}", evals.join(" -> "));
                b.push(step, BreakerKind::DevPpl, reason, false, &lr);
                let last = p.last;
                *p = PplState { last, rising: 0, halved_at: Some(step), streak: vec![value] };
            }
            Some(at) => {
                let reason = format!(
                    "medical dev PPL kept rising for {n} more evals after the LR cut at step {at}: {}; roll back",
                    evals.join(" -> ")
                );
                b.push(step, BreakerKind::DevPpl, reason, true, &lr);
                *p = PplState::default();
            }
        }
        b.actions
    }

    /// Observes a step skipped because its loss or gradient norm was not finite (logged, no change).
    pub fn observe_nonfinite(&mut self, step: u64, loss: f32, grad_norm: f32) -> Vec<BreakerAction> {
        if !self.config.enabled {
            return Vec::new();
        }
        let reason = format!("loss {loss}, gradient norm {grad_norm}: update skipped");
        vec![BreakerAction { step, breaker: BreakerKind::Nonfinite, reason, changes: Vec::new(), rollback: false }]
    }
}

#[cfg(test)]
mod tests;
