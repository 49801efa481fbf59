//! Stage `eval`: the comparison table of issue 16. The MoE after p1, the dense teacher (`base`)
//! and the small dense reference (`baseline-small`, trained on the same micro-batches as base +
//! p0 + p1) are exported to GGUF with the run's [`ShipMask`](crate::ship_mask::ShipMask) (one
//! mask by role, so every model gets the same PTQ), and the six models are scored on the same
//! items in the same order by the evaluation harness (`moe-cli eval`: MCQ by option
//! log-likelihood and by the greedy answer, held-out perplexity, routing and capacity overflow,
//! tokens/s; CSVs, `summary.json`, Wilson intervals).
//!
//! The harness's orchestration lives in the CLI, so the pipeline calls it through the
//! [`Evaluator`](crate::eval_job::Evaluator) it is given
//! ([`crate::stages::RunOptions::evaluator`]). An interrupted stage keeps its GGUF files and the
//! harness's finished (model, set) results, and resumes.

use crate::error::{EngineError, Result};
use crate::eval_job::{EvalJob, GEN_TOKENS, PPL_DOCS};
use crate::manifest::Stage;
use crate::stages::{Made, Pipeline};
use model::gguf::{export_gguf, Arch, GgufOptions, GgufType};
use std::path::Path;

/// The models of the table, in order: name, the stage whose model it is, PTQ'd or not.
pub const MODELS: [(&str, Stage, bool); 6] = [
    ("moe", Stage::P1, false),
    ("moe-ptq", Stage::P1, true),
    ("teacher", Stage::Base, false),
    ("teacher-ptq", Stage::Base, true),
    ("small", Stage::BaselineSmall, false),
    ("small-ptq", Stage::BaselineSmall, true),
];

/// `Some(has shared expert)` for a MoE model directory, None for a dense one.
fn moe_kind(dir: &Path) -> Result<Option<bool>> {
    let path = dir.join("config.json");
    let config = model::Qwen3Config::from_file(&path)?;
    Ok(model::moe_spec::MoeSpec::from_config(&config, &path)?.map(|s| s.shared_width > 0))
}

impl Pipeline {
    /// The key of stage `eval`.
    pub(crate) fn eval_key(&self) -> serde_json::Value {
        let c = &self.config;
        let models: Vec<&str> = MODELS.iter().map(|m| m.0).collect();
        serde_json::json!({
            "ship_mask": c.ship_mask, "models": models, "dev_every": c.dev_every, "seq_len": c.seq_len,
            "max_items": c.eval_max_items, "gen_tokens": GEN_TOKENS, "ppl_docs": PPL_DOCS, "version": 1,
        })
    }

    /// Same-mask PTQ of the three models, then the harness over the six.
    pub(crate) fn eval_stage(&self, force: bool) -> Result<bool> {
        let evaluator = self.options.evaluator.clone().ok_or_else(|| {
            EngineError::config("eval", "stage `eval` needs an evaluator (moe-cli provides its `eval`)")
        })?;
        self.build_stage(Stage::Eval, force, |work| {
            let ptq = work.join("ptq");
            std::fs::create_dir_all(&ptq).map_err(EngineError::io(&ptq))?;
            // The harness finds a .gguf's tokenizer beside it.
            model::tokenizer_files::copy_tokenizer_files(&self.dir(Stage::Data).join("tokenizer"), &ptq)?;
            let mut job = EvalJob {
                models: Vec::new(),
                world: self.dir(Stage::Data).join("world"),
                dev_every: self.config.dev_every,
                seq_len: self.config.seq_len,
                max_items: self.config.eval_max_items,
                gen_tokens: GEN_TOKENS,
                ppl_docs: PPL_DOCS,
                out: work.to_path_buf(),
                progress: self.options.progress,
            };
            let mut ptq_metrics = serde_json::Map::new();
            for (name, stage, quantized) in MODELS {
                let dir = self.dir(stage).join("model");
                if !quantized {
                    job.models.push((name.to_string(), dir));
                    continue;
                }
                let base = name.trim_end_matches("-ptq");
                let kind = moe_kind(&dir)?;
                let mask_path = ptq.join(format!("{base}-mask.json"));
                let rules = serde_json::to_string_pretty(&self.config.ship_mask.rules(kind)).unwrap_or_default();
                atomicio::write_file(&mask_path, rules.as_bytes())?;
                let out = ptq.join(format!("{base}.gguf"));
                // Written atomically: one that exists is complete and of this plan (the work
                // directory's key), so an interrupted stage keeps it and the harness's results.
                let bytes = if out.is_file() {
                    std::fs::metadata(&out).map_err(EngineError::io(&out))?.len()
                } else {
                    let opts = GgufOptions {
                        ftype: GgufType::F16,
                        mask: Some(self.config.ship_mask.mask(kind, &mask_path)?),
                        tokenizer_dir: Some(dir.clone()),
                        moe_arch: Arch::Glm4Moe,
                    };
                    export_gguf(&dir, &opts, &out)?.file_bytes
                };
                ptq_metrics.insert(
                    base.to_string(),
                    serde_json::json!({ "file": format!("eval/ptq/{base}.gguf"), "bytes": bytes }),
                );
                job.models.push((name.to_string(), out));
            }
            (evaluator.0)(&job).map_err(|e| EngineError::Training(format!("eval: {e}")))?;
            let summary = work.join("summary.json");
            if !summary.is_file() {
                return Err(EngineError::Training(format!("eval: the harness wrote no {}", summary.display())));
            }
            let mut artifacts: std::collections::BTreeMap<String, String> =
                [("summary".to_string(), "eval/summary.json".to_string())].into();
            for base in ["moe", "teacher", "small"] {
                artifacts.insert(format!("{base}_ptq_gguf"), format!("eval/ptq/{base}.gguf"));
            }
            Ok(Made {
                metrics: serde_json::json!({ "ptq": ptq_metrics }),
                artifacts,
                outputs: &["ptq"],
                records: &["summary.json", "moe", "moe-ptq", "teacher", "teacher-ptq", "small", "small-ptq"],
            })
        })
    }
}
