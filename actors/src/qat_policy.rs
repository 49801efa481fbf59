//! P4 (staged QAT) as pure parts, metrics in and decisions out: the `qat` section of the phase
//! config (stages Q8 -> Q6 -> Q5 with token budgets, parsed strictly: an unknown stage type is
//! an error naming the field), the stage a token count falls in, the EMA decay schedule, the
//! attention V/O-Q8 gate and the QAT-regression breaker. Deltas are percentage points of an eval
//! metric against the best pre-QAT evaluation (negative: worse). Nothing here touches files.
//!
//! The `p4` stage ([`crate::p4_stage`]) drives them.

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};

/// The format a stage trains the masked tensors in (the mask's K-quant types are replaced by it;
/// rows that cannot take it fall back as llama-quantize does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QatStageType {
    /// Q8_0.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// Q6_K.
    #[serde(rename = "q6_k")]
    Q6K,
    /// Q5_K.
    #[serde(rename = "q5_k")]
    Q5K,
}

/// One stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QatStage {
    /// Format trained.
    #[serde(rename = "type")]
    pub ty: QatStageType,
    /// Token budget.
    pub tokens: u64,
}

/// The V/O-Q8 gate (seed plan: after 0.3B tokens at Q5, medical >= -1.0 pp and general >= -0.5 pp).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoGateConfig {
    /// Tokens at Q5 before the gate is considered.
    pub after_tokens: u64,
    /// Least medical delta (pp) to enable V/O at Q8.
    pub medical_pp: f64,
    /// Least general delta (pp).
    pub general_pp: f64,
    /// Tokens trained with V/O at Q8 before the keep-or-revert evaluation.
    pub trial_tokens: u64,
}

/// The QAT-regression breaker (seed plan: Q5 more than 1.5 pp below the best pre-QAT for 3
/// evaluations -> roll the stage back, +0.05B tokens, recalibrate; again -> ship pre-QAT too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QatBreakerConfig {
    /// Regression (pp, positive) that counts.
    pub threshold_pp: f64,
    /// Consecutive regressed evaluations that fire.
    pub evals: u32,
    /// Tokens added to the stage on a rollback.
    pub extra_tokens: u64,
    /// Rollbacks before giving up (then the best pre-QAT ships beside the QAT model).
    pub max_rollbacks: u32,
}

/// The `qat` section of a phase config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QatPhaseConfig {
    /// Mask file (GGUF rules shared with `moe-cli export gguf --mask`).
    pub mask: String,
    /// Values per learnable step.
    pub group: usize,
    /// Stages in order.
    pub stages: Vec<QatStage>,
    /// Learning rate of the steps and mins relative to the weights' (no weight decay on them).
    pub scale_lr_mult: f32,
    /// Largest EMA decay (timm warmup `1 - (1 + t)^-power` below it); 0 disables the EMA.
    pub ema_decay: f64,
    /// Power of the EMA warmup.
    pub ema_power: f64,
    /// Clip ratios of the per-group MSE search at calibration (1.0 alone: min-max).
    pub clip_ratios: Vec<f32>,
    /// The weights train with the steps and mins (LSQ); false: only the steps and mins train
    /// (EfficientQAT's E2E-QP), the weights stay the pre-QAT model's.
    #[serde(default = "train_weights_default")]
    pub train_weights: bool,
    /// GPTQ's choice of codes on each stage's grid once its steps and mins are set (None: the
    /// codes round to nearest).
    #[serde(default)]
    pub gptq: Option<QatGptqConfig>,
    /// The V/O gate (None: off).
    #[serde(default)]
    pub vo_gate: Option<VoGateConfig>,
    /// The regression breaker.
    pub breaker: QatBreakerConfig,
    /// QAT tokens between checkpoints + subset evaluations, and between the stop-anytime exports
    /// of a Q5 stage (the seed plan's 0.1B, scaled per preset).
    pub export_every: u64,
    /// Full evaluations.
    pub full_evals: FullEvalConfig,
    /// The higher learning rate early in each stage.
    pub early_lr: EarlyLrConfig,
}

fn train_weights_default() -> bool {
    true
}

/// The Hessian-aware part of a stage's calibration (`model::qat::gptq_on_qat_grid`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QatGptqConfig {
    /// Calibration rows (of the phase's `seq_len`, from the phase's training mix).
    pub sequences: usize,
    /// Routed experts with fewer calibration tokens round to nearest (default: hidden size / 4).
    #[serde(default)]
    pub min_expert_tokens: Option<usize>,
    /// Columns in order of descending Hessian diagonal (default: in order).
    #[serde(default)]
    pub act_order: bool,
    /// Relative damping of the Hessian (default: GPTQ's 0.01).
    #[serde(default)]
    pub damp: Option<f64>,
    /// Domain weights of the calibration rows (default: the phase's `mix.weights`).
    #[serde(default)]
    pub mix: Option<std::collections::BTreeMap<String, f64>>,
}

/// Full evaluations at these QAT token counts, then every `every` tokens after the last (seed
/// plan: 0.3B and 0.4B, then every 0.2B).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullEvalConfig {
    /// Token counts of the first full evaluations (increasing).
    pub at: Vec<u64>,
    /// Tokens between full evaluations after the last of `at` (0: none).
    pub every: u64,
}

/// The learning rate times `mult` for the first `frac` of every stage (seed plan: x1.25, 20%).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyLrConfig {
    /// Factor.
    pub mult: f32,
    /// Fraction of the stage's tokens.
    pub frac: f64,
}

/// Whether going from `prev` to `now` tokens crosses a positive multiple of `every`.
pub fn crosses(prev: u64, now: u64, every: u64) -> bool {
    every > 0 && now / every > prev / every
}

impl QatPhaseConfig {
    /// Parses the `qat` section (`source` names the file in errors; fields by path).
    pub fn from_value(v: serde_json::Value, source: &str) -> Result<Self> {
        let c: QatPhaseConfig = serde_path_to_error::deserialize(v)
            .map_err(|e| EngineError::config(source, format!("field `qat.{}`: {}", e.path(), e.inner())))?;
        c.validate(source)?;
        Ok(c)
    }

    /// Checks the values (`source` names the file).
    pub fn validate(&self, source: &str) -> Result<()> {
        let bad = |f: &str, msg: &str| Err(EngineError::config(source, format!("field `qat.{f}`: {msg}")));
        if self.stages.is_empty() {
            return bad("stages", "at least one stage");
        }
        if let Some(i) = self.stages.iter().position(|s| s.tokens == 0) {
            return bad(&format!("stages[{i}].tokens"), "must be positive");
        }
        if self.group == 0 || !self.group.is_multiple_of(32) || !256usize.is_multiple_of(self.group) {
            return bad("group", "must be 32, 64, 128 or 256 (whole sub-blocks, dividing a K-quant super-block)");
        }
        if !self.scale_lr_mult.is_finite() || self.scale_lr_mult <= 0.0 {
            return bad("scale_lr_mult", "must be positive");
        }
        if !(0.0..1.0).contains(&self.ema_decay) || self.ema_power.is_nan() || self.ema_power <= 0.0 {
            return bad("ema_decay", "decay in [0, 1) and a positive ema_power");
        }
        if self.clip_ratios.is_empty() || self.clip_ratios.iter().any(|r| r.is_nan() || *r <= 0.0 || *r > 1.0) {
            return bad("clip_ratios", "ratios in (0, 1]");
        }
        if self.gptq.as_ref().is_some_and(|g| g.sequences == 0) {
            return bad("gptq.sequences", "must be positive");
        }
        if self.gptq.as_ref().and_then(|g| g.damp).is_some_and(|d| !(d.is_finite() && d > 0.0)) {
            return bad("gptq.damp", "must be positive");
        }
        if self.breaker.evals == 0 || self.breaker.threshold_pp.is_nan() || self.breaker.threshold_pp <= 0.0 {
            return bad("breaker", "threshold_pp > 0 and evals >= 1");
        }
        if self.export_every == 0 {
            return bad("export_every", "must be positive");
        }
        if self.full_evals.at.windows(2).any(|w| w[0] >= w[1]) {
            return bad("full_evals.at", "token counts must increase");
        }
        if !(self.early_lr.mult.is_finite() && self.early_lr.mult > 0.0 && (0.0..=1.0).contains(&self.early_lr.frac)) {
            return bad("early_lr", "mult > 0 and frac in [0, 1]");
        }
        Ok(())
    }

    /// The stages' budgets must fit the phase's `tokens` (the cap, rollbacks and the V/O trial
    /// included up to it).
    pub fn check_budget(&self, cap: u64, source: &str) -> Result<()> {
        let sum: u64 = self.stages.iter().map(|s| s.tokens).sum();
        if sum > cap {
            return Err(EngineError::config(
                source,
                format!("field `qat.stages`: {sum} tokens in all, above the phase's cap `tokens` {cap}"),
            ));
        }
        Ok(())
    }

    /// Whether a full evaluation falls between `prev` and `now` QAT tokens.
    pub fn full_eval_due(&self, prev: u64, now: u64) -> bool {
        if self.full_evals.at.iter().any(|&a| prev < a && a <= now) {
            return true;
        }
        let last = self.full_evals.at.last().copied().unwrap_or(0);
        now > last && crosses(prev.max(last) - last, now - last, self.full_evals.every)
    }

    /// The learning-rate factor `tokens` into a stage of `budget` tokens.
    pub fn early_lr_mult(&self, tokens: u64, budget: u64) -> f32 {
        if (tokens as f64) < self.early_lr.frac * budget as f64 {
            self.early_lr.mult
        } else {
            1.0
        }
    }

    /// `(stage index, tokens into it)` after `tokens` QAT tokens; None when every stage is done.
    pub fn stage_at(&self, tokens: u64) -> Option<(usize, u64)> {
        let mut start = 0;
        for (i, s) in self.stages.iter().enumerate() {
            if tokens < start + s.tokens {
                return Some((i, tokens - start));
            }
            start += s.tokens;
        }
        None
    }
}

/// EMA decay at update `t` (0-based): timm's warmup `1 - (1 + t)^-power`, capped at `max`.
/// Reset `t` at every format change (averages of different grids mean nothing).
pub fn ema_decay(t: u64, max: f64, power: f64) -> f64 {
    (1.0 - (1.0 + t as f64).powf(-power)).clamp(0.0, max)
}

/// `avg = d · avg + (1 − d) · x` (torch `lerp_(x, 1 − d)`).
pub fn ema_update(avg: &mut [f32], x: &[f32], d: f64) {
    for (a, &v) in avg.iter_mut().zip(x) {
        *a = (d * *a as f64 + (1.0 - d) * v as f64) as f32;
    }
}

/// The V/O gate's decision.
#[derive(Clone, Debug, PartialEq)]
pub enum VoDecision {
    /// Not yet (fewer Q5 tokens than the gate waits for).
    Wait,
    /// Train attention V/O at Q8 for the trial.
    Enable,
    /// Keep V/O unquantized; the reason is logged.
    Skip(String),
}

/// The V/O gate after `q5_tokens` at Q5 with deltas (pp) vs the best pre-QAT evaluation.
pub fn vo_gate(c: &VoGateConfig, q5_tokens: u64, medical_pp: f64, general_pp: f64) -> VoDecision {
    if q5_tokens < c.after_tokens {
        return VoDecision::Wait;
    }
    let mut why = Vec::new();
    if medical_pp.is_nan() || medical_pp < c.medical_pp {
        why.push(format!("medical {medical_pp:+.2} pp < {:+.2} pp", c.medical_pp));
    }
    if general_pp.is_nan() || general_pp < c.general_pp {
        why.push(format!("general {general_pp:+.2} pp < {:+.2} pp", c.general_pp));
    }
    if why.is_empty() {
        VoDecision::Enable
    } else {
        VoDecision::Skip(why.join(", "))
    }
}

/// After the V/O trial: keep it when neither domain got worse than before the trial.
pub fn vo_keep(before: (f64, f64), after: (f64, f64)) -> bool {
    after.0 >= before.0 && after.1 >= before.1
}

/// What the QAT-regression breaker asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QatAction {
    /// Nothing.
    None,
    /// Roll the stage back to its start, add `extra_tokens` to it, recalibrate per block.
    RollbackStage {
        /// Tokens added to the stage.
        extra_tokens: u64,
    },
    /// Regressed after every rollback: ship the best pre-QAT model beside the QAT one.
    ShipPreQat,
}

/// The breaker's memory (saved in checkpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QatBreakerState {
    /// Consecutive regressed evaluations.
    pub streak: u32,
    /// Rollbacks done.
    pub rollbacks: u32,
    /// True once it gave up.
    pub gave_up: bool,
}

/// Observes one evaluation at Q5: `worst_pp` is the worse of the medical and general deltas (pp).
pub fn observe_qat_eval(c: &QatBreakerConfig, s: &mut QatBreakerState, worst_pp: f64) -> QatAction {
    if s.gave_up {
        return QatAction::None;
    }
    if worst_pp < -c.threshold_pp || worst_pp.is_nan() {
        s.streak += 1;
    } else {
        s.streak = 0;
    }
    if s.streak < c.evals {
        return QatAction::None;
    }
    s.streak = 0;
    if s.rollbacks < c.max_rollbacks {
        s.rollbacks += 1;
        QatAction::RollbackStage { extra_tokens: c.extra_tokens }
    } else {
        s.gave_up = true;
        QatAction::ShipPreQat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn section() -> serde_json::Value {
        json!({
            "mask": "configs/qat/experts-shared-q5.json", "group": 64,
            "stages": [{"type": "q8_0", "tokens": 100}, {"type": "q6_k", "tokens": 100}, {"type": "q5_k", "tokens": 300}],
            "scale_lr_mult": 10.0, "ema_decay": 0.999, "ema_power": 0.75, "clip_ratios": [1.0, 0.9, 0.8],
            "vo_gate": {"after_tokens": 300, "medical_pp": -1.0, "general_pp": -0.5, "trial_tokens": 100},
            "breaker": {"threshold_pp": 1.5, "evals": 3, "extra_tokens": 50, "max_rollbacks": 1},
            "export_every": 100, "full_evals": {"at": [300, 400], "every": 200},
            "early_lr": {"mult": 1.25, "frac": 0.2}
        })
    }

    #[test]
    fn config_parses_and_refuses_bad_stages() {
        let c = QatPhaseConfig::from_value(section(), "p4.json").unwrap();
        assert_eq!(c.stages[2].ty, QatStageType::Q5K);
        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("unknown type", json!([{"type": "q4_k", "tokens": 1}]), "unknown variant `q4_k`"),
            ("zero tokens", json!([{"type": "q8_0", "tokens": 0}]), "stages[0].tokens"),
            ("no stages", json!([]), "qat.stages"),
            ("unknown key", json!([{"type": "q8_0", "tokens": 1, "bits": 8}]), "unknown field `bits`"),
        ];
        for (what, stages, want) in cases {
            let mut v = section();
            v["stages"] = stages.clone();
            let e = QatPhaseConfig::from_value(v, "p4.json").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("p4.json"), "{what}: {e}");
        }
        let mut v = section();
        v["group"] = json!(48);
        assert!(QatPhaseConfig::from_value(v, "p4.json").unwrap_err().to_string().contains("qat.group"));
        // GPTQ calibration: off unless given, then checked.
        assert_eq!(c.gptq, None);
        let mut v = section();
        v["gptq"] = json!({"sequences": 64});
        let g = QatPhaseConfig::from_value(v.clone(), "p4.json").unwrap().gptq.unwrap();
        assert_eq!((g.sequences, g.min_expert_tokens, g.act_order), (64, None, false));
        v["gptq"] = json!({"sequences": 0});
        assert!(QatPhaseConfig::from_value(v.clone(), "p4.json")
            .unwrap_err()
            .to_string()
            .contains("qat.gptq.sequences"));
        v["gptq"] = json!({"sequences": 4, "damp": 0.0});
        assert!(QatPhaseConfig::from_value(v.clone(), "p4.json").unwrap_err().to_string().contains("qat.gptq.damp"));
        v["gptq"] = json!({"sequences": 4, "mix": {"general": 1.0}});
        let g = QatPhaseConfig::from_value(v.clone(), "p4.json").unwrap().gptq.unwrap();
        assert_eq!(g.mix.unwrap()["general"], 1.0);
        v["gptq"] = json!({"sequences": 4, "blocks": 8});
        let e = QatPhaseConfig::from_value(v, "p4.json").unwrap_err().to_string();
        assert!(e.contains("qat.gptq") && e.contains("unknown field `blocks`"), "{e}");
    }

    #[test]
    fn stages_follow_their_budgets() {
        let c = QatPhaseConfig::from_value(section(), "p4.json").unwrap();
        for (tokens, want) in
            [(0, Some((0, 0))), (99, Some((0, 99))), (100, Some((1, 0))), (499, Some((2, 299))), (500, None)]
        {
            assert_eq!(c.stage_at(tokens), want, "{tokens}");
        }
    }

    #[test]
    fn schedules_of_evaluations_and_the_early_learning_rate() {
        let c = QatPhaseConfig::from_value(section(), "p4.json").unwrap();
        let full: Vec<u64> = (1..=12).map(|i| i * 50).filter(|&t| c.full_eval_due(t - 50, t)).collect();
        assert_eq!(full, [300, 400, 600]);
        assert!(crosses(90, 100, 100) && !crosses(100, 150, 100) && crosses(150, 250, 100) && !crosses(0, 5, 0));
        assert_eq!((c.early_lr_mult(0, 100), c.early_lr_mult(19, 100), c.early_lr_mult(20, 100)), (1.25, 1.25, 1.0));
        assert!(c.check_budget(499, "p4.json").unwrap_err().to_string().contains("cap"));
        c.check_budget(500, "p4.json").unwrap();
    }

    #[test]
    fn ema_warms_up_and_averages() {
        assert_eq!(ema_decay(0, 0.999, 0.75), 0.0);
        assert!((ema_decay(15, 0.999, 0.75) - 0.875).abs() < 1e-12);
        assert_eq!(ema_decay(1_000_000, 0.999, 0.75), 0.999);
        let mut avg = vec![1.0f32, 2.0];
        ema_update(&mut avg, &[3.0, 2.0], 0.75);
        assert_eq!(avg, vec![1.5, 2.0]);
    }

    #[test]
    fn vo_gate_table() {
        let c = VoGateConfig { after_tokens: 300, medical_pp: -1.0, general_pp: -0.5, trial_tokens: 100 };
        let cases = [
            (299, 0.0, 0.0, VoDecision::Wait),
            (300, -1.0, -0.5, VoDecision::Enable),
            (400, 0.3, 0.1, VoDecision::Enable),
            (300, -1.2, 0.0, VoDecision::Skip("medical -1.20 pp < -1.00 pp".into())),
            (300, 0.0, -0.6, VoDecision::Skip("general -0.60 pp < -0.50 pp".into())),
        ];
        for (tokens, med, gen, want) in cases {
            assert_eq!(vo_gate(&c, tokens, med, gen), want, "{tokens} {med} {gen}");
        }
        let VoDecision::Skip(why) = vo_gate(&c, 300, f64::NAN, -0.6) else { panic!("NaN must not enable") };
        assert!(why.contains("medical") && why.contains("general"), "{why}");
        assert!(vo_keep((-0.5, -0.2), (-0.4, -0.2)));
        assert!(!vo_keep((-0.5, -0.2), (-0.6, 0.5)));
    }

    #[test]
    fn regression_breaker_table() {
        let c = QatBreakerConfig { threshold_pp: 1.5, evals: 3, extra_tokens: 50, max_rollbacks: 1 };
        let rb = QatAction::RollbackStage { extra_tokens: 50 };
        // (worst delta per eval, the action after each)
        let cases: &[(&[f64], &[QatAction])] = &[
            (&[-2.0, -2.0, -1.0, -2.0], &[QatAction::None, QatAction::None, QatAction::None, QatAction::None]),
            (&[-1.5, -1.5, -1.5], &[QatAction::None, QatAction::None, QatAction::None]),
            (&[-1.6, -2.0, -3.0], &[QatAction::None, QatAction::None, rb.clone()]),
            (
                &[-2.0, -2.0, -2.0, -2.0, -2.0, -2.0, -2.0],
                &[
                    QatAction::None,
                    QatAction::None,
                    rb.clone(),
                    QatAction::None,
                    QatAction::None,
                    QatAction::ShipPreQat,
                    QatAction::None,
                ],
            ),
            (&[f64::NAN, f64::NAN, f64::NAN], &[QatAction::None, QatAction::None, rb.clone()]),
        ];
        for (evals, want) in cases {
            let mut s = QatBreakerState::default();
            let got: Vec<QatAction> = evals.iter().map(|&d| observe_qat_eval(&c, &mut s, d)).collect();
            assert_eq!(&got, want, "{evals:?}");
        }
    }
}
