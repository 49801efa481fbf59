//! One (model, set) result: a row per item (option log-likelihoods, the three predictions),
//! the counts behind the accuracies, confusion matrices and the generation timings; written as
//! a CSV (rows) and a JSON (the rest) by the CLI.

use crate::eval::ItemScores;
use crate::harness::generated::GenAnswer;
use serde::{Deserialize, Serialize};

/// One item's scores and predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemRow {
    /// Item id.
    pub id: String,
    /// Index of the right option.
    pub answer: usize,
    /// Summed log-likelihood of each option.
    pub loglik: Vec<f64>,
    /// Tokens of each option.
    pub tokens: Vec<usize>,
    /// Prediction by summed log-likelihood.
    pub pred: usize,
    /// Prediction by log-likelihood per token.
    pub pred_norm: usize,
    /// The generated answer, when generation was scored.
    pub generated: Option<GenAnswer>,
}

impl ItemRow {
    /// A row from an item's option scores and, optionally, its generated answer.
    pub fn new(scores: &ItemScores, generated: Option<GenAnswer>) -> Self {
        ItemRow {
            id: scores.id.clone(),
            answer: scores.answer,
            loglik: scores.loglik.clone(),
            tokens: scores.tokens.clone(),
            pred: scores.predicted(),
            pred_norm: scores.predicted_norm(),
            generated,
        }
    }
}

/// Timings of the generation runs of a set (batch 1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Prompt tokens prefilled.
    pub prefill_tokens: u64,
    /// Wall time of the prefills.
    pub prefill_secs: f64,
    /// Tokens decoded after the first of each answer.
    pub decode_tokens: u64,
    /// Wall time of the decode steps.
    pub decode_secs: f64,
}

impl Latency {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_secs.max(1e-12)
    }

    /// Decoded tokens per second (0 when none were decoded).
    pub fn decode_tokens_per_s(&self) -> f64 {
        if self.decode_tokens == 0 {
            0.0
        } else {
            self.decode_tokens as f64 / self.decode_secs.max(1e-12)
        }
    }
}

/// Counts and matrices of one (model, set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetResult {
    /// What the result depends on (model files, tokenizer, items, settings), hashed: a result
    /// whose key differs is recomputed.
    pub key: String,
    /// Model name.
    pub model: String,
    /// Set name.
    pub set: String,
    /// Items scored.
    pub items: u64,
    /// Right by summed log-likelihood.
    pub correct: u64,
    /// Right by log-likelihood per token.
    pub correct_norm: u64,
    /// Right by the generated answer (None: generation not scored).
    pub correct_gen: Option<u64>,
    /// Generated answers that named an option.
    pub parsed_gen: Option<u64>,
    /// Expected accuracy of guessing (mean of 1 / #options).
    pub chance: f64,
    /// Option letters of the matrices (the most options any item has).
    pub letters: Vec<String>,
    /// `[answer][predicted]` counts by summed log-likelihood.
    pub confusion: Vec<Vec<u64>>,
    /// `[answer][predicted]` counts by generation; the last column counts answers naming no option.
    pub confusion_gen: Option<Vec<Vec<u64>>>,
    /// Generation timings.
    pub latency: Option<Latency>,
    /// Wall time of the whole (model, set) evaluation.
    pub seconds: f64,
}

impl SetResult {
    /// Tallies `rows`.
    pub fn from_rows(key: String, model: &str, set: &str, rows: &[ItemRow], seconds: f64) -> Self {
        let k = rows.iter().map(|r| r.loglik.len()).max().unwrap_or(0);
        let mut confusion = vec![vec![0u64; k]; k];
        let gen = rows.iter().all(|r| r.generated.is_some()) && !rows.is_empty();
        let mut confusion_gen = vec![vec![0u64; k + 1]; k];
        let mut latency = Latency::default();
        let (mut correct, mut correct_norm, mut correct_gen, mut parsed) = (0, 0, 0, 0);
        for r in rows {
            confusion[r.answer][r.pred] += 1;
            correct += u64::from(r.pred == r.answer);
            correct_norm += u64::from(r.pred_norm == r.answer);
            if let Some(g) = &r.generated {
                confusion_gen[r.answer][g.predicted.unwrap_or(k)] += 1;
                correct_gen += u64::from(g.predicted == Some(r.answer));
                parsed += u64::from(g.predicted.is_some());
                latency.prefill_tokens += g.prompt_tokens as u64;
                latency.prefill_secs += g.prefill_secs;
                latency.decode_tokens += g.decode_tokens as u64;
                latency.decode_secs += g.decode_secs;
            }
        }
        let n = rows.len();
        let chance =
            if n == 0 { 0.0 } else { rows.iter().map(|r| 1.0 / r.loglik.len() as f64).sum::<f64>() / n as f64 };
        SetResult {
            key,
            model: model.to_string(),
            set: set.to_string(),
            items: n as u64,
            correct,
            correct_norm,
            correct_gen: gen.then_some(correct_gen),
            parsed_gen: gen.then_some(parsed),
            chance,
            letters: data::eval::letters(k).collect(),
            confusion,
            confusion_gen: gen.then_some(confusion_gen),
            latency: gen.then_some(latency),
            seconds,
        }
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV of a set's rows: one line per item in evaluation order. Options are letters;
/// per-option values are joined by `;`; `gen_pred` is empty when the answer named no option.
pub fn csv_of(rows: &[ItemRow]) -> String {
    let letter = |i: usize| ((b'A' + i as u8) as char).to_string();
    let mut out = String::from(
        "id,answer,pred_loglik,pred_loglik_norm,correct_loglik,correct_loglik_norm,loglik,option_tokens,gen_pred,correct_gen,gen_text\n",
    );
    for r in rows {
        let ll: Vec<String> = r.loglik.iter().map(|v| format!("{v:.6}")).collect();
        let tk: Vec<String> = r.tokens.iter().map(usize::to_string).collect();
        let (gp, gc, gt) = match &r.generated {
            Some(g) => (
                g.predicted.map(letter).unwrap_or_default(),
                u8::from(g.predicted == Some(r.answer)).to_string(),
                g.text.clone(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let cells = [
            field(&r.id),
            letter(r.answer),
            letter(r.pred),
            letter(r.pred_norm),
            u8::from(r.pred == r.answer).to_string(),
            u8::from(r.pred_norm == r.answer).to_string(),
            ll.join(";"),
            tk.join(";"),
            gp,
            gc,
            field(&gt),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}
