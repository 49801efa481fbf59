//! The stages of a run directory and their manifests: what a stage was built from, so a stage
//! whose inputs did not change is skipped.

use crate::error::{EngineError, Result};
use crate::verify::{first_damage, FileHash};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A stage of the pipeline, in run order. Its name (serde, [`Stage::name`]) is its directory in the
/// run directory and the `stage` of its manifest: `data`, `base`, `importance`, `moe-init`, `p0`, `p1`,
/// `p2`, `p3`, `p4`, `baseline-small`, `teacher-continued`, `eval`. A run builds the stages its last one reads
/// ([`Stage::needs`]), transitively, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Synthetic world, tokenizer, packed train / dev sets.
    Data,
    /// The dense base model trained from scratch (phase `base`).
    Base,
    /// Taylor importance of the base's FFN neurons.
    Importance,
    /// Surgery: the base converted into the MoE.
    MoeInit,
    /// Distillation of the MoE from the base (phase `p0`).
    P0,
    /// Continued pretraining of the MoE (phase `p1`).
    P1,
    /// Supervised fine-tuning of the MoE (phase `p2`).
    P2,
    /// Preference optimisation of the MoE (phase `p3`).
    P3,
    /// Staged quantization-aware training of the MoE (phase `p4`), from the newest finished of
    /// p3, p2, p1 (p1 is the one it needs; its key names the one it trained from).
    P4,
    /// The small dense reference (active parameters about the MoE's) trained from scratch on the
    /// micro-batches of base + p0 + p1 (phase `baseline-small`).
    BaselineSmall,
    /// The dense teacher continued on the micro-batches of p0 + p1 (phase `teacher-continued`):
    /// the knowledge-capacity experiment's dense model at the MoE's training tokens.
    TeacherContinued,
    /// Same-mask GGUF PTQ of the MoE, the teacher and the small baseline, and the six models
    /// scored on the same items (the comparison table).
    Eval,
}

impl Stage {
    /// Every stage, in run order.
    pub const ALL: [Stage; 12] = [
        Stage::Data,
        Stage::Base,
        Stage::Importance,
        Stage::MoeInit,
        Stage::P0,
        Stage::P1,
        Stage::P2,
        Stage::P3,
        Stage::P4,
        Stage::BaselineSmall,
        Stage::TeacherContinued,
        Stage::Eval,
    ];

    /// The stage's name (its directory and serde name).
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Data => "data",
            Stage::Base => "base",
            Stage::Importance => "importance",
            Stage::MoeInit => "moe-init",
            Stage::P0 => "p0",
            Stage::P1 => "p1",
            Stage::P2 => "p2",
            Stage::P3 => "p3",
            Stage::P4 => "p4",
            Stage::BaselineSmall => "baseline-small",
            Stage::TeacherContinued => "teacher-continued",
            Stage::Eval => "eval",
        }
    }

    /// The stages this one reads (its inputs; every one comes earlier in [`Stage::ALL`]).
    pub const fn needs(self) -> &'static [Stage] {
        match self {
            Stage::Data => &[],
            Stage::Base => &[Stage::Data],
            Stage::Importance => &[Stage::Base, Stage::Data],
            Stage::MoeInit => &[Stage::Importance, Stage::Base],
            Stage::P0 => &[Stage::Data, Stage::MoeInit, Stage::Base],
            Stage::P1 => &[Stage::Data, Stage::P0],
            Stage::P2 => &[Stage::Data, Stage::P1],
            Stage::P3 => &[Stage::Data, Stage::P2],
            Stage::P4 => &[Stage::Data, Stage::P1],
            Stage::BaselineSmall => &[Stage::Data],
            Stage::TeacherContinued => &[Stage::Data, Stage::Base],
            Stage::Eval => &[Stage::Data, Stage::Base, Stage::P1, Stage::BaselineSmall],
        }
    }

    /// `last` and every stage it reads, transitively, in run order.
    pub fn closure(last: Stage) -> Vec<Stage> {
        let mut wanted = vec![last];
        let mut i = 0;
        while i < wanted.len() {
            for s in wanted[i].needs() {
                if !wanted.contains(s) {
                    wanted.push(*s);
                }
            }
            i += 1;
        }
        Stage::ALL.into_iter().filter(|s| wanted.contains(s)).collect()
    }

    /// The stage called `name`, or a config error listing the known ones.
    pub fn from_name(name: &str) -> Result<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
            EngineError::config("stage", format!("unknown stage `{name}` (known: {})", known.join(", ")))
        })
    }

    /// Whether the stage is a training phase (`base`, `p0` .. `p4`, `baseline-small`:
    /// configs/phases/<name>.json).
    pub fn is_phase(self) -> bool {
        matches!(
            self,
            Stage::Base
                | Stage::P0
                | Stage::P1
                | Stage::P2
                | Stage::P3
                | Stage::P4
                | Stage::BaselineSmall
                | Stage::TeacherContinued
        )
    }

    /// Whether the training phase reads the run's packed train set (its sequence length must
    /// then be the run's); `p2` and `p3` pack their own conversations and pairs.
    pub fn reads_pack(self) -> bool {
        matches!(self, Stage::Base | Stage::P0 | Stage::P1 | Stage::P4 | Stage::BaselineSmall | Stage::TeacherContinued)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `manifest.json` of a finished stage: what it was built from and what it holds. It is written
/// last, so a stage directory with a manifest is complete; [`StageManifest::identity`] is what the
/// stages after it list as their input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageManifest {
    /// The stage.
    pub stage: Stage,
    /// SHA-256 of `key`.
    pub config_hash: String,
    /// Everything the stage's output depends on besides its inputs (run config fields, preset
    /// contents, phase config, seeds), kept readable so a changed field can be named.
    #[serde(default)]
    pub key: serde_json::Value,
    /// Identity of every input stage (name -> [`StageManifest::identity`]).
    pub inputs: BTreeMap<String, String>,
    /// The stage's content files (path relative to the stage directory -> size and hash): part of
    /// its identity, checked before the stage counts as done.
    #[serde(default)]
    pub outputs: BTreeMap<String, FileHash>,
    /// Record files (summary.json): checked like `outputs`, but not part of the identity (they
    /// hold wall-clock times).
    #[serde(default)]
    pub records: BTreeMap<String, FileHash>,
    /// Why the stage was built (first build, changed fields, damaged files, --force).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub built_because: Vec<String>,
    /// Metrics of the stage (free-form).
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// Artifacts (name -> path relative to the run directory).
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
}

impl StageManifest {
    /// Hash identifying this stage's output (key, inputs and content hashes), which later stages
    /// list as input: a change anywhere upstream changes every identity after it.
    pub fn identity(&self) -> String {
        let key = serde_json::json!({
            "stage": self.stage, "config": self.config_hash, "inputs": self.inputs, "outputs": self.outputs,
        });
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
        Ok(atomicio::write_file(&dir.join("manifest.json"), text.as_bytes())?)
    }

    /// The first of this manifest's files under `dir` that is missing or damaged, in words.
    pub fn damage(&self, dir: &Path) -> Option<String> {
        if self.outputs.is_empty() {
            return Some(format!("{}: the manifest lists no content hashes (older run directory)", dir.display()));
        }
        first_damage(dir, &self.outputs).or_else(|| first_damage(dir, &self.records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_are_the_serde_names_run_directories_already_use() {
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "data",
                "base",
                "importance",
                "moe-init",
                "p0",
                "p1",
                "p2",
                "p3",
                "p4",
                "baseline-small",
                "teacher-continued",
                "eval"
            ]
        );
        for s in Stage::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
            assert_eq!(serde_json::from_value::<Stage>(s.name().into()).unwrap(), s);
            assert_eq!(Stage::from_name(s.name()).unwrap(), s);
        }
        assert!(Stage::ALL.windows(2).all(|w| w[0] < w[1]), "ALL is in run order");
        let e = Stage::from_name("p9").unwrap_err().to_string();
        assert!(e.contains("moe-init"), "{e}");
    }

    #[test]
    fn a_stage_builds_what_it_reads_and_nothing_else() {
        for s in Stage::ALL {
            assert!(s.needs().iter().all(|n| *n < s), "{s} reads a later stage");
        }
        let names = |v: Vec<Stage>| v.iter().map(|s| s.name()).collect::<Vec<_>>().join(" ");
        assert_eq!(names(Stage::closure(Stage::P1)), "data base importance moe-init p0 p1");
        assert_eq!(names(Stage::closure(Stage::P3)), "data base importance moe-init p0 p1 p2 p3");
        // p4 needs p1 and trains from the newest finished of p3 / p2 / p1 (not built for it).
        assert_eq!(names(Stage::closure(Stage::P4)), "data base importance moe-init p0 p1 p4");
        assert_eq!(names(Stage::closure(Stage::BaselineSmall)), "data baseline-small");
        assert_eq!(names(Stage::closure(Stage::TeacherContinued)), "data base teacher-continued");
        // The comparison table needs neither p2 nor p3.
        assert_eq!(names(Stage::closure(Stage::Eval)), "data base importance moe-init p0 p1 baseline-small eval");
    }

    #[test]
    fn a_manifest_written_before_content_hashes_still_reads_and_counts_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"stage":"moe-init","config_hash":"h","inputs":{"base":"x"},"metrics":{},"artifacts":{}}"#;
        std::fs::write(dir.path().join("manifest.json"), old).unwrap();
        let m = StageManifest::read(dir.path()).unwrap();
        assert_eq!(m.stage, Stage::MoeInit);
        assert_eq!(m.inputs["base"], "x");
        assert!(m.damage(dir.path()).unwrap().contains("no content hashes"));
    }

    #[test]
    fn identity_covers_key_inputs_and_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), b"1").unwrap();
        let mut outputs = BTreeMap::new();
        crate::verify::hash_tree(dir.path(), "w.bin", &mut outputs).unwrap();
        let m = StageManifest {
            stage: Stage::Base,
            config_hash: "h".into(),
            key: serde_json::Value::Null,
            inputs: [("data".to_string(), "d".to_string())].into(),
            outputs,
            records: BTreeMap::new(),
            built_because: vec![],
            metrics: serde_json::Value::Null,
            artifacts: BTreeMap::new(),
        };
        assert_eq!(m.damage(dir.path()), None);
        let mut other = m.clone();
        other.inputs.insert("data".into(), "e".into());
        assert_ne!(m.identity(), other.identity());
        let mut other = m.clone();
        other.outputs.get_mut("w.bin").unwrap().sha256 = "0".into();
        assert_ne!(m.identity(), other.identity());
        let mut other = m.clone();
        other.built_because.push("forced".into());
        other.metrics = serde_json::json!({ "seconds": 3 });
        assert_eq!(m.identity(), other.identity(), "records and metrics are not content");
    }
}
