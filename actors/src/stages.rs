//! The stages of a run directory: data -> base -> importance -> moe-init -> p0 -> p1.
//! Each stage writes `manifest.json` (config hash, input identities, metrics, artifacts) when
//! it finishes; a stage whose manifest matches its config and inputs is skipped, a training
//! stage with checkpoints of the same inputs resumes from the newest complete one.

use crate::batches::BatchStream;
use crate::checkpoint;
use crate::error::{EngineError, Result};
use crate::evaluator::{EvalInputs, EvalRecord};
use crate::manifest::{sha256_hex, Stage, StageManifest};
use crate::phase::{PhaseConfig, PhaseKind};
use crate::supervisor::{run_phase, Faults, PhaseRun};
use crate::trainer::{LoggedAction, Trainer};
use data::pack::{PackConfig, PackedDataset};
use data::tokenizer::Tokenizer;
use data::world_dir::WorldSpec;
use model::importance::{TaylorForm, TaylorState};
use model::surgery::apply::{convert, plan_model, RouterInit, SurgeryOptions};
use model::surgery::plan::{FillStrategy, SplitStrategy};
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The run-level settings (configs/runs/<name>.json).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Preset name the phase files are resolved for (`tiny`).
    pub preset: String,
    /// Model preset of the dense base / teacher.
    pub base_model: String,
    /// MoE preset of the surgery.
    pub moe_model: String,
    /// Synthetic world (corpus size, seed, entity counts).
    pub world: WorldSpec,
    /// Tokenizer vocabulary.
    pub vocab: usize,
    /// Tokens per packed sequence.
    pub seq_len: usize,
    /// One document in this many goes to the dev split.
    pub dev_every: u64,
    /// Importance pass: batches of `importance_batch` sequences.
    pub importance_batches: u64,
    /// Sequences per importance batch.
    pub importance_batch: usize,
    /// Surgery: `importance-split`, `kmeans` or `random`.
    pub split: String,
    /// Surgery: `overlap` or `drop-upcycle`.
    pub fill: String,
    /// Surgery: `centroids`, `near-uniform` or `random` ([`RouterInit::from_name`]).
    pub router_init: String,
    /// Seed of model init and surgery.
    pub seed: u64,
}

/// The embedded default run.
pub const DEFAULT_RUN: &str = include_str!("../../configs/runs/tiny.json");

impl RunConfig {
    /// Parses a run config.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| EngineError::config(source, e.to_string()))
    }

    /// The embedded default.
    pub fn embedded() -> Result<Self> {
        Self::parse(DEFAULT_RUN, "configs/runs/tiny.json")
    }

    fn surgery_options(&self) -> Result<SurgeryOptions> {
        let split = match self.split.as_str() {
            "importance-split" => SplitStrategy::ImportanceSplit,
            "kmeans" => SplitStrategy::KMeans,
            "random" => SplitStrategy::Random,
            s => return Err(EngineError::config("split", format!("`{s}` (importance-split, kmeans, random)"))),
        };
        let fill = match self.fill.as_str() {
            "overlap" => FillStrategy::Overlap,
            "drop-upcycle" => FillStrategy::DropUpcycle,
            s => return Err(EngineError::config("fill", format!("`{s}` (overlap, drop-upcycle)"))),
        };
        let router_init =
            RouterInit::from_name(&self.router_init).map_err(|e| EngineError::config("router_init", e.to_string()))?;
        Ok(SurgeryOptions { split, fill, router_init, seed: self.seed })
    }
}

/// Stage names in run order ([`Stage::name`] of [`Stage::ALL`]), for command lines.
pub const STAGES: [&str; 6] = [
    Stage::Data.name(),
    Stage::Base.name(),
    Stage::Importance.name(),
    Stage::MoeInit.name(),
    Stage::P0.name(),
    Stage::P1.name(),
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
}

/// What a finished training stage reports (`summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseSummary {
    /// Phase name.
    pub phase: String,
    /// Optimiser steps.
    pub steps: u64,
    /// Tokens trained on.
    pub tokens: u64,
    /// Objective of the last step.
    pub final_loss: f32,
    /// Dev perplexity per domain (final evaluation).
    pub dev_ppl: BTreeMap<String, f64>,
    /// MCQ accuracy (log-likelihood sum) per eval set.
    pub mcq_accuracy: BTreeMap<String, f64>,
    /// MCQ accuracy with per-token normalised scores.
    pub mcq_accuracy_norm: BTreeMap<String, f64>,
    /// Chance level per eval set.
    pub mcq_chance: BTreeMap<String, f64>,
    /// Router statistics per MoE layer at the last step.
    pub router: Vec<crate::trainer::LayerRouter>,
    /// Breaker actions.
    pub breaker_actions: Vec<LoggedAction>,
    /// Steps skipped by the non-finite guard.
    pub nonfinite_skipped: u64,
    /// Artifacts (name -> path).
    pub artifacts: BTreeMap<String, String>,
    /// Wall-clock seconds of this stage in this process.
    pub seconds: f64,
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

fn say(opts: &RunOptions, msg: String) {
    if opts.verbose {
        eprintln!("{msg}");
    }
}

fn identity_of(dir: &Path) -> Result<String> {
    StageManifest::read(dir)
        .map(|m| m.identity())
        .ok_or_else(|| EngineError::config("run", format!("{} has no manifest (prerequisite missing)", dir.display())))
}

/// The old name of [`Pipeline`], kept only until cli/src/cmd/run.rs (under refactoring elsewhere)
/// names `Pipeline`; new code must not use it.
#[doc(hidden)]
pub use Pipeline as Run;

impl Pipeline {
    /// Directory of `stage`.
    pub fn dir(&self, stage: Stage) -> PathBuf {
        self.root.join(stage.name())
    }

    fn phase_config(&self, phase: Stage) -> Result<PhaseConfig> {
        match self.options.phase_files.get(phase.name()) {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(EngineError::io(p))?;
                PhaseConfig::parse(&text, &p.display().to_string(), &self.config.preset)
            }
            None => PhaseConfig::embedded(phase.name(), &self.config.preset),
        }
    }

    /// Runs every stage up to and including the one named `until` ([`Stage::from_name`]); returns
    /// the summary of the last training stage run or skipped.
    pub fn run_until(&self, until: &str) -> Result<Option<PhaseSummary>> {
        self.run_through(Stage::from_name(until)?)
    }

    /// Runs every stage up to and including `last`; returns the summary of the last training
    /// stage run or skipped.
    pub fn run_through(&self, last: Stage) -> Result<Option<PhaseSummary>> {
        let stages: Vec<Stage> = Stage::ALL.into_iter().filter(|s| *s <= last).collect();
        // Every config is checked before anything is written.
        for stage in stages.iter().filter(|s| s.is_phase()) {
            self.phase_config(*stage)?;
        }
        self.config.surgery_options()?;
        std::fs::create_dir_all(&self.root).map_err(EngineError::io(&self.root))?;
        let mut summary = None;
        for stage in stages {
            let started = std::time::Instant::now();
            let skipped = match stage {
                Stage::Data => self.data_stage()?,
                Stage::Base | Stage::P0 | Stage::P1 => {
                    let (skipped, s) = self.phase_stage(stage)?;
                    summary = Some(s);
                    skipped
                }
                Stage::Importance => self.importance_stage()?,
                Stage::MoeInit => self.surgery_stage()?,
            };
            let what = if skipped {
                "up to date".to_string()
            } else {
                format!("done in {:.1} s", started.elapsed().as_secs_f64())
            };
            say(&self.options, format!("stage {:<10} {what} ({})", stage.name(), self.dir(stage).display()));
        }
        Ok(summary)
    }

    /// Runs `body` for a stage unless its manifest matches; writes the manifest after.
    fn cached(
        &self,
        stage: Stage,
        config_hash: String,
        inputs: BTreeMap<String, String>,
        body: impl FnOnce(&Path) -> Result<(serde_json::Value, BTreeMap<String, String>)>,
    ) -> Result<bool> {
        let dir = self.dir(stage);
        if StageManifest::matches(&dir, &config_hash, &inputs) {
            return Ok(true);
        }
        let _ = std::fs::remove_file(dir.join("manifest.json"));
        std::fs::create_dir_all(&dir).map_err(EngineError::io(&dir))?;
        let (metrics, artifacts) = body(&dir)?;
        StageManifest { stage, config_hash, inputs, metrics, artifacts }.write(&dir)?;
        Ok(false)
    }

    fn data_stage(&self) -> Result<bool> {
        let c = &self.config;
        let key =
            serde_json::json!({ "world": c.world, "vocab": c.vocab, "seq_len": c.seq_len, "dev_every": c.dev_every });
        let hash = sha256_hex(key.to_string().as_bytes());
        self.cached(Stage::Data, hash, BTreeMap::new(), |dir| {
            for sub in ["world", "tokenizer", "train", "dev"] {
                let _ = std::fs::remove_dir_all(dir.join(sub));
            }
            let world = dir.join("world");
            data::world_dir::build_world_dir(&c.world, &world, &mut |_| {})?;
            let docs = data::world_dir::read_corpus(&world)?;
            let config = data::tokenizer::TrainConfig { vocab_size: c.vocab, min_frequency: 2 };
            let tok = Tokenizer::train(docs.iter().map(|d| d.text.as_str()), &config)?;
            let staging = atomicio::StagingDir::new(&dir.join("tokenizer"))?;
            tok.save(staging.path())?;
            staging.commit()?;
            let (mut train, mut dev) = (Vec::new(), Vec::new());
            for d in docs {
                // Deterministic split by document id.
                if data::rng::label_hash(&d.id).is_multiple_of(c.dev_every.max(2)) {
                    dev.push(d);
                } else {
                    train.push(d);
                }
            }
            let pc = PackConfig { seq_len: c.seq_len, ..Default::default() };
            let tm = data::pack::pack_documents(&train, &tok, &pc, &dir.join("train"), &mut |_| {})?;
            let dm = data::pack::pack_documents(&dev, &tok, &pc, &dir.join("dev"), &mut |_| {})?;
            let tokens = |m: &data::pack::format::PackManifest| m.domains.values().map(|d| d.tokens).sum::<u64>();
            let metrics = serde_json::json!({
                "train_documents": train.len(), "dev_documents": dev.len(),
                "train_tokens": tokens(&tm), "dev_tokens": tokens(&dm),
            });
            let artifacts = ["world", "tokenizer", "train", "dev"].map(|s| (s.to_string(), format!("data/{s}"))).into();
            Ok((metrics, artifacts))
        })
    }

    fn eval_inputs(&self, cfg: &PhaseConfig) -> Result<Arc<EvalInputs>> {
        let data = self.dir(Stage::Data);
        let dev = Arc::new(PackedDataset::open(&data.join("dev"))?);
        let tokenizer = Arc::new(Tokenizer::load(&data.join("tokenizer"))?);
        let mut sets = Vec::new();
        for set in [data::eval::SET_FACT_RECALL, data::eval::SET_TWO_HOP, data::eval::SET_GENERAL] {
            let items = crate::eval::load_eval_set(&data.join("world"), set)
                .map_err(|e| EngineError::Training(format!("evaluation: {e}")))?;
            sets.push((set.to_string(), items));
        }
        Ok(Arc::new(EvalInputs {
            dev,
            tokenizer,
            sets,
            periodic: (cfg.eval.dev_seqs, cfg.eval.mcq_items),
            last: (cfg.eval.final_dev_seqs.max(cfg.eval.dev_seqs), cfg.eval.final_mcq_items),
            batch: 8,
        }))
    }

    /// The stages `stage` reads (each listed in its inputs by the identity of its manifest).
    fn inputs_of(&self, stage: Stage) -> Result<BTreeMap<String, String>> {
        let needs: &[Stage] = match stage {
            Stage::Data => &[],
            Stage::Base => &[Stage::Data],
            Stage::Importance => &[Stage::Base, Stage::Data],
            Stage::MoeInit => &[Stage::Importance, Stage::Base],
            Stage::P0 => &[Stage::Data, Stage::MoeInit, Stage::Base],
            Stage::P1 => &[Stage::Data, Stage::P0],
        };
        needs.iter().map(|s| Ok((s.name().to_string(), identity_of(&self.dir(*s))?))).collect()
    }

    /// The model a phase starts from (none for `base`, trained from scratch) and its teacher.
    fn phase_models(&self, phase: Stage) -> Result<(PathBuf, Option<PathBuf>)> {
        let model = |s: Stage| self.dir(s).join("model");
        match phase {
            Stage::Base => Ok((PathBuf::new(), None)),
            Stage::P0 => Ok((model(Stage::MoeInit), Some(model(Stage::Base)))),
            Stage::P1 => Ok((model(Stage::P0), None)),
            s => Err(EngineError::config("phase", format!("`{s}` is not a training phase"))),
        }
    }

    fn phase_stage(&self, phase: Stage) -> Result<(bool, PhaseSummary)> {
        let cfg = self.phase_config(phase)?;
        let (start, teacher_dir) = self.phase_models(phase)?;
        let inputs = self.inputs_of(phase)?;
        let dir = self.dir(phase);
        let hash = cfg.hash();
        if StageManifest::matches(&dir, &hash, &inputs) {
            let text =
                std::fs::read_to_string(dir.join("summary.json")).map_err(EngineError::io(dir.join("summary.json")))?;
            let s = serde_json::from_str(&text).map_err(|e| EngineError::config("summary.json", e.to_string()))?;
            return Ok((true, s));
        }
        let started = std::time::Instant::now();
        // Checkpoints belong to one (config, inputs): anything else in the directory is stale.
        let key = serde_json::json!({ "config": hash, "inputs": inputs }).to_string();
        let key_path = dir.join("inputs.json");
        if std::fs::read_to_string(&key_path).ok().as_deref() != Some(key.as_str()) {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(EngineError::io(&dir))?;
            atomicio::write_file(&key_path, key.as_bytes())?;
        }
        let _ = std::fs::remove_file(dir.join("manifest.json"));
        let model = if phase == Stage::Base {
            let config = model::presets::embedded(&self.config.base_model).ok_or_else(|| {
                EngineError::config("base_model", format!("unknown preset `{}`", self.config.base_model))
            })??;
            let std = config.raw.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02) as f32;
            Qwen3::from_init(config, None, autograd::DType::F32, model::init::qwen3_init(self.config.seed, std))
        } else {
            Qwen3::load(&start)?
        };
        let teacher = match &teacher_dir {
            Some(t) if cfg.kind == PhaseKind::Distill => Some(Arc::new(Qwen3::load(t)?)),
            _ => None,
        };
        let ds = Arc::new(PackedDataset::open(&self.dir(Stage::Data).join("train"))?);
        if ds.manifest.seq_len as usize != cfg.seq_len {
            return Err(EngineError::config(
                &cfg.phase,
                format!("seq_len {} but the pack has sequences of {}", cfg.seq_len, ds.manifest.seq_len),
            ));
        }
        let total_micro = cfg.total_steps() * cfg.accumulation();
        let stream = BatchStream::new(ds, &cfg.mix, cfg.micro_batch, cfg.seed, total_micro)?;
        let mut trainer = Trainer::new(cfg.clone(), model, teacher)?;
        trainer.set_device(self.options.device)?;
        let ckpt_dir = dir.join("checkpoints");
        checkpoint::remove_stale_temps(&ckpt_dir);
        if let Some((step, path)) = checkpoint::list_checkpoints(&ckpt_dir)?.pop() {
            say(&self.options, format!("stage {:<10} resuming from {} (step {step})", phase.name(), path.display()));
            trainer.restore(checkpoint::read_checkpoint(&path)?)?;
        }
        let eval = Some(self.eval_inputs(&cfg)?);
        let outcome = run_phase(PhaseRun {
            trainer,
            stream,
            ckpt_dir,
            metrics_dir: dir.join("metrics"),
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
        let model_dir = dir.join("model");
        let _ = std::fs::remove_dir_all(&model_dir);
        outcome.model.save(&model_dir, None)?;
        let rel = |p: &Path| p.strip_prefix(&self.root).unwrap_or(p).display().to_string();
        let mut artifacts = BTreeMap::new();
        artifacts.insert("model".to_string(), rel(&model_dir));
        artifacts.insert("metrics_jsonl".to_string(), rel(&dir.join("metrics").join("metrics.jsonl")));
        artifacts.insert("tensorboard".to_string(), rel(&dir.join("metrics")));
        if let Some(c) = &outcome.last_checkpoint {
            artifacts.insert("checkpoint".to_string(), rel(c));
        }
        let summary = summarise(
            phase.name(),
            &outcome.state,
            outcome.final_eval.as_ref(),
            artifacts.clone(),
            started.elapsed().as_secs_f64(),
        );
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        atomicio::write_file(&dir.join("summary.json"), text.as_bytes())?;
        let metrics = serde_json::to_value(&summary).unwrap_or_default();
        StageManifest { stage: phase, config_hash: hash, inputs, metrics, artifacts }.write(&dir)?;
        Ok((false, summary))
    }

    fn importance_stage(&self) -> Result<bool> {
        let c = &self.config;
        let key = serde_json::json!({ "batches": c.importance_batches, "batch": c.importance_batch });
        let inputs = self.inputs_of(Stage::Importance)?;
        self.cached(Stage::Importance, sha256_hex(key.to_string().as_bytes()), inputs, |dir| {
            let model = Qwen3::load(&self.dir(Stage::Base).join("model"))?;
            let ds = PackedDataset::open(&self.dir(Stage::Data).join("train"))?;
            let (l, f) = (model.config.num_hidden_layers, model.config.intermediate_size);
            let mut state = TaylorState::new(l, f, 0.99);
            let n = ds.len();
            for b in 0..c.importance_batches {
                let seqs: Vec<u64> =
                    (0..c.importance_batch as u64).map(|i| (b * c.importance_batch as u64 + i) % n).collect();
                let (batch, targets) = crate::eval::token_batch_of(data::pack::batch_of(&ds, &seqs));
                state.update(&model, &batch, &targets)?;
            }
            let path = dir.join("importance.safetensors");
            let meta = [("model".to_string(), "base/model".to_string())].into();
            model::importance::write_importance(&path, &state, TaylorForm::First, &meta)?;
            let artifacts = [("importance".to_string(), "importance/importance.safetensors".to_string())].into();
            Ok((serde_json::json!({ "batches": state.batches, "tokens": state.tokens }), artifacts))
        })
    }

    fn surgery_stage(&self) -> Result<bool> {
        let c = &self.config;
        let key = serde_json::json!({ "moe": c.moe_model, "split": c.split, "fill": c.fill, "router": c.router_init, "seed": c.seed });
        let inputs = self.inputs_of(Stage::MoeInit)?;
        self.cached(Stage::MoeInit, sha256_hex(key.to_string().as_bytes()), inputs, |dir| {
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
            let artifacts = [("model".to_string(), "moe-init/model".to_string())].into();
            Ok((serde_json::json!({ "params": moe.num_params() }), artifacts))
        })
    }
}

/// The summary of a finished phase.
pub fn summarise(
    phase: &str,
    s: &crate::trainer::TrainerState,
    eval: Option<&EvalRecord>,
    artifacts: BTreeMap<String, String>,
    seconds: f64,
) -> PhaseSummary {
    let mut summary = PhaseSummary {
        phase: phase.to_string(),
        steps: s.step,
        tokens: s.tokens,
        final_loss: s.last.as_ref().map_or(f32::NAN, |r| r.loss),
        dev_ppl: BTreeMap::new(),
        mcq_accuracy: BTreeMap::new(),
        mcq_accuracy_norm: BTreeMap::new(),
        mcq_chance: BTreeMap::new(),
        router: s.router.clone(),
        breaker_actions: s.actions.clone(),
        nonfinite_skipped: s.nonfinite_skipped,
        artifacts,
        seconds,
    };
    if let Some(e) = eval {
        summary.dev_ppl = e.dev.per_domain.iter().map(|(d, p)| (d.clone(), p.ppl)).collect();
        for m in &e.mcq {
            summary.mcq_accuracy.insert(m.set.clone(), m.accuracy);
            summary.mcq_accuracy_norm.insert(m.set.clone(), m.accuracy_norm);
            summary.mcq_chance.insert(m.set.clone(), m.chance);
        }
    }
    summary
}
