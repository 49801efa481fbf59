//! The end of a run: totals, the full-overlap check, the two reports, manifest.json, and the
//! rename of the work directory into the output.

use super::config::{OnFullOverlap, PrepareConfig, Split};
use super::dedup::DocRef;
use super::manifest::{
    bottom_k, ContamSample, Counts, DupReportLine, DupSample, EvalSummary, PrepareManifest, PrepareState, PreparedDoc,
    SourceSummary, MANIFEST_FORMAT, VERSION,
};
use super::process::Pipeline;
use super::resume::STATE;
use super::words::{ngram_hashes, word_hashes};
use crate::error::{DataError, Result};
use crate::fsutil::write_json_atomic;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::BufRead;
use std::path::Path;

/// Characters of each text shown in a report line.
const HEAD_CHARS: usize = 200;

fn head(text: &str) -> String {
    text.chars().take(HEAD_CHARS).collect()
}

/// Exact Jaccard similarity of two texts' `n`-word shingle sets.
pub fn shingle_jaccard(a: &str, b: &str, n: usize) -> f64 {
    let set = |t: &str| -> HashSet<u64> {
        let (mut w, mut g) = (Vec::new(), Vec::new());
        word_hashes(t, &mut w);
        ngram_hashes(&w, n.min(w.len().max(1)), &mut g);
        g.into_iter().collect()
    };
    let (x, y) = (set(a), set(b));
    let union = x.union(&y).count();
    if union == 0 {
        return 1.0;
    }
    x.intersection(&y).count() as f64 / union as f64
}

/// Reads the kept documents the samples point at (one pass over each shard involved).
fn kept_docs(
    state: &PrepareState,
    work: &Path,
    refs: &BTreeSet<DocRef>,
) -> Result<BTreeMap<DocRef, (String, PreparedDoc)>> {
    let mut out = BTreeMap::new();
    let mut by_shard: BTreeMap<(u32, u8), BTreeSet<u64>> = BTreeMap::new();
    for r in refs {
        by_shard.entry((r.unit, r.split)).or_default().insert(r.line);
    }
    for ((unit, split), lines) in by_shard {
        let Some(shard) = state.units[unit as usize].shards.iter().find(|s| s.split.index() == split as usize) else {
            continue;
        };
        let path = work.join(&shard.file);
        let f = std::fs::File::open(&path).map_err(|e| DataError::io(&path, e))?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| DataError::io(&path, e))?;
            if lines.contains(&(i as u64)) {
                let doc: PreparedDoc = serde_json::from_str(&line).map_err(|e| DataError::Line {
                    path: path.clone(),
                    line: i + 1,
                    message: e.to_string(),
                })?;
                out.insert(DocRef { unit, split, line: i as u64 }, (format!("{}:{}", shard.file, i + 1), doc));
            }
        }
    }
    Ok(out)
}

fn write_jsonl<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    Ok(atomicio::write_file(path, &crate::jsonl::to_jsonl(rows))?)
}

/// Writes the reports and manifest into `work`, checks eval overlap, and renames `work` to `out`.
pub fn finish(
    config: &PrepareConfig,
    config_sha256: &str,
    pipeline: &Pipeline,
    state: &PrepareState,
    work: &Path,
    out: &Path,
) -> Result<PrepareManifest> {
    let mut counts = Counts::default();
    let mut per_source = vec![Counts::default(); config.sources.len()];
    let mut hits: BTreeSet<u32> = BTreeSet::new();
    let (mut dups, mut contam): (Vec<DupSample>, Vec<ContamSample>) = (Vec::new(), Vec::new());
    for rec in &state.units {
        counts.add(&rec.counts);
        per_source[rec.unit.source].add(&rec.counts);
        hits.extend(rec.eval_hits.iter().copied());
        dups.extend(rec.dup_samples.iter().cloned());
        contam.extend(rec.contam_samples.iter().cloned());
    }
    // Eval sets: items found, full overlap.
    let mut found = vec![0usize; pipeline.eval.sets.len()];
    for &h in &hits {
        found[pipeline.eval.item(h).0] += 1;
    }
    let mut warnings = Vec::new();
    let mut eval = Vec::new();
    for (s, info) in pipeline.eval.sets.iter().enumerate() {
        let removed = counts.contaminated.get(&info.name).copied().unwrap_or(0);
        if info.items > 0 && found[s] == info.items {
            let msg = format!(
                "{}: every one of its {} items (eval set `{}`) is in the corpus; {removed} documents matching \
                 them were removed. The eval set is part of the training data: drop its copy from the sources \
                 or the file from `eval`",
                info.path.display(),
                info.items,
                info.name
            );
            if config.contamination.on_full_overlap == OnFullOverlap::Error {
                return Err(DataError::Check(format!("{msg} (or set contamination.on_full_overlap to \"warn\")")));
            }
            warnings.push(msg);
        }
        eval.push(EvalSummary { info: info.clone(), items_found_in_corpus: found[s], documents_removed: removed });
    }
    if counts.kept == 0 {
        return Err(DataError::Check(format!(
            "no document survived: {} records, {} bad, {} empty, {} too short, languages {:?}, {} contaminated, \
             {} exact and {} near duplicates",
            counts.records,
            counts.bad_records,
            counts.empty,
            counts.too_short,
            counts.language,
            counts.contaminated.values().sum::<u64>(),
            counts.exact_duplicates,
            counts.near_duplicates
        )));
    }
    // Dedup report: resolve the kept side and measure the real similarity.
    bottom_k(&mut dups, config.dedup.report_pairs, |s| s.key);
    let kept = kept_docs(state, work, &dups.iter().map(|d| d.kept).collect())?;
    let n = config.dedup.minhash.shingle_words;
    let lines: Vec<DupReportLine> = dups
        .iter()
        .filter_map(|d| {
            let (at, k) = kept.get(&d.kept)?;
            Some(DupReportLine {
                kind: d.kind,
                removed_id: d.removed_id.clone(),
                removed_source: d.removed_source.clone(),
                kept_id: k.id.clone(),
                kept_at: at.clone(),
                jaccard: shingle_jaccard(&d.removed_text, &k.text, n),
                removed_head: head(&d.removed_text),
                kept_head: head(&k.text),
            })
        })
        .collect();
    write_jsonl(&work.join("dedup_report.jsonl"), &lines)?;
    bottom_k(&mut contam, config.contamination.report_docs, |s| s.key);
    write_jsonl(&work.join("contamination_report.jsonl"), &contam)?;

    let manifest = PrepareManifest {
        format: MANIFEST_FORMAT.into(),
        version: VERSION,
        config_sha256: config_sha256.into(),
        config: config.clone(),
        sources: config
            .sources
            .iter()
            .zip(per_source)
            .map(|(s, c)| SourceSummary {
                name: s.name.clone(),
                path: s.path.clone(),
                license: s.license.clone(),
                domain: s.domain.clone(),
                url_field: s.url_field.clone(),
                counts: c,
            })
            .collect(),
        eval,
        counts,
        dedup_threshold: config.dedup.minhash.threshold(),
        dedup_report_similar: lines.iter().filter(|l| l.jaccard >= 0.5).count(),
        dedup_report_pairs: lines.len(),
        warnings,
        shards: state.units.iter().flat_map(|u| u.shards.iter().cloned()).collect(),
        files: state.units.iter().flat_map(|u| u.files.iter().cloned()).collect(),
    };
    write_json_atomic(&work.join("manifest.json"), &manifest)?;
    std::fs::remove_file(work.join(STATE)).map_err(|e| DataError::io(work.join(STATE), e))?;
    for s in Split::ALL {
        let d = work.join(s.name());
        if std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))?.next().is_none() {
            std::fs::remove_dir(&d).map_err(|e| DataError::io(&d, e))?;
        }
    }
    atomicio::sync_dir(work)?;
    if out.is_dir() {
        // Checked empty at the start; remove_dir refuses a directory that filled up since.
        std::fs::remove_dir(out).map_err(|e| DataError::io(out, e))?;
    }
    std::fs::rename(work, out).map_err(|e| DataError::io(out, e))?;
    atomicio::sync_dir(out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    Ok(manifest)
}
