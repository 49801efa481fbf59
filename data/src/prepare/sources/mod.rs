//! Corpus sources: the units of work, and streaming readers that turn each input record into a
//! raw document or a counted bad record.
//!
//! A unit is one JSONL or Parquet file, or up to `text_files_per_unit` files of a plain-text
//! directory: the step of progress and of resume. Bad records (invalid UTF-8, invalid JSON, no
//! text in any of `text_fields`) are counted per file with the first few line numbers, never
//! dropped silently; a file with more than `max_bad_fraction` bad records is an error.

mod jsonl;
mod parquet;
pub mod parquet_write;
mod text;

use super::config::{PrepareConfig, SourceConfig, SourceFormat};
use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use parquet::check_parquet_schema;

/// One document as read, before cleaning.
#[derive(Clone, Debug, PartialEq)]
pub struct RawDoc {
    /// Id (from `id_field`, else `<source>:<file>:<line>`).
    pub id: String,
    /// Text fields joined by a blank line.
    pub text: String,
    /// Value of `url_field`, if any.
    pub url: Option<String>,
}

/// Why a record gave no document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadKind {
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not a JSON object.
    InvalidJson,
    /// None of the text fields is present as a string (or a Parquet null).
    MissingText,
}

/// Counts of one input file (or one text directory unit).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileReport {
    /// The file (a directory for text sources).
    pub path: PathBuf,
    /// Records read (lines that are not blank, Parquet rows, text files).
    pub records: u64,
    /// Blank lines skipped (JSONL).
    pub blank_lines: u64,
    /// Records that are not valid UTF-8.
    pub invalid_utf8: u64,
    /// Lines that are not a JSON object.
    pub invalid_json: u64,
    /// Records with none of the text fields.
    pub missing_text: u64,
    /// The first bad records (`line 17: not valid UTF-8`).
    pub examples: Vec<String>,
}

/// Bad-record examples kept per file.
const EXAMPLES: usize = 5;

impl FileReport {
    /// A report for `path`.
    pub fn new(path: &Path) -> Self {
        FileReport { path: path.to_path_buf(), ..Default::default() }
    }

    /// All bad records.
    pub fn bad(&self) -> u64 {
        self.invalid_utf8 + self.invalid_json + self.missing_text
    }

    /// Counts a bad record at `location` (`line 17`, `row 3`, a file name).
    pub fn count_bad(&mut self, kind: BadKind, location: impl FnOnce() -> String, fields: &[String]) {
        let what = match kind {
            BadKind::InvalidUtf8 => {
                self.invalid_utf8 += 1;
                "not valid UTF-8".to_string()
            }
            BadKind::InvalidJson => {
                self.invalid_json += 1;
                "not a JSON object".to_string()
            }
            BadKind::MissingText => {
                self.missing_text += 1;
                format!("no text in {}", fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", "))
            }
        };
        if self.examples.len() < EXAMPLES {
            self.examples.push(format!("{}: {what}", location()));
        }
    }

    /// The `max_bad_fraction` check.
    pub fn check(&self, max_bad_fraction: f64, source: &SourceConfig) -> Result<()> {
        let bad = self.bad();
        if bad > 0 && bad as f64 > max_bad_fraction * self.records as f64 {
            return Err(DataError::file(
                &self.path,
                format!(
                    "{bad} of {} records are bad ({} invalid UTF-8, {} invalid JSON, {} without text in {:?}; \
                     first: {}), more than max_bad_fraction {}: check the file and the source's text_fields",
                    self.records,
                    self.invalid_utf8,
                    self.invalid_json,
                    self.missing_text,
                    source.text_fields,
                    self.examples.join("; "),
                    max_bad_fraction
                ),
            ));
        }
        Ok(())
    }
}

/// One unit of work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Index of the source in the config.
    pub source: usize,
    /// Index of the unit within its source (shard numbers).
    pub index: u32,
    /// Input files.
    pub files: Vec<PathBuf>,
    /// Their total size.
    pub bytes: u64,
}

/// Lists the files of a source (a file, or a directory: sorted; text sources recursively).
fn source_files(s: &SourceConfig) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(&s.path).map_err(|e| DataError::io(&s.path, e))?;
    if meta.is_file() {
        if s.format == SourceFormat::Text {
            return Err(DataError::file(&s.path, format!("source `{}`: format text needs a directory", s.name)));
        }
        return Ok(vec![s.path.clone()]);
    }
    let mut files = Vec::new();
    collect(&s.path, s.format.extension(), s.format == SourceFormat::Text, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(DataError::file(
            &s.path,
            format!("source `{}`: no .{} files in this directory", s.name, s.format.extension()),
        ));
    }
    Ok(files)
}

fn collect(dir: &Path, ext: &str, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let p = e.map_err(|e| DataError::io(dir, e))?.path();
        if p.is_dir() {
            if recursive {
                collect(&p, ext, recursive, out)?;
            }
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    Ok(())
}

/// Every unit of the config, in order; checks that inputs exist and Parquet schemas fit (so a
/// wrong schema fails before any output is written).
pub fn plan_units(config: &PrepareConfig) -> Result<Vec<Unit>> {
    let mut units = Vec::new();
    for (si, s) in config.sources.iter().enumerate() {
        let files = source_files(s)?;
        let size = |f: &PathBuf| std::fs::metadata(f).map(|m| m.len()).map_err(|e| DataError::io(f, e));
        match s.format {
            SourceFormat::Text => {
                for (i, chunk) in files.chunks(config.text_files_per_unit).enumerate() {
                    let bytes = chunk.iter().map(size).sum::<Result<u64>>()?;
                    units.push(Unit { source: si, index: i as u32, files: chunk.to_vec(), bytes });
                }
            }
            SourceFormat::Jsonl | SourceFormat::Parquet => {
                for (i, f) in files.into_iter().enumerate() {
                    if s.format == SourceFormat::Parquet {
                        check_parquet_schema(&f, s)?;
                    }
                    let bytes = size(&f)?;
                    units.push(Unit { source: si, index: i as u32, files: vec![f], bytes });
                }
            }
        }
    }
    if units.len() >= 1 << 24 {
        return Err(DataError::config("sources", format!("{} units of work (at most 2^24)", units.len())));
    }
    Ok(units)
}

/// Reads a unit: `on_doc` gets every document, `on_bytes` the input bytes consumed so far in the
/// unit. Returns one report per file (per unit for text directories), each checked against
/// `max_bad_fraction`.
pub fn read_unit(
    config: &PrepareConfig,
    unit: &Unit,
    on_doc: &mut dyn FnMut(RawDoc) -> Result<()>,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Vec<FileReport>> {
    let s = &config.sources[unit.source];
    let mut reports = Vec::new();
    let mut done = 0u64;
    match s.format {
        SourceFormat::Text => {
            let mut report = FileReport::new(&s.path);
            text::read_files(s, &unit.files, &mut report, on_doc, &mut |b| on_bytes(b))?;
            reports.push(report);
        }
        SourceFormat::Jsonl | SourceFormat::Parquet => {
            for f in &unit.files {
                let mut report = FileReport::new(f);
                let mut bytes = |b: u64| on_bytes(done + b);
                if s.format == SourceFormat::Jsonl {
                    jsonl::read_file(s, f, &mut report, on_doc, &mut bytes)?;
                } else {
                    parquet::read_file(s, f, &mut report, on_doc, &mut bytes)?;
                }
                done += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                reports.push(report);
            }
        }
    }
    for r in &reports {
        r.check(config.max_bad_fraction, s)?;
    }
    Ok(reports)
}

/// The default id of a record: `<source>:<file stem>:<line or row>`.
fn default_id(source: &str, file: &Path, n: u64) -> String {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{source}:{stem}:{n}")
}
