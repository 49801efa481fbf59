//! Held-out routing accuracy of named experts (Mode B): per domain of the map, the share of the
//! domain's dev tokens (those with a next-token target) that an evaluation forward (dropless,
//! temperature 1) routes to the domain's expert, per MoE layer and over all layers.

use super::{token_batch_of, EvalError, Result};
use data::pack::{batch_of, PackedDataset};
use model::named_experts::{route_choices, route_targets, routing_hits};
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Routing accuracy of one domain toward its named expert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedRouting {
    /// The domain's expert.
    pub expert: usize,
    /// Dev tokens scored (per layer).
    pub tokens: u64,
    /// Share routed to `expert`, over all MoE layers.
    pub accuracy: f64,
    /// Share routed to `expert` per MoE layer.
    pub per_layer: Vec<f64>,
}

/// Routing accuracy per mapped domain on the sequences `sequences[domain]` of `ds`
/// (`batch_size` sequences per forward); domains of `sequences` not in `map` are skipped, and a
/// mapped domain with no sequence is left out.
pub fn named_routing_accuracy(
    model: &Qwen3,
    ds: &PackedDataset,
    sequences: &BTreeMap<String, Vec<u64>>,
    map: &BTreeMap<String, usize>,
    batch_size: usize,
) -> Result<BTreeMap<String, NamedRouting>> {
    if batch_size == 0 {
        return Err(EvalError::config("batch_size", "must be at least 1"));
    }
    let mut out = BTreeMap::new();
    for (domain, seqs) in sequences {
        let Some(&expert) = map.get(domain) else { continue };
        let mut layers: Vec<(u64, u64)> = Vec::new();
        for chunk in seqs.chunks(batch_size) {
            let p = batch_of(ds, chunk);
            let (t, domains) = (p.t, p.domains.clone());
            let (batch, targets) = token_batch_of(p);
            let rt = route_targets(&domains, t, &targets, map);
            let hits = routing_hits(&route_choices(model, &batch)?, &rt);
            layers.resize(hits.len(), (0, 0));
            for (acc, (h, n)) in layers.iter_mut().zip(hits) {
                acc.0 += h;
                acc.1 += n;
            }
        }
        let tokens = layers.first().map_or(0, |l| l.1);
        if tokens == 0 {
            continue;
        }
        let hits: u64 = layers.iter().map(|l| l.0).sum();
        let per_layer = layers.iter().map(|&(h, n)| h as f64 / n.max(1) as f64).collect();
        let accuracy = hits as f64 / (tokens * layers.len() as u64) as f64;
        out.insert(domain.clone(), NamedRouting { expert, tokens, accuracy, per_layer });
    }
    Ok(out)
}
