//! The streaming driver: units in order, each read in batches (processed in parallel, then
//! deduplicated in input order, so the output does not depend on the thread count), written to
//! one shard per split, then recorded in the resume state.
//!
//! Memory: one batch (`batch_docs` documents or 64 MiB of text, whichever comes first) plus the
//! dedup index (see `dedup.rs`) plus the report samples (bounded by `report_pairs` /
//! `report_docs` per unit).

use super::config::{PrepareConfig, SourceConfig, Split};
use super::dedup::{Deduper, DocRef, DupKind};
use super::manifest::{
    bottom_k, ContamSample, Counts, DupSample, PreparedDoc, ShardInfo, UnitRecord, SAMPLE_TEXT_CHARS,
};
use super::process::{Outcome, Pipeline, Processed};
use super::sources::{read_unit, RawDoc, Unit};
use crate::error::{DataError, Result};
use crate::rng::mix64;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Raw text that triggers a batch flush.
const BATCH_BYTES: usize = 64 << 20;

/// Progress events of a prepare run.
#[derive(Clone, Debug, PartialEq)]
pub enum PrepareProgress {
    /// Work planned: units and input bytes.
    Planned {
        /// Units.
        units: usize,
        /// Input bytes.
        bytes: u64,
    },
    /// Resuming: units already done and their bytes (the index is rebuilt from their shards).
    Resumed {
        /// Units finished earlier.
        units: usize,
        /// Their input bytes.
        bytes: u64,
        /// Why earlier work was discarded instead, if it was.
        restarted: Option<String>,
    },
    /// Input bytes done so far (all units).
    Bytes(u64),
}

/// The shard file of a unit and split, relative to the output directory.
pub fn shard_name(source: &SourceConfig, unit: &Unit, split: Split) -> String {
    format!("{}/{}-{:05}.jsonl", split.name(), source.name, unit.index)
}

/// One split's shard of the unit being written (a hidden temporary name until finished).
struct SplitFile {
    rel: String,
    tmp: PathBuf,
    w: BufWriter<File>,
    sha: Sha256,
    documents: u64,
    words: u64,
    bytes: u64,
}

/// The shards of one unit.
struct UnitWriter<'a> {
    work: &'a Path,
    source: &'a SourceConfig,
    unit: &'a Unit,
    files: [Option<SplitFile>; 3],
    line: Vec<u8>,
}

impl<'a> UnitWriter<'a> {
    fn new(work: &'a Path, source: &'a SourceConfig, unit: &'a Unit) -> Self {
        UnitWriter { work, source, unit, files: [None, None, None], line: Vec::new() }
    }

    /// The 0-based line the next document of `split` gets.
    fn next_line(&self, split: Split) -> u64 {
        self.files[split.index()].as_ref().map_or(0, |f| f.documents)
    }

    fn write(&mut self, split: Split, doc: &PreparedDoc, words: u64) -> Result<()> {
        let slot = &mut self.files[split.index()];
        if slot.is_none() {
            let rel = shard_name(self.source, self.unit, split);
            let tmp = self.work.join(split.name()).join(format!(".{}-{:05}.tmp", self.source.name, self.unit.index));
            let f = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
            *slot = Some(SplitFile {
                rel,
                tmp,
                w: BufWriter::with_capacity(1 << 20, f),
                sha: Sha256::new(),
                documents: 0,
                words: 0,
                bytes: 0,
            });
        }
        let f = slot.as_mut().expect("opened above");
        self.line.clear();
        serde_json::to_writer(&mut self.line, doc).map_err(|e| DataError::file(&f.tmp, e.to_string()))?;
        self.line.push(b'\n');
        f.w.write_all(&self.line).map_err(|e| DataError::io(&f.tmp, e))?;
        f.sha.update(&self.line);
        f.documents += 1;
        f.words += words;
        f.bytes += self.line.len() as u64;
        Ok(())
    }

    /// fsyncs and renames every shard into place.
    fn finish(self) -> Result<Vec<ShardInfo>> {
        let mut out = Vec::new();
        for (slot, split) in self.files.into_iter().zip(Split::ALL) {
            let Some(f) = slot else { continue };
            let file = f.w.into_inner().map_err(|e| DataError::io(&f.tmp, e.into_error()))?;
            file.sync_all().map_err(|e| DataError::io(&f.tmp, e))?;
            let target = self.work.join(&f.rel);
            std::fs::rename(&f.tmp, &target).map_err(|e| DataError::io(&target, e))?;
            out.push(ShardInfo {
                file: f.rel,
                source: self.source.name.clone(),
                split,
                license: self.source.license.clone(),
                domain: self.source.domain.clone(),
                url_field: self.source.url_field.clone(),
                inputs: self.unit.files.clone(),
                documents: f.documents,
                words: f.words,
                bytes: f.bytes,
                sha256: f.sha.finalize().iter().map(|b| format!("{b:02x}")).collect(),
            });
        }
        for split in Split::ALL {
            atomicio::sync_dir(&self.work.join(split.name()))?;
        }
        Ok(out)
    }
}

/// The state of one unit being processed.
struct UnitRun<'a> {
    config: &'a PrepareConfig,
    pipeline: &'a Pipeline,
    dedup: &'a mut Deduper,
    unit_index: u32,
    writer: UnitWriter<'a>,
    record: UnitRecord,
    batch: Vec<RawDoc>,
    batch_bytes: usize,
}

impl UnitRun<'_> {
    fn push(&mut self, doc: RawDoc) -> Result<()> {
        self.batch_bytes += doc.text.len();
        self.batch.push(doc);
        if self.batch.len() >= self.config.batch_docs || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let source = &self.config.sources[self.record.unit.source];
        let pipeline = self.pipeline;
        let processed: Vec<Processed> =
            std::mem::take(&mut self.batch).into_par_iter().map(|d| pipeline.process(d, source.split)).collect();
        self.batch_bytes = 0;
        for p in processed {
            self.account(p)?;
        }
        let (k_pairs, k_docs) = (self.config.dedup.report_pairs, self.config.contamination.report_docs);
        bottom_k(&mut self.record.dup_samples, k_pairs, |s| s.key);
        bottom_k(&mut self.record.contam_samples, k_docs, |s| s.key);
        Ok(())
    }

    fn account(&mut self, p: Processed) -> Result<()> {
        let source = &self.config.sources[self.record.unit.source];
        let c = &mut self.record.counts;
        if !p.pii.is_empty() {
            c.pii_documents += 1;
            for (k, n) in &p.pii {
                *c.pii.entry(k.clone()).or_default() += n;
            }
        }
        match p.outcome {
            Outcome::Empty => c.empty += 1,
            Outcome::TooShort => c.too_short += 1,
            Outcome::Language(code) => *c.language.entry(code.to_string()).or_default() += 1,
            Outcome::Contaminated { item, kind, evidence } => {
                let (set, item_id) = self.pipeline.eval.item(item);
                let set = self.pipeline.eval.sets[set].name.clone();
                *c.contaminated.entry(set.clone()).or_default() += 1;
                match kind {
                    super::contamination::HitKind::Ngram => c.contaminated_ngram += 1,
                    super::contamination::HitKind::NearDup => c.contaminated_near_dup += 1,
                }
                self.record.eval_hits.push(item);
                self.record.contam_samples.push(ContamSample {
                    key: mix64(super::dedup::text_hash(&p.text) as u64),
                    id: p.id,
                    source: source.name.clone(),
                    set,
                    item: item_id.to_string(),
                    kind,
                    evidence,
                });
            }
            Outcome::Candidate(keys) => {
                if let Some((kind, kept)) = self.dedup.check(keys.hash, &keys.bands) {
                    match kind {
                        DupKind::Exact => c.exact_duplicates += 1,
                        DupKind::Near => c.near_duplicates += 1,
                    }
                    self.record.dup_samples.push(DupSample {
                        key: mix64(keys.hash as u64),
                        kind,
                        removed_id: p.id,
                        removed_source: source.name.clone(),
                        removed_text: p.text.chars().take(SAMPLE_TEXT_CHARS).collect(),
                        kept,
                    });
                    return Ok(());
                }
                let at = DocRef {
                    unit: self.unit_index,
                    split: keys.split.index() as u8,
                    line: self.writer.next_line(keys.split),
                };
                self.dedup.insert(keys.hash, &keys.bands, at);
                c.kept += 1;
                *c.splits.entry(keys.split.name().to_string()).or_default() += 1;
                if keys.tags.is_empty() {
                    c.untagged += 1;
                }
                for t in &keys.tags {
                    *c.tags.entry(t.clone()).or_default() += 1;
                }
                let doc = PreparedDoc {
                    id: p.id,
                    domain: source.domain.clone(),
                    topic: keys.tags.first().cloned().unwrap_or_default(),
                    form: "prepared".into(),
                    source: source.name.clone(),
                    license: source.license.clone(),
                    text: p.text,
                    url: p.url,
                    tags: keys.tags,
                };
                self.writer.write(keys.split, &doc, keys.words)?;
            }
        }
        Ok(())
    }
}

/// Processes unit `unit_index` into `work`; `bytes_before` is the input bytes of earlier units
/// (for progress).
#[allow(clippy::too_many_arguments)]
pub fn run_unit(
    config: &PrepareConfig,
    pipeline: &Pipeline,
    dedup: &mut Deduper,
    unit_index: u32,
    unit: &Unit,
    work: &Path,
    bytes_before: u64,
    progress: &mut dyn FnMut(PrepareProgress),
) -> Result<UnitRecord> {
    let source = &config.sources[unit.source];
    let mut run = UnitRun {
        config,
        pipeline,
        dedup,
        unit_index,
        writer: UnitWriter::new(work, source, unit),
        record: UnitRecord {
            unit: unit.clone(),
            shards: Vec::new(),
            files: Vec::new(),
            counts: Counts::default(),
            dup_samples: Vec::new(),
            contam_samples: Vec::new(),
            eval_hits: Vec::new(),
        },
        batch: Vec::new(),
        batch_bytes: 0,
    };
    let files =
        read_unit(config, unit, &mut |doc| run.push(doc), &mut |b| progress(PrepareProgress::Bytes(bytes_before + b)))?;
    run.flush()?;
    let UnitRun { writer, mut record, .. } = run;
    record.shards = writer.finish()?;
    record.files = files;
    let c = &mut record.counts;
    c.bytes_in = unit.bytes;
    c.records = record.files.iter().map(|f| f.records).sum();
    c.bad_records = record.files.iter().map(|f| f.bad()).sum();
    c.bytes_out = record.shards.iter().map(|s| s.bytes).sum();
    record.eval_hits.sort_unstable();
    record.eval_hits.dedup();
    progress(PrepareProgress::Bytes(bytes_before + unit.bytes));
    Ok(record)
}
