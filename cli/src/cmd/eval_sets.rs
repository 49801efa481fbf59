//! The inputs of `moe-cli eval`: eval sets from world directories and MedQA / MedMCQA /
//! PubMedQA / medmoe files (schema detected, or named `FORMAT=FILE`), the held-out documents
//! of world directories for per-domain perplexity, and the 13-gram overlap check against
//! training text.

use anyhow::{bail, Context, Result};
use data::corpus::Document;
use data::eval::overlap::{NgramIndex, DEFAULT_N};
use data::eval::readers::{read_eval_file, EvalFormat};
use data::eval::McqItem;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One set, items in evaluation order.
pub struct EvalSet {
    /// Set name (unique).
    pub name: String,
    /// The file it came from.
    pub source: PathBuf,
    /// Format name (`medmoe`, `medqa`, ...).
    pub format: String,
    /// Items.
    pub items: Vec<McqItem>,
}

/// Every set and the world directories among the sources.
pub struct Sources {
    /// Sets in the order given (a world's sets by file name).
    pub sets: Vec<EvalSet>,
    /// World directories given.
    pub worlds: Vec<PathBuf>,
}

const FORMATS: &str = "medmoe, medqa, medmcqa, medmcqa-hf, pubmedqa";

/// The format of a file from its content: a JSON object of PubMedQA records (`.json`), or JSONL
/// whose first record has MedQA (`answer_idx`), MedMCQA (`opa`.. `cop`) or medmoe (`id`,
/// `question`, `options`, `answer`) fields.
pub fn detect_format(path: &Path) -> Result<EvalFormat> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let unknown = |found: String| {
        anyhow::anyhow!(
            "{}: unknown eval schema ({found}); expected a medmoe, MedQA or MedMCQA JSONL file or a PubMedQA \
             JSON object, or name the format: --sets FORMAT={} (FORMAT: {FORMATS})",
            path.display(),
            path.display()
        )
    };
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    };
    if path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| unknown(format!("not one JSON value: line {} column {}: {e}", e.line(), e.column())))?;
        let first = v.as_object().and_then(|o| o.values().next());
        return match first {
            Some(r) if r.get("QUESTION").is_some() && r.get("final_decision").is_some() => Ok(EvalFormat::PubMedQa),
            Some(r) => Err(unknown(format!("the first record has fields {:?}", keys(r)))),
            None => Err(unknown("not a non-empty JSON object".into())),
        };
    }
    let Some(line) = text.lines().find(|l| !l.trim().is_empty()) else {
        bail!("{}: the eval file is empty", path.display());
    };
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| unknown(format!("the first line is not JSON: {e}")))?;
    let has = |k: &str| v.get(k).is_some();
    if has("answer_idx") && has("options") {
        Ok(EvalFormat::MedQa)
    } else if has("opa") && has("cop") {
        Ok(EvalFormat::MedMcqa(data::eval::readers::CopBase::One))
    } else if has("id") && has("question") && has("options") && has("answer") {
        Ok(EvalFormat::Medmoe)
    } else {
        Err(unknown(format!("the first record has fields {:?}", keys(&v))))
    }
}

fn format_name(f: EvalFormat) -> &'static str {
    match f {
        EvalFormat::Medmoe => "medmoe",
        EvalFormat::MedQa => "medqa",
        EvalFormat::MedMcqa(_) => "medmcqa",
        EvalFormat::PubMedQa => "pubmedqa",
    }
}

fn read_set(path: &Path, format: EvalFormat, name: Option<String>) -> Result<EvalSet> {
    let items = read_eval_file(path, format)?;
    if items.is_empty() {
        bail!("{}: the eval set has no items", path.display());
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = name.unwrap_or_else(|| match format {
        EvalFormat::Medmoe => stem,
        other => format_name(other).to_string(),
    });
    Ok(EvalSet { name, source: path.to_path_buf(), format: format_name(format).into(), items })
}

/// Reads every `--sets` source: a world directory (its `eval/*.jsonl`), `FILE` or `FORMAT=FILE`.
pub fn load_sets(specs: &[String]) -> Result<Sources> {
    let mut sets = Vec::new();
    let mut worlds = Vec::new();
    for spec in specs {
        let (format, path) = match spec.split_once('=') {
            Some((f, p)) => (Some(f.parse::<EvalFormat>()?), PathBuf::from(p)),
            None => (None, PathBuf::from(spec)),
        };
        if path.is_dir() {
            let eval = path.join("eval");
            if !eval.is_dir() {
                bail!("{}: not a world directory (no eval/ inside); pass eval files instead", path.display());
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(&eval)
                .with_context(|| format!("reading {}", eval.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{}: no eval sets (*.jsonl)", eval.display());
            }
            for f in files {
                sets.push(read_set(&f, EvalFormat::Medmoe, None)?);
            }
            worlds.push(path);
        } else {
            let format = match format {
                Some(f) => f,
                None => detect_format(&path)?,
            };
            sets.push(read_set(&path, format, None)?);
        }
    }
    let mut seen = BTreeSet::new();
    for s in &sets {
        if !seen.insert(s.name.clone()) {
            bail!(
                "two eval sets are named `{}` (the second from {}); evaluate them separately",
                s.name,
                s.source.display()
            );
        }
    }
    Ok(Sources { sets, worlds })
}

/// The held-out documents of world directories: those the pipeline's data stage puts in its
/// dev split (`label_hash(id) % dev_every == 0`), at most `per_domain` per domain, evenly spaced.
pub fn held_out_docs(worlds: &[PathBuf], dev_every: usize, per_domain: usize) -> Result<Vec<Document>> {
    let mut by_domain: std::collections::BTreeMap<String, Vec<Document>> = Default::default();
    for w in worlds {
        for d in data::world_dir::read_corpus(w)? {
            if data::rng::label_hash(&d.id).is_multiple_of(dev_every.max(2) as u64) {
                by_domain.entry(d.domain.clone()).or_default().push(d);
            }
        }
    }
    let mut out = Vec::new();
    for (_, docs) in by_domain {
        for i in actors::eval::subset_indices(docs.len(), Some(per_domain)) {
            out.push(docs[i].clone());
        }
    }
    Ok(out)
}

/// What the overlap check found for one set.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Overlap {
    /// n-gram length in words.
    pub n: usize,
    /// Items sharing an n-gram with the training text.
    pub overlapping: usize,
    /// Items checked.
    pub items: usize,
    /// The first overlapping item and its shared n-gram.
    pub example: Option<(String, String)>,
}

/// Checks every set against the training texts (13-grams); warns on stderr with counts.
pub fn check_overlap(sets: &[EvalSet], train: &[PathBuf]) -> Result<Vec<Option<Overlap>>> {
    if train.is_empty() {
        return Ok(sets.iter().map(|_| None).collect());
    }
    let mut docs = Vec::new();
    for t in train {
        docs.extend(data::world_dir::read_corpus(t).with_context(|| format!("reading training text {}", t.display()))?);
    }
    let index = NgramIndex::new(docs.iter().map(|d| d.text.as_str()), DEFAULT_N);
    Ok(sets
        .iter()
        .map(|s| {
            let r = index.check(&s.items);
            if !r.is_clean() {
                let (id, gram) = &r.overlapping[0];
                eprintln!(
                    "warning: set `{}`: {} of {} items share a {}-gram with the training text (e.g. {id}: \"{gram}\"); \
                     their scores measure memorisation",
                    s.name,
                    r.overlapping.len(),
                    r.items,
                    r.n
                );
            }
            Some(Overlap {
                n: r.n,
                overlapping: r.overlapping.len(),
                items: r.items,
                example: r.overlapping.first().cloned(),
            })
        })
        .collect())
}
