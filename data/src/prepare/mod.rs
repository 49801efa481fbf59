//! `data prepare`: a user's corpus (JSONL / Parquet / plain-text directories) cleaned, filtered,
//! scrubbed, deduplicated, decontaminated, tagged and split into shards `data pack` reads.
//!
//! Per document ([`process`], in parallel over a batch): Unicode NFKC and cleaning
//! ([`normalize`]) -> length filter -> language filter ([`lang`], whatlang) -> PII scrub
//! ([`pii`], an extensible rule table, counts per kind) -> contamination check against every eval
//! file ([`contamination`]: 13-gram overlap and MinHash near-duplicates) -> dedup keys (SHA-256 of
//! the text, MinHash-LSH bands: [`minhash`], [`words`]) -> MeSH-like tags ([`tags`]) -> split
//! ([`split`], 80/10/10 by hash unless the source has one). Then, in input order ([`driver`]):
//! exact and near-duplicate removal against everything kept so far ([`dedup`]), and the write.
//!
//! Work is done in units (one input file, or a group of text files) in a hidden work directory
//! beside the output; after each unit its shards and the resume state are made durable
//! ([`resume`]). At the end ([`finish`]) the reports and manifest ([`manifest`]) are written and
//! the work directory is renamed to the output: the output appears whole or not at all. Bad
//! input (a missing file, a Parquet file without the text column, an eval file that does not
//! parse) fails before any work; bad records are counted per file ([`sources`]).

pub mod config;
pub mod contamination;
pub mod dedup;
pub mod driver;
pub mod finish;
pub mod lang;
pub mod manifest;
pub mod minhash;
pub mod normalize;
pub mod pii;
pub mod process;
pub mod resume;
pub mod sources;
pub mod split;
pub mod tags;
pub mod words;

pub use config::PrepareConfig;
pub use driver::PrepareProgress;
pub use manifest::PrepareManifest;

use crate::error::{DataError, Result};
use contamination::EvalIndex;
use dedup::Deduper;
use process::Pipeline;
use std::path::Path;

/// Test hooks of [`prepare_with`].
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// Stop with an I/O error (as a kill would) after this many units of this run.
    pub stop_after_units: Option<usize>,
}

/// Reads and indexes every eval file of the config (errors name the file and line).
pub fn load_eval(config: &PrepareConfig) -> Result<EvalIndex> {
    let mut sets = Vec::new();
    for e in &config.eval {
        let items = crate::eval::readers::read_eval_file(&e.path, e.parsed_format()?)?;
        sets.push((e.name.clone(), e.path.clone(), items));
    }
    EvalIndex::new(sets, &config.contamination)
}

/// Every check of a config: [`PrepareConfig::validate`] plus compiling the PII and tag rules.
pub fn check_config(config: &PrepareConfig) -> Result<()> {
    config.validate()?;
    pii::PiiScrubber::new(&config.pii)?;
    tags::Tagger::new(&config.tags)?;
    Ok(())
}

/// Reads a prepare config file: paths resolved against its directory, every value checked
/// ([`check_config`]); errors name the file.
pub fn load_config(path: &Path) -> Result<PrepareConfig> {
    let c = PrepareConfig::read(path)?;
    check_config(&c).map_err(|e| match e {
        DataError::Config { what, message } => DataError::file(path, format!("{what}: {message}")),
        e => e,
    })?;
    Ok(c)
}

/// SHA-256 of the resolved config (the key of the resume state).
pub fn config_sha256(config: &PrepareConfig) -> String {
    let bytes = serde_json::to_vec(config).expect("a config serialises");
    crate::fsutil::sha256_hex(&bytes)
}

/// Runs `config` into `out` (which must be missing or an empty directory).
pub fn prepare(
    config: &PrepareConfig,
    out: &Path,
    progress: &mut dyn FnMut(PrepareProgress),
) -> Result<PrepareManifest> {
    prepare_with(config, out, progress, &Hooks::default())
}

/// [`prepare`] with test hooks.
pub fn prepare_with(
    config: &PrepareConfig,
    out: &Path,
    progress: &mut dyn FnMut(PrepareProgress),
    hooks: &Hooks,
) -> Result<PrepareManifest> {
    check_config(config)?;
    match std::fs::read_dir(out).map(|mut entries| entries.next().is_none()) {
        Ok(false) => return Err(DataError::file(out, "exists and is not empty; refusing to write into it")),
        Ok(true) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if out.exists() => return Err(DataError::file(out, format!("exists and is not a directory ({e})"))),
        Err(e) => return Err(DataError::io(out, e)),
    }
    // Everything that can be wrong with the inputs is found here, before any output.
    let units = sources::plan_units(config)?;
    let pipeline = Pipeline::new(config, load_eval(config)?)?;
    let work = resume::work_dir(out)?;
    let sha = config_sha256(config);
    let result = run(config, &sha, &units, &pipeline, &work, out, progress, hooks);
    if let Err(e) = &result {
        // A kill or an I/O error keeps the work for a resume; a data error (the output could
        // never be produced as configured) leaves nothing behind.
        if !matches!(e, DataError::Io { .. }) {
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run(
    config: &PrepareConfig,
    sha: &str,
    units: &[sources::Unit],
    pipeline: &Pipeline,
    work: &Path,
    out: &Path,
    progress: &mut dyn FnMut(PrepareProgress),
    hooks: &Hooks,
) -> Result<PrepareManifest> {
    progress(PrepareProgress::Planned { units: units.len(), bytes: units.iter().map(|u| u.bytes).sum() });
    let (mut state, restarted) = resume::load_or_start(work, sha, units)?;
    let mut dedup = Deduper::new(config.dedup.exact, config.dedup.near);
    let mut bytes_done: u64 = state.units.iter().map(|u| u.unit.bytes).sum();
    if !state.units.is_empty() || restarted.is_some() {
        progress(PrepareProgress::Resumed { units: state.units.len(), bytes: bytes_done, restarted });
        resume::rebuild(&state, work, pipeline, &mut dedup)?;
    }
    let first = state.units.len();
    for (i, unit) in units.iter().enumerate().skip(first) {
        if hooks.stop_after_units.is_some_and(|n| i - first >= n) {
            return Err(DataError::io(
                work,
                std::io::Error::new(std::io::ErrorKind::Interrupted, "stopped by a test hook"),
            ));
        }
        let rec = driver::run_unit(config, pipeline, &mut dedup, i as u32, unit, work, bytes_done, progress)?;
        bytes_done += unit.bytes;
        state.units.push(rec);
        crate::fsutil::write_json_atomic(&work.join(resume::STATE), &state)?;
    }
    finish::finish(config, sha, pipeline, &state, work, out)
}
