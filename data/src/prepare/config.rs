//! The prepare config: sources, eval files, filters and the parameters of every step.
//!
//! Read raw with serde (`deny_unknown_fields`, so a misspelt key is an error naming it);
//! [`PrepareConfig::read`] resolves relative paths against the config file's directory and
//! [`PrepareConfig::validate`] checks every value (`prepare::load_config` does both and compiles
//! the PII and tag rules) before any work starts.

use crate::error::{DataError, Result};
use crate::eval::readers::EvalFormat;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole `data prepare` config (one JSON file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareConfig {
    /// Corpus sources, processed in this order.
    pub sources: Vec<SourceConfig>,
    /// Evaluation files every document is checked against (contamination).
    #[serde(default)]
    pub eval: Vec<EvalFileConfig>,
    /// Unicode normalisation and cleaning.
    #[serde(default)]
    pub normalize: NormalizeConfig,
    /// Length and language filters.
    #[serde(default)]
    pub filter: FilterConfig,
    /// PII scrubbing.
    #[serde(default)]
    pub pii: PiiConfig,
    /// Exact and near-duplicate removal.
    #[serde(default)]
    pub dedup: DedupConfig,
    /// Eval-set contamination check.
    #[serde(default)]
    pub contamination: ContaminationConfig,
    /// Domain tags by keyword rules.
    #[serde(default)]
    pub tags: TagsConfig,
    /// Train / val / test shares for sources without a split of their own.
    #[serde(default)]
    pub split: SplitConfig,
    /// More than this fraction of bad records (invalid UTF-8 / JSON, missing text) in one input
    /// file is an error (a wrong `text_fields` mapping otherwise gives an empty corpus).
    #[serde(default = "default_max_bad_fraction")]
    pub max_bad_fraction: f64,
    /// Documents processed together (in parallel) before deduplication; bounds memory.
    #[serde(default = "default_batch_docs")]
    pub batch_docs: usize,
    /// Files of a plain-text directory source per unit of work (one unit is the step of resume).
    #[serde(default = "default_text_files_per_unit")]
    pub text_files_per_unit: usize,
}

fn default_max_bad_fraction() -> f64 {
    0.1
}
fn default_batch_docs() -> usize {
    4096
}
fn default_text_files_per_unit() -> usize {
    10_000
}

/// File format of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// JSON Lines, one document per line (`.jsonl`).
    Jsonl,
    /// Apache Parquet with string columns (`.parquet`).
    Parquet,
    /// A directory of plain-text files, one document per file (`.txt`, recursively).
    Text,
}

impl SourceFormat {
    /// File extension of this format's files inside a source directory.
    pub fn extension(self) -> &'static str {
        match self {
            SourceFormat::Jsonl => "jsonl",
            SourceFormat::Parquet => "parquet",
            SourceFormat::Text => "txt",
        }
    }
}

/// One corpus source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name (letters, digits, `-`, `_`): shard file names and the `source` of every document.
    pub name: String,
    /// File format.
    pub format: SourceFormat,
    /// A file, or a directory of files of the format (sorted; text: recursive).
    pub path: PathBuf,
    /// Fields (JSONL: dotted paths such as `meta.abstract`; Parquet: top-level string columns)
    /// whose values, joined by a blank line, are the text. Ignored for text directories.
    #[serde(default = "default_text_fields")]
    pub text_fields: Vec<String>,
    /// Field with the document id (default: `<source>:<file>:<line>`).
    #[serde(default)]
    pub id_field: Option<String>,
    /// Field with the document's URL, carried into every output record and named in the manifest.
    #[serde(default)]
    pub url_field: Option<String>,
    /// Domain tag of every document (`medical`, `general`, ...).
    pub domain: String,
    /// License (SPDX id) of the source.
    pub license: String,
    /// `train`, `val` or `test` when the source is one split already; default: split by hash.
    #[serde(default)]
    pub split: Option<Split>,
}

fn default_text_fields() -> Vec<String> {
    vec!["text".into()]
}

/// An evaluation file to keep out of the corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalFileConfig {
    /// Set name in reports.
    pub name: String,
    /// `medqa`, `medmcqa` (cop 1-4), `medmcqa-hf` (cop 0-3), `pubmedqa` or `medmoe`.
    pub format: String,
    /// The file.
    pub path: PathBuf,
}

impl EvalFileConfig {
    /// The parsed format.
    pub fn parsed_format(&self) -> Result<EvalFormat> {
        self.format.parse()
    }
}

/// Normalisation switches (all on by default; see `normalize.rs` for each rule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeConfig {
    /// Unicode NFKC.
    pub nfkc: bool,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig { nfkc: true }
    }
}

/// Document filters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Fewer words than this after cleaning: dropped (`too_short`).
    pub min_words: usize,
    /// ISO 639-3 codes to keep (`eng`, `deu`, ...); empty keeps every language.
    pub languages: Vec<String>,
    /// Characters from the start of a document the language detector looks at.
    pub lang_sample_chars: usize,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig { min_words: 5, languages: vec!["eng".into()], lang_sample_chars: 1000 }
    }
}

/// One PII rule: a regular expression and what replaces each match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiRule {
    /// Kind counted in the manifest (`email`, `phone`, ... or a new one).
    pub kind: String,
    /// Regular expression (Rust `regex` syntax; named groups usable in `replacement`).
    pub pattern: String,
    /// Replacement (`$name` refers to a named group).
    pub replacement: String,
}

/// PII scrubbing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiiConfig {
    /// Scrub at all.
    pub enabled: bool,
    /// Built-in kinds to leave out (`email`, `url_credentials`, `phone`, `date_of_birth`,
    /// `postal_address`, `record_id`).
    pub disable: Vec<String>,
    /// More rules, applied after the built-in ones.
    pub extra_rules: Vec<PiiRule>,
}

impl Default for PiiConfig {
    fn default() -> Self {
        PiiConfig { enabled: true, disable: Vec::new(), extra_rules: Vec::new() }
    }
}

/// MinHash-LSH parameters: `bands * rows` hash functions; two documents with Jaccard similarity
/// `s` of their word shingles share a band with probability `1 - (1 - s^rows)^bands`
/// (threshold about `(1/bands)^(1/rows)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinHashConfig {
    /// Words per shingle.
    pub shingle_words: usize,
    /// LSH bands.
    pub bands: usize,
    /// Hash values per band.
    pub rows: usize,
    /// Seed of the hash functions.
    pub seed: u64,
}

impl Default for MinHashConfig {
    fn default() -> Self {
        MinHashConfig { shingle_words: 5, bands: 16, rows: 8, seed: 0 }
    }
}

impl MinHashConfig {
    /// The similarity at which a pair is found with probability 1/2... roughly: `(1/b)^(1/r)`.
    pub fn threshold(&self) -> f64 {
        (1.0 / self.bands as f64).powf(1.0 / self.rows as f64)
    }

    /// Probability that a pair with Jaccard similarity `s` shares at least one band.
    pub fn detection_probability(&self, s: f64) -> f64 {
        1.0 - (1.0 - s.powi(self.rows as i32)).powi(self.bands as i32)
    }
}

/// Duplicate removal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Remove exact duplicates (same cleaned text, by SHA-256).
    pub exact: bool,
    /// Remove near duplicates (MinHash-LSH).
    pub near: bool,
    /// MinHash-LSH parameters.
    pub minhash: MinHashConfig,
    /// Removed pairs kept in dedup_report.jsonl (a deterministic sample).
    pub report_pairs: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig { exact: true, near: true, minhash: MinHashConfig::default(), report_pairs: 200 }
    }
}

/// What to do when every item of an eval file is found in the corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFullOverlap {
    /// Fail (the default): the eval set is inside the training data.
    Error,
    /// Remove the documents, warn, and finish.
    Warn,
}

/// Contamination check against the eval files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContaminationConfig {
    /// Word n-gram length (13, as GPT-3's decontamination).
    pub ngram: usize,
    /// Also remove near duplicates of an eval item (MinHash-LSH with these parameters).
    pub near_dup: bool,
    /// MinHash-LSH parameters of the near-duplicate check.
    pub minhash: MinHashConfig,
    /// Every item of an eval file found in the corpus: `error` or `warn`.
    pub on_full_overlap: OnFullOverlap,
    /// Removed documents listed in contamination_report.jsonl (a deterministic sample).
    pub report_docs: usize,
}

impl Default for ContaminationConfig {
    fn default() -> Self {
        ContaminationConfig {
            ngram: 13,
            near_dup: true,
            minhash: MinHashConfig { shingle_words: 3, bands: 20, rows: 5, seed: 1 },
            on_full_overlap: OnFullOverlap::Error,
            report_docs: 200,
        }
    }
}

/// One tag rule: the tag is given when the keywords occur at least `min_hits` times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRule {
    /// Tag name (MeSH-like, e.g. `C14 Cardiovascular Diseases`).
    pub tag: String,
    /// Lowercase whole words or phrases; a trailing `*` matches any word ending (`cardi*`).
    pub keywords: Vec<String>,
}

/// Domain tags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagsConfig {
    /// Use the built-in MeSH-like rules.
    pub builtin: bool,
    /// Keyword hits a tag needs.
    pub min_hits: usize,
    /// More rules.
    pub extra: Vec<TagRule>,
}

impl Default for TagsConfig {
    fn default() -> Self {
        TagsConfig { builtin: true, min_hits: 2, extra: Vec::new() }
    }
}

/// A split name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training data.
    Train,
    /// Validation data.
    Val,
    /// Test data.
    Test,
}

impl Split {
    /// All splits in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The directory name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// Index in [`Split::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Split shares (must sum to 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Share of train.
    pub train: f64,
    /// Share of val.
    pub val: f64,
    /// Share of test.
    pub test: f64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig { train: 0.8, val: 0.1, test: 0.1 }
    }
}

fn bad(what: impl Into<String>, message: impl Into<String>) -> DataError {
    DataError::config(what, message)
}

impl PrepareConfig {
    /// Reads `path` and resolves relative source and eval paths against its directory (no
    /// checks: `prepare::load_config` reads and checks).
    pub fn read(path: &Path) -> Result<Self> {
        let mut c: PrepareConfig = crate::fsutil::read_json(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for s in &mut c.sources {
            if s.path.is_relative() {
                s.path = base.join(&s.path);
            }
        }
        for e in &mut c.eval {
            if e.path.is_relative() {
                e.path = base.join(&e.path);
            }
        }
        Ok(c)
    }

    /// Checks every value (names, fields, parameters, shares, languages); the PII and tag rules
    /// are compiled by `prepare::check_config`.
    pub fn validate(&self) -> Result<()> {
        if self.sources.is_empty() {
            return Err(bad("sources", "no sources"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let what = format!("sources[{i}]");
            if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(bad(what, format!("name `{}` must be letters, digits, `-` or `_`", s.name)));
            }
            if !names.insert(s.name.as_str()) {
                return Err(bad(what, format!("name `{}` is used twice", s.name)));
            }
            if s.format != SourceFormat::Text
                && (s.text_fields.is_empty() || s.text_fields.iter().any(|f| f.is_empty()))
            {
                return Err(bad(what, "text_fields must name at least one non-empty field"));
            }
            if s.domain.trim().is_empty() || s.license.trim().is_empty() {
                return Err(bad(what, "domain and license must not be empty"));
            }
        }
        let mut eval_names = std::collections::BTreeSet::new();
        for (i, e) in self.eval.iter().enumerate() {
            e.parsed_format().map_err(|err| bad(format!("eval[{i}].format"), err.to_string()))?;
            if !eval_names.insert(e.name.as_str()) {
                return Err(bad(format!("eval[{i}]"), format!("name `{}` is used twice", e.name)));
            }
        }
        if !(0.0..=1.0).contains(&self.max_bad_fraction) {
            return Err(bad("max_bad_fraction", format!("{} is not in [0, 1]", self.max_bad_fraction)));
        }
        if self.batch_docs == 0 || self.text_files_per_unit == 0 {
            return Err(bad("batch_docs / text_files_per_unit", "must be at least 1"));
        }
        for code in &self.filter.languages {
            if whatlang::Lang::from_code(code).is_none() {
                return Err(bad("filter.languages", format!("`{code}` is not an ISO 639-3 code whatlang knows")));
            }
        }
        if self.filter.lang_sample_chars == 0 {
            return Err(bad("filter.lang_sample_chars", "must be at least 1"));
        }
        check_minhash("dedup.minhash", &self.dedup.minhash)?;
        check_minhash("contamination.minhash", &self.contamination.minhash)?;
        if !(1..=64).contains(&self.contamination.ngram) {
            return Err(bad("contamination.ngram", format!("{} is not in 1..=64", self.contamination.ngram)));
        }
        let SplitConfig { train, val, test } = self.split;
        if [train, val, test].iter().any(|x| !(0.0..=1.0).contains(x)) || ((train + val + test) - 1.0).abs() > 1e-9 {
            return Err(bad("split", format!("shares {train}, {val}, {test} must be in [0, 1] and sum to 1")));
        }
        Ok(())
    }
}

fn check_minhash(what: &str, m: &MinHashConfig) -> Result<()> {
    if m.shingle_words == 0 || m.bands == 0 || m.rows == 0 || m.bands * m.rows > 1024 {
        return Err(bad(
            what,
            format!(
                "shingle_words {}, bands {}, rows {}: each at least 1 and bands * rows <= 1024",
                m.shingle_words, m.bands, m.rows
            ),
        ));
    }
    Ok(())
}
