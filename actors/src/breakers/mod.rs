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

//!
//! Files: `config` (thresholds and windows), `knobs` (what breakers move and the actions they
//! return), `state` (the serialisable memory), this file (the policies), `tests` (table-driven).

mod config;
mod knobs;
mod state;

pub use config::{BreakerConfig, BreakerConfigError};
pub use knobs::{
    BreakerAction, BreakerKind, Knob, KnobChange, RouterKnobs, CAPACITY_RANGE, LB_COEF_RANGE, LR_SCALE_RANGE,
    NOISE_RANGE, TEMPERATURE_RANGE,
};
pub use state::{BreakerState, NoiseWindow, PplState, Streak};

use kernels_cpu::moe::RouterStats;
use serde::{Deserialize, Serialize};

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
fn due(runs: &[Streak], window: usize) -> Option<(usize, &Streak)> {
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
            runs.resize(layers.len(), Streak::default());
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
        let held = |runs: &[Streak], w: usize| runs.iter().filter(|r| r.len >= w.max(1)).count();
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
        runs.iter_mut().for_each(|r| *r = Streak::default());
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
