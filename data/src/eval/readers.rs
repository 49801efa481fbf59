//! Readers for public medical QA files, converted to [`McqItem`].
//!
//! - MedQA (JSONL): `{"question", "answer", "options": {"A": ..}, "answer_idx": "A", "meta_info"}`.
//! - MedMCQA (JSONL): `{"id", "question", "opa", "opb", "opc", "opd", "cop", "subject_name", ...}`;
//!   `cop` is 1-4 in the original release files and 0-3 in the HF datasets export ([`CopBase`]).
//! - PubMedQA (one JSON object, e.g. `ori_pqal.json`): `{"<pmid>": {"QUESTION", "CONTEXTS": [..],
//!   "final_decision": "yes|no|maybe", ...}}`, mapped to options A yes / B no / C maybe.
//!
//! Every malformed record is an error naming the file and line (or PMID); nothing is skipped.

use super::McqItem;
use crate::error::{DataError, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Which file format to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalFormat {
    /// Our own schema (see the module `eval`).
    Medmoe,
    /// MedQA JSONL.
    MedQa,
    /// MedMCQA JSONL with the given `cop` numbering.
    MedMcqa(CopBase),
    /// PubMedQA JSON object.
    PubMedQa,
}

/// Numbering of MedMCQA's `cop` (correct option) field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopBase {
    /// 1 = opa .. 4 = opd (original release).
    One,
    /// 0 = opa .. 3 = opd (HF datasets export).
    Zero,
}

impl std::str::FromStr for EvalFormat {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "medmoe" => EvalFormat::Medmoe,
            "medqa" => EvalFormat::MedQa,
            "medmcqa" => EvalFormat::MedMcqa(CopBase::One),
            "medmcqa-hf" => EvalFormat::MedMcqa(CopBase::Zero),
            "pubmedqa" => EvalFormat::PubMedQa,
            _ => {
                return Err(DataError::config(
                    "eval format",
                    format!("`{s}` (expected medmoe, medqa, medmcqa, medmcqa-hf or pubmedqa)"),
                ))
            }
        })
    }
}

/// Reads an evaluation file in `format`.
pub fn read_eval_file(path: &Path, format: EvalFormat) -> Result<Vec<McqItem>> {
    match format {
        EvalFormat::Medmoe => super::read_mcq_jsonl(path),
        EvalFormat::MedQa => read_medqa(path),
        EvalFormat::MedMcqa(base) => read_medmcqa(path, base),
        EvalFormat::PubMedQa => read_pubmedqa(path),
    }
}

fn line_err(path: &Path, line: usize, message: impl Into<String>) -> DataError {
    DataError::Line { path: path.to_path_buf(), line, message: message.into() }
}

fn checked(path: &Path, line: usize, item: McqItem) -> Result<McqItem> {
    item.validate().map_err(|m| line_err(path, line, m))?;
    Ok(item)
}

#[derive(Deserialize)]
struct MedQaRecord {
    question: String,
    options: BTreeMap<String, String>,
    answer_idx: String,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    meta_info: Option<String>,
}

/// Reads MedQA JSONL.
pub fn read_medqa(path: &Path) -> Result<Vec<McqItem>> {
    let mut out = Vec::new();
    crate::jsonl::for_each_line(path, |line, text| {
        let r: MedQaRecord = serde_json::from_str(text).map_err(|e| line_err(path, line, e.to_string()))?;
        let right = r
            .options
            .get(&r.answer_idx)
            .ok_or_else(|| line_err(path, line, format!("answer_idx `{}` is not an option", r.answer_idx)))?;
        if let Some(a) = &r.answer {
            if a.trim() != right.trim() {
                return Err(line_err(
                    path,
                    line,
                    format!("answer `{a}` differs from option {} `{right}`", r.answer_idx),
                ));
            }
        }
        let mut meta = BTreeMap::new();
        if let Some(m) = r.meta_info {
            meta.insert("meta_info".to_string(), m);
        }
        out.push(checked(
            path,
            line,
            McqItem {
                id: format!("medqa-{line}"),
                set: "medqa".into(),
                domain: "medical".into(),
                question: r.question,
                context: None,
                options: r.options,
                answer: r.answer_idx,
                meta,
            },
        )?);
        Ok(())
    })?;
    Ok(out)
}

#[derive(Deserialize)]
struct MedMcqaRecord {
    #[serde(default)]
    id: Option<String>,
    question: String,
    opa: String,
    opb: String,
    opc: String,
    opd: String,
    #[serde(default)]
    cop: Option<i64>,
    #[serde(default)]
    subject_name: Option<String>,
    #[serde(default)]
    topic_name: Option<String>,
}

/// Reads MedMCQA JSONL.
pub fn read_medmcqa(path: &Path, base: CopBase) -> Result<Vec<McqItem>> {
    let mut out = Vec::new();
    crate::jsonl::for_each_line(path, |line, text| {
        let r: MedMcqaRecord = serde_json::from_str(text).map_err(|e| line_err(path, line, e.to_string()))?;
        let cop = r.cop.ok_or_else(|| line_err(path, line, "no `cop` (the test split has no answers)"))?;
        let (lo, hi) = match base {
            CopBase::One => (1, 4),
            CopBase::Zero => (0, 3),
        };
        if !(lo..=hi).contains(&cop) {
            return Err(line_err(path, line, format!("cop {cop} outside {lo}..={hi}")));
        }
        let answer = ((b'A' + (cop - lo) as u8) as char).to_string();
        let options: BTreeMap<String, String> =
            ["A", "B", "C", "D"].iter().map(|s| s.to_string()).zip([r.opa, r.opb, r.opc, r.opd]).collect();
        let mut meta = BTreeMap::new();
        for (k, v) in [("subject_name", r.subject_name), ("topic_name", r.topic_name)] {
            if let Some(v) = v {
                meta.insert(k.to_string(), v);
            }
        }
        out.push(checked(
            path,
            line,
            McqItem {
                id: format!("medmcqa-{}", r.id.unwrap_or_else(|| line.to_string())),
                set: "medmcqa".into(),
                domain: "medical".into(),
                question: r.question,
                context: None,
                options,
                answer,
                meta,
            },
        )?);
        Ok(())
    })?;
    Ok(out)
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct PubMedQaRecord {
    QUESTION: String,
    #[serde(default)]
    CONTEXTS: Vec<String>,
    final_decision: String,
}

/// Reads a PubMedQA JSON object (items in PMID order).
pub fn read_pubmedqa(path: &Path) -> Result<Vec<McqItem>> {
    let map: BTreeMap<String, serde_json::Value> = crate::fsutil::read_json(path)?;
    let mut out = Vec::new();
    for (pmid, value) in map {
        let r: PubMedQaRecord =
            serde_json::from_value(value).map_err(|e| DataError::file(path, format!("PMID {pmid}: {e}")))?;
        let answer = match r.final_decision.trim() {
            "yes" => "A",
            "no" => "B",
            "maybe" => "C",
            other => {
                return Err(DataError::file(path, format!("PMID {pmid}: final_decision `{other}` is not yes/no/maybe")))
            }
        };
        let options: BTreeMap<String, String> =
            [("A", "yes"), ("B", "no"), ("C", "maybe")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let item = McqItem {
            id: format!("pubmedqa-{pmid}"),
            set: "pubmedqa".into(),
            domain: "medical".into(),
            question: r.QUESTION,
            context: (!r.CONTEXTS.is_empty()).then(|| r.CONTEXTS.join("\n")),
            options,
            answer: answer.into(),
            meta: BTreeMap::new(),
        };
        item.validate().map_err(|m| DataError::file(path, format!("PMID {pmid}: {m}")))?;
        out.push(item);
    }
    Ok(out)
}
