//! `moe-cli data prepare --config <file> --out <dir>`: a user's corpus cleaned, scrubbed,
//! deduplicated, decontaminated, tagged and split (see `data::prepare`). Resumable: run the same
//! command again after an interruption.

use anyhow::{Context, Result};
use data::prepare::{PrepareManifest, PrepareProgress};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

fn bytes_bar() -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message("prepare");
    pb
}

/// Runs the command.
pub fn run(config: &Path, out: &Path, json: bool) -> Result<()> {
    let start = std::time::Instant::now();
    let cfg = data::prepare::load_config(config)?;
    let pb = bytes_bar();
    let mut notes = Vec::new();
    let manifest = data::prepare::prepare(&cfg, out, &mut |p| match p {
        PrepareProgress::Planned { bytes, .. } => pb.set_length(bytes),
        PrepareProgress::Resumed { units, bytes, restarted } => {
            pb.set_position(bytes);
            match restarted {
                Some(why) => notes.push(why),
                None => notes.push(format!("resumed after {units} finished units")),
            }
        }
        PrepareProgress::Bytes(b) => pb.set_position(b),
    })
    .with_context(|| format!("preparing {} from {}", out.display(), config.display()))?;
    pb.finish_and_clear();
    for n in &notes {
        println!("note       {n}");
    }
    let secs = start.elapsed().as_secs_f64();
    print_summary(&manifest, out, secs);
    if json {
        let c = &manifest.counts;
        let line = serde_json::json!({
            "bench": "prepare", "bytes_in": c.bytes_in, "bytes_out": c.bytes_out, "seconds": secs,
            "mb_per_s": c.bytes_in as f64 / 1e6 / secs, "records": c.records, "kept": c.kept,
            "exact_duplicates": c.exact_duplicates, "near_duplicates": c.near_duplicates,
            "contaminated": c.contaminated, "pii": c.pii, "threads": rayon::current_num_threads(),
        });
        println!("{line}");
    }
    Ok(())
}

fn print_summary(m: &PrepareManifest, out: &Path, secs: f64) {
    let c = &m.counts;
    println!(
        "prepare    {} ({} shards, {:.1} MB in, {:.1} MB out, {secs:.1} s = {:.1} MB/s)",
        out.display(),
        m.shards.len(),
        c.bytes_in as f64 / 1e6,
        c.bytes_out as f64 / 1e6,
        c.bytes_in as f64 / 1e6 / secs
    );
    for s in &m.sources {
        println!(
            "source     {:<16} {:>9} records {:>9} kept  license {}{}",
            s.name,
            s.counts.records,
            s.counts.kept,
            s.license,
            s.url_field.as_ref().map(|u| format!("  url field `{u}`")).unwrap_or_default()
        );
    }
    println!(
        "filtered   {} bad records, {} empty, {} too short, {} other language {:?}",
        c.bad_records,
        c.empty,
        c.too_short,
        c.language.values().sum::<u64>(),
        c.language
    );
    println!("pii        {} documents scrubbed: {:?}", c.pii_documents, c.pii);
    println!(
        "dedup      {} exact, {} near duplicates removed (LSH threshold ~{:.2}; {} of {} sampled pairs have Jaccard >= 0.5)",
        c.exact_duplicates, c.near_duplicates, m.dedup_threshold, m.dedup_report_similar, m.dedup_report_pairs
    );
    for e in &m.eval {
        println!(
            "eval       {:<16} {:>6} items ({} shorter than the n-gram), {} found in the corpus, {} documents removed",
            e.info.name, e.info.items, e.info.short_items, e.items_found_in_corpus, e.documents_removed
        );
    }
    println!("splits     {:?}", c.splits);
    println!("kept       {} documents ({} untagged)", c.kept, c.untagged);
    for f in m.files.iter().filter(|f| f.bad() > 0) {
        println!(
            "warning    {}: {} of {} records skipped ({} invalid UTF-8, {} invalid JSON, {} without text): {}",
            f.path.display(),
            f.bad(),
            f.records,
            f.invalid_utf8,
            f.invalid_json,
            f.missing_text,
            f.examples.join("; ")
        );
    }
    for w in &m.warnings {
        println!("warning    {w}");
    }
}
