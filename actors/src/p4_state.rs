//! P4's driver state and its checkpoints: what the staged loop must get back to resume bit for
//! bit (stage, budgets, tokens, EMA, breaker and gate memory, exports so far, ledger lines), saved
//! as `p4.json` + `ema.safetensors` beside the trainer's files and QAT state in every p4
//! checkpoint ([`crate::checkpoint::Snapshot::extra`]).

use crate::error::{EngineError, Result};
use crate::qat_eval::QatMeasure;
use crate::qat_policy::QatBreakerState;
use crate::qat_training::QatTraining;
use crate::trainer::Trainer;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Driver state file of a p4 checkpoint.
pub const STATE_FILE: &str = "p4.json";
/// EMA file of a p4 checkpoint (`w`: flat weights, `q`: flat QAT parameters).
pub const EMA_FILE: &str = "ema.safetensors";

/// Where the V/O gate stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoState {
    /// Not decided yet.
    Pending,
    /// Decided against (or off); the reason.
    Skipped(String),
    /// Training V/O at Q8; the deltas (medical, general) before the trial.
    Trial((f64, f64)),
    /// The trial was kept.
    Kept,
    /// The trial was reverted; the reason.
    Reverted(String),
}

/// The driver state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct P4State {
    /// The stage trained (index into the stages; `stages.len()` is the V/O trial).
    pub stage: usize,
    /// Token budget of every stage (a rollback adds to its stage's), the V/O trial last.
    pub budgets: Vec<u64>,
    /// Tokens into the current stage.
    pub stage_tokens: u64,
    /// Optimiser steps into the current stage.
    pub stage_steps: u64,
    /// QAT tokens trained in all (rolled-back ones included).
    pub tokens: u64,
    /// The stage's calibration is done.
    pub calibrated: bool,
    /// The next calibration starts from min-max again (after a rollback) instead of keeping the
    /// clip range.
    pub recalibrate: bool,
    /// EMA updates since the stage started.
    pub ema_t: u64,
    /// The QAT-regression breaker's memory.
    pub breaker: QatBreakerState,
    /// The V/O gate.
    pub vo: VoState,
    /// The best pre-QAT model ships beside the QAT one (the breaker gave up).
    pub ship_pre_qat: bool,
    /// Ledger lines this state covers.
    pub ledger_lines: u64,
    /// The pre-QAT model's measurement at the full evaluation sizes (the reference of the
    /// deltas of full evaluations).
    pub pre: QatMeasure,
    /// Its measurement at the periodic (subset) sizes: a subset evaluation is compared with
    /// this, the same items and sequences, never with the full one. None in a state written
    /// before it existed (then `pre`).
    #[serde(default)]
    pub pre_subset: Option<QatMeasure>,
    /// Its PTQ in the last stage's format (min-max, no training).
    pub ptq: QatMeasure,
    /// Stop-anytime exports so far (summary entries).
    pub exports: Vec<serde_json::Value>,
    /// Gate and breaker decisions so far (summary entries).
    pub events: Vec<serde_json::Value>,
    /// Done (every stage, the trial and the final evaluation).
    pub done: bool,
}

impl P4State {
    /// The pre-QAT measurement a measurement at full (`full`) or periodic sizes compares with.
    pub fn pre_for(&self, full: bool) -> &QatMeasure {
        if full {
            &self.pre
        } else {
            self.pre_subset.as_ref().unwrap_or(&self.pre)
        }
    }
}

/// The EMA of the weights and the QAT parameters (reset at every stage start).
#[derive(Clone, Debug, PartialEq)]
pub struct Ema {
    /// Flat weights.
    pub w: Vec<f32>,
    /// Flat QAT parameters (the order of [`QatTraining::flat_grads`]).
    pub q: Vec<f32>,
}

/// The flat QAT parameters of `q` (tensors in name order, steps then mins).
pub fn flat_qat(q: &QatTraining) -> Vec<f32> {
    let mut out = Vec::new();
    for t in q.state.tensors.values() {
        out.extend_from_slice(&t.step);
        out.extend_from_slice(&t.min);
    }
    out
}

/// `state` with its flat parameters replaced by `flat`.
pub fn with_flat(state: &model::qat::QatState, flat: &[f32]) -> model::qat::QatState {
    let mut s = state.clone();
    let mut at = 0;
    for t in s.tensors.values_mut() {
        let (a, b) = (t.step.len(), t.min.len());
        t.step.copy_from_slice(&flat[at..at + a]);
        t.min.copy_from_slice(&flat[at + a..at + a + b]);
        at += a + b;
    }
    s
}

impl Ema {
    /// The EMA starting at the trainer's current weights and QAT parameters.
    pub fn of(t: &Trainer) -> Ema {
        Ema { w: t.model.params.flat().to_vec(), q: t.qat.as_ref().map(flat_qat).unwrap_or_default() }
    }

    /// One update toward the trainer's values with decay `d`.
    pub fn update(&mut self, t: &Trainer, d: f64) {
        crate::qat_policy::ema_update(&mut self.w, &t.model.params.flat(), d);
        if let Some(q) = &t.qat {
            crate::qat_policy::ema_update(&mut self.q, &flat_qat(q), d);
        }
    }

    /// The EMA model and QAT state (the trainer's architecture and router bias).
    pub fn model(&self, t: &Trainer) -> Result<(model::Qwen3, Option<model::qat::QatState>)> {
        let mut m = t.model.clone();
        let flat = m.params.flat_mut().ok_or_else(|| EngineError::Training("EMA of half-precision weights".into()))?;
        flat.copy_from_slice(&self.w);
        Ok((m, t.qat.as_ref().map(|q| with_flat(&q.state, &self.q))))
    }
}

/// The p4 files of a checkpoint: the driver state and the EMA.
pub fn checkpoint_files(state: &P4State, ema: &Ema) -> Result<Vec<(String, Vec<u8>)>> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| EngineError::Training(e.to_string()))?;
    let (a, b) = ([ema.w.len()], [ema.q.len()]);
    let tensors: Vec<(&str, &[usize], &[f32])> = vec![("w", &a[..], &ema.w[..]), ("q", &b[..], &ema.q[..])];
    let ema = crate::checkpoint::serialize(&tensors, Path::new(EMA_FILE))?;
    Ok(vec![(STATE_FILE.to_string(), json), (EMA_FILE.to_string(), ema)])
}

/// The driver state and EMA of checkpoint directory `dir` (checked against the trainer).
pub fn read_checkpoint_files(dir: &Path, t: &Trainer) -> Result<(P4State, Ema)> {
    let bad = |msg: String| EngineError::Checkpoint { path: dir.to_path_buf(), msg };
    let text = std::fs::read_to_string(dir.join(STATE_FILE))
        .map_err(|e| bad(format!("{STATE_FILE}: {e} (not a p4 checkpoint)")))?;
    let state: P4State = serde_json::from_str(&text).map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
    let r = model::safetensors_io::SafetensorsReader::open(&dir.join(EMA_FILE))?;
    let ema = Ema { w: r.read_f32("w")?, q: r.read_f32("q")? };
    let nq = t.qat.as_ref().map_or(0, |q| crate::qat_training::numel(&q.state));
    if ema.w.len() != t.model.params.numel() || ema.q.len() != nq {
        return Err(bad(format!(
            "{EMA_FILE}: {} weights and {} QAT values for a model of {} and {nq}",
            ema.w.len(),
            ema.q.len(),
            t.model.params.numel()
        )));
    }
    Ok((state, ema))
}
