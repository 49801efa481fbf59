//! The phase's stream of micro-batches as a pure function of a cursor: micro-batch `k` and
//! the cursor after it follow from the cursor before it. The DataLoader actor prefetches with
//! it, and a restarted loader continues from the trainer's cursor, so no batch is lost or
//! repeated.

use crate::error::{EngineError, Result};
use crate::phase::MixConfig;
use data::pack::{Mix, PackedBatch, PackedDataset, Sampler, SamplerConfig, SamplerState};
use data::rng::unit_f64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the stream is: micro-batches delivered so far and the sampler states behind them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoaderCursor {
    /// Micro-batches delivered.
    pub index: u64,
    /// State of the mixed sampler (None before its first batch).
    pub mixed: Option<SamplerState>,
    /// State of each domain's sampler of the domain-biased part.
    pub biased: BTreeMap<String, SamplerState>,
}

/// The phase's batch stream.
#[derive(Clone)]
pub struct BatchStream {
    ds: Arc<PackedDataset>,
    weights: BTreeMap<String, f64>,
    micro_batch: usize,
    seed: u64,
    /// Micro-batches (from the start) drawn one domain at a time.
    biased_until: u64,
}

impl BatchStream {
    /// The stream of a phase with `total_micro` micro-batches.
    pub fn new(
        ds: Arc<PackedDataset>,
        mix: &MixConfig,
        micro_batch: usize,
        seed: u64,
        total_micro: u64,
    ) -> Result<Self> {
        let domains = ds.sequences_by_domain();
        let weights: BTreeMap<String, f64> =
            mix.weights.iter().filter(|(_, &w)| w > 0.0).map(|(d, &w)| (d.clone(), w)).collect();
        for d in weights.keys() {
            if !domains.contains_key(d) {
                return Err(EngineError::config(
                    "mix.weights",
                    format!("domain `{d}` is not in the pack (it has {:?})", domains.keys().collect::<Vec<_>>()),
                ));
            }
        }
        if weights.is_empty() {
            return Err(EngineError::config("mix.weights", "all weights are zero"));
        }
        let biased_until = (mix.biased_frac.clamp(0.0, 1.0) * total_micro as f64).round() as u64;
        Ok(BatchStream { ds, weights, micro_batch, seed, biased_until })
    }

    fn sampler_config(&self, mix: Mix) -> SamplerConfig {
        SamplerConfig { seed: self.seed, batch_size: self.micro_batch, mix, rank: 0, world_size: 1 }
    }

    /// Domain of biased micro-batch `k`, drawn with the mix weights.
    fn biased_domain(&self, k: u64) -> &str {
        let total: f64 = self.weights.values().sum();
        let u = unit_f64(self.seed ^ 0xB1A5_ED00, k) * total;
        let mut acc = 0.0;
        for (d, w) in &self.weights {
            acc += w;
            if u < acc {
                return d;
            }
        }
        self.weights.keys().last().map(String::as_str).unwrap_or("")
    }

    /// True when micro-batch `k` is domain-biased.
    pub fn is_biased(&self, k: u64) -> bool {
        k < self.biased_until
    }

    /// Micro-batch `cursor.index` and the cursor after it.
    pub fn next(&self, cursor: &LoaderCursor) -> Result<(PackedBatch, LoaderCursor)> {
        let mut next = cursor.clone();
        next.index += 1;
        let batch = if self.is_biased(cursor.index) {
            let d = self.biased_domain(cursor.index).to_string();
            let config = self.sampler_config(Mix::Weighted([(d.clone(), 1.0)].into()));
            let mut s = match cursor.biased.get(&d) {
                Some(st) => Sampler::resume(&self.ds, config, st.clone())?,
                None => Sampler::new(&self.ds, config)?,
            };
            let b = s.next_batch();
            next.biased.insert(d, s.state().clone());
            b
        } else {
            let config = self.sampler_config(Mix::Weighted(self.weights.clone()));
            let mut s = match &cursor.mixed {
                Some(st) => Sampler::resume(&self.ds, config, st.clone())?,
                None => Sampler::new(&self.ds, config)?,
            };
            let b = s.next_batch();
            next.mixed = Some(s.state().clone());
            b
        };
        Ok((batch, next))
    }
}
