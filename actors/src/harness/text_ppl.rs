//! Per-domain perplexity of documents, tokenised by the model's own tokenizer (perplexities of
//! models with different tokenizers are not comparable: the caller refuses such comparisons).
//!
//! The documents of a domain are laid end to end, each its own attention segment with positions
//! from 0, and cut into rows of `row_len` tokens (a document cut by a row end continues in the
//! next row as a new segment, like the packer). Every token predicts the next token of its
//! segment; no padding exists (a last short row is a forward of its own), so the router
//! statistics count real tokens only.

use crate::eval::{DomainPpl, EvalError, Result};
use crate::harness::routing::RoutingTally;
use autograd::Tape;
use model::qwen3::ForwardOptions;
use model::{Qwen3, TokenBatch};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One document as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PplDoc {
    /// Domain tag.
    pub domain: String,
    /// Token ids.
    pub ids: Vec<u32>,
}

/// One forward's batch and its next-token targets (-100: none).
pub(crate) type Forward = (TokenBatch, Vec<i32>);

/// A row: `(token, document number)` per position.
type Row = Vec<(u32, usize)>;

fn rows_of(docs: &[&PplDoc], row_len: usize) -> Vec<Row> {
    let mut rows: Vec<Row> = vec![Vec::with_capacity(row_len)];
    for (d, doc) in docs.iter().enumerate() {
        for &t in &doc.ids {
            if rows.last().is_some_and(|r| r.len() == row_len) {
                rows.push(Vec::with_capacity(row_len));
            }
            rows.last_mut().expect("non-empty").push((t, d));
        }
    }
    rows.retain(|r| !r.is_empty());
    rows
}

/// Batch and next-token targets of rows of equal length.
fn batch_of(rows: &[Row]) -> (TokenBatch, Vec<i32>) {
    let t = rows[0].len();
    let n = rows.len() * t;
    let (mut ids, mut pos, mut seg, mut targets) = (vec![0u32; n], vec![0u32; n], vec![0u32; n], vec![-100i32; n]);
    let mut next_seg = 0u32;
    for (r, row) in rows.iter().enumerate() {
        let mut p = 0u32;
        for (j, &(tok, doc)) in row.iter().enumerate() {
            if j > 0 && row[j - 1].1 != doc {
                next_seg += 1;
                p = 0;
            }
            let at = r * t + j;
            ids[at] = tok;
            pos[at] = p;
            seg[at] = next_seg;
            if let Some(&(next, nd)) = row.get(j + 1) {
                if nd == doc {
                    targets[at] = next as i32;
                }
            }
            p += 1;
        }
        next_seg += 1;
    }
    (TokenBatch { ids, b: rows.len(), t, pos: Arc::from(pos), seg: Some(Arc::from(seg)) }, targets)
}

/// The forwards of every domain of `docs`: rows of `row_len` tokens (clamped by the caller),
/// `rows_per_batch` full rows per batch, a last short row alone, with next-token targets.
pub(crate) fn domain_batches(docs: &[PplDoc], row_len: usize, rows_per_batch: usize) -> Vec<(&str, Vec<Forward>)> {
    let mut by_domain: BTreeMap<&str, Vec<&PplDoc>> = BTreeMap::new();
    for d in docs {
        by_domain.entry(d.domain.as_str()).or_default().push(d);
    }
    by_domain
        .into_iter()
        .map(|(domain, ds)| {
            let rows = rows_of(&ds, row_len);
            let (full, last): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|r| r.len() == row_len);
            let batches = full.chunks(rows_per_batch).chain(last.chunks(1)).map(batch_of).collect();
            (domain, batches)
        })
        .collect()
}

/// Checks the rows' shape and that every token is in the model's vocabulary; the row length
/// the model can take.
pub(crate) fn checked_row_len(model: &Qwen3, docs: &[PplDoc], row_len: usize, rows_per_batch: usize) -> Result<usize> {
    if row_len < 2 || rows_per_batch == 0 {
        return Err(EvalError::config("ppl rows", format!("{rows_per_batch} rows of {row_len} tokens")));
    }
    let vocab = model.config.vocab_size;
    if let Some(t) = docs.iter().flat_map(|d| &d.ids).find(|&&t| t as usize >= vocab) {
        return Err(EvalError::config(
            "documents",
            format!("token id {t} is outside the model's vocabulary of {vocab}: tokenizer and model disagree"),
        ));
    }
    Ok(row_len.min(model.config.max_position_embeddings))
}

/// Perplexity of every domain of `docs` under `model` (evaluation mode: dropless), rows of
/// `row_len` tokens, `rows_per_batch` rows per forward; the router statistics of every forward
/// go to `tally`, and `on_tokens` sees the tokens of each forward (progress).
pub fn text_perplexity(
    model: &Qwen3,
    docs: &[PplDoc],
    row_len: usize,
    rows_per_batch: usize,
    tally: &mut RoutingTally,
    on_tokens: &mut dyn FnMut(usize),
) -> Result<BTreeMap<String, DomainPpl>> {
    let row_len = checked_row_len(model, docs, row_len, rows_per_batch)?;
    let opts = ForwardOptions::eval();
    let mut out = BTreeMap::new();
    for (domain, batches) in domain_batches(docs, row_len, rows_per_batch) {
        let (mut sum, mut count) = (0f64, 0u64);
        for (batch, targets) in batches {
            let tape = Tape::inference();
            let bound = model.bind(&tape);
            let loss = model.loss(&tape, &bound, &batch, &targets, &opts)?;
            sum += loss.row_losses.iter().map(|&l| l as f64).sum::<f64>();
            count += loss.count as u64;
            tally.add(&loss.router);
            on_tokens(batch.ids.len());
        }
        if count == 0 {
            return Err(EvalError::NoTokens { domain: domain.to_string() });
        }
        let mean_ce = sum / count as f64;
        out.insert(domain.to_string(), DomainPpl { tokens: count, mean_ce, ppl: mean_ce.exp() });
    }
    Ok(out)
}
