//! What `data prepare` writes besides the shards: the output record, per-shard entries, counts,
//! report samples, the resume state and the final manifest.
//!
//! Output directory:
//! ```text
//! train/<source>-<unit>.jsonl, val/..., test/...   PreparedDoc lines (packable by `data pack`)
//! manifest.json                                    PrepareManifest
//! dedup_report.jsonl                               sampled removed pairs (DupReportLine)
//! contamination_report.jsonl                       sampled removed documents (ContamSample)
//! ```

use super::config::{PrepareConfig, Split};
use super::contamination::{EvalSetInfo, HitKind};
use super::dedup::{DocRef, DupKind};
use super::sources::{FileReport, Unit};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Format tag of manifest.json.
pub const MANIFEST_FORMAT: &str = "medmoe-prepare";
/// Version of the manifest and state files.
pub const VERSION: u32 = 1;

/// One output line: the corpus document schema of `data pack` plus `url` and `tags`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreparedDoc {
    /// Id from the source.
    pub id: String,
    /// Domain of the source.
    pub domain: String,
    /// The first (strongest) tag, or empty.
    pub topic: String,
    /// Always `prepared` (the text form of the synthetic world does not apply).
    pub form: String,
    /// Source name.
    pub source: String,
    /// License of the source.
    pub license: String,
    /// Cleaned, scrubbed text.
    pub text: String,
    /// Value of the source's `url_field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// MeSH-like domain tags, most hits first.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One output shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Path relative to the output directory.
    pub file: String,
    /// Source name.
    pub source: String,
    /// Split.
    pub split: Split,
    /// License of the source.
    pub license: String,
    /// Domain of the source.
    pub domain: String,
    /// The source's URL field (each record's `url`), if it has one.
    pub url_field: Option<String>,
    /// Input files of the unit.
    pub inputs: Vec<PathBuf>,
    /// Documents.
    pub documents: u64,
    /// Words (as counted by the dedup tokenizer).
    pub words: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// Additive counts (per unit, summed for the run).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Input bytes.
    pub bytes_in: u64,
    /// Records read (documents + bad records).
    pub records: u64,
    /// Bad records (see the per-file reports).
    pub bad_records: u64,
    /// Documents empty after cleaning.
    pub empty: u64,
    /// Documents with fewer than `filter.min_words` words.
    pub too_short: u64,
    /// Documents dropped by the language filter, per detected language.
    pub language: BTreeMap<String, u64>,
    /// PII matches replaced, per kind.
    pub pii: BTreeMap<String, u64>,
    /// Documents with at least one PII replacement.
    pub pii_documents: u64,
    /// Documents removed as contaminated, per eval set.
    pub contaminated: BTreeMap<String, u64>,
    /// ... of which by a shared n-gram.
    pub contaminated_ngram: u64,
    /// ... of which as near duplicates of an item.
    pub contaminated_near_dup: u64,
    /// Exact duplicates removed.
    pub exact_duplicates: u64,
    /// Near duplicates removed.
    pub near_duplicates: u64,
    /// Documents kept.
    pub kept: u64,
    /// Kept documents per split.
    pub splits: BTreeMap<String, u64>,
    /// Kept documents per tag (a document counts once per tag).
    pub tags: BTreeMap<String, u64>,
    /// Kept documents without any tag.
    pub untagged: u64,
    /// Bytes of the output shards.
    pub bytes_out: u64,
}

fn add_map(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

impl Counts {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Counts) {
        self.bytes_in += o.bytes_in;
        self.records += o.records;
        self.bad_records += o.bad_records;
        self.empty += o.empty;
        self.too_short += o.too_short;
        add_map(&mut self.language, &o.language);
        add_map(&mut self.pii, &o.pii);
        self.pii_documents += o.pii_documents;
        add_map(&mut self.contaminated, &o.contaminated);
        self.contaminated_ngram += o.contaminated_ngram;
        self.contaminated_near_dup += o.contaminated_near_dup;
        self.exact_duplicates += o.exact_duplicates;
        self.near_duplicates += o.near_duplicates;
        self.kept += o.kept;
        add_map(&mut self.splits, &o.splits);
        add_map(&mut self.tags, &o.tags);
        self.untagged += o.untagged;
        self.bytes_out += o.bytes_out;
    }
}

/// A removed duplicate, kept for the report (bottom-k by `key`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DupSample {
    /// Sampling key (a hash of the removed text).
    pub key: u64,
    /// Exact or near.
    pub kind: DupKind,
    /// The removed document's id.
    pub removed_id: String,
    /// Its source.
    pub removed_source: String,
    /// Its cleaned text (at most [`SAMPLE_TEXT_CHARS`] characters).
    pub removed_text: String,
    /// The kept document it duplicates.
    pub kept: DocRef,
}

/// Characters of a removed document kept in a sample.
pub const SAMPLE_TEXT_CHARS: usize = 20_000;

/// A removed contaminated document, kept for the report (bottom-k by `key`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContamSample {
    /// Sampling key.
    pub key: u64,
    /// Document id.
    pub id: String,
    /// Its source.
    pub source: String,
    /// Eval set.
    pub set: String,
    /// Eval item id.
    pub item: String,
    /// How it matched.
    pub kind: HitKind,
    /// The shared n-gram as it appears in the document (n-gram hits), or the document's start.
    pub evidence: String,
}

/// One line of dedup_report.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DupReportLine {
    /// Exact or near.
    pub kind: DupKind,
    /// Removed document id and source.
    pub removed_id: String,
    /// Source of the removed document.
    pub removed_source: String,
    /// Kept document id.
    pub kept_id: String,
    /// Where the kept document is (`train/src-00000.jsonl:17`, 1-based line).
    pub kept_at: String,
    /// Jaccard similarity of the two documents' word-shingle sets (computed exactly).
    pub jaccard: f64,
    /// Start of the removed text.
    pub removed_head: String,
    /// Start of the kept text.
    pub kept_head: String,
}

/// Everything one finished unit contributed (the resume state keeps these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The unit.
    pub unit: Unit,
    /// Its shards (non-empty splits).
    pub shards: Vec<ShardInfo>,
    /// Per-file reports.
    pub files: Vec<FileReport>,
    /// Counts.
    pub counts: Counts,
    /// Its duplicate samples (bottom-k).
    pub dup_samples: Vec<DupSample>,
    /// Its contamination samples (bottom-k).
    pub contam_samples: Vec<ContamSample>,
    /// Global indexes of the eval items its documents matched (sorted, unique).
    pub eval_hits: Vec<u32>,
}

/// The resume state in the work directory (`state.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareState {
    /// [`VERSION`].
    pub version: u32,
    /// SHA-256 of the resolved config.
    pub config_sha256: String,
    /// Finished units, in order.
    pub units: Vec<UnitRecord>,
}

/// A source as summarised in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceSummary {
    /// Name.
    pub name: String,
    /// Path.
    pub path: PathBuf,
    /// License.
    pub license: String,
    /// Domain.
    pub domain: String,
    /// URL field, if any.
    pub url_field: Option<String>,
    /// Counts of this source.
    pub counts: Counts,
}

/// An eval set as summarised in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The set as indexed.
    #[serde(flatten)]
    pub info: EvalSetInfo,
    /// Items matched by at least one corpus document.
    pub items_found_in_corpus: usize,
    /// Corpus documents removed for this set.
    pub documents_removed: u64,
}

/// manifest.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// SHA-256 of the resolved config.
    pub config_sha256: String,
    /// The config as run.
    pub config: PrepareConfig,
    /// Per source.
    pub sources: Vec<SourceSummary>,
    /// Per eval set.
    pub eval: Vec<EvalSummary>,
    /// Totals.
    pub counts: Counts,
    /// Near-duplicate similarity threshold of the dedup LSH, about `(1/b)^(1/r)`.
    pub dedup_threshold: f64,
    /// Sampled dedup pairs whose exact Jaccard similarity is at least 0.5 (of those reported).
    pub dedup_report_similar: usize,
    /// Dedup pairs reported.
    pub dedup_report_pairs: usize,
    /// Warnings (eval files fully inside the corpus under `on_full_overlap: warn`).
    pub warnings: Vec<String>,
    /// Every output shard.
    pub shards: Vec<ShardInfo>,
    /// Every input file's report.
    pub files: Vec<FileReport>,
}

/// Keeps the `k` smallest-keyed items of `v` (sorted by key).
pub fn bottom_k<T>(v: &mut Vec<T>, k: usize, key: impl Fn(&T) -> u64) {
    v.sort_by_key(&key);
    v.truncate(k);
}
