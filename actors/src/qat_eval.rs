//! What P4 measures of a model: the evaluation of its fake-quantized weights (which equal its
//! GGUF export's), the KL divergence of its next-token distribution from the pre-QAT model's on
//! the dev sequences per domain, and the medical / general MCQ accuracies the V/O gate and the
//! QAT-regression breaker compare against the best pre-QAT evaluation (in percentage points).

use crate::error::{EngineError, Result};
use crate::evaluator::{EvalInputs, EvalRecord};
use crate::harness::kl_row;
use data::pack::{batch_of, PackedDataset};
use model::qat::QatState;
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One P4 measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QatMeasure {
    /// Dev PPL per domain, MCQ per set.
    pub eval: EvalRecord,
    /// Mean per-token KL(pre-QAT || this) per dev domain (nats), and `all` pooled.
    pub kl: BTreeMap<String, f64>,
}

impl QatMeasure {
    /// Accuracy (fraction) of MCQ set `set`, NaN when not evaluated.
    pub fn acc(&self, set: &str) -> f64 {
        self.eval.mcq.iter().find(|m| m.set == set).map_or(f64::NAN, |m| m.accuracy)
    }

    /// Medical accuracy: the mean of fact_recall and two_hop.
    pub fn medical(&self) -> f64 {
        (self.acc(data::eval::SET_FACT_RECALL) + self.acc(data::eval::SET_TWO_HOP)) / 2.0
    }

    /// General MCQ accuracy.
    pub fn general(&self) -> f64 {
        self.acc(data::eval::SET_GENERAL)
    }

    /// Mean dev cross-entropy over the domains (lower is better).
    pub fn mean_ce(&self) -> f64 {
        let d = &self.eval.dev.per_domain;
        d.values().map(|p| p.mean_ce).sum::<f64>() / d.len().max(1) as f64
    }

    /// `(medical, general)` deltas in pp against `reference`, minus `penalty_pp`.
    pub fn deltas(&self, reference: &QatMeasure, penalty_pp: f64) -> (f64, f64) {
        (
            100.0 * (self.medical() - reference.medical()) - penalty_pp,
            100.0 * (self.general() - reference.general()) - penalty_pp,
        )
    }
}

/// Which of the raw and the EMA model is kept: the lower mean dev cross-entropy (raw on a tie).
pub fn ema_is_better(raw: &QatMeasure, ema: &QatMeasure) -> bool {
    ema.mean_ce() < raw.mean_ce()
}

/// `model` with its fake-quantized tensors replaced by their fake quantization under `qat`.
pub fn fake_quantized(model: &Qwen3, qat: Option<&QatState>) -> Result<Qwen3> {
    let mut m = model.clone();
    if let Some(q) = qat {
        q.apply(&mut m)?;
    }
    Ok(m)
}

/// The dev sequences an evaluation of `inputs` scores (per domain).
pub fn dev_sequences(inputs: &EvalInputs, last: bool) -> BTreeMap<String, Vec<u64>> {
    let n = if last { inputs.last.0 } else { inputs.periodic.0 };
    inputs
        .dev
        .sequences_by_domain()
        .into_iter()
        .map(|(d, seqs)| {
            let idx = crate::eval::subset_indices(seqs.len(), Some(n.max(1)));
            (d, idx.into_iter().map(|i| seqs[i]).collect())
        })
        .collect()
}

/// Mean per-token `KL(teacher || student)` (tau 1) over the target tokens of `sequences[domain]`,
/// per domain and pooled as `all`.
pub fn kl_per_domain(
    student: &Qwen3,
    teacher: &Qwen3,
    ds: &PackedDataset,
    sequences: &BTreeMap<String, Vec<u64>>,
    batch: usize,
) -> Result<BTreeMap<String, f64>> {
    let v = student.config.vocab_size;
    if teacher.config.vocab_size != v {
        return Err(EngineError::Training(format!(
            "KL to the pre-QAT model: vocabularies of {} and {v}",
            teacher.config.vocab_size
        )));
    }
    let mut out = BTreeMap::new();
    let (mut all_sum, mut all_n) = (0f64, 0u64);
    for (domain, seqs) in sequences {
        let (mut sum, mut n) = (0f64, 0u64);
        for chunk in seqs.chunks(batch.max(1)) {
            let (b, targets) = crate::eval::token_batch_of(batch_of(ds, chunk));
            let zs = student.logits(&b)?;
            let zt = teacher.logits(&b)?;
            for (i, &t) in targets.iter().enumerate() {
                if t < 0 {
                    continue;
                }
                sum += kl_row(&zt[i * v..(i + 1) * v], &zs[i * v..(i + 1) * v]);
                n += 1;
            }
        }
        out.insert(domain.clone(), sum / n.max(1) as f64);
        all_sum += sum;
        all_n += n;
    }
    out.insert("all".to_string(), all_sum / all_n.max(1) as f64);
    Ok(out)
}

/// Measures the fake-quantized `model` (`qat`; None: the model as it is) against `reference`
/// (the pre-QAT model): evaluation (`last`: full sizes) and KL.
pub fn measure(
    model: &Qwen3,
    qat: Option<&QatState>,
    reference: &Qwen3,
    inputs: &EvalInputs,
    step: u64,
    last: bool,
) -> Result<QatMeasure> {
    let m = fake_quantized(model, qat)?;
    let eval = inputs.evaluate(&m, step, last)?;
    let kl = kl_per_domain(&m, reference, &inputs.dev, &dev_sequences(inputs, last), inputs.batch)?;
    Ok(QatMeasure { eval, kl })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{DevReport, DomainPpl, McqReport};

    pub(crate) fn measure_of(fact: f64, two_hop: f64, general: f64, ce: f64) -> QatMeasure {
        let mcq = |set: &str, accuracy: f64| McqReport {
            set: set.into(),
            items: 10,
            accuracy,
            accuracy_norm: accuracy,
            chance: 0.25,
        };
        let mut dev = DevReport::default();
        dev.per_domain.insert("medical".into(), DomainPpl { tokens: 10, mean_ce: ce, ppl: ce.exp() });
        QatMeasure {
            eval: EvalRecord {
                step: 0,
                last: false,
                dev,
                mcq: vec![mcq("fact_recall", fact), mcq("two_hop", two_hop), mcq("general", general)],
                named_routing: BTreeMap::new(),
            },
            kl: BTreeMap::new(),
        }
    }

    #[test]
    fn deltas_are_pp_of_medical_and_general_minus_the_penalty() {
        let pre = measure_of(0.5, 0.3, 0.6, 2.0);
        let q = measure_of(0.48, 0.3, 0.59, 2.1);
        let (m, g) = q.deltas(&pre, 0.0);
        assert!((m + 1.0).abs() < 1e-9 && (g + 1.0).abs() < 1e-9, "{m} {g}");
        let (m, g) = q.deltas(&pre, 5.0);
        assert!((m + 6.0).abs() < 1e-9 && (g + 6.0).abs() < 1e-9, "{m} {g}");
        assert!(ema_is_better(&q, &pre) && !ema_is_better(&pre, &q) && !ema_is_better(&q, &q));
    }

    #[test]
    fn kl_of_a_row_is_zero_for_itself_and_matches_the_closed_form() {
        assert!(kl_row(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
        assert!(kl_row(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]).abs() < 1e-12, "shift invariant");
        // Two outcomes: p = (0.5, 0.5), q = softmax(0, ln 3) = (0.25, 0.75).
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((kl_row(&[0.0, 0.0], &[0.0, 3f32.ln()]) - want).abs() < 1e-7);
    }
}
