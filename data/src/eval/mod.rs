//! Multiple-choice evaluation sets: one schema for ours and for real benchmarks.
//!
//! Schema (one JSON object per line, MedQA-like):
//! `{"id", "set", "domain", "question", "context"?, "options": {"A": .., "B": .., ...}, "answer": "B", "meta"?}`.
//! The evaluator scores each option by log-likelihood; `answer` is the letter of the right option.
//! [`readers`] converts the public MedQA, MedMCQA and PubMedQA files into this schema.

pub mod overlap;
pub mod readers;
mod synthetic;

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub use synthetic::{generate_eval, EvalConfig, EvalSets};

/// Set name of the synthetic fact-recall MCQ.
pub const SET_FACT_RECALL: &str = "fact_recall";
/// Set name of the synthetic two-hop case MCQ (symptoms -> disease -> first-line drug).
pub const SET_TWO_HOP: &str = "two_hop";
/// Set name of the synthetic general MCQ.
pub const SET_GENERAL: &str = "general";

/// One multiple-choice item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McqItem {
    /// Unique id within its set.
    pub id: String,
    /// Set name (`fact_recall`, `two_hop`, `general`, `medqa`, `medmcqa`, `pubmedqa`).
    pub set: String,
    /// Domain tag (`medical` or `general`).
    pub domain: String,
    /// The question stem.
    pub question: String,
    /// Supporting text shown before the question (PubMedQA abstracts), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Options by letter, `A`, `B`, ... consecutive.
    pub options: BTreeMap<String, String>,
    /// Letter of the right option.
    pub answer: String,
    /// Free-form details (kind of question, hidden intermediate answers, source ids).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl McqItem {
    /// Checks the item: a question, 2 to 10 distinct non-empty options lettered from `A` without
    /// gaps, and an answer that is one of the letters.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.question.trim().is_empty() {
            return Err("empty question".into());
        }
        let n = self.options.len();
        if !(2..=10).contains(&n) {
            return Err(format!("{n} options (2 to 10 expected)"));
        }
        for (k, letter) in self.options.keys().zip(b'A'..) {
            if k.as_bytes() != [letter] {
                return Err(format!("option letters must be A.. without gaps, found `{k}`"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (k, v) in &self.options {
            if v.trim().is_empty() {
                return Err(format!("option {k} is empty"));
            }
            if !seen.insert(v.trim()) {
                return Err(format!("option {k} repeats another option"));
            }
        }
        if !self.options.contains_key(&self.answer) {
            return Err(format!("answer `{}` is not one of the options", self.answer));
        }
        Ok(())
    }

    /// The text of the right option.
    pub fn answer_text(&self) -> &str {
        &self.options[&self.answer]
    }
}

/// Reads a JSONL file in our schema, validating every item (errors give file and line).
pub fn read_mcq_jsonl(path: &Path) -> Result<Vec<McqItem>> {
    let mut out = Vec::new();
    crate::jsonl::for_each_line(path, |line, text| {
        let item: McqItem = serde_json::from_str(text).map_err(|e| DataError::Line {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        })?;
        item.validate().map_err(|m| DataError::Line { path: path.to_path_buf(), line, message: m })?;
        out.push(item);
        Ok(())
    })?;
    Ok(out)
}

/// Option letters for `n` options.
pub fn letters(n: usize) -> impl Iterator<Item = String> {
    (b'A'..).take(n).map(|b| (b as char).to_string())
}
