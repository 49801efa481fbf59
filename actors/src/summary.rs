//! What a finished training stage reports (`summary.json`): steps, tokens, losses, the final
//! evaluation, router statistics, breaker actions and the phase's own data counts.

use crate::evaluator::EvalRecord;
use crate::trainer::LoggedAction;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a finished training stage reports (`summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseSummary {
    /// Phase name.
    pub phase: String,
    /// Optimiser steps.
    pub steps: u64,
    /// Tokens trained on.
    pub tokens: u64,
    /// Objective of the last step.
    pub final_loss: f32,
    /// Dev perplexity per domain (final evaluation).
    pub dev_ppl: BTreeMap<String, f64>,
    /// MCQ accuracy (log-likelihood sum) per eval set.
    pub mcq_accuracy: BTreeMap<String, f64>,
    /// MCQ accuracy with per-token normalised scores.
    pub mcq_accuracy_norm: BTreeMap<String, f64>,
    /// Chance level per eval set.
    pub mcq_chance: BTreeMap<String, f64>,
    /// Router statistics per MoE layer at the last step.
    pub router: Vec<crate::trainer::LayerRouter>,
    /// Breaker actions.
    pub breaker_actions: Vec<LoggedAction>,
    /// Steps skipped by the non-finite guard.
    pub nonfinite_skipped: u64,
    /// Artifacts (name -> path).
    pub artifacts: BTreeMap<String, String>,
    /// Wall-clock seconds of this stage in this process.
    pub seconds: f64,
    /// Operand precision of the phase's GEMMs (`f32`, `bf16`; summaries written before it
    /// existed were f32).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// The GEMM backend that ran them on the machine that built the stage (e.g. `amx-bf16`,
    /// `bf16-emulated`; empty in older summaries).
    #[serde(default)]
    pub gemm_backend: String,
    /// What the phase's own data came to (p2: conversations, rows, trained tokens).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, f64>,
    /// Named experts (Mode B): held-out routing accuracy per mapped domain (final evaluation).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_routing: BTreeMap<String, crate::eval::NamedRouting>,
    /// P4: the model it trained from, the pre-QAT and PTQ-Q5 references, every stop-anytime
    /// export, the V/O gate's and the regression breaker's decisions with their reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qat: Option<serde_json::Value>,
}

fn f32_name() -> String {
    autograd::Precision::F32.name().to_string()
}

/// The summary of a finished phase.
pub fn summarise(
    phase: &str,
    s: &crate::trainer::TrainerState,
    eval: Option<&EvalRecord>,
    artifacts: BTreeMap<String, String>,
    seconds: f64,
) -> PhaseSummary {
    let mut summary = PhaseSummary {
        phase: phase.to_string(),
        steps: s.step,
        tokens: s.tokens,
        final_loss: s.last.as_ref().map_or(f32::NAN, |r| r.loss),
        dev_ppl: BTreeMap::new(),
        mcq_accuracy: BTreeMap::new(),
        mcq_accuracy_norm: BTreeMap::new(),
        mcq_chance: BTreeMap::new(),
        router: s.router.clone(),
        breaker_actions: s.actions.clone(),
        nonfinite_skipped: s.nonfinite_skipped,
        artifacts,
        seconds,
        precision: f32_name(),
        gemm_backend: String::new(),
        data: BTreeMap::new(),
        named_routing: BTreeMap::new(),
        qat: None,
    };
    fill_eval(&mut summary, eval);
    summary
}

/// The summary of a stage that imported a model rather than training it (the base from an HF
/// directory): no steps, its evaluation, and as `final_loss` its mean dev cross-entropy over the
/// domains (no training objective exists).
pub fn imported(phase: &str, eval: &EvalRecord, artifacts: BTreeMap<String, String>, seconds: f64) -> PhaseSummary {
    let ppl: Vec<f64> = eval.dev.per_domain.values().map(|p| p.ppl).collect();
    let mean_ce = ppl.iter().map(|p| p.ln()).sum::<f64>() / ppl.len().max(1) as f64;
    let mut summary = PhaseSummary {
        phase: phase.to_string(),
        steps: 0,
        tokens: 0,
        final_loss: mean_ce as f32,
        dev_ppl: BTreeMap::new(),
        mcq_accuracy: BTreeMap::new(),
        mcq_accuracy_norm: BTreeMap::new(),
        mcq_chance: BTreeMap::new(),
        router: Vec::new(),
        breaker_actions: Vec::new(),
        nonfinite_skipped: 0,
        artifacts,
        seconds,
        precision: f32_name(),
        gemm_backend: String::new(),
        data: BTreeMap::new(),
        named_routing: BTreeMap::new(),
        qat: None,
    };
    fill_eval(&mut summary, Some(eval));
    summary
}

/// The final evaluation's numbers into `summary`.
fn fill_eval(summary: &mut PhaseSummary, eval: Option<&EvalRecord>) {
    if let Some(e) = eval {
        summary.dev_ppl = e.dev.per_domain.iter().map(|(d, p)| (d.clone(), p.ppl)).collect();
        for m in &e.mcq {
            summary.mcq_accuracy.insert(m.set.clone(), m.accuracy);
            summary.mcq_accuracy_norm.insert(m.set.clone(), m.accuracy_norm);
            summary.mcq_chance.insert(m.set.clone(), m.chance);
        }
        summary.named_routing = e.named_routing.clone();
    }
}
