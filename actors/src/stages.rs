//! The stages of a run directory: data -> base -> importance -> moe-init -> p0 -> p1 -> p2 -> p3,
//! and beside them baseline-small (the small dense reference on the micro-batches of base + p0 +
//! p1) and eval (same-mask PTQ and the comparison table). A run builds the stage asked for and
//! the stages it reads ([`Stage::closure`]).
//!
//! Each stage has a key: everything its output depends on besides its input stages (run config
//! fields, preset contents, phase config, seeds), and its inputs: the identities of the stages it
//! reads, which cover their keys, inputs and content hashes, so a change anywhere upstream reaches
//! every stage after it. A finished stage writes `manifest.json` last (key, inputs, size + SHA-256
//! of its files, metrics, artifacts).
//!
//! A stage whose manifest has the same key and inputs and whose files are intact is up to date.
//! One whose key or inputs changed (or `--force`) is rebuilt beside itself in `<stage>.next/` and
//! swapped in when complete ([`crate::rundir`]); the console and the new manifest say which
//! fields changed. A finished stage whose files are damaged is rebuilt in place, resuming from
//! its checkpoints. A training stage resumes from the newest intact checkpoint of the same key and
//! inputs, setting damaged newer ones aside. The whole run holds the directory's lock
//! ([`crate::lock`]) and every config is checked before anything is written.

use crate::batches::BatchStream;
use crate::checkpoint;
use crate::error::{EngineError, Result};
use crate::eval_job::Evaluator;
use crate::evaluator::EvalInputs;
use crate::lock::RunLock;
use crate::manifest::{sha256_hex, Stage, StageManifest};
use crate::phase::{phase_names, PhaseConfig, PhaseKind};
use crate::rundir;
use crate::supervisor::{run_phase, Faults, PhaseRun};
use crate::trainer::Trainer;
use crate::verify::{hash_tree, key_changes};
use data::pack::{PackConfig, PackedDataset};
use data::tokenizer::Tokenizer;
use model::surgery::apply::{convert, plan_model};
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::run_config::{RunConfig, DEFAULT_RUN};
pub use crate::summary::{summarise, PhaseSummary};

/// Stage names in run order ([`Stage::name`] of [`Stage::ALL`]), for command lines.
pub const STAGES: [&str; 12] = [
    Stage::Data.name(),
    Stage::Base.name(),
    Stage::Importance.name(),
    Stage::MoeInit.name(),
    Stage::P0.name(),
    Stage::P1.name(),
    Stage::P2.name(),
    Stage::P3.name(),
    Stage::P4.name(),
    Stage::BaselineSmall.name(),
    Stage::TeacherContinued.name(),
    Stage::Eval.name(),
];

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Show progress bars.
    pub progress: bool,
    /// Phase config files that replace the embedded ones (phase name -> path).
    pub phase_files: BTreeMap<String, PathBuf>,
    /// Fault injection for tests.
    pub faults: Faults,
    /// Print stage lines to stderr.
    pub verbose: bool,
    /// Where the training steps run.
    pub device: autograd::Device,
    /// Operand precision of the training stages' GEMMs (part of their keys when not f32).
    pub precision: autograd::Precision,
    /// Rebuild the last stage of this run even when it is up to date (beside the finished one,
    /// which is replaced only when the new one is complete).
    pub force: bool,
    /// Where the run config came from (named in errors; empty: the run config).
    pub config_source: String,
    /// The harness the `eval` stage runs (moe-cli's `eval`); None: the stage is refused.
    pub evaluator: Option<Evaluator>,
}

/// What one invocation did with a stage (the `stages` list of `<run>/summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// `built` in this invocation, or `up to date`.
    pub status: String,
    /// Why it was built (what changed since the last build: config fields, inputs, damage,
    /// `--force`); for a stage up to date, why it was built when it last was.
    pub because: Vec<String>,
    /// Wall-clock seconds in this invocation.
    pub seconds: f64,
}

/// `<run>/summary.json`: the summary of the last training stage, and what this invocation did
/// with every stage and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The last training stage's summary (its fields at the top level).
    #[serde(flatten)]
    pub last: PhaseSummary,
    /// Every stage up to the last, in order.
    pub stages: Vec<StageReport>,
}

/// The pipeline of stages over one run directory: its root, the run config and how to run.
pub struct Pipeline {
    /// Root directory.
    pub root: PathBuf,
    /// Run config.
    pub config: RunConfig,
    /// How to run.
    pub options: RunOptions,
}

pub(crate) fn say(opts: &RunOptions, msg: String) {
    if opts.verbose {
        eprintln!("{msg}");
    }
}

/// What a stage is built from: its key (readable JSON), the key's hash and its inputs.
struct Plan {
    key: serde_json::Value,
    hash: String,
    inputs: BTreeMap<String, String>,
}

/// Where a stage stands.
enum Status {
    /// Finished with this plan, files intact.
    UpToDate,
    /// To be built in `work` (the stage directory itself, or `<stage>.next` beside a finished
    /// one that stays until the new one is complete), for these reasons.
    Build { work: PathBuf, beside: bool, because: Vec<String> },
}

/// What a stage's body made in its work directory.
pub(crate) struct Made {
    pub(crate) metrics: serde_json::Value,
    /// Artifacts (name -> path relative to the run directory, under the stage's final name).
    pub(crate) artifacts: BTreeMap<String, String>,
    /// Content files and directories (relative to the stage directory): hashed into the identity.
    pub(crate) outputs: &'static [&'static str],
    /// Record files: hashed and checked, not part of the identity.
    pub(crate) records: &'static [&'static str],
}

/// The key file of a work directory: the plan its partial contents (checkpoints) belong to.
const BUILD_KEY_FILE: &str = "inputs.json";

/// The contents of an embedded model preset as JSON (part of the stage keys that use it).
fn preset_json(name: &str) -> Result<serde_json::Value> {
    let (_, text) = model::presets::PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| EngineError::config("preset", format!("unknown preset `{name}`")))?;
    serde_json::from_str(text).map_err(|e| EngineError::config(format!("configs/presets/{name}.json"), e.to_string()))
}

impl Pipeline {
    /// Directory of `stage`.
    pub fn dir(&self, stage: Stage) -> PathBuf {
        self.root.join(stage.name())
    }

    fn config_source(&self) -> &str {
        if self.options.config_source.is_empty() {
            "run config"
        } else {
            &self.options.config_source
        }
    }

    /// The phase config of training stage `phase`: the file given for it, else the embedded one;
    /// a file of another phase or of a kind the stage cannot train is refused. A config with
    /// `same_tokens_as` gets its budget here: the micro-batches of the phases it follows.
    pub fn phase_config(&self, phase: Stage) -> Result<PhaseConfig> {
        let (cfg, source) = match self.options.phase_files.get(phase.name()) {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(EngineError::io(p))?;
                let source = p.display().to_string();
                (PhaseConfig::parse(&text, &source, &self.config.preset)?, source)
            }
            None => (PhaseConfig::embedded(phase.name(), &self.config.preset)?, format!("configs/phases/{phase}.json")),
        };
        if cfg.phase != phase.name() {
            return Err(EngineError::config(
                &source,
                format!("is the config of phase `{}` but was given for `{phase}`", cfg.phase),
            ));
        }
        let fits = match phase {
            Stage::Base | Stage::BaselineSmall => cfg.kind == PhaseKind::Base,
            Stage::P2 => cfg.kind == PhaseKind::Sft,
            Stage::P3 => cfg.kind == PhaseKind::Preference,
            Stage::P4 => cfg.kind == PhaseKind::Qat,
            _ => !matches!(cfg.kind, PhaseKind::Base | PhaseKind::Sft | PhaseKind::Preference | PhaseKind::Qat),
        };
        if !fits {
            return Err(EngineError::config(&source, format!("kind {:?} cannot train stage `{phase}`", cfg.kind)));
        }
        if !cfg.same_tokens_as.is_empty() {
            // The budget is the micro-batches of the phases it follows.
            let n: u64 = self.segments(&cfg, &source)?.iter().map(|(_, n)| n).sum();
            let mut cfg = cfg;
            cfg.tokens = n * cfg.micro_tokens();
            return Ok(cfg);
        }
        Ok(cfg)
    }

    /// Checks every config of the pipeline without writing anything: the run config (presets,
    /// eval sets, sizes) and every phase file given or embedded; the phases up to `last` must
    /// also fit the run's packed sequence length.
    pub fn validate(&self, last: Stage) -> Result<()> {
        for (name, path) in &self.options.phase_files {
            if !Stage::from_name(name).is_ok_and(Stage::is_phase) {
                return Err(EngineError::config(
                    "--phase-config",
                    format!("`{name}={}`: unknown phase `{name}` (known: {})", path.display(), phase_names()),
                ));
            }
        }
        self.config.validate(self.config_source())?;
        let needed = Stage::closure(last);
        if self.config.small_model.is_none() {
            if let Some(s) = needed.iter().find(|s| matches!(s, Stage::BaselineSmall | Stage::Eval)) {
                return Err(EngineError::config(
                    format!("{} field `small_model`", self.config_source()),
                    format!("missing: stage `{s}` needs the small dense reference's preset (e.g. `tiny-dense-active`)"),
                ));
            }
        }
        if needed.iter().any(|s| matches!(s, Stage::BaselineSmall | Stage::Eval)) {
            self.config.check_small_model_vocab(self.config_source())?;
        }
        if needed.contains(&Stage::Eval) && self.options.evaluator.is_none() {
            return Err(EngineError::config("eval", "stage `eval` needs an evaluator (moe-cli provides its `eval`)"));
        }
        for stage in Stage::ALL.into_iter().filter(|s| s.is_phase()) {
            // The references' budgets come from the phases they follow: checked when they run.
            if matches!(stage, Stage::BaselineSmall | Stage::TeacherContinued) && !needed.contains(&stage) {
                continue;
            }
            let cfg = self.phase_config(stage)?;
            self.check_named_experts(stage, &cfg)?;
            if needed.contains(&stage) && stage.reads_pack() && cfg.seq_len != self.config.seq_len {
                let source = self
                    .options
                    .phase_files
                    .get(stage.name())
                    .map_or_else(|| format!("configs/phases/{stage}.json (embedded)"), |p| p.display().to_string());
                return Err(EngineError::config(
                    source,
                    format!(
                        "field `seq_len`: {} but the run packs sequences of {} ({})",
                        cfg.seq_len,
                        self.config.seq_len,
                        self.config_source()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A phase's named-expert map against the run: every expert must exist in the MoE preset and
    /// every domain must be one the world's corpus has.
    fn check_named_experts(&self, stage: Stage, cfg: &PhaseConfig) -> Result<()> {
        let Some(n) = cfg.router.as_ref().and_then(|r| r.named_experts.as_ref()) else { return Ok(()) };
        let source = self
            .options
            .phase_files
            .get(stage.name())
            .map_or_else(|| format!("configs/phases/{stage}.json (embedded)"), |p| p.display().to_string());
        let preset = preset_json(&self.config.moe_model)?;
        let experts = preset["moe"]["num_experts"].as_u64().unwrap_or(0) as usize;
        model::named_experts::check_map(&n.map, experts).map_err(|msg| {
            EngineError::config(
                &source,
                format!("field `router.named_experts.map`: {msg} (preset `{}`)", self.config.moe_model),
            )
        })?;
        let domains = &self.config.world.corpus.shares;
        if let Some(d) = n.map.keys().find(|d| !domains.contains_key(*d)) {
            let known: Vec<&str> = domains.keys().map(String::as_str).collect();
            return Err(EngineError::config(
                &source,
                format!(
                    "field `router.named_experts.map`: domain `{d}` is not a domain of the run's corpus ({})",
                    known.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Runs every stage up to and including the one named `until` ([`Stage::from_name`]); returns
    /// the summary of the last training stage run or skipped.
    pub fn run_until(&self, until: &str) -> Result<Option<PhaseSummary>> {
        self.run_through(Stage::from_name(until)?)
    }

    /// Runs every stage up to and including `last` under the run directory's lock; returns the
    /// summary of the last training stage run or skipped (also written to `<run>/summary.json`
    /// as a [`RunSummary`], with what was done to each stage and why).
    pub fn run_through(&self, last: Stage) -> Result<Option<PhaseSummary>> {
        // Every config is checked before anything is written.
        self.validate(last)?;
        std::fs::create_dir_all(&self.root).map_err(EngineError::io(&self.root))?;
        let lock = RunLock::acquire(&self.root)?;
        if let Some(h) = &lock.stale {
            say(
                &self.options,
                format!("warning: the run of {h} ended without releasing {}; taken over", lock.path().display()),
            );
        }
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
        for line in rundir::recover_swaps(&self.root, &names)? {
            say(&self.options, format!("warning: {line}"));
        }
        let removed = rundir::clean_stale(&self.root);
        if !removed.is_empty() {
            say(&self.options, format!("cleaned    {} temporary file(s) left by interrupted writes", removed.len()));
        }
        let mut summary = None;
        let mut reports = Vec::new();
        for stage in Stage::closure(last) {
            let started = std::time::Instant::now();
            let force = self.options.force && stage == last;
            let skipped = match stage {
                Stage::Data => self.data_stage(force)?,
                Stage::Base
                | Stage::P0
                | Stage::P1
                | Stage::P2
                | Stage::P3
                | Stage::BaselineSmall
                | Stage::TeacherContinued => {
                    let skipped = self.phase_stage(stage, force)?;
                    let path = self.dir(stage).join("summary.json");
                    let text = std::fs::read_to_string(&path).map_err(EngineError::io(&path))?;
                    let s: PhaseSummary = serde_json::from_str(&text)
                        .map_err(|e| EngineError::config(path.display().to_string(), e.to_string()))?;
                    // The run's summary is the MoE line's last phase unless a reference is asked for.
                    let reference = matches!(stage, Stage::BaselineSmall | Stage::TeacherContinued);
                    if !reference || last == stage {
                        summary = Some(s);
                    }
                    skipped
                }
                Stage::P4 => {
                    let skipped = self.p4_stage(force)?;
                    let path = self.dir(stage).join("summary.json");
                    let text = std::fs::read_to_string(&path).map_err(EngineError::io(&path))?;
                    summary = Some(
                        serde_json::from_str(&text)
                            .map_err(|e| EngineError::config(path.display().to_string(), e.to_string()))?,
                    );
                    skipped
                }
                Stage::Importance => self.importance_stage(force)?,
                Stage::MoeInit => self.surgery_stage(force)?,
                Stage::Eval => self.eval_stage(force)?,
            };
            let what = if skipped {
                "up to date".to_string()
            } else {
                format!("done in {:.1} s", started.elapsed().as_secs_f64())
            };
            say(&self.options, format!("stage {:<10} {what} ({})", stage.name(), self.dir(stage).display()));
            reports.push(StageReport {
                stage: stage.name().to_string(),
                status: if skipped { "up to date" } else { "built" }.to_string(),
                because: StageManifest::read(&self.dir(stage)).map(|m| m.built_because).unwrap_or_default(),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        if let Some(s) = &summary {
            let run = RunSummary { last: s.clone(), stages: reports };
            let text = serde_json::to_string_pretty(&run).map_err(|e| EngineError::config("summary", e.to_string()))?;
            atomicio::write_file(&self.root.join("summary.json"), text.as_bytes())?;
        }
        drop(lock);
        Ok(summary)
    }

    /// The key and inputs of `stage` (its input stages must be finished).
    fn plan(&self, stage: Stage) -> Result<Plan> {
        let c = &self.config;
        let hf = match stage {
            Stage::Data | Stage::Base => c.hf_base(self.config_source())?,
            _ => None,
        };
        let mut key = match (stage, &hf) {
            // An HF base's tokenizer packs the corpus: its files replace the trained one's settings.
            (Stage::Data, Some(h)) => {
                let mut files = h.identity()?;
                files.retain(|f, _| model::tokenizer_files::TOKENIZER_FILES.contains(&f.as_str()));
                serde_json::json!({
                    "world": c.world, "seq_len": c.seq_len, "dev_every": c.dev_every, "base_tokenizer": files,
                })
            }
            (Stage::Data, None) => serde_json::json!({
                "world": c.world, "vocab": c.vocab, "seq_len": c.seq_len, "dev_every": c.dev_every,
                "tokenizer_min_frequency": TOKENIZER_MIN_FREQUENCY,
            }),
            (Stage::Base, Some(h)) => serde_json::json!({ "base_model": c.base_model, "files": h.identity()? }),
            (Stage::Base, None) => serde_json::json!({
                "base_model": c.base_model, "preset": preset_json(&c.base_model)?, "seed": c.seed,
                "phase": self.phase_config(stage)?,
            }),
            (Stage::Importance, _) => serde_json::json!({
                "importance_batches": c.importance_batches, "importance_batch": c.importance_batch,
                "decay": crate::importance_pass::DECAY,
            }),
            (Stage::MoeInit, _) => serde_json::json!({
                "moe_model": c.moe_model, "preset": preset_json(&c.moe_model)?, "split": c.split, "fill": c.fill,
                "router_init": c.router_init, "seed": c.seed,
            }),
            (Stage::P0 | Stage::P1 | Stage::P2 | Stage::P3, _) => {
                serde_json::json!({ "phase": self.phase_config(stage)? })
            }
            (Stage::P4, _) => serde_json::json!({
                "phase": self.phase_config(stage)?, "source": self.p4_source().name(), "version": crate::p4_stage::VERSION,
            }),
            (Stage::BaselineSmall | Stage::TeacherContinued, _) => {
                let cfg = self.phase_config(stage)?;
                let segments: BTreeMap<String, PhaseConfig> =
                    self.segments(&cfg, stage.name())?.into_iter().map(|(s, _)| (s.phase.clone(), s)).collect();
                let mut key = serde_json::json!({ "phase": cfg, "segments": segments });
                if stage == Stage::BaselineSmall {
                    let small = c.small_model.clone().unwrap_or_default();
                    key["small_model"] = serde_json::json!(small);
                    key["preset"] = preset_json(&small)?;
                    key["seed"] = serde_json::json!(c.seed);
                }
                key
            }
            (Stage::Eval, _) => self.eval_key(),
        };
        if let (Stage::Data, Some(corpus)) = (stage, &c.corpus) {
            key["corpus"] = corpus.key(self.config_source())?;
        }
        let key = self.with_precision(stage, key);
        let hash = sha256_hex(key.to_string().as_bytes());
        Ok(Plan { key, hash, inputs: self.inputs_of(stage)? })
    }

    /// `key` of a training stage with the run's precision when it is not f32 (f32 keys stay as
    /// they were before precisions existed, so f32 run directories are not rebuilt).
    fn with_precision(&self, stage: Stage, mut key: serde_json::Value) -> serde_json::Value {
        let p = self.options.precision;
        if stage.is_phase() && p != autograd::Precision::F32 {
            if let Some(map) = key.as_object_mut() {
                map.insert("precision".to_string(), serde_json::json!(p.name()));
            }
        }
        key
    }

    /// Where `stage` stands against `plan`.
    fn status(&self, stage: Stage, plan: &Plan, force: bool) -> Status {
        let dir = self.dir(stage);
        let next = rundir::next_dir(&self.root, stage.name());
        let Some(m) = StageManifest::read(&dir) else {
            let because = if dir.exists() { "an earlier build did not finish" } else { "not built yet" };
            return Status::Build { work: dir, beside: false, because: vec![because.to_string()] };
        };
        if force {
            let _ = std::fs::remove_dir_all(&next);
            return Status::Build { work: next, beside: true, because: vec!["--force".to_string()] };
        }
        if m.config_hash == plan.hash && m.inputs == plan.inputs {
            return match m.damage(&dir) {
                None => {
                    // A rebuild of another config that never finished is not needed any more.
                    let _ = std::fs::remove_dir_all(&next);
                    Status::UpToDate
                }
                Some(d) => Status::Build { work: dir, beside: false, because: vec![format!("damaged: {d}")] },
            };
        }
        let mut because = key_changes(&m.key, &plan.key);
        if m.key.is_null() {
            because = vec!["built by an older version (no key in its manifest)".to_string()];
        }
        for (name, id) in &plan.inputs {
            if m.inputs.get(name) != Some(id) {
                because.push(format!("input `{name}` changed"));
            }
        }
        if because.is_empty() {
            because.push("key changed".to_string());
        }
        Status::Build { work: next, beside: true, because }
    }

    /// Runs `body` for `stage` unless it is up to date: in the stage directory or beside it
    /// (then swapped in), hashing its files into the manifest, which is written last. Returns
    /// true when the stage was up to date.
    pub(crate) fn build_stage(
        &self,
        stage: Stage,
        force: bool,
        body: impl FnOnce(&Path) -> Result<Made>,
    ) -> Result<bool> {
        let plan = self.plan(stage)?;
        let Status::Build { work, beside, because } = self.status(stage, &plan, force) else { return Ok(true) };
        let dir = self.dir(stage);
        let note =
            if beside { format!("; the finished one stays in {} until then", dir.display()) } else { String::new() };
        say(&self.options, format!("stage {:<10} building: {}{note}", stage.name(), because.join("; ")));
        // Partial contents (checkpoints) belong to one plan: anything else there is stale.
        let build_key = serde_json::json!({ "config": plan.hash, "inputs": plan.inputs }).to_string();
        let key_path = work.join(BUILD_KEY_FILE);
        let _ = std::fs::remove_file(work.join("manifest.json"));
        if std::fs::read_to_string(&key_path).ok().as_deref() != Some(build_key.as_str()) {
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work).map_err(EngineError::io(&work))?;
            atomicio::write_file(&key_path, build_key.as_bytes())?;
        }
        let made = body(&work)?;
        let (mut outputs, mut records) = (BTreeMap::new(), BTreeMap::new());
        for rel in made.outputs {
            hash_tree(&work, rel, &mut outputs)?;
        }
        for rel in made.records {
            hash_tree(&work, rel, &mut records)?;
        }
        let manifest = StageManifest {
            stage,
            config_hash: plan.hash,
            key: plan.key,
            inputs: plan.inputs,
            outputs,
            records,
            built_because: because,
            metrics: made.metrics,
            artifacts: made.artifacts,
        };
        manifest.write(&work)?;
        if beside {
            rundir::swap_in(&work, &dir)?;
        }
        Ok(false)
    }

    fn data_stage(&self, force: bool) -> Result<bool> {
        let c = &self.config;
        self.build_stage(Stage::Data, force, |dir| {
            for sub in ["world", "tokenizer", "train", "dev"] {
                let _ = std::fs::remove_dir_all(dir.join(sub));
            }
            let world = dir.join("world");
            data::world_dir::build_world_dir(&c.world, &world, &mut |_| {})?;
            let world_docs = data::world_dir::read_corpus(&world)?;
            let prepared = match &c.corpus {
                Some(corpus) => Some(corpus.prepare_into(dir, self.config_source())?),
                None => None,
            };
            // The world's documents, split by id below (all of them without a user corpus).
            let docs = match &c.corpus {
                Some(corpus) if !corpus.with_world => Vec::new(),
                _ => world_docs,
            };
            let staging = atomicio::StagingDir::new(&dir.join("tokenizer"))?;
            match c.hf_base(self.config_source())? {
                // The base's own tokenizer files, as they are (its chat template included).
                Some(h) => {
                    model::tokenizer_files::copy_tokenizer_files(&h.dir, staging.path())?;
                }
                None => {
                    let config =
                        data::tokenizer::TrainConfig { vocab_size: c.vocab, min_frequency: TOKENIZER_MIN_FREQUENCY };
                    let user = prepared.iter().flat_map(|p| p.train.iter());
                    Tokenizer::train(docs.iter().chain(user).map(|d| d.text.as_str()), &config)?
                        .save(staging.path())?;
                }
            }
            staging.commit()?;
            let tok = Tokenizer::load(&dir.join("tokenizer"))?;
            let (mut train, mut dev) = (Vec::new(), Vec::new());
            for d in docs {
                // Deterministic split by document id.
                if data::rng::label_hash(&d.id).is_multiple_of(c.dev_every.max(2)) {
                    dev.push(d);
                } else {
                    train.push(d);
                }
            }
            let mut corpus_metrics = serde_json::Value::Null;
            if let Some(p) = prepared {
                // The user's own split: train packs, val measures dev PPL.
                train.extend(p.train);
                dev.extend(p.dev);
                corpus_metrics = p.metrics;
            }
            let pc = PackConfig { seq_len: c.seq_len, ..Default::default() };
            let tm = data::pack::pack_documents(&train, &tok, &pc, &dir.join("train"), &mut |_| {})?;
            let dm = data::pack::pack_documents(&dev, &tok, &pc, &dir.join("dev"), &mut |_| {})?;
            let tokens = |m: &data::pack::format::PackManifest| m.domains.values().map(|d| d.tokens).sum::<u64>();
            let metrics = serde_json::json!({
                "train_documents": train.len(), "dev_documents": dev.len(),
                "train_tokens": tokens(&tm), "dev_tokens": tokens(&dm), "corpus": corpus_metrics,
            });
            const FILES: [&str; 4] = ["world", "tokenizer", "train", "dev"];
            const WITH_CORPUS: [&str; 5] = ["world", "tokenizer", "train", "dev", crate::run_corpus::EVALSETS_DIR];
            let outputs: &'static [&'static str] = if c.corpus.is_some() { &WITH_CORPUS } else { &FILES };
            let artifacts = outputs.iter().map(|s| (s.to_string(), format!("data/{s}"))).collect();
            const RECORDS: [&str; 1] = ["prepared/manifest.json"];
            let records: &'static [&'static str] = if c.corpus.is_some() { &RECORDS } else { &[] };
            Ok(Made { metrics, artifacts, outputs, records })
        })
    }

    pub(crate) fn eval_inputs(&self, cfg: &PhaseConfig) -> Result<Arc<EvalInputs>> {
        let data = self.dir(Stage::Data);
        let dev = Arc::new(PackedDataset::open(&data.join("dev"))?);
        let tokenizer = Arc::new(Tokenizer::load(&data.join("tokenizer"))?);
        let mut sets = Vec::new();
        for set in [data::eval::SET_FACT_RECALL, data::eval::SET_TWO_HOP, data::eval::SET_GENERAL] {
            let items = crate::eval::load_eval_set(&data.join("world"), set)
                .map_err(|e| EngineError::Training(format!("evaluation: {e}")))?;
            sets.push((set.to_string(), items));
        }
        // The user's eval files (MedQA / MedMCQA / PubMedQA) when the run has a corpus.
        sets.extend(crate::run_corpus::eval_sets(&data)?);
        Ok(Arc::new(EvalInputs {
            dev,
            tokenizer,
            sets,
            periodic: (cfg.eval.dev_seqs, cfg.eval.mcq_items),
            last: (cfg.eval.final_dev_seqs.max(cfg.eval.dev_seqs), cfg.eval.final_mcq_items),
            batch: 8,
            named: cfg.router.as_ref().and_then(|r| r.named_experts.as_ref()).map(|n| n.map.clone()),
        }))
    }

    /// The identities of the stages `stage` reads (p4: also the stage it trains from).
    fn inputs_of(&self, stage: Stage) -> Result<BTreeMap<String, String>> {
        let mut reads = stage.needs().to_vec();
        if stage == Stage::P4 && !reads.contains(&self.p4_source()) {
            reads.push(self.p4_source());
        }
        reads
            .iter()
            .map(|s| {
                let dir = self.dir(*s);
                let m = StageManifest::read(&dir).ok_or_else(|| {
                    EngineError::config("run", format!("{} has no manifest (prerequisite missing)", dir.display()))
                })?;
                Ok((s.name().to_string(), m.identity()))
            })
            .collect()
    }

    /// The model a phase starts from (none for `base`, trained from scratch) and its teacher.
    pub(crate) fn phase_models(&self, phase: Stage) -> Result<(PathBuf, Option<PathBuf>)> {
        let model = |s: Stage| self.dir(s).join("model");
        match phase {
            Stage::Base | Stage::BaselineSmall => Ok((PathBuf::new(), None)),
            Stage::P0 => Ok((model(Stage::MoeInit), Some(model(Stage::Base)))),
            Stage::P1 => Ok((model(Stage::P0), None)),
            Stage::P2 => Ok((model(Stage::P1), None)),
            Stage::P3 => Ok((model(Stage::P2), None)),
            // KD from the pre-QAT model: the source is also the teacher.
            Stage::P4 => Ok((model(self.p4_source()), Some(model(self.p4_source())))),
            Stage::TeacherContinued => Ok((model(Stage::Base), None)),
            s => Err(EngineError::config("phase", format!("`{s}` is not a training phase"))),
        }
    }

    /// A fresh trainer of `phase` at step 0.
    pub(crate) fn new_trainer(&self, phase: Stage, cfg: &PhaseConfig) -> Result<Trainer> {
        let (start, teacher_dir) = self.phase_models(phase)?;
        let model = if matches!(phase, Stage::Base | Stage::BaselineSmall) {
            let (field, name) = match phase {
                Stage::Base => ("base_model", self.config.base_model.clone()),
                _ => ("small_model", self.config.small_model.clone().unwrap_or_default()),
            };
            let config = model::presets::embedded(&name)
                .ok_or_else(|| EngineError::config(field, format!("unknown preset `{name}`")))??;
            let std = config.raw.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02) as f32;
            Qwen3::from_init(config, None, autograd::DType::F32, model::init::qwen3_init(self.config.seed, std))
        } else {
            Qwen3::load(&start)?
        };
        // P2 unties the LM head from the embedding at its start.
        let model = match &cfg.sft {
            Some(s) if s.untie_embeddings => model::untie::untie_embeddings(&model),
            _ => model,
        };
        // With a teacher logit cache the teacher is never run (nor loaded) while training.
        let cached = cfg.distill.as_ref().is_some_and(|d| d.teacher_cache.is_some());
        let teacher = match &teacher_dir {
            Some(t) if matches!(cfg.kind, PhaseKind::Distill | PhaseKind::Qat) && !cached => {
                Some(Arc::new(Qwen3::load(t)?))
            }
            _ => None,
        };
        let mut trainer = Trainer::new(cfg.clone(), model, teacher)?;
        trainer.set_precision(self.options.precision)?;
        trainer.set_device(self.options.device)?;
        Ok(trainer)
    }

    /// A trainer resumed from the newest intact checkpoint in `ckpt_dir` (or fresh): a damaged
    /// newer one is set aside as `damaged-step-<N>` with a warning and the next older one tried.
    pub(crate) fn resumed_trainer(&self, phase: Stage, cfg: &PhaseConfig, ckpt_dir: &Path) -> Result<Trainer> {
        checkpoint::remove_stale_temps(ckpt_dir);
        let mut trainer = self.new_trainer(phase, cfg)?;
        for (step, path) in checkpoint::list_checkpoints(ckpt_dir)?.into_iter().rev() {
            match checkpoint::read_checkpoint(&path).and_then(|c| trainer.restore(c)) {
                Ok(()) => {
                    say(
                        &self.options,
                        format!("stage {:<10} resuming from {} (step {step})", phase.name(), path.display()),
                    );
                    break;
                }
                Err(e) => {
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let aside = ckpt_dir.join(format!("damaged-{name}"));
                    let _ = std::fs::remove_dir_all(&aside);
                    std::fs::rename(&path, &aside).map_err(EngineError::io(&path))?;
                    say(
                        &self.options,
                        format!(
                            "warning: checkpoint {} is damaged ({e}); set aside as {}, trying an older one",
                            path.display(),
                            aside.display()
                        ),
                    );
                    // `restore` checks before it changes anything, but start clean all the same.
                    trainer = self.new_trainer(phase, cfg)?;
                }
            }
        }
        Ok(trainer)
    }

    fn phase_stage(&self, phase: Stage, force: bool) -> Result<bool> {
        let cfg = self.phase_config(phase)?;
        if phase == Stage::Base {
            if let Some(h) = self.config.hf_base(self.config_source())? {
                return self.import_base_stage(&h, &cfg, force);
            }
        }
        self.build_stage(phase, force, |work| {
            let started = std::time::Instant::now();
            let data = self.dir(Stage::Data);
            let ds = Arc::new(PackedDataset::open(&data.join("train"))?);
            if phase.reads_pack() && ds.manifest.seq_len as usize != cfg.seq_len {
                return Err(EngineError::config(
                    &cfg.phase,
                    format!("seq_len {} but the pack has sequences of {}", cfg.seq_len, ds.manifest.seq_len),
                ));
            }
            // Shards are read through memory maps with no checks: verify them whole first.
            ds.verify()?;
            PackedDataset::open(&data.join("dev"))?.verify()?;
            let total_micro = cfg.total_steps() * cfg.accumulation();
            // p2 trains on the world's conversations, p3 on pairs sampled from the p2 model.
            let (stream, data_stats, pair_reference) = match (&cfg.sft, &cfg.preference) {
                _ if !cfg.same_tokens_as.is_empty() => {
                    let (stream, stats) = self.chained_stream(&cfg, &ds)?;
                    (stream, stats, None)
                }
                (Some(s), _) => {
                    let sft = crate::sft_data::build_sft_rows(&data, s, cfg.seq_len, cfg.seed)?;
                    let long = s.long.clone().map(|l| (sft.long_rows, l));
                    (BatchStream::sft_with_long(sft.rows, long, cfg.micro_batch, cfg.seed)?, sft.stats, None)
                }
                (_, Some(pc)) => {
                    let p2 = self.dir(Stage::P2).join("model");
                    let pd = crate::preference_data::pairs_for_phase(&data, &p2, pc, cfg.seq_len, cfg.seed)?;
                    let reference = Arc::new(pd.pairs.iter().map(|p| p.reference).collect::<Vec<_>>());
                    (BatchStream::pairs(Arc::new(pd.pairs), cfg.micro_batch, cfg.seed)?, pd.stats, Some(reference))
                }
                _ => (BatchStream::new(ds, &cfg.mix, cfg.micro_batch, cfg.seed, total_micro)?, BTreeMap::new(), None),
            };
            let mut data_stats = data_stats;
            let teacher_cache = match cfg.distill.as_ref().and_then(|d| d.teacher_cache.as_ref().map(|c| (d, c))) {
                Some((d, c)) => {
                    let teacher_dir = self.phase_models(phase)?.1.ok_or_else(|| {
                        EngineError::config(&cfg.phase, "a teacher cache needs the phase's teacher (the base model)")
                    })?;
                    let teacher_id =
                        StageManifest::read(&self.dir(Stage::Base)).map(|m| m.identity()).unwrap_or_default();
                    let prepared = crate::teacher_cache::prepare(
                        &cfg,
                        d,
                        c,
                        &data.join("train"),
                        &teacher_dir,
                        teacher_id,
                        &stream,
                        total_micro,
                        work,
                    )?;
                    say(
                        &self.options,
                        format!(
                            "stage {:<10} teacher cache: {} sequences, top-{} + log-sum-exp, {:.1} MiB ({})",
                            phase.name(),
                            prepared.sequences,
                            c.k,
                            prepared.bytes as f64 / (1 << 20) as f64,
                            if prepared.build_seconds > 0.0 {
                                format!("built in {:.1} s", prepared.build_seconds)
                            } else {
                                "reused".to_string()
                            }
                        ),
                    );
                    data_stats.insert("teacher_cache_sequences".into(), prepared.sequences as f64);
                    data_stats.insert("teacher_cache_k".into(), c.k as f64);
                    Some(prepared.cache)
                }
                None => None,
            };
            let ckpt_dir = work.join("checkpoints");
            let mut trainer = self.resumed_trainer(phase, &cfg, &ckpt_dir)?;
            trainer.pair_reference = pair_reference;
            trainer.teacher_cache = teacher_cache;
            let eval = Some(self.eval_inputs(&cfg)?);
            let outcome = run_phase(PhaseRun {
                trainer,
                stream,
                ckpt_dir,
                metrics_dir: work.join("metrics"),
                eval,
                progress: self.options.progress,
                faults: self.options.faults.clone(),
            })?;
            if !outcome.completed {
                return Err(EngineError::Training(format!(
                    "{phase} stopped early at step {} (fault injection)",
                    outcome.state.step
                )));
            }
            let model_dir = work.join("model");
            let _ = std::fs::remove_dir_all(&model_dir);
            outcome.model.save(&model_dir, None)?;
            // The run's tokenizer beside the weights, so the model directory exports to GGUF
            // and generates text on its own.
            model::tokenizer_files::copy_tokenizer_files(&self.dir(Stage::Data).join("tokenizer"), &model_dir)?;
            // Paths under the stage's final name (a rebuild beside it is swapped in).
            let name = phase.name();
            let mut artifacts = BTreeMap::new();
            artifacts.insert("model".to_string(), format!("{name}/model"));
            artifacts.insert("metrics_jsonl".to_string(), format!("{name}/metrics/metrics.jsonl"));
            artifacts.insert("tensorboard".to_string(), format!("{name}/metrics"));
            if let Some(c) = outcome.last_checkpoint.as_ref().and_then(|c| c.file_name()) {
                artifacts.insert("checkpoint".to_string(), format!("{name}/checkpoints/{}", c.to_string_lossy()));
            }
            let mut summary = summarise(
                name,
                &outcome.state,
                outcome.final_eval.as_ref(),
                artifacts.clone(),
                started.elapsed().as_secs_f64(),
            );
            summary.precision = self.options.precision.name().to_string();
            summary.gemm_backend = self.options.precision.backend().name().to_string();
            summary.data = data_stats;
            let (from, to) = (work.display().to_string(), self.dir(phase).display().to_string());
            for a in &mut summary.breaker_actions {
                if let Some(c) = &mut a.checkpoint {
                    *c = c.replacen(&from, &to, 1);
                }
            }
            let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
            atomicio::write_file(&work.join("summary.json"), text.as_bytes())?;
            let metrics = serde_json::to_value(&summary).unwrap_or_default();
            Ok(Made { metrics, artifacts, outputs: &["model"], records: &["summary.json"] })
        })
    }

    /// The `base` stage from an HF directory: its files copied into `base/model`, loaded (which
    /// checks every tensor against the config) and evaluated like a trained base.
    fn import_base_stage(&self, h: &crate::hf_base::HfBase, cfg: &PhaseConfig, force: bool) -> Result<bool> {
        self.build_stage(Stage::Base, force, |work| {
            let started = std::time::Instant::now();
            let model_dir = work.join("model");
            let _ = std::fs::remove_dir_all(&model_dir);
            h.import(&model_dir)?;
            let model = Qwen3::load(&model_dir)?;
            let eval = self.eval_inputs(cfg)?.evaluate(&model, 0, true)?;
            let artifacts: BTreeMap<String, String> = [("model".to_string(), "base/model".to_string())].into();
            let summary =
                crate::summary::imported(Stage::Base.name(), &eval, artifacts.clone(), started.elapsed().as_secs_f64());
            let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
            atomicio::write_file(&work.join("summary.json"), text.as_bytes())?;
            let metrics = serde_json::to_value(&summary).unwrap_or_default();
            Ok(Made { metrics, artifacts, outputs: &["model"], records: &["summary.json"] })
        })
    }

    fn importance_stage(&self, force: bool) -> Result<bool> {
        let c = &self.config;
        self.build_stage(Stage::Importance, force, |dir| {
            let model = Qwen3::load(&self.dir(Stage::Base).join("model"))?;
            let ds = PackedDataset::open(&self.dir(Stage::Data).join("train"))?;
            let meta = [("model".to_string(), "base/model".to_string())].into();
            let pass = crate::importance_pass::run(
                &model,
                &ds,
                c.importance_batches,
                c.importance_batch,
                dir,
                &meta,
                &self.options.faults,
            )?;
            if pass.resumed_at > 0 {
                say(&self.options, format!("stage importance resumed after batch {}", pass.resumed_at));
            }
            let state = pass.state;
            let artifacts = [("importance".to_string(), "importance/importance.safetensors".to_string())].into();
            let metrics = serde_json::json!({ "batches": state.batches, "tokens": state.tokens });
            Ok(Made { metrics, artifacts, outputs: &["importance.safetensors"], records: &[] })
        })
    }

    fn surgery_stage(&self, force: bool) -> Result<bool> {
        let c = &self.config;
        self.build_stage(Stage::MoeInit, force, |dir| {
            let dense = Qwen3::load(&self.dir(Stage::Base).join("model"))?;
            let (l, f) = (dense.config.num_hidden_layers, dense.config.intermediate_size);
            let importance =
                model::importance::read_importance(&self.dir(Stage::Importance).join("importance.safetensors"), l, f)?;
            let (_, spec) = model::presets::embedded_moe(&c.moe_model)?;
            let opts = c.surgery_options()?;
            let plans = plan_model(&dense, &importance, &spec, &opts)?;
            let moe = convert(&dense, &plans, &spec, &opts)?;
            let out = dir.join("model");
            let _ = std::fs::remove_dir_all(&out);
            moe.save(&out, None)?;
            model::tokenizer_files::copy_tokenizer_files(&self.dir(Stage::Data).join("tokenizer"), &out)?;
            let artifacts = [("model".to_string(), "moe-init/model".to_string())].into();
            let metrics = serde_json::json!({ "params": moe.num_params() });
            Ok(Made { metrics, artifacts, outputs: &["model"], records: &[] })
        })
    }
}

/// `min_frequency` of the run's tokenizer training.
const TOKENIZER_MIN_FREQUENCY: u64 = 2;
