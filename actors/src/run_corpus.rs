//! A user's corpus in a run: the run config's `corpus` names a `moe-cli data prepare` config
//! (sources with field mapping, domain and license; eval files; cleaning, dedup, PII,
//! contamination). The data stage runs that preparation into `data/prepared` (resumable: an
//! interrupted stage continues from its work directory), trains on its `train` split, measures
//! dev PPL on its `val` split, and turns every eval file (MedQA / MedMCQA / PubMedQA) into an
//! MCQ set in `data/evalsets/<name>.jsonl` that every phase evaluation scores beside the world's.
//! The synthetic world is still built: its eval sets stay, and `with_world` adds its corpus.

use crate::error::{EngineError, Result};
use data::corpus::Document;
use data::eval::McqItem;
use data::prepare::PrepareConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Directory of the prepared corpus inside the data stage.
pub const PREPARED_DIR: &str = "prepared";
/// Directory of the converted eval files inside the data stage.
pub const EVALSETS_DIR: &str = "evalsets";

/// The run config's `corpus` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    /// The `data prepare` config (a relative path is taken from the working directory; the
    /// paths inside it from its own directory).
    pub prepare: PathBuf,
    /// Also train on the synthetic world's corpus (default: the world gives only its eval sets).
    #[serde(default)]
    pub with_world: bool,
}

/// The prepared documents the data stage packs.
pub struct PreparedCorpus {
    /// The `train` split.
    pub train: Vec<Document>,
    /// The `val` split (dev PPL).
    pub dev: Vec<Document>,
    /// Counts for the stage's metrics.
    pub metrics: serde_json::Value,
}

impl CorpusConfig {
    /// The prepare config, checked; errors name the run config's field and the file.
    pub fn load(&self, source: &str) -> Result<PrepareConfig> {
        data::prepare::load_config(&self.prepare).map_err(|e| {
            EngineError::config(format!("{source} field `corpus.prepare`"), format!("{}: {e}", self.prepare.display()))
        })
    }

    /// The data stage's key part: the resolved config's hash and every input file's path, size
    /// and modification time (hashing a multi-GB corpus on every run would cost more than it
    /// saves; a file rewritten in place with the same size and time is not noticed).
    pub fn key(&self, source: &str) -> Result<serde_json::Value> {
        let config = self.load(source)?;
        let mut files = Vec::new();
        for unit in data::prepare::sources::plan_units(&config)? {
            for f in unit.files {
                files.push(file_identity(&f)?);
            }
        }
        let evals = config.eval.iter().map(|e| file_identity(&e.path)).collect::<Result<Vec<_>>>()?;
        Ok(serde_json::json!({
            "prepare": data::prepare::config_sha256(&config),
            "with_world": self.with_world,
            "files": files,
            "eval_files": evals,
        }))
    }

    /// Runs the preparation into `stage_dir/prepared` (kept when a previous attempt of the same
    /// build finished it), converts the eval files into `stage_dir/evalsets`, and reads the splits.
    pub fn prepare_into(&self, stage_dir: &Path, source: &str) -> Result<PreparedCorpus> {
        let config = self.load(source)?;
        let out = stage_dir.join(PREPARED_DIR);
        let manifest_path = out.join("manifest.json");
        let manifest: data::prepare::PrepareManifest = if manifest_path.is_file() {
            let text = std::fs::read_to_string(&manifest_path).map_err(EngineError::io(&manifest_path))?;
            serde_json::from_str(&text)
                .map_err(|e| EngineError::config(manifest_path.display().to_string(), e.to_string()))?
        } else {
            let _ = std::fs::remove_dir_all(&out);
            data::prepare::prepare(&config, &out, &mut |_| {})?
        };
        write_eval_sets(&config, &stage_dir.join(EVALSETS_DIR))?;
        let read = |split: &str| -> Result<Vec<Document>> {
            let dir = out.join(split);
            let has_files = std::fs::read_dir(&dir)
                .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "jsonl")))
                .unwrap_or(false);
            Ok(if has_files { data::world_dir::read_corpus(&dir)? } else { Vec::new() })
        };
        let (train, dev) = (read("train")?, read("val")?);
        if train.is_empty() {
            return Err(EngineError::config(
                format!("{source} field `corpus.prepare`"),
                format!("{}: the prepared corpus has no train documents", self.prepare.display()),
            ));
        }
        let metrics = serde_json::json!({
            "prepared_train_documents": train.len(),
            "prepared_val_documents": dev.len(),
            "prepared_counts": manifest.counts,
            "eval_sets": config.eval.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        });
        Ok(PreparedCorpus { train, dev, metrics })
    }
}

fn file_identity(path: &Path) -> Result<serde_json::Value> {
    let meta = std::fs::metadata(path).map_err(EngineError::io(path))?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    Ok(serde_json::json!({
        "path": path.display().to_string(),
        "bytes": meta.len(),
        "modified_ns": modified.map(|d| d.as_nanos().to_string()),
    }))
}

/// Every eval file of `config` as `<dir>/<name>.jsonl` (MCQ items in the world's format).
fn write_eval_sets(config: &PrepareConfig, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let staging = atomicio::StagingDir::new(dir)?;
    for e in &config.eval {
        let mut items = data::eval::readers::read_eval_file(&e.path, e.parsed_format()?)?;
        for it in &mut items {
            it.set = e.name.clone();
        }
        let mut text = String::new();
        for it in &items {
            text.push_str(&serde_json::to_string(it).map_err(|err| EngineError::config(&e.name, err.to_string()))?);
            text.push('\n');
        }
        atomicio::write_file(&staging.path().join(format!("{}.jsonl", e.name)), text.as_bytes())?;
    }
    staging.commit()?;
    Ok(())
}

/// The converted eval sets of a data stage directory, by name (none without a corpus).
pub fn eval_sets(data_dir: &Path) -> Result<Vec<(String, Vec<McqItem>)>> {
    let dir = data_dir.join(EVALSETS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(EngineError::io(&dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut sets = Vec::new();
    for f in files {
        let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let items = data::eval::read_mcq_jsonl(&f)?;
        if !items.is_empty() {
            sets.push((name, items));
        }
    }
    Ok(sets)
}
