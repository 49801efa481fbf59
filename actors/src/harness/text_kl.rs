//! Per-domain KL divergence of a model's next-token distributions from a reference model's, on
//! the same documents and rows as [`super::text_ppl`] (llama.cpp's `perplexity --kl-divergence`
//! measure): how far a quantized model moved from the model it was quantized from.

use super::text_ppl::{checked_row_len, domain_batches, PplDoc};
use crate::eval::{EvalError, Result};
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// KL divergence of one domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainKl {
    /// Target tokens scored (the positions the perplexity scores).
    pub tokens: u64,
    /// Mean `KL(reference || model)` per token (nats).
    pub mean_kl: f64,
    /// The 99th percentile of the per-token KL.
    pub p99_kl: f64,
    /// Share of tokens whose top-1 prediction equals the reference's.
    pub same_top1: f64,
}

/// `KL(softmax(t) || softmax(s))` of one row of logits, in f64.
pub fn kl_row(t: &[f32], s: &[f32]) -> f64 {
    let lse = |z: &[f32]| {
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
        m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lt, ls) = (lse(t), lse(s));
    t.iter().zip(s).map(|(&a, &b)| (a as f64 - lt).exp() * ((a as f64 - lt) - (b as f64 - ls))).sum::<f64>().max(0.0)
}

fn argmax(z: &[f32]) -> usize {
    z.iter().enumerate().fold(0, |best, (i, &x)| if x > z[best] { i } else { best })
}

/// The `q`-quantile (nearest rank) of `xs`.
fn quantile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    xs[((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1]
}

/// `KL(reference || model)` per domain of `docs` (both in evaluation mode: dropless), rows of
/// `row_len` tokens, `rows_per_batch` rows per forward; `on_tokens` sees each forward's tokens.
pub fn text_kl(
    model: &Qwen3,
    reference: &Qwen3,
    docs: &[PplDoc],
    row_len: usize,
    rows_per_batch: usize,
    on_tokens: &mut dyn FnMut(usize),
) -> Result<BTreeMap<String, DomainKl>> {
    let v = model.config.vocab_size;
    if reference.config.vocab_size != v {
        return Err(EvalError::config(
            "KL reference",
            format!("the reference's vocabulary has {} tokens, the model's {v}", reference.config.vocab_size),
        ));
    }
    let row_len = checked_row_len(model, docs, row_len, rows_per_batch)?.min(checked_row_len(
        reference,
        docs,
        row_len,
        rows_per_batch,
    )?);
    let mut out = BTreeMap::new();
    for (domain, batches) in domain_batches(docs, row_len, rows_per_batch) {
        let (mut kls, mut same) = (Vec::new(), 0u64);
        for (batch, targets) in batches {
            let zs = model.logits(&batch)?;
            let zt = reference.logits(&batch)?;
            for (i, _) in targets.iter().enumerate().filter(|(_, &t)| t >= 0) {
                let (t, s) = (&zt[i * v..(i + 1) * v], &zs[i * v..(i + 1) * v]);
                kls.push(kl_row(t, s));
                same += u64::from(argmax(t) == argmax(s));
            }
            on_tokens(batch.ids.len());
        }
        if kls.is_empty() {
            return Err(EvalError::NoTokens { domain: domain.to_string() });
        }
        let n = kls.len() as u64;
        let mean_kl = kls.iter().sum::<f64>() / n as f64;
        let p99_kl = quantile(&mut kls, 0.99);
        out.insert(domain.to_string(), DomainKl { tokens: n, mean_kl, p99_kl, same_top1: same as f64 / n as f64 });
    }
    Ok(out)
}
