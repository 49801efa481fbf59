//! P4's outputs: the stop-anytime exports (an HF directory with its QAT parameters and a GGUF
//! written from the trained codes) and, at the end, the final model, its full measurement, the
//! pre-QAT model beside it when the breaker gave up, and the summary.

use crate::error::{EngineError, Result};
use crate::manifest::Stage;
use crate::p4_stage::Run;
use crate::p4_state::P4State;
use crate::qat_eval::measure;
use crate::qat_ledger::Ledger;
use crate::stages::{Made, Pipeline};
use crate::trainer::Trainer;
use model::gguf::{write_gguf, Arch, GgufOptions, GgufType, ModelSource};
use model::Qwen3;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Copies the files of directory `from` into `to` (created).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(EngineError::io(to))?;
    for e in std::fs::read_dir(from).map_err(EngineError::io(from))? {
        let e = e.map_err(EngineError::io(from))?;
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).map_err(EngineError::io(e.path()))?;
        }
    }
    Ok(())
}

impl Run<'_> {
    /// A stop-anytime export: `exports/<tag>/` (HF directory + QAT parameters + tokenizer) and
    /// `exports/<tag>.gguf` written from the trained codes.
    pub(crate) fn export(
        &self,
        s: &mut P4State,
        ledger: &mut Ledger,
        m: &Qwen3,
        qat: Option<&model::qat::QatState>,
        step: u64,
        ema: bool,
    ) -> Result<()> {
        let tag = format!("{}-step-{step:06}", self.stage_name(s.stage).replace('+', "-"));
        let exports = self.work.join("exports");
        let dir = exports.join(&tag);
        let gguf = exports.join(format!("{tag}.gguf"));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&gguf);
        m.save(&dir, None)?;
        if let Some(q) = qat {
            q.save(&dir)?;
        }
        model::tokenizer_files::copy_tokenizer_files(&self.tokenizer, &dir)?;
        let opts =
            GgufOptions { ftype: GgufType::F32, mask: None, tokenizer_dir: Some(dir.clone()), moe_arch: Arch::Glm4Moe };
        let src = match qat {
            Some(q) => ModelSource::with_qat(m, q),
            None => ModelSource::new(m),
        };
        let report = write_gguf(&src, &m.config, m.moe.as_ref(), &opts, &gguf)?;
        let e = json!({
            "event": "export", "step": step, "tokens": s.tokens, "type": self.stage_name(s.stage),
            "model": format!("{}/exports/{tag}", self.name), "gguf": format!("{}/exports/{tag}.gguf", self.name),
            "bytes": report.file_bytes, "qat_tensors": report.qat_tensors, "from": if ema { "ema" } else { "raw" },
        });
        ledger.append(e.clone())?;
        s.exports.push(e);
        Ok(())
    }

    /// The final model, its full measurement and the summary.
    pub(crate) fn finish(&self, p: &Pipeline, t: &Trainer, s: &P4State, source: Stage, seconds: f64) -> Result<Made> {
        let work = self.work;
        let model_dir = work.join("model");
        let _ = std::fs::remove_dir_all(&model_dir);
        t.model.save(&model_dir, None)?;
        if let Some(q) = &t.qat {
            q.state.save(&model_dir)?;
        }
        model::tokenizer_files::copy_tokenizer_files(&self.tokenizer, &model_dir)?;
        let last =
            measure(&t.model, t.qat.as_ref().map(|q| &q.state), &self.reference, &self.inputs, t.state.step, true)?;
        let mut artifacts: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in [("model", "model"), ("ledger", "ledger.jsonl"), ("mask", "mask.json"), ("exports", "exports")] {
            artifacts.insert(k.to_string(), format!("{}/{v}", self.name));
        }
        if s.ship_pre_qat {
            let dir = work.join("exports").join("pre-qat");
            let _ = std::fs::remove_dir_all(&dir);
            copy_dir(&p.dir(source).join("model"), &dir)?;
            artifacts.insert("pre_qat_model".into(), format!("{}/exports/pre-qat", self.name));
        }
        for d in ["stage-start", "vo-before"] {
            let _ = std::fs::remove_dir_all(work.join(d));
        }
        let (dm, dg) = last.deltas(&s.pre, self.penalty);
        let mut summary = crate::summary::summarise(self.name, &t.state, Some(&last.eval), artifacts.clone(), seconds);
        summary.qat = Some(json!({
            "source": source.name(), "mask": self.q.mask, "stages": self.q.stages, "budgets": s.budgets,
            "tokens": s.tokens, "pre_qat": s.pre, "ptq": s.ptq, "kl": last.kl, "medical_pp": dm, "general_pp": dg,
            "exports": s.exports, "events": s.events, "vo": s.vo, "breaker": s.breaker,
            "ship_pre_qat": s.ship_pre_qat, "ledger": format!("{}/ledger.jsonl", self.name),
        }));
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        atomicio::write_file(&work.join("summary.json"), text.as_bytes())?;
        let metrics = serde_json::to_value(&summary).unwrap_or_default();
        Ok(Made {
            metrics,
            artifacts,
            outputs: &["model", "mask.json", "exports"],
            records: &["summary.json", "ledger.jsonl"],
        })
    }
}
