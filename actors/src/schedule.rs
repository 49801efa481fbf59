//! Schedules over a phase: cosine learning rate with linear warmup, linear interpolation of
//! router knobs, and the router training settings of a step.

use crate::breakers::RouterKnobs;
use crate::phase::{LrConfig, RouterSchedule};
use model::router_training::RouterTraining;

/// Learning rate of optimiser step `step` (0-based) of `total`: linear warmup from `max/warmup`
/// to `max` over the first `warmup_frac` of the steps, then a cosine from `max` down to `min`.
pub fn lr_at(c: &LrConfig, step: u64, total: u64) -> f32 {
    let total = total.max(1);
    let warmup = ((c.warmup_frac as f64) * total as f64).round() as u64;
    if step < warmup {
        return c.max * (step + 1) as f32 / warmup as f32;
    }
    let decay_steps = (total - warmup).max(1);
    let t = ((step - warmup) as f64 / decay_steps as f64).min(1.0);
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
    (c.min as f64 + (c.max - c.min) as f64 * cos) as f32
}

/// `from` at the start of the phase, `to` at its last step, linear in between.
pub fn linear(from_to: [f32; 2], step: u64, total: u64) -> f32 {
    let t = if total <= 1 { 1.0 } else { (step as f32 / (total - 1) as f32).min(1.0) };
    from_to[0] + (from_to[1] - from_to[0]) * t
}

/// The router training settings of optimiser step `step` (0-based) of `total`: the phase's
/// schedules (`lb` and `temperature` linear over the phase, `z`, expert dropout) with the breakers'
/// moves on top (`knobs` minus the phase-start `base` for the scheduled knobs; capacity and noise
/// are the breakers' values). Temperature is kept in [0.05, 10], the lb weight >= 0.
pub fn router_at(r: &RouterSchedule, knobs: &RouterKnobs, base: &RouterKnobs, step: u64, total: u64) -> RouterTraining {
    RouterTraining {
        temperature: (linear(r.temperature, step, total) + (knobs.temperature - base.temperature)).clamp(0.05, 10.0),
        capacity_factor: Some(knobs.capacity_factor),
        lb_coef: (linear(r.lb, step, total) + (knobs.lb_coef - base.lb_coef)).max(0.0),
        z_coef: r.z,
        expert_dropout: r.expert_dropout,
        noise: knobs.router_noise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_settings_follow_the_schedule_and_the_breakers() {
        let r = RouterSchedule {
            lb: [0.015, 0.01],
            temperature: [0.9, 0.6],
            z: 1e-4,
            capacity: 1.25,
            expert_dropout: 0.05,
            noise: 0.0,
            bias_update_rate: 0.0,
            named_experts: None,
        };
        let base =
            RouterKnobs { capacity_factor: 1.25, temperature: 0.9, lb_coef: 0.015, router_noise: 0.0, lr_scale: 1.0 };
        let first = router_at(&r, &base, &base, 0, 11);
        let want = RouterTraining {
            temperature: 0.9,
            capacity_factor: Some(1.25),
            lb_coef: 0.015,
            z_coef: 1e-4,
            expert_dropout: 0.05,
            noise: 0.0,
        };
        assert_eq!(first, want);
        let last = router_at(&r, &base, &base, 10, 11);
        assert!((last.temperature - 0.6).abs() < 1e-6 && (last.lb_coef - 0.01).abs() < 1e-6, "{last:?}");
        // A breaker raised capacity and lb, lowered the temperature, switched noise on.
        let moved = RouterKnobs { capacity_factor: 1.5, temperature: 0.8, lb_coef: 0.025, router_noise: 0.01, ..base };
        let m = router_at(&r, &moved, &base, 10, 11);
        assert_eq!((m.capacity_factor, m.noise), (Some(1.5), 0.01));
        assert!((m.temperature - 0.5).abs() < 1e-6 && (m.lb_coef - 0.02).abs() < 1e-6, "{m:?}");
        let cold = RouterKnobs { temperature: -5.0, lb_coef: -1.0, ..base };
        let c = router_at(&r, &cold, &base, 0, 11);
        assert_eq!((c.temperature, c.lb_coef), (0.05, 0.0), "clamped");
    }

    #[test]
    fn warmup_then_cosine() {
        let c = LrConfig { max: 1.0, min: 0.1, warmup_frac: 0.05 };
        let total = 100;
        assert!((lr_at(&c, 0, total) - 0.2).abs() < 1e-6, "first warmup step is max/5");
        assert!((lr_at(&c, 4, total) - 1.0).abs() < 1e-6, "warmup ends at max");
        assert!((lr_at(&c, 5, total) - 1.0).abs() < 1e-6, "cosine starts at max");
        let mid = lr_at(&c, 5 + 95 / 2, total);
        assert!((mid - 0.55).abs() < 0.02, "half way is the mean of max and min: {mid}");
        assert!((lr_at(&c, 99, total) - 0.1).abs() < 1e-3, "ends near min");
        for s in 5..99 {
            assert!(lr_at(&c, s + 1, total) <= lr_at(&c, s, total), "monotone after warmup at {s}");
        }
    }

    #[test]
    fn linear_ends() {
        assert_eq!(linear([0.9, 0.6], 0, 11), 0.9);
        assert!((linear([0.9, 0.6], 10, 11) - 0.6).abs() < 1e-6);
        assert!((linear([0.9, 0.6], 5, 11) - 0.75).abs() < 1e-6);
    }
}
