//! What the Evaluator evaluates: dev perplexity per domain on held-out packed sequences and
//! MCQ accuracy on the world's eval sets, periodic (small) and final (full).

use crate::error::{EngineError, Result};
use crate::eval::{
    dev_perplexity, evaluate_mcq, named_routing_accuracy, DevReport, McqConfig, McqReport, NamedRouting,
};
use data::eval::McqItem;
use data::pack::PackedDataset;
use data::tokenizer::Tokenizer;
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimiser step.
    pub step: u64,
    /// True for the final (full) evaluation.
    pub last: bool,
    /// Dev perplexity per domain.
    pub dev: DevReport,
    /// MCQ accuracy per set.
    pub mcq: Vec<McqReport>,
    /// Named experts (Mode B): held-out routing accuracy per mapped domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_routing: BTreeMap<String, NamedRouting>,
}

impl EvalRecord {
    /// Medical dev perplexity (what the dev-PPL breaker watches).
    pub fn medical_ppl(&self) -> Option<f64> {
        self.dev.per_domain.get("medical").map(|d| d.ppl)
    }

    /// Scalars for TensorBoard (logged under `eval/`): `ppl_<domain>`, `acc_<set>`.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self.dev.per_domain.iter().map(|(d, p)| (format!("ppl_{d}"), p.ppl)).collect();
        v.extend(self.mcq.iter().map(|m| (format!("acc_{}", m.set), m.accuracy)));
        v.extend(self.named_routing.iter().map(|(d, r)| (format!("route_acc_{d}"), r.accuracy)));
        v
    }

    /// A short human summary.
    pub fn one_line(&self) -> String {
        let ppl: Vec<String> = self.dev.per_domain.iter().map(|(d, p)| format!("ppl {d} {:.2}", p.ppl)).collect();
        let acc: Vec<String> = self
            .mcq
            .iter()
            .map(|m| format!("{} {:.1}% (chance {:.0}%)", m.set, 100.0 * m.accuracy, 100.0 * m.chance))
            .collect();
        format!("{} | {}", ppl.join(", "), acc.join(", "))
    }
}

/// Held-out data of the evaluations.
pub struct EvalInputs {
    /// Dev pack.
    pub dev: Arc<PackedDataset>,
    /// Tokenizer of the eval prompts.
    pub tokenizer: Arc<Tokenizer>,
    /// Eval sets by name.
    pub sets: Vec<(String, Vec<McqItem>)>,
    /// Periodic sizes: dev sequences per domain, MCQ items per set.
    pub periodic: (usize, usize),
    /// Final sizes (0 items: all).
    pub last: (usize, usize),
    /// Sequences per forward.
    pub batch: usize,
    /// Named experts (Mode B): domain -> expert, whose held-out routing accuracy is reported.
    pub named: Option<BTreeMap<String, usize>>,
}

impl EvalInputs {
    /// Evaluates `model`.
    pub fn evaluate(&self, model: &Qwen3, step: u64, last: bool) -> Result<EvalRecord> {
        let (dev_seqs, items) = if last { self.last } else { self.periodic };
        let by_domain = self.dev.sequences_by_domain();
        let chosen: BTreeMap<String, Vec<u64>> = by_domain
            .into_iter()
            .map(|(d, seqs)| {
                let idx = crate::eval::subset_indices(seqs.len(), Some(dev_seqs.max(1)));
                (d, idx.into_iter().map(|i| seqs[i]).collect())
            })
            .collect();
        let err = |e: crate::eval::EvalError| EngineError::Training(format!("evaluation: {e}"));
        let dev = dev_perplexity(model, &self.dev, &chosen, self.batch).map_err(err)?;
        let config = McqConfig { max_items: (items > 0).then_some(items), ..McqConfig::default() };
        let mcq = self
            .sets
            .iter()
            .map(|(name, set)| evaluate_mcq(model, &self.tokenizer, name, set, &config).map_err(err))
            .collect::<Result<Vec<_>>>()?;
        let named_routing = match &self.named {
            Some(map) => named_routing_accuracy(model, &self.dev, &chosen, map, self.batch).map_err(err)?,
            None => BTreeMap::new(),
        };
        Ok(EvalRecord { step, last, dev, mcq, named_routing })
    }
}
