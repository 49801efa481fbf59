//! Multiple-choice accuracy by option log-likelihood.
//!
//! Prompt format (see [`mcq_prompt`]): the corpus teaches facts in Q&A forms written
//! `Q: {question}\nA: {answer}.` (data/src/corpus: `treatment_qa`, `mechanism_qa`), so an item is
//! asked the same way, `Q: {question}\nA:`, preceded by `{context}\n\n` when the item has one
//! (PubMedQA abstracts). The continuation scored is `" " + option` (the corpus writes the answer
//! after `A: `); prompt and continuation are encoded separately, so every option is conditioned
//! on the same prompt tokens. No separator or BOS is prepended: packed documents start their
//! segment at position 0 with their first token, and so does each scored sequence here.
//!
//! Scores: the sum of the log-probabilities of the option's tokens given the prompt, and that
//! sum divided by the option's token count (length-normalised). The prediction is the argmax
//! (the first option on ties).
//!
//! Batching: every `prompt + option` is one attention segment (positions from 0); segments are
//! packed in order into rows of `row_len` tokens (a longer sequence gets a row of its own
//! length), `rows_per_batch` rows per forward. Only the hidden rows that predict option tokens go
//! through the LM head.

use super::{EvalError, Result};
use autograd::{ops, Tape, Tensor};
use data::eval::{read_mcq_jsonl, McqItem};
use data::tokenizer::Tokenizer;
use model::qwen3::ForwardOptions;
use model::{Qwen3, TokenBatch};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Settings of an MCQ evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McqConfig {
    /// Tokens per packed row (T); a sequence longer than this gets a row of its own length.
    pub row_len: usize,
    /// Rows per forward (B); the default 4 (1024 tokens a forward) measured fastest on 2 cores.
    pub rows_per_batch: usize,
    /// Evaluate only this many items, evenly spaced over the set (see [`subset_indices`]).
    pub max_items: Option<usize>,
    /// Longest `prompt + option` in tokens (capped by the model's `max_position_embeddings`);
    /// a longer prompt loses its first tokens.
    pub max_seq_len: usize,
}

impl Default for McqConfig {
    fn default() -> Self {
        McqConfig { row_len: 256, rows_per_batch: 4, max_items: None, max_seq_len: 2048 }
    }
}

/// Accuracy of one set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McqReport {
    /// Set name.
    pub set: String,
    /// Items scored.
    pub items: usize,
    /// Fraction right when options are ranked by summed log-likelihood.
    pub accuracy: f64,
    /// Fraction right when options are ranked by mean log-likelihood per token.
    pub accuracy_norm: f64,
    /// Expected accuracy of guessing (mean of 1 / #options).
    pub chance: f64,
}

/// An item as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedItem {
    /// Item id.
    pub id: String,
    /// Prompt tokens (non-empty).
    pub prompt: Vec<u32>,
    /// Continuation tokens of each option, in letter order (each non-empty).
    pub options: Vec<Vec<u32>>,
    /// Index of the right option.
    pub answer: usize,
}

/// Scores of one item's options.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemScores {
    /// Item id.
    pub id: String,
    /// Index of the right option.
    pub answer: usize,
    /// Sum of the log-probabilities of each option's tokens.
    pub loglik: Vec<f64>,
    /// Tokens of each option.
    pub tokens: Vec<usize>,
}

impl ItemScores {
    /// Mean log-probability per token of each option.
    pub fn loglik_norm(&self) -> Vec<f64> {
        self.loglik.iter().zip(&self.tokens).map(|(&l, &n)| l / n as f64).collect()
    }

    /// Option with the highest summed log-likelihood (first on ties).
    pub fn predicted(&self) -> usize {
        argmax(&self.loglik)
    }

    /// Option with the highest mean log-likelihood per token (first on ties).
    pub fn predicted_norm(&self) -> usize {
        argmax(&self.loglik_norm())
    }
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The prompt of an item: `Q: {question}\nA:`, after `{context}\n\n` when it has a context.
pub fn mcq_prompt(item: &McqItem) -> String {
    let q = format!("Q: {}\nA:", item.question.trim());
    match item.context.as_deref().map(str::trim) {
        Some(c) if !c.is_empty() => format!("{c}\n\n{q}"),
        _ => q,
    }
}

/// The continuation scored for an option: `" " + option`.
pub fn option_continuation(option: &str) -> String {
    format!(" {}", option.trim())
}

/// Reads `eval/<set>.jsonl` of a world directory; an empty file is [`EvalError::EmptySet`], a
/// malformed line or invalid item [`EvalError::Data`] with file and line.
pub fn load_eval_set(world_dir: &Path, set: &str) -> Result<Vec<McqItem>> {
    let path = world_dir.join("eval").join(format!("{set}.jsonl"));
    let items = read_mcq_jsonl(&path)?;
    if items.is_empty() {
        return Err(EvalError::EmptySet { path });
    }
    Ok(items)
}

/// Indices of a deterministic subset of `max` of `n` items, evenly spaced (`floor(i * n / max)`)
/// so every kind of question of a set keeps its share; all of them when `max` is None or >= n.
pub fn subset_indices(n: usize, max: Option<usize>) -> Vec<usize> {
    match max {
        Some(m) if m < n => (0..m).map(|i| i * n / m).collect(),
        _ => (0..n).collect(),
    }
}

/// Tokenises items with [`mcq_prompt`] and [`option_continuation`]; checks every item
/// ([`McqItem::validate`]) and that it encodes to non-empty prompt and options.
pub fn encode_items(tokenizer: &Tokenizer, items: &[McqItem]) -> Result<Vec<EncodedItem>> {
    items
        .iter()
        .map(|item| {
            let bad = |message: String| EvalError::Item { id: item.id.clone(), message };
            item.validate().map_err(bad)?;
            let prompt = tokenizer.encode(&mcq_prompt(item))?;
            let options = item
                .options
                .values()
                .map(|o| tokenizer.encode(&option_continuation(o)))
                .collect::<data::Result<Vec<_>>>()?;
            if prompt.is_empty() || options.iter().any(Vec::is_empty) {
                return Err(bad("the prompt or an option encodes to no tokens".into()));
            }
            let answer = item.options.keys().position(|k| *k == item.answer).expect("validated answer");
            Ok(EncodedItem { id: item.id.clone(), prompt, options, answer })
        })
        .collect()
}

/// One scored sequence: `prompt[skip..] + option` of (item, option).
struct Seq {
    item: usize,
    option: usize,
    /// Prompt tokens dropped from the front to fit `max_seq_len`.
    skip: usize,
    len: usize,
}

/// Log-likelihood of every option of every item under `model` (evaluation mode).
pub fn score_items(model: &Qwen3, items: &[EncodedItem], config: &McqConfig) -> Result<Vec<ItemScores>> {
    if config.rows_per_batch == 0 {
        return Err(EvalError::config("rows_per_batch", "must be at least 1"));
    }
    let vocab = model.config.vocab_size;
    let max_len = config.max_seq_len.min(model.config.max_position_embeddings);
    let mut seqs = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let bad = |message: String| EvalError::Item { id: it.id.clone(), message };
        if it.prompt.is_empty() || it.options.is_empty() || it.options.iter().any(Vec::is_empty) {
            return Err(bad("empty prompt, no options or an empty option".into()));
        }
        if it.answer >= it.options.len() {
            return Err(bad(format!("answer {} of {} options", it.answer, it.options.len())));
        }
        if let Some(&t) = it.prompt.iter().chain(it.options.iter().flatten()).find(|&&t| t as usize >= vocab) {
            return Err(bad(format!("token id {t} is outside the model's vocabulary of {vocab}")));
        }
        for (j, o) in it.options.iter().enumerate() {
            if o.len() >= max_len {
                return Err(bad(format!("option {j} has {} tokens, the longest sequence is {max_len}", o.len())));
            }
            let skip = (it.prompt.len() + o.len()).saturating_sub(max_len);
            seqs.push(Seq { item: i, option: j, skip, len: it.prompt.len() - skip + o.len() });
        }
    }
    let mut scores: Vec<ItemScores> = items
        .iter()
        .map(|it| ItemScores {
            id: it.id.clone(),
            answer: it.answer,
            loglik: vec![0.0; it.options.len()],
            tokens: it.options.iter().map(Vec::len).collect(),
        })
        .collect();
    // Next-fit packing of the sequences, in order, into rows.
    let row_len = config.row_len.max(seqs.iter().map(|s| s.len).max().unwrap_or(1)).max(1);
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut fill = row_len;
    for (k, s) in seqs.iter().enumerate() {
        if fill + s.len > row_len {
            rows.push(Vec::new());
            fill = 0;
        }
        rows.last_mut().expect("a row was opened").push(k);
        fill += s.len;
    }
    for batch_rows in rows.chunks(config.rows_per_batch) {
        score_batch(model, items, &seqs, batch_rows, row_len, &mut scores)?;
    }
    Ok(scores)
}

/// One forward over `rows` (sequence numbers per row); adds each option token's log-probability.
fn score_batch(
    model: &Qwen3,
    items: &[EncodedItem],
    seqs: &[Seq],
    rows: &[Vec<usize>],
    t: usize,
    scores: &mut [ItemScores],
) -> Result<()> {
    let n = rows.len() * t;
    let (mut ids, mut pos, mut seg) = (vec![0u32; n], vec![0u32; n], vec![0u32; n]);
    // Per scored row: (flat row in the batch, target token, item, option).
    let mut picks: Vec<(usize, u32, usize, usize)> = Vec::new();
    let mut next_seg = 0u32;
    for (r, row) in rows.iter().enumerate() {
        let mut at = r * t;
        for &k in row {
            let s = &seqs[k];
            let it = &items[s.item];
            let prompt = &it.prompt[s.skip..];
            let option = &it.options[s.option];
            for (j, &tok) in prompt.iter().chain(option).enumerate() {
                ids[at + j] = tok;
                pos[at + j] = j as u32;
                seg[at + j] = next_seg;
            }
            for (j, &tok) in option.iter().enumerate() {
                picks.push((at + prompt.len() - 1 + j, tok, s.item, s.option));
            }
            at += s.len;
            next_seg += 1;
        }
        // Padding (id 0, never scored) is a segment of its own.
        for j in at..(r + 1) * t {
            pos[j] = (j - at) as u32;
            seg[j] = next_seg;
        }
        next_seg += 1;
    }
    let batch = TokenBatch { ids, b: rows.len(), t, pos: Arc::from(pos), seg: Some(Arc::from(seg)) };
    let tape = Tape::inference();
    let bound = model.bind(&tape);
    let (hidden, _) = model.forward_hidden(&tape, &bound, &batch, &ForwardOptions::eval())?;
    let d = hidden.last_dim();
    let h = hidden.f32s();
    let mut gathered = Vec::with_capacity(picks.len() * d);
    for &(row, ..) in &picks {
        gathered.extend_from_slice(&h[row * d..(row + 1) * d]);
    }
    let gathered = Tensor::from_vec(gathered, &[picks.len(), d]);
    let head = if model.config.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    let w = model.params.get(head)?;
    let targets: Vec<i32> = picks.iter().map(|p| p.1 as i32).collect();
    let ce = ops::lm_head_cross_entropy(&tape, &gathered, &w, &targets)?;
    for (&(_, _, i, o), &loss) in picks.iter().zip(&ce.row_losses) {
        scores[i].loglik[o] -= loss as f64;
    }
    Ok(())
}

/// Accuracy (summed and length-normalised scoring) and chance level of scored items; all zero
/// for no items.
pub fn mcq_report(set: &str, scores: &[ItemScores]) -> McqReport {
    let n = scores.len();
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let right = scores.iter().filter(|s| s.predicted() == s.answer).count();
    let right_norm = scores.iter().filter(|s| s.predicted_norm() == s.answer).count();
    let chance = if n == 0 { 0.0 } else { scores.iter().map(|s| 1.0 / s.loglik.len() as f64).sum::<f64>() / n as f64 };
    McqReport { set: set.to_string(), items: n, accuracy: frac(right), accuracy_norm: frac(right_norm), chance }
}

/// Scores `items` (the subset of `config.max_items`) of set `set` and reports accuracy.
/// No items is [`EvalError::Config`].
pub fn evaluate_mcq(
    model: &Qwen3,
    tokenizer: &Tokenizer,
    set: &str,
    items: &[McqItem],
    config: &McqConfig,
) -> Result<McqReport> {
    let chosen: Vec<McqItem> =
        subset_indices(items.len(), config.max_items).into_iter().map(|i| items[i].clone()).collect();
    if chosen.is_empty() {
        return Err(EvalError::config("items", format!("set `{set}`: nothing to evaluate")));
    }
    let encoded = encode_items(tokenizer, &chosen)?;
    let scores = score_items(model, &encoded, config)?;
    Ok(mcq_report(set, &scores))
}
