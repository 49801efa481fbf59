//! Stage manifests: what a stage was built from, so a stage whose inputs did not change is
//! skipped.

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `manifest.json` of a finished stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageManifest {
    /// Stage name.
    pub stage: String,
    /// Hash of the stage's resolved config.
    pub config_hash: String,
    /// Hash of every input (name -> hash of the producing stage's manifest or file).
    pub inputs: BTreeMap<String, String>,
    /// Metrics of the stage (free-form).
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// Artifacts (name -> path relative to the run directory).
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
}

impl StageManifest {
    /// Hash identifying this stage's output (config + inputs), which later stages list as input.
    pub fn identity(&self) -> String {
        let key = serde_json::json!({ "stage": self.stage, "config": self.config_hash, "inputs": self.inputs });
        sha256_hex(key.to_string().as_bytes())
    }

    /// Reads `dir/manifest.json` (None when absent or unreadable: the stage is then re-run).
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes `dir/manifest.json` atomically (temp file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| EngineError::config("manifest", e.to_string()))?;
        crate::checkpoint::write_file_synced(&dir.join("manifest.json"), text.as_bytes())
    }

    /// True when `dir` holds a manifest with this config and these inputs.
    pub fn matches(dir: &Path, config_hash: &str, inputs: &BTreeMap<String, String>) -> bool {
        StageManifest::read(dir).is_some_and(|m| m.config_hash == config_hash && &m.inputs == inputs)
    }
}
