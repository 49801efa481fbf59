//! Schedules over a phase: cosine learning rate with linear warmup, linear interpolation of
//! router knobs.

use crate::phase::LrConfig;

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

#[cfg(test)]
mod tests {
    use super::*;

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
