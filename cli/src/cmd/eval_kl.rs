//! `moe-cli eval --kl-ref NAME`: every other model's next-token distributions against the
//! reference model's on the perplexity documents (mean and 99th-percentile `KL(reference ||
//! model)` per domain, top-1 agreement), e.g. a quantized model against the model it came from.
//! One `kl.json` per model, reused when its key (both models' files, documents, row length)
//! matches.

use super::eval_io::{resumed, sha256_hex, write_json};
use super::eval_summary::KlRow;
use actors::harness::{text_kl, DomainKl, PplDoc};
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// The KL result of one model.
#[derive(Serialize, Deserialize)]
struct KlResult {
    key: String,
    reference: String,
    per_domain: BTreeMap<String, DomainKl>,
    seconds: f64,
}

/// The reference model of `--kl-ref`, loaded once.
pub struct KlReference {
    /// Its name among the `--model`s.
    pub name: String,
    /// The model.
    pub model: Qwen3,
    /// Its files' fingerprint.
    pub key: String,
}

/// `KL(reference || model)` per domain of `docs`, or the previous result; its summary rows.
#[allow(clippy::too_many_arguments)]
pub fn eval_kl(
    name: &str,
    model: &Qwen3,
    model_key: &str,
    reference: &KlReference,
    docs: &[PplDoc],
    seq_len: usize,
    dir: &Path,
    bar: &ProgressBar,
) -> Result<(Vec<KlRow>, bool)> {
    let docs_sha = sha256_hex(format!("{docs:?}").as_bytes());
    let key_src = serde_json::json!({
        "model": model_key, "reference": reference.key, "docs": docs_sha, "seq_len": seq_len, "version": 1,
    });
    let key = sha256_hex(key_src.to_string().as_bytes());
    let path = dir.join("kl.json");
    let (r, reused) = match resumed(&path, &key, |r: &KlResult| r.key.as_str()) {
        Some(r) => (r, true),
        None => {
            let started = Instant::now();
            bar.set_length(docs.iter().map(|d| d.ids.len() as u64).sum::<u64>());
            let per_domain = text_kl(model, &reference.model, docs, seq_len, 4, &mut |n| bar.inc(n as u64))
                .with_context(|| format!("model `{name}`: KL to `{}`", reference.name))?;
            let r = KlResult {
                key,
                reference: reference.name.clone(),
                per_domain,
                seconds: started.elapsed().as_secs_f64(),
            };
            write_json(&path, &r)?;
            (r, false)
        }
    };
    let rows = r
        .per_domain
        .into_iter()
        .map(|(domain, d)| KlRow {
            model: name.to_string(),
            reference: reference.name.clone(),
            domain,
            tokens: d.tokens,
            mean_kl: d.mean_kl,
            p99_kl: d.p99_kl,
            same_top1: d.same_top1,
        })
        .collect();
    Ok((rows, reused))
}
