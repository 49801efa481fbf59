//! Stage `p4`: staged quantization-aware training of the MoE (issue 14), from the newest finished
//! of p3 / p2 / p1 (its key names which, so a later-finished p3 rebuilds p4).
//!
//! The experts + shared FFN of the QAT mask (`qat.mask`, the one `--mask` file shared with
//! `moe-cli export gguf`, copied to `p4/mask.json`) train in the formats of `qat.stages` (seed:
//! Q8_0 -> Q6_K -> Q5_K) with learnable per-group steps (and Q5_K mins), under KD from the pre-QAT
//! model (the source phase's model, tau 1). Before each stage a calibration pass: min-max + the
//! per-group MSE clip search at the first stage (and after a rollback), the clip range kept at a
//! format change; then (`qat.gptq`) GPTQ's codes on that grid from calibration rows of the
//! training mix (`model::qat::gptq_on_qat_grid`: the latent weights move, the steps and mins do
//! not; with frozen weights each stage starts again from the pre-QAT weights). The EMA of the
//! weights and QAT parameters restarts at every stage; at every evaluation both the raw and the EMA model are measured and the better is exported, and kept at
//! a stage's end. The learning rate follows a cosine per stage, x`early_lr.mult` for its first
//! `early_lr.frac`. Every `export_every` QAT tokens: a checkpoint (QAT state, moments, EMA and this
//! driver's state: an interrupted p4 resumes bit for bit) and a subset evaluation; full
//! evaluations at `full_evals`. Stop-anytime exports (HF directory with its QAT parameters + a GGUF
//! written from the trained codes) at the end of every stage and every `export_every` in Q5.
//!
//! The V/O gate ([`crate::qat_policy::vo_gate`]) and the QAT-regression breaker
//! ([`crate::qat_policy::observe_qat_eval`]) act on the Q5 evaluations' deltas against the
//! pre-QAT model; their decisions and reasons go to the ledger ([`crate::qat_ledger`]), the
//! summary and stderr. `MEDMOE_FAULT_QAT_PENALTY_PP` ([`crate::faults::Faults::qat_penalty_pp`])
//! injects a regression.

use crate::batches::{BatchStream, LoaderCursor};
use crate::checkpoint::{self, DiskBudget, Snapshot};
use crate::error::{EngineError, Result};
use crate::eval::token_batch_of;
use crate::evaluator::EvalInputs;
use crate::manifest::{Stage, StageManifest};
use crate::p4_state::{checkpoint_files, read_checkpoint_files, Ema, P4State, VoState};
use crate::phase::PhaseConfig;
use crate::qat_eval::{ema_is_better, measure};
use crate::qat_ledger::Ledger;
use crate::qat_mask::{block_type, calibrate, stage_mask, with_vo};
use crate::qat_policy::{
    crosses, ema_decay, observe_qat_eval, vo_gate, vo_keep, QatAction, QatPhaseConfig, VoDecision,
};
use crate::qat_training::QatTraining;
use crate::stages::Pipeline;
use crate::trainer::Trainer;
use data::pack::PackedDataset;
use kernels_cpu::quant::BlockType;
use model::gguf::{Arch, Mask};
use model::{Qwen3, TokenBatch};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version of the driver (part of the stage key).
pub const VERSION: u64 = 1;

/// Everything the loop works with.
pub(crate) struct Run<'a> {
    pub(crate) cfg: &'a PhaseConfig,
    pub(crate) q: &'a QatPhaseConfig,
    pub(crate) mask: Mask,
    pub(crate) work: &'a Path,
    pub(crate) name: &'a str,
    pub(crate) inputs: Arc<EvalInputs>,
    pub(crate) reference: Arc<Qwen3>,
    pub(crate) tokenizer: PathBuf,
    pub(crate) penalty: f64,
    /// Calibration rows of GPTQ on the stage grids (`qat.gptq`).
    pub(crate) gptq_batch: Option<TokenBatch>,
}

impl Pipeline {
    /// The phase p4 trains from: the newest finished of p3, p2, p1.
    pub(crate) fn p4_source(&self) -> Stage {
        [Stage::P3, Stage::P2].into_iter().find(|s| StageManifest::read(&self.dir(*s)).is_some()).unwrap_or(Stage::P1)
    }

    /// Builds stage p4 (see the module docs).
    pub(crate) fn p4_stage(&self, force: bool) -> Result<bool> {
        let cfg = self.phase_config(Stage::P4)?;
        let q = cfg.qat.clone().ok_or_else(|| EngineError::config("p4", "a qat phase needs a `qat` section"))?;
        let source = self.p4_source();
        self.build_stage(Stage::P4, force, |work| {
            let started = std::time::Instant::now();
            let mask = crate::qat_mask::load_mask(&q.mask)?;
            let data = self.dir(Stage::Data);
            let ds = Arc::new(PackedDataset::open(&data.join("train"))?);
            ds.verify()?;
            PackedDataset::open(&data.join("dev"))?.verify()?;
            let total_micro = cfg.total_steps() * cfg.accumulation();
            let stream = BatchStream::new(ds.clone(), &cfg.mix, cfg.micro_batch, cfg.seed, total_micro)?;
            let ckpt_dir = work.join("checkpoints");
            checkpoint::remove_stale_temps(&ckpt_dir);
            let mut trainer = self.new_trainer(Stage::P4, &cfg)?;
            let reference = trainer
                .teacher
                .clone()
                .ok_or_else(|| EngineError::config("p4", "the pre-QAT model (the teacher) did not load"))?;
            // Every stage's mask is checked against the model before anything trains.
            for st in &q.stages {
                let m = stage_mask(&mask, block_type(st.ty));
                model::qat::qat_plan(&reference.config, reference.moe.as_ref(), Arch::Glm4Moe, &m, q.group)?;
            }
            check_mask_file(&q.mask, work, !checkpoint::list_checkpoints(&ckpt_dir)?.is_empty())?;
            let gptq_batch = match &q.gptq {
                Some(g) => {
                    let mut mix = cfg.mix.clone();
                    if let Some(w) = &g.mix {
                        mix.weights = w.clone();
                    }
                    let calib =
                        BatchStream::new(ds.clone(), &mix, g.sequences, cfg.seed, 1).map_err(|e| match &g.mix {
                            Some(_) => EngineError::config("p4", format!("field `qat.gptq.mix`: {e}")),
                            None => e,
                        })?;
                    Some(token_batch_of(calib.next(&LoaderCursor::default())?.0).0)
                }
                None => None,
            };
            let run = Run {
                cfg: &cfg,
                q: &q,
                mask,
                work,
                name: Stage::P4.name(),
                inputs: self.eval_inputs(&cfg)?,
                reference,
                tokenizer: data.join("tokenizer"),
                penalty: self.options.faults.qat_penalty_pp.unwrap_or(0.0),
                gptq_batch,
            };
            let resumed = resume(&mut trainer, &ckpt_dir, &run, self)?;
            let (mut state, mut ema, mut ledger) = match resumed {
                Some((s, e)) => {
                    let ledger = Ledger::open(work, Some(s.ledger_lines))?;
                    (s, e, ledger)
                }
                None => {
                    let mut ledger = Ledger::open(work, None)?;
                    let s = run.start(&mut ledger)?;
                    (s, Ema::of(&trainer), ledger)
                }
            };
            trainer.freeze_weights = !run.q.train_weights;
            let stopped = run.train(self, &mut trainer, &stream, &ckpt_dir, &mut state, &mut ema, &mut ledger)?;
            if stopped {
                return Err(EngineError::Training(format!(
                    "p4 stopped early at step {} (fault injection)",
                    trainer.state.step
                )));
            }
            run.finish(self, &trainer, &state, source, started.elapsed().as_secs_f64())
        })
    }
}

/// Refuses to resume with a mask other than the one the p4 in `work` started with (copied to
/// `work/mask.json`), naming both files; copies it there on a fresh start.
fn check_mask_file(mask: &str, work: &Path, resuming: bool) -> Result<()> {
    let text = crate::qat_mask::mask_text(mask)?;
    let copy = work.join("mask.json");
    match std::fs::read_to_string(&copy) {
        Ok(old) if resuming && old != text => Err(EngineError::config(
            mask,
            format!(
                "differs from {}, the mask this p4 started with: a QAT run resumes with the mask it started with \
                 (restore the mask, or rebuild p4 with --force)",
                copy.display()
            ),
        )),
        Ok(old) if old == text => Ok(()),
        _ => Ok(atomicio::write_file(&copy, text.as_bytes())?),
    }
}

/// Resumes from the newest intact checkpoint of `dir` (a damaged one is set aside); None: fresh.
fn resume(t: &mut Trainer, dir: &Path, run: &Run, p: &Pipeline) -> Result<Option<(P4State, Ema)>> {
    for (step, path) in checkpoint::list_checkpoints(dir)?.into_iter().rev() {
        let got = checkpoint::read_checkpoint(&path).and_then(|c| t.restore(c)).and_then(|()| {
            if let Some(q) = &mut t.qat {
                q.lr_mult = run.q.scale_lr_mult;
            }
            read_checkpoint_files(&path, t)
        });
        match got {
            Ok(s) => {
                crate::stages::say(
                    &p.options,
                    format!("stage p4         resuming from {} (step {step})", path.display()),
                );
                return Ok(Some(s));
            }
            Err(e) => {
                let aside = dir.join(format!("damaged-{}", checkpoint::step_dir_name(step)));
                let _ = std::fs::remove_dir_all(&aside);
                std::fs::rename(&path, &aside).map_err(EngineError::io(&path))?;
                eprintln!("warning: checkpoint {} is damaged ({e}); set aside, trying an older one", path.display());
                *t = p.new_trainer(Stage::P4, run.cfg)?;
            }
        }
    }
    Ok(None)
}

impl Run<'_> {
    /// Number of stages with the V/O trial.
    fn trial(&self) -> usize {
        self.q.stages.len()
    }

    /// The format of stage `i` (the trial: the last stage's).
    fn stage_type(&self, i: usize) -> BlockType {
        block_type(self.q.stages[i.min(self.q.stages.len() - 1)].ty)
    }

    /// The mask of stage `i`.
    fn stage_mask(&self, i: usize) -> Mask {
        let m = stage_mask(&self.mask, self.stage_type(i));
        if i >= self.trial() {
            with_vo(&m)
        } else {
            m
        }
    }

    pub(crate) fn stage_name(&self, i: usize) -> String {
        if i >= self.trial() {
            format!("{}+vo_q8_0", self.stage_type(i).name())
        } else {
            self.stage_type(i).name().to_string()
        }
    }

    /// Is stage `i` trained at the last stage's format (the breaker and the stop-anytime exports
    /// watch those)?
    fn is_final_format(&self, i: usize) -> bool {
        i + 1 >= self.q.stages.len()
    }

    /// The pre-QAT measurements, the ledger's first lines and the initial state.
    fn start(&self, ledger: &mut Ledger) -> Result<P4State> {
        let pre = measure(&self.reference, None, &self.reference, &self.inputs, 0, true)?;
        let pre_subset = measure(&self.reference, None, &self.reference, &self.inputs, 0, false)?;
        ledger.append(json!({"event": "pre_qat", "measure": pre, "subset": pre_subset}))?;
        let last = self.q.stages.len() - 1;
        let ptq_state = calibrate(&self.reference, &self.stage_mask(last), self.q.group, &[1.0])?;
        let ptq = measure(&self.reference, Some(&ptq_state), &self.reference, &self.inputs, 0, true)?;
        let (dm, dg) = ptq.deltas(&pre, 0.0);
        ledger.append(json!({"event": "ptq", "type": self.stage_type(last).name(), "measure": ptq,
                             "medical_pp": dm, "general_pp": dg}))?;
        let mut budgets: Vec<u64> = self.q.stages.iter().map(|s| s.tokens).collect();
        budgets.push(self.q.vo_gate.as_ref().map_or(0, |g| g.trial_tokens));
        Ok(P4State {
            stage: 0,
            budgets,
            stage_tokens: 0,
            stage_steps: 0,
            tokens: 0,
            calibrated: false,
            recalibrate: true,
            ema_t: 0,
            breaker: Default::default(),
            vo: VoState::Pending,
            ship_pre_qat: false,
            ledger_lines: ledger.lines,
            pre,
            pre_subset: Some(pre_subset),
            ptq,
            exports: Vec::new(),
            events: Vec::new(),
            done: false,
        })
    }

    /// The calibration pass before stage `s.stage`.
    fn calibrate_stage(&self, t: &mut Trainer, s: &mut P4State, ledger: &mut Ledger) -> Result<()> {
        let mask = self.stage_mask(s.stage);
        if s.stage < self.trial() && !self.q.train_weights {
            // Frozen weights: every stage calibrates from the pre-QAT weights (GPTQ of an earlier
            // stage moved the latent ones), so stages and rollbacks do not compound.
            let plan = model::qat::qat_plan(&t.model.config, t.model.moe.as_ref(), Arch::Glm4Moe, &mask, self.q.group)?;
            for name in plan.keys() {
                let w = self.reference.params.get(name).map_err(|e| EngineError::Training(e.to_string()))?;
                t.model.params.set(name, &w.to_vec()).map_err(|e| EngineError::Training(e.to_string()))?;
            }
        }
        let how;
        if s.recalibrate || t.qat.is_none() {
            let state = calibrate(&t.model, &mask, self.q.group, &self.q.clip_ratios)?;
            t.qat = Some(QatTraining::new(state, self.q.scale_lr_mult));
            how = "min-max + MSE clip search";
        } else if s.stage >= self.trial() {
            // The trial adds V/O at Q8_0; the other tensors keep their Q5 parameters.
            let q = t.qat.as_ref().ok_or_else(|| EngineError::Training("p4: no QAT state at the trial".into()))?;
            let mut state = calibrate(&t.model, &mask, self.q.group, &self.q.clip_ratios)?;
            for (name, old) in &q.state.tensors {
                state.tensors.insert(name.clone(), old.clone());
            }
            t.qat = Some(QatTraining::new(state, self.q.scale_lr_mult));
            how = "V/O min-max + MSE clip search, the rest kept";
        } else {
            let plan = model::qat::qat_plan(&t.model.config, t.model.moe.as_ref(), Arch::Glm4Moe, &mask, self.q.group)?;
            let q = t.qat.as_mut().ok_or_else(|| EngineError::Training("p4: no QAT state".into()))?;
            q.switch_to(&plan, &mask)?;
            how = "clip range kept from the previous format";
        }
        // Saved before GPTQ moves the latent weights.
        let dir = self.work.join("stage-start");
        let _ = std::fs::remove_dir_all(&dir);
        t.model.save(&dir, None)?;
        let gptq = match (&self.gptq_batch, s.stage < self.trial()) {
            (Some(batch), true) => Some(self.gptq_on_grid(t, batch)?),
            _ => None,
        };
        s.calibrated = true;
        s.recalibrate = false;
        s.ema_t = 0;
        let tensors = t.qat.as_ref().map_or(0, |q| q.state.tensors.len());
        ledger.append(json!({"event": "stage_start", "stage": s.stage, "type": self.stage_name(s.stage),
                             "budget": s.budgets[s.stage], "tokens": s.tokens, "calibration": how,
                             "tensors": tensors, "gptq": gptq}))?;
        Ok(())
    }

    /// GPTQ's codes on the stage's grid (`model::qat::gptq_on_qat_grid`): the latent weights of
    /// the fake-quantized tensors are replaced by GPTQ's. Returns the ledger's summary.
    fn gptq_on_grid(&self, t: &mut Trainer, batch: &TokenBatch) -> Result<serde_json::Value> {
        let q = t.qat.as_ref().ok_or_else(|| EngineError::Training("p4: no QAT state to calibrate".into()))?;
        let g = self.q.gptq.as_ref();
        let (min_tokens, act_order) = (g.and_then(|g| g.min_expert_tokens), g.is_some_and(|g| g.act_order));
        let cal =
            model::qat::gptq_on_qat_grid(&t.model, &q.state, batch, min_tokens, act_order, g.and_then(|g| g.damp))?;
        for (name, w) in &cal.latent {
            t.model.params.set(name, w).map_err(|e| EngineError::Training(e.to_string()))?;
        }
        let used = cal.report.iter().filter(|r| r.method == model::gptq::QuantMethod::Gptq).count();
        let sum = |f: fn(&model::gptq::TensorReport) -> Option<f64>| cal.report.iter().filter_map(f).sum::<f64>();
        let (error, rtn_error) = (sum(|r| r.error), sum(|r| r.rtn_error));
        Ok(json!({"sequences": batch.b, "tokens": batch.rows(), "tensors": cal.report.len(), "gptq_tensors": used,
                  "output_error": error, "rtn_output_error": rtn_error,
                  "starved_experts": cal.starved_experts.len()}))
    }

    /// The loop; true when stopped early by fault injection.
    #[allow(clippy::too_many_arguments)]
    fn train(
        &self,
        p: &Pipeline,
        t: &mut Trainer,
        stream: &BatchStream,
        ckpt_dir: &Path,
        s: &mut P4State,
        ema: &mut Ema,
        ledger: &mut Ledger,
    ) -> Result<bool> {
        let mut steps_here = 0u64;
        let cap = self.cfg.tokens;
        while !s.done {
            if s.stage > self.trial() || (s.stage == self.trial() && !matches!(s.vo, VoState::Trial(_))) {
                s.done = true;
                break;
            }
            if !s.calibrated {
                self.calibrate_stage(t, s, ledger)?;
                *ema = Ema::of(t);
            }
            if p.options.faults.stop_after_steps == Some(steps_here) {
                return Ok(true);
            }
            let budget = s.budgets[s.stage];
            let stage_total = (budget / self.cfg.tokens_per_step).max(1);
            let lr = crate::schedule::lr_at(&self.cfg.lr, s.stage_steps, stage_total)
                * self.q.early_lr_mult(s.stage_tokens, budget);
            t.lr_override = Some(lr);
            let mut micro = Vec::new();
            let mut cursor = t.state.cursor.clone();
            for _ in 0..self.cfg.accumulation() {
                let (b, next) = stream.next(&cursor)?;
                micro.push(b);
                cursor = next;
            }
            let (rec, _) = t.step(&micro, cursor)?;
            steps_here += 1;
            if rec.applied {
                ema.update(t, ema_decay(s.ema_t, self.q.ema_decay, self.q.ema_power));
                s.ema_t += 1;
            }
            let prev = s.tokens;
            s.tokens += rec.tokens;
            s.stage_tokens += rec.tokens;
            s.stage_steps += 1;
            let capped = s.tokens >= cap;
            let stage_done = s.stage_tokens >= budget || capped;
            let interval = crosses(prev, s.tokens, self.q.export_every);
            let full = self.q.full_eval_due(prev, s.tokens);
            if !(interval || full || stage_done) {
                continue;
            }
            self.checkpoint_point(t, s, ema, ledger, stage_done, interval, full)?;
            if !s.calibrated {
                // A new stage, a rollback or a reverted trial: the EMA restarts with the stage.
                *ema = Ema::of(t);
            }
            if capped && !s.done {
                ledger.append(json!({"event": "cap", "tokens": s.tokens, "cap": cap}))?;
                s.done = true;
            }
            s.ledger_lines = ledger.lines;
            let mut snap = Snapshot::take(&t.model, &t.opt, t.state.step, t.state_json());
            snap.extra = t.checkpoint_files()?;
            snap.extra.extend(checkpoint_files(s, ema)?);
            checkpoint::write_checkpoint(ckpt_dir, &snap, self.cfg.keep_last, &mut DiskBudget::default())?;
        }
        Ok(false)
    }

    /// An evaluation point: raw and EMA measured, the better exported when due, the breaker and
    /// (at a stage's end) the gate consulted, the stage advanced or rolled back.
    #[allow(clippy::too_many_arguments)]
    fn checkpoint_point(
        &self,
        t: &mut Trainer,
        s: &mut P4State,
        ema: &Ema,
        ledger: &mut Ledger,
        stage_done: bool,
        interval: bool,
        full: bool,
    ) -> Result<()> {
        let step = t.state.step;
        let raw = measure(&t.model, t.qat.as_ref().map(|q| &q.state), &self.reference, &self.inputs, step, full)?;
        let (em, eq) = ema.model(t)?;
        let ema_m = if self.q.ema_decay > 0.0 {
            Some(measure(&em, eq.as_ref(), &self.reference, &self.inputs, step, full)?)
        } else {
            None
        };
        let use_ema = ema_m.as_ref().is_some_and(|e| ema_is_better(&raw, e));
        let picked = if use_ema { ema_m.as_ref().unwrap_or(&raw) } else { &raw };
        let final_format = self.is_final_format(s.stage);
        let penalty = if final_format { self.penalty } else { 0.0 };
        let (dm, dg) = picked.deltas(s.pre_for(full), penalty);
        ledger.append(json!({
            "event": "eval", "step": step, "tokens": s.tokens, "stage": s.stage, "type": self.stage_name(s.stage),
            "stage_tokens": s.stage_tokens, "full": full, "raw": raw, "ema": ema_m, "picked": if use_ema { "ema" } else { "raw" },
            "medical_pp": dm, "general_pp": dg, "penalty_pp": penalty,
        }))?;
        let (best_model, best_qat) =
            if use_ema { (em, eq) } else { (t.model.clone(), t.qat.as_ref().map(|q| q.state.clone())) };
        if stage_done || (interval && final_format) {
            self.export(s, ledger, &best_model, best_qat.as_ref(), step, use_ema)?;
        }
        if final_format && s.stage < self.trial() {
            let action = observe_qat_eval(&self.q.breaker, &mut s.breaker, dm.min(dg));
            match action {
                QatAction::None => {}
                QatAction::RollbackStage { extra_tokens } => {
                    let before = s.budgets[s.stage];
                    s.budgets[s.stage] += extra_tokens;
                    let reason = format!(
                        "Q5 more than {} pp below the pre-QAT model for {} evaluations (medical {dm:+.2} pp, general \
                         {dg:+.2} pp): stage {} rolled back to its start, budget {before} -> {} tokens, recalibrated",
                        self.q.breaker.threshold_pp, self.q.breaker.evals, s.stage, s.budgets[s.stage]
                    );
                    self.event(s, ledger, json!({"event": "qat_breaker", "action": "rollback", "step": step,
                        "stage": s.stage, "budget_before": before, "budget_after": s.budgets[s.stage], "reason": reason}))?;
                    t.model = Qwen3::load(&self.work.join("stage-start"))?;
                    s.stage_tokens = 0;
                    s.stage_steps = 0;
                    s.calibrated = false;
                    s.recalibrate = true;
                    return Ok(());
                }
                QatAction::ShipPreQat => {
                    s.ship_pre_qat = true;
                    let reason = format!(
                        "Q5 still more than {} pp below the pre-QAT model after {} rollback(s) (medical {dm:+.2} pp, \
                         general {dg:+.2} pp): the pre-QAT model ships beside the Q5",
                        self.q.breaker.threshold_pp, s.breaker.rollbacks
                    );
                    self.event(
                        s,
                        ledger,
                        json!({"event": "qat_breaker", "action": "ship_pre_qat", "step": step,
                        "reason": reason}),
                    )?;
                }
            }
        }
        if !stage_done {
            return Ok(());
        }
        // The stage is over: keep the better of raw and EMA, then the next stage (or the gate).
        if use_ema {
            t.model = best_model;
            if let (Some(q), Some(b)) = (t.qat.as_mut(), best_qat) {
                q.state = b;
            }
        }
        let finished = s.stage;
        s.stage += 1;
        s.stage_tokens = 0;
        s.stage_steps = 0;
        s.calibrated = false;
        if finished + 1 == self.trial() {
            self.gate(t, s, ledger, finished, (dm, dg))?;
        } else if finished == self.trial() {
            let VoState::Trial(before) = s.vo.clone() else { return Ok(()) };
            if vo_keep(before, (dm, dg)) {
                s.vo = VoState::Kept;
                let reason = format!(
                    "kept: medical {:+.2} -> {dm:+.2} pp, general {:+.2} -> {dg:+.2} pp (neither worse)",
                    before.0, before.1
                );
                self.event(s, ledger, json!({"event": "vo_gate", "decision": "keep", "step": step, "reason": reason}))?;
            } else {
                let reason = format!(
                    "reverted: medical {:+.2} -> {dm:+.2} pp, general {:+.2} -> {dg:+.2} pp (a domain got worse)",
                    before.0, before.1
                );
                let dir = self.work.join("vo-before");
                t.model = Qwen3::load(&dir)?;
                let state = model::qat::QatState::load(&dir)?
                    .ok_or_else(|| EngineError::Training(format!("{}: no QAT state", dir.display())))?;
                t.qat = Some(QatTraining::new(state, self.q.scale_lr_mult));
                s.vo = VoState::Reverted(reason.clone());
                self.event(
                    s,
                    ledger,
                    json!({"event": "vo_gate", "decision": "revert", "step": step, "reason": reason}),
                )?;
            }
        }
        Ok(())
    }

    /// The V/O gate after the last stage (deltas of its final evaluation).
    fn gate(&self, t: &Trainer, s: &mut P4State, ledger: &mut Ledger, last: usize, d: (f64, f64)) -> Result<()> {
        let Some(g) = &self.q.vo_gate else {
            s.vo = VoState::Skipped("off (no `qat.vo_gate`)".into());
            return Ok(());
        };
        let q5_tokens = s.budgets[last];
        let (decision, reason) = match vo_gate(g, q5_tokens, d.0, d.1) {
            VoDecision::Enable => {
                let dir = self.work.join("vo-before");
                let _ = std::fs::remove_dir_all(&dir);
                t.model.save(&dir, None)?;
                if let Some(q) = &t.qat {
                    q.state.save(&dir)?;
                }
                s.vo = VoState::Trial(d);
                (
                    "enable",
                    format!(
                        "medical {:+.2} pp >= {:+.2}, general {:+.2} pp >= {:+.2}: attention V/O at Q8_0 for {} tokens",
                        d.0, g.medical_pp, d.1, g.general_pp, g.trial_tokens
                    ),
                )
            }
            VoDecision::Skip(why) => {
                s.vo = VoState::Skipped(why.clone());
                ("skip", why)
            }
            VoDecision::Wait => {
                let why = format!("only {q5_tokens} tokens at Q5, the gate waits for {}", g.after_tokens);
                s.vo = VoState::Skipped(why.clone());
                ("skip", why)
            }
        };
        self.event(s, ledger, json!({"event": "vo_gate", "decision": decision, "step": t.state.step, "reason": reason}))
    }

    /// A gate or breaker decision: ledger, summary and stderr.
    fn event(&self, s: &mut P4State, ledger: &mut Ledger, e: serde_json::Value) -> Result<()> {
        eprintln!(
            "p4 {}: {} ({})",
            e["event"].as_str().unwrap_or_default(),
            e.get("action").or(e.get("decision")).and_then(|v| v.as_str()).unwrap_or_default(),
            e["reason"].as_str().unwrap_or_default()
        );
        ledger.append(e.clone())?;
        s.events.push(e);
        Ok(())
    }
}
