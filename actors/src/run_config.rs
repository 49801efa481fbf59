//! The run config (configs/runs/<name>.json): the run-level settings of a pipeline, parsed with
//! the failing field named, and checked as a whole before any stage runs.

use crate::error::{EngineError, Result};
use crate::hf_base::{names_a_directory, HfBase};
use data::world_dir::WorldSpec;
use model::surgery::apply::{RouterInit, SurgeryOptions};
use model::surgery::plan::{FillStrategy, SplitStrategy};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The run-level settings (configs/runs/<name>.json).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Preset name the phase files are resolved for (`tiny`).
    pub preset: String,
    /// The dense base / teacher: a model preset (trained from scratch by the `base` stage), or
    /// an HF Qwen3 directory (imported by the `base` stage; its tokenizer packs the corpus and
    /// `vocab` is not used; [`crate::hf_base`]). A relative path is taken from the working
    /// directory.
    pub base_model: String,
    /// MoE preset of the surgery.
    pub moe_model: String,
    /// Dense preset of the small reference (`baseline-small`: active parameters about the MoE's;
    /// the 0.6B stand-in). None: the run has no small reference (`baseline-small` and `eval`
    /// are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub small_model: Option<String>,
    /// The quantization the MoE ships with, by role; the references' PTQ uses the same
    /// (stage `eval`).
    #[serde(default)]
    pub ship_mask: crate::ship_mask::ShipMask,
    /// Stage `eval`: items per eval set at most, evenly spaced over the set (None: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_max_items: Option<usize>,
    /// Synthetic world (corpus size, seed, entity counts).
    pub world: WorldSpec,
    /// A user's corpus and eval files (a `data prepare` config) instead of the world's corpus
    /// ([`crate::run_corpus`]); None: the world's corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<crate::run_corpus::CorpusConfig>,
    /// Vocabulary of the tokenizer the data stage trains (not used with an HF base, whose own
    /// tokenizer is used).
    pub vocab: usize,
    /// Tokens per packed sequence.
    pub seq_len: usize,
    /// One document in this many goes to the dev split.
    pub dev_every: u64,
    /// Importance pass: batches of `importance_batch` sequences (0: the whole train pack once,
    /// streaming and resumable; [`crate::importance_pass`]).
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
    /// Parses a run config; an unknown field or a wrong type is an error naming the file and
    /// the field's path.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let at = if field == "." { String::new() } else { format!("field `{field}`: ") };
            EngineError::config(source, format!("{at}{}", e.into_inner()))
        })
    }

    /// Checks the settings that need no file: presets exist and fit together (a dense base, a
    /// MoE of its shape), eval sets are not empty, sizes are positive, surgery names are known.
    pub fn validate(&self, source: &str) -> Result<()> {
        let bad = |field: &str, msg: String| Err(EngineError::config(format!("{source} field `{field}`"), msg));
        let hf = self.hf_base(source)?;
        let base = match &hf {
            Some(h) => h.config.clone(),
            None => match model::presets::embedded(&self.base_model) {
                None => {
                    let known = model::presets::names().join(", ");
                    return bad(
                        "base_model",
                        format!(
                            "unknown preset `{}` (known: {known}; or give the path of an HF Qwen3 directory)",
                            self.base_model
                        ),
                    );
                }
                Some(c) => c?,
            },
        };
        if hf.is_none() && model::presets::embedded_moe(&self.base_model).is_ok() {
            return bad(
                "base_model",
                format!("`{}` is a MoE preset; the base is the dense model the MoE is made from", self.base_model),
            );
        }
        let moe = match model::presets::embedded_moe(&self.moe_model) {
            Ok((c, _)) => c,
            Err(e) => {
                let known = model::presets::names().join(", ");
                return bad("moe_model", format!("`{}`: {e} (presets: {known})", self.moe_model));
            }
        };
        let shape = |c: &model::Qwen3Config| {
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        };
        if shape(&base) != shape(&moe) || base.vocab_size != moe.vocab_size {
            return bad(
                "moe_model",
                format!(
                    "`{}` (hidden, layers, heads, kv heads, head dim {:?}, vocab {}) does not fit base_model `{}` ({:?}, vocab {})",
                    self.moe_model,
                    shape(&moe),
                    moe.vocab_size,
                    self.base_model,
                    shape(&base),
                    base.vocab_size
                ),
            );
        }
        if hf.is_none() && (self.vocab < 2 || self.vocab > base.vocab_size) {
            return bad(
                "vocab",
                format!("{} must be in 2..={} (vocab_size of `{}`)", self.vocab, base.vocab_size, self.base_model),
            );
        }
        let e = &self.world.eval;
        for (set, n) in [("fact_recall", e.fact_recall), ("two_hop", e.two_hop), ("general", e.general)] {
            if n == 0 {
                return bad(&format!("world.eval.{set}"), "0 items: every eval set needs items".into());
            }
        }
        if self.world.corpus.tokens == 0 {
            return bad("world.corpus.tokens", "0: the corpus needs tokens".into());
        }
        if self.seq_len < 2 || self.dev_every < 2 {
            return bad(
                "seq_len",
                format!("seq_len {} and dev_every {} must be at least 2", self.seq_len, self.dev_every),
            );
        }
        if let Some(small) = &self.small_model {
            match model::presets::embedded(small) {
                None => {
                    let known = model::presets::names().join(", ");
                    return bad("small_model", format!("unknown preset `{small}` (known: {known})"));
                }
                Some(c) => drop(c?),
            }
            if model::presets::embedded_moe(small).is_ok() {
                return bad("small_model", format!("`{small}` is a MoE preset; the small reference is dense"));
            }
            // Its vocabulary is checked against the base only when a stage uses it
            // (`check_small_model_vocab`): a run on an HF base that stops before them may keep it.
        }
        if let Some(corpus) = &self.corpus {
            corpus.load(source)?;
        }
        self.ship_mask.validate(source)?;
        if self.eval_max_items == Some(0) {
            return bad("eval_max_items", "0 items: leave it out to score every item".into());
        }
        if self.importance_batch == 0 {
            return bad("importance_batch", "0 sequences per batch: it must be positive".into());
        }
        self.surgery_options().map(|_| ())
    }

    /// The small reference shares the run's tokenizer: its preset's vocabulary must be the
    /// base's. Checked when baseline-small or eval will run.
    pub fn check_small_model_vocab(&self, source: &str) -> Result<()> {
        let Some(small) = &self.small_model else { return Ok(()) };
        let Some(small_cfg) = model::presets::embedded(small) else { return Ok(()) };
        let small_vocab = small_cfg?.vocab_size;
        let base_vocab = match self.hf_base(source)? {
            Some(h) => h.config.vocab_size,
            None => match model::presets::embedded(&self.base_model) {
                Some(c) => c?.vocab_size,
                None => return Ok(()),
            },
        };
        if small_vocab != base_vocab {
            return Err(EngineError::config(
                format!("{source} field `small_model`"),
                format!(
                    "`{small}` has a vocabulary of {small_vocab} but base_model `{}` {base_vocab}: the models of the \
                     comparison share the run's tokenizer",
                    self.base_model
                ),
            ));
        }
        Ok(())
    }

    /// The HF directory `base_model` names, checked ([`HfBase::open`]), or None when it names a
    /// preset (a preset name wins over a directory of the same name).
    pub fn hf_base(&self, source: &str) -> Result<Option<HfBase>> {
        if model::presets::embedded(&self.base_model).is_some() || !names_a_directory(&self.base_model) {
            return Ok(None);
        }
        HfBase::open(Path::new(&self.base_model), &format!("{source} field `base_model`")).map(Some)
    }

    /// The embedded default.
    pub fn embedded() -> Result<Self> {
        Self::parse(DEFAULT_RUN, "configs/runs/tiny.json")
    }

    pub(crate) fn surgery_options(&self) -> Result<SurgeryOptions> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// configs/runs/qwen3-1.7b-med.json, the seed-plan run on a downloaded Qwen3-1.7B: it parses,
    /// and without the checkpoint at `models/Qwen3-1.7B` it is refused naming the field.
    #[test]
    fn the_qwen3_run_config_parses_and_asks_for_its_checkpoint() {
        let source = "configs/runs/qwen3-1.7b-med.json";
        let c = RunConfig::parse(include_str!("../../configs/runs/qwen3-1.7b-med.json"), source).unwrap();
        assert_eq!(
            (c.base_model.as_str(), c.moe_model.as_str(), c.seq_len),
            ("models/Qwen3-1.7B", "qwen3-1.7b-k1p1-n16", 4096)
        );
        if Path::new(&c.base_model).exists() {
            eprintln!("skipping the refusal: {} exists here", c.base_model);
            return;
        }
        let err = c.validate(source).unwrap_err().to_string();
        assert!(err.contains("field `base_model`") && err.contains("is not a directory"), "{err}");
    }

    /// A bare name that is neither a preset nor a directory is an unknown preset.
    #[test]
    fn an_unknown_base_name_lists_the_presets_and_the_directory_option() {
        let mut c = RunConfig::embedded().unwrap();
        c.base_model = "qwen3-nonexistent".into();
        let err = c.validate("run.json").unwrap_err().to_string();
        assert!(err.contains("unknown preset `qwen3-nonexistent`") && err.contains("HF Qwen3 directory"), "{err}");
    }

    #[test]
    fn the_small_models_vocabulary_is_checked_only_when_asked() {
        // qwen3-0.6b (vocab 151,936) as the base with the tiny-dense MoE would not fit; here
        // only the small reference's check matters: same base, another small preset.
        let mut c = RunConfig::embedded().unwrap();
        c.validate("run.json").unwrap();
        c.check_small_model_vocab("run.json").unwrap();
        c.small_model = Some("qwen3-0.6b".into());
        c.validate("run.json").unwrap();
        let err = c.check_small_model_vocab("run.json").unwrap_err().to_string();
        assert!(err.contains("field `small_model`") && err.contains("share the run's tokenizer"), "{err}");
    }
}
