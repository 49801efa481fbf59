//! `summary.json` of `moe-cli eval` (read back by `moe-cli report`): every model's accuracy per
//! set with Wilson 95% intervals, confusion matrices, per-domain perplexity, router usage and
//! capacity overflow, generation latency.

use actors::harness::{wilson_interval, RoutingTally, SetResult, CAPACITY_FACTORS, Z95};
use serde::{Deserialize, Serialize};

/// Format tag of the summary.
pub const FORMAT: &str = "medmoe-eval";

/// An accuracy with its Wilson 95% interval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Accuracy {
    /// Items right.
    pub correct: u64,
    /// `correct / items`.
    pub value: f64,
    /// Lower end of the 95% interval.
    pub lo: f64,
    /// Upper end of the 95% interval.
    pub hi: f64,
}

impl Accuracy {
    /// `correct` of `n` with its interval.
    pub fn of(correct: u64, n: u64) -> Self {
        let (lo, hi) = wilson_interval(correct, n, Z95);
        Accuracy { correct, value: if n == 0 { 0.0 } else { correct as f64 / n as f64 }, lo, hi }
    }
}

/// A model evaluated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Name given on the command line.
    pub name: String,
    /// Its path.
    pub path: String,
    /// SHA-256 of its tokenizer.json.
    pub tokenizer_sha256: String,
    /// Parameters (all experts).
    pub params: u64,
    /// Parameters one token uses (one routed expert per layer).
    pub active_params: u64,
}

/// An eval set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetInfo {
    /// Name.
    pub name: String,
    /// File.
    pub source: String,
    /// Format.
    pub format: String,
    /// Items scored.
    pub items: u64,
    /// The 13-gram check against training text (None: no training text given).
    pub overlap: Option<super::eval_sets::Overlap>,
}

/// One (model, set).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct McqRow {
    /// Model name.
    pub model: String,
    /// Set name.
    pub set: String,
    /// Items.
    pub items: u64,
    /// Expected accuracy of guessing.
    pub chance: f64,
    /// By summed option log-likelihood.
    pub loglik: Accuracy,
    /// By option log-likelihood per token.
    pub loglik_norm: Accuracy,
    /// By the greedy generated answer (None: not scored).
    pub generated: Option<Accuracy>,
    /// Generated answers that named an option.
    pub generated_parsed: Option<u64>,
    /// Option letters of the matrices.
    pub letters: Vec<String>,
    /// `[answer][predicted]` by summed log-likelihood.
    pub confusion: Vec<Vec<u64>>,
    /// `[answer][predicted or none]` by generation.
    pub confusion_gen: Option<Vec<Vec<u64>>>,
}

impl McqRow {
    /// The row of a set result.
    pub fn of(r: &SetResult) -> Self {
        McqRow {
            model: r.model.clone(),
            set: r.set.clone(),
            items: r.items,
            chance: r.chance,
            loglik: Accuracy::of(r.correct, r.items),
            loglik_norm: Accuracy::of(r.correct_norm, r.items),
            generated: r.correct_gen.map(|c| Accuracy::of(c, r.items)),
            generated_parsed: r.parsed_gen,
            letters: r.letters.clone(),
            confusion: r.confusion.clone(),
            confusion_gen: r.confusion_gen.clone(),
        }
    }
}

/// Perplexity of one (model, domain).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PplRow {
    /// Model name.
    pub model: String,
    /// Domain.
    pub domain: String,
    /// Tokens scored.
    pub tokens: u64,
    /// Mean cross-entropy (nats).
    pub mean_ce: f64,
    /// Perplexity.
    pub ppl: f64,
}

/// One (model, domain) KL divergence from the `--kl-ref` model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KlRow {
    /// Model name.
    pub model: String,
    /// The reference model's name.
    pub reference: String,
    /// Domain.
    pub domain: String,
    /// Tokens scored.
    pub tokens: u64,
    /// Mean `KL(reference || model)` per token (nats).
    pub mean_kl: f64,
    /// Its 99th percentile.
    pub p99_kl: f64,
    /// Share of tokens whose top-1 prediction equals the reference's.
    pub same_top1: f64,
}

/// Tokens a capacity factor would drop.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overflow {
    /// Capacity factor.
    pub capacity_factor: f32,
    /// Token-layer routings dropped.
    pub dropped: u64,
    /// Token-layer routings.
    pub routed: u64,
    /// `dropped / routed`.
    pub frac: f64,
}

/// Router usage of a MoE model on the perplexity documents (dropless).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoutingRow {
    /// Model name.
    pub model: String,
    /// `[layer][expert]` share of tokens.
    pub share: Vec<Vec<f64>>,
    /// Load entropy per layer (nats).
    pub load_entropy: Vec<f64>,
    /// Overflow at each reported capacity factor, all layers.
    pub overflow: Vec<Overflow>,
    /// The capacity to ship by the seed rule (drops at 1.0 -> 1.25, else 1.05).
    pub ship_capacity: f32,
}

impl RoutingRow {
    /// The row of a tally; None for a dense model.
    pub fn of(model: &str, t: &RoutingTally) -> Option<Self> {
        let ship_capacity = t.ship()?;
        let (dropped, routed) = t.dropped_total();
        Some(RoutingRow {
            model: model.to_string(),
            share: t.layers.iter().map(|l| l.share()).collect(),
            load_entropy: t.layers.iter().map(|l| l.load_entropy()).collect(),
            overflow: CAPACITY_FACTORS
                .iter()
                .zip(dropped)
                .map(|(&capacity_factor, d)| Overflow {
                    capacity_factor,
                    dropped: d,
                    routed,
                    frac: d as f64 / routed.max(1) as f64,
                })
                .collect(),
            ship_capacity,
        })
    }
}

/// Generation speed of a model (batch 1, our runtime).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyRow {
    /// Model name.
    pub model: String,
    /// Prompt tokens prefilled.
    pub prefill_tokens: u64,
    /// Prompt tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Tokens decoded.
    pub decode_tokens: u64,
    /// Decoded tokens per second.
    pub decode_tokens_per_s: f64,
}

/// The whole summary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSummary {
    /// [`FORMAT`].
    pub format: String,
    /// 1.
    pub version: u32,
    /// Models in evaluation order.
    pub models: Vec<ModelInfo>,
    /// Sets in evaluation order.
    pub sets: Vec<SetInfo>,
    /// One row per (model, set).
    pub mcq: Vec<McqRow>,
    /// One row per (model, domain).
    pub ppl: Vec<PplRow>,
    /// One row per MoE model.
    pub routing: Vec<RoutingRow>,
    /// One row per model whose answers were generated.
    pub latency: Vec<LatencyRow>,
    /// One row per (model, domain) with `--kl-ref` (the reference itself has none).
    #[serde(default)]
    pub kl: Vec<KlRow>,
}
