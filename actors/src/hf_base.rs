//! A Hugging Face Qwen3 directory as the run's base (`base_model` naming a directory rather
//! than a preset): the teacher of p0 and the model the surgery converts, with its own tokenizer
//! and chat template, which the data stage then packs the corpus with.
//!
//! The directory must hold `config.json` (a dense Qwen3), the weights (`model.safetensors`, or
//! `model.safetensors.index.json` with its shards) and `tokenizer.json` (`tokenizer_config.json`
//! too where it exists: the chat template). [`HfBase::open`] checks all of this and that the
//! tokenizer's vocabulary fits the embedding rows, naming the file at fault. The base stage
//! imports the directory by copying its files (`generation_config.json` too when present);
//! their sizes and SHA-256 (sampled above 256 MiB, as the stage manifests) are the stage's key,
//! so a changed checkpoint rebuilds the base and everything after it.

use crate::error::{EngineError, Result};
use crate::verify::{hash_file, FileHash};
use model::Qwen3Config;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files copied besides the weights, when present.
const OPTIONAL_FILES: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];

/// A checked HF Qwen3 directory.
#[derive(Clone, Debug)]
pub struct HfBase {
    /// The directory.
    pub dir: PathBuf,
    /// Its config.json.
    pub config: Qwen3Config,
    /// Every file the import copies, relative to `dir`, sorted.
    pub files: Vec<String>,
}

/// Whether `name` (the run config's `base_model`) names a directory rather than a preset.
pub fn names_a_directory(name: &str) -> bool {
    name.contains('/') || name.contains(std::path::MAIN_SEPARATOR) || Path::new(name).is_dir()
}

impl HfBase {
    /// Opens and checks `dir`; `field` names the config field in errors (e.g.
    /// "run.json field `base_model`").
    pub fn open(dir: &Path, field: &str) -> Result<HfBase> {
        let bad = |msg: String| EngineError::config(field, msg);
        if !dir.is_dir() {
            return Err(bad(format!("{} is not a directory (nor a model preset)", dir.display())));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(bad(format!("{} is missing: not an HF model directory", config_path.display())));
        }
        let config = Qwen3Config::from_file(&config_path)?;
        if model::moe_spec::MoeSpec::from_config(&config, &config_path)?.is_some() {
            return Err(bad(format!(
                "{} describes a MoE; the base is the dense model the MoE is made from",
                config_path.display()
            )));
        }
        let mut files = vec!["config.json".to_string()];
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            files.push("model.safetensors".into());
        } else if index.is_file() {
            files.push("model.safetensors.index.json".into());
            files.extend(shards(&index)?);
        } else {
            return Err(bad(format!(
                "{}: no model.safetensors nor model.safetensors.index.json (the weights)",
                dir.display()
            )));
        }
        for f in &files {
            if !dir.join(f).is_file() {
                return Err(bad(format!("{} is missing (listed by the index)", dir.join(f).display())));
            }
        }
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(bad(format!(
                "{} is missing: the run packs its corpus with the base's tokenizer",
                tokenizer_path.display()
            )));
        }
        let tokenizer = data::tokenizer::Tokenizer::load(dir)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(bad(format!(
                "{} has {} tokens but {} gives vocab_size {} (embedding rows): token ids past the embedding",
                tokenizer_path.display(),
                tokenizer.vocab_size(),
                config_path.display(),
                config.vocab_size
            )));
        }
        files.push("tokenizer.json".into());
        files.extend(OPTIONAL_FILES.iter().filter(|f| dir.join(f).is_file()).map(|f| f.to_string()));
        files.sort();
        Ok(HfBase { dir: dir.to_path_buf(), config, files })
    }

    /// Size and hash of every file the import copies (the base stage's key).
    pub fn identity(&self) -> Result<BTreeMap<String, FileHash>> {
        self.files.iter().map(|f| Ok((f.clone(), hash_file(&self.dir.join(f))?))).collect()
    }

    /// Copies the files into `out` (created; each file written to a temporary and renamed).
    pub fn import(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).map_err(EngineError::io(out))?;
        for f in &self.files {
            let (src, dst) = (self.dir.join(f), out.join(f));
            let tmp = out.join(format!(".{f}.tmp"));
            std::fs::copy(&src, &tmp).map_err(EngineError::io(&src))?;
            std::fs::rename(&tmp, &dst).map_err(EngineError::io(&dst))?;
        }
        Ok(())
    }
}

/// The shard files an index names (`weight_map` values), sorted, each once.
fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(EngineError::io(index))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::config(index.display().to_string(), e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| EngineError::config(index.display().to_string(), "no `weight_map` object".to_string()))?;
    let mut out: Vec<String> = map.values().filter_map(|s| s.as_str().map(str::to_string)).collect();
    out.sort();
    out.dedup();
    if out.iter().any(|s| s.contains('/') || s.contains("..")) {
        return Err(EngineError::config(index.display().to_string(), "a shard name is a path".to_string()));
    }
    Ok(out)
}
