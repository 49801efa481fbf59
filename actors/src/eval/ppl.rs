//! Dev perplexity per domain: token-weighted mean next-token cross-entropy over chosen
//! sequences of a pack, in evaluation mode.

use super::{token_batch_of, EvalError, Result};
use autograd::Tape;
use data::pack::batch_of;
use data::pack::PackedDataset;
use model::qwen3::ForwardOptions;
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Perplexity of one domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainPpl {
    /// Target tokens scored (segment ends and padding excluded).
    pub tokens: u64,
    /// Mean cross-entropy per target token (nats).
    pub mean_ce: f64,
    /// `exp(mean_ce)`.
    pub ppl: f64,
}

/// Perplexity of every domain evaluated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DevReport {
    /// Domain tag -> its perplexity.
    pub per_domain: BTreeMap<String, DomainPpl>,
}

impl DevReport {
    /// All domains pooled (token-weighted), or None when the report is empty.
    pub fn overall(&self) -> Option<DomainPpl> {
        let tokens: u64 = self.per_domain.values().map(|d| d.tokens).sum();
        if tokens == 0 {
            return None;
        }
        let total: f64 = self.per_domain.values().map(|d| d.mean_ce * d.tokens as f64).sum();
        let mean_ce = total / tokens as f64;
        Some(DomainPpl { tokens, mean_ce, ppl: mean_ce.exp() })
    }
}

/// Mean cross-entropy and perplexity of `model` on the sequences `sequences[domain]` of `ds`
/// (global sequence numbers, e.g. from [`PackedDataset::sequences_by_domain`], possibly
/// subsampled), `batch_size` sequences per forward. Every domain listed must have at least one
/// target token ([`EvalError::NoTokens`] otherwise). The result does not depend on
/// `batch_size` beyond float rounding (documents never attend across segments).
pub fn dev_perplexity(
    model: &Qwen3,
    ds: &PackedDataset,
    sequences: &BTreeMap<String, Vec<u64>>,
    batch_size: usize,
) -> Result<DevReport> {
    if batch_size == 0 {
        return Err(EvalError::config("batch_size", "must be at least 1"));
    }
    let (pack_vocab, model_vocab) = (ds.manifest.vocab_size as usize, model.config.vocab_size);
    if pack_vocab > model_vocab {
        return Err(EvalError::config(
            "pack",
            format!("{} was built for a vocabulary of {pack_vocab}, the model has {model_vocab}", ds.dir.display()),
        ));
    }
    let run = ForwardOptions::eval();
    let mut report = DevReport::default();
    for (domain, seqs) in sequences {
        if let Some(&g) = seqs.iter().find(|&&g| g >= ds.len()) {
            return Err(EvalError::config(
                "sequences",
                format!("domain `{domain}` asks for sequence {g}, the pack has {}", ds.len()),
            ));
        }
        let (mut sum, mut tokens) = (0f64, 0u64);
        for chunk in seqs.chunks(batch_size) {
            let (batch, targets) = token_batch_of(batch_of(ds, chunk));
            let tape = Tape::inference();
            let bound = model.bind(&tape);
            let out = model.loss(&tape, &bound, &batch, &targets, &run)?;
            sum += out.row_losses.iter().map(|&l| l as f64).sum::<f64>();
            tokens += out.count as u64;
        }
        if tokens == 0 {
            return Err(EvalError::NoTokens { domain: domain.clone() });
        }
        let mean_ce = sum / tokens as f64;
        report.per_domain.insert(domain.clone(), DomainPpl { tokens, mean_ce, ppl: mean_ce.exp() });
    }
    Ok(report)
}
