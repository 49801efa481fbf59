//! The training step, free of threads: gradient accumulation over micro-batches, distillation
//! or next-token loss with the router losses, AutoClip, the non-finite guard, AdamW, the LR and
//! router schedules, aux-loss-free bias balancing, breaker observations, and under QAT
//! ([`Trainer::qat`]) the fake-quantized forward with the steps and mins updated beside the
//! weights (checkpoints carry the QAT state and its moments: [`Trainer::checkpoint_files`]).
//! P2's `sft.q8_fraction` turns Q8 fake-quant on for the final fraction of its steps. It is the one training
//! step: the Trainer actor (`moe-cli run`) and `moe-cli bench step` drive it, tests drive it
//! directly (resume must be bitwise identical). Its ops run on the trainer's [`Device`].

use crate::autoclip::{clip_scale, AutoClip};
use crate::batches::LoaderCursor;
use crate::breakers::{BreakerAction, Breakers, RouterKnobs};
use crate::error::{EngineError, Result};
use crate::phase::{PhaseConfig, PhaseKind};
use crate::qat_training::QatTraining;
use crate::schedule::{lr_at, router_at};
use autograd::optim::AdamW;
use autograd::{profile, Compute, Device, Precision, Tape, Tensor};
use data::pack::PackedBatch;
use kernels_cpu::adamw::AdamWConfig;
use kernels_cpu::moe::RouterStats;
use model::distill::{distill_loss, teacher_hidden, DistillOptions};
use model::qat::qat_gradient;
use model::qwen3::{Bound, ForwardOptions};
use model::router_training::RouterTraining;
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The input embedding (frozen at the start of P2).
const EMBEDDING: &str = "model.embed_tokens.weight";

/// A breaker action as logged: the action plus the checkpoint it can roll back to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedAction {
    /// The action.
    pub action: BreakerAction,
    /// Newest complete checkpoint when it fired.
    pub checkpoint: Option<String>,
}

/// Router statistics of one MoE layer over a step (serialisable form of [`RouterStats`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRouter {
    /// Share of tokens per expert.
    pub share: Vec<f32>,
    /// Mean routing entropy (nats).
    pub entropy: f32,
    /// Entropy of the share (nats; ln E when balanced).
    pub load_entropy: f32,
    /// Fraction of tokens over capacity.
    pub overflow_frac: f32,
    /// Fraction of tokens without their routed expert (capacity or dropout).
    pub dropped_frac: f32,
}

impl From<&RouterStats> for LayerRouter {
    fn from(r: &RouterStats) -> Self {
        LayerRouter {
            share: r.share.clone(),
            entropy: r.entropy,
            load_entropy: r.load_entropy,
            overflow_frac: r.overflow_frac,
            dropped_frac: r.dropped_frac,
        }
    }
}

/// What one optimiser step measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step number (1-based: steps done after it).
    pub step: u64,
    /// Objective (mean over the step's tokens).
    pub loss: f32,
    /// Cross-entropy part.
    pub ce: f32,
    /// KL part (distillation).
    pub kl: f32,
    /// Load-balance loss (mean over MoE layers).
    pub lb: f32,
    /// z-loss.
    pub z: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// AutoClip threshold.
    pub clip: f32,
    /// Learning rate used.
    pub lr: f32,
    /// Tokens that counted.
    pub tokens: u64,
    /// False when the step was skipped (non-finite loss or gradient).
    pub applied: bool,
    /// Router temperature used.
    pub temperature: f32,
    /// Named-expert router cross-entropy (Mode B; 0 when the phase has no domain map).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub named: f32,
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

/// The serialisable state of the loop (trainer.json).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Phase name.
    pub phase: String,
    /// Optimiser steps done.
    pub step: u64,
    /// Tokens consumed (counted targets).
    pub tokens: u64,
    /// Data cursor after the last consumed micro-batch.
    pub cursor: LoaderCursor,
    /// Gradient-norm window.
    pub autoclip: AutoClip,
    /// Breaker state.
    pub breakers: Breakers,
    /// Router and LR knobs as the breakers left them.
    pub knobs: RouterKnobs,
    /// Router settings of the last step (from the schedules and `knobs`; None for a dense model
    /// or before the first step). The model's config.json never holds them.
    #[serde(default)]
    pub router_training: Option<RouterTraining>,
    /// Knobs at the start of the phase (schedules move relative to them).
    pub base_knobs: RouterKnobs,
    /// Steps skipped because the loss or gradient was not finite.
    pub nonfinite_skipped: u64,
    /// Consecutive skipped steps.
    pub nonfinite_streak: u32,
    /// Every breaker action so far.
    pub actions: Vec<LoggedAction>,
    /// The last step's record.
    pub last: Option<StepRecord>,
    /// Router statistics per MoE layer of the last step.
    pub router: Vec<LayerRouter>,
    /// True between a step's update and the end of its bookkeeping (evaluation, periodic
    /// checkpoint): a checkpoint taken for a breaker action mid-step says so, and a run resumed
    /// from it finishes that step before the next one.
    #[serde(default)]
    pub finishing: bool,
    /// Complete lines of metrics.jsonl when this state was checkpointed: a resumed run keeps
    /// exactly those (None in checkpoints older than this field: lines up to `step` are kept).
    #[serde(default)]
    pub metrics_lines: Option<u64>,
}

/// Model, teacher, optimiser and state of a running phase.
pub struct Trainer {
    /// Resolved phase config.
    pub config: PhaseConfig,
    /// The model being trained.
    pub model: Qwen3,
    /// Distillation teacher (P0).
    pub teacher: Option<Arc<Qwen3>>,
    /// AdamW.
    pub opt: AdamW,
    /// Loop state.
    pub state: TrainerState,
    /// Where the step's ops and the AdamW update run.
    device: Device,
    /// Operand precision of the step's GEMMs (master weights, gradients and AdamW stay f32).
    precision: Precision,
    /// Quantization-aware training (P4): the fake-quantized tensors' steps and mins, trained with
    /// the weights (None: plain training).
    pub qat: Option<QatTraining>,
    /// DPO's reference log-probabilities of every pair (chosen, rejected), by the pair index a
    /// preference micro-batch carries in `sequences` (phase p3; computed before training).
    pub pair_reference: Option<Arc<Vec<[f32; 2]>>>,
    /// The teacher's cached top-k logits (P0 with `distill.teacher_cache`): distillation reads
    /// them by sequence number instead of running the teacher.
    pub teacher_cache: Option<Arc<model::logit_cache::LogitCache>>,
    /// The learning rate of the next steps before the breakers' `lr_scale` (P4's per-stage
    /// schedule); None: the phase's cosine schedule.
    pub lr_override: Option<f32>,
    /// Only the QAT steps and mins train (P4 with `qat.train_weights: false`, EfficientQAT's
    /// E2E-QP): the weights' AdamW update is skipped.
    pub freeze_weights: bool,
}

/// Values per learnable step of P2's Q8 fake-quant (one Q8_0 block).
const SFT_Q8_GROUP: usize = 32;
/// Learning rate of P2's Q8 steps relative to the weights' (research/qat-po-sft.md: about 10x).
pub const SFT_Q8_SCALE_LR_MULT: f32 = 10.0;

/// Knobs of a phase at its start.
pub fn initial_knobs(c: &PhaseConfig) -> RouterKnobs {
    let r = c.router.as_ref();
    RouterKnobs {
        capacity_factor: r.map_or(1.0, |r| r.capacity),
        temperature: r.map_or(1.0, |r| r.temperature[0]),
        lb_coef: r.map_or(0.0, |r| r.lb[0]),
        router_noise: r.map_or(0.0, |r| r.noise),
        lr_scale: 1.0,
    }
}

/// The parts of one micro-batch's objective (besides its value and gradient).
struct MicroParts {
    ce: f32,
    /// Named-expert router cross-entropy (unweighted).
    named: f32,
    kl: f32,
    lb: f32,
    z: f32,
    count: usize,
    router: Vec<RouterStats>,
}

/// One micro-batch's contribution.
struct MicroOut {
    loss: f32,
    parts: MicroParts,
    grads: Vec<f32>,
    /// Flat gradient of the QAT parameters (empty without QAT).
    qat_grads: Vec<f32>,
}

/// Counts-weighted mean of router statistics over micro-batches (per layer).
fn merge_router(parts: &[(usize, Vec<RouterStats>)]) -> Vec<RouterStats> {
    let Some((_, first)) = parts.first() else { return Vec::new() };
    let total: usize = parts.iter().map(|(n, _)| n).sum::<usize>().max(1);
    (0..first.len())
        .map(|l| {
            let e = first[l].counts.len();
            let mut s = RouterStats { counts: vec![0; e], share: vec![0.0; e], ..first[l].clone() };
            s.entropy = 0.0;
            s.load_entropy = 0.0;
            s.overflow_frac = 0.0;
            s.dropped_frac = 0.0;
            for (n, layers) in parts {
                let w = *n as f32 / total as f32;
                let r = &layers[l];
                for i in 0..e {
                    s.counts[i] += r.counts[i];
                }
                s.entropy += w * r.entropy;
                s.overflow_frac += w * r.overflow_frac;
                s.dropped_frac += w * r.dropped_frac;
            }
            let n: usize = s.counts.iter().sum::<usize>().max(1);
            s.share = s.counts.iter().map(|&c| c as f32 / n as f32).collect();
            s.load_entropy = -s.share.iter().filter(|&&p| p > 0.0).map(|&p| p * p.ln()).sum::<f32>();
            s
        })
        .collect()
}

/// `loss + coef · named-expert router CE` when the phase maps domains to experts (`route` holds
/// the token targets), with the CE's value; `loss` unchanged otherwise.
fn add_named_loss(
    named: Option<&crate::phase::NamedExpertsConfig>,
    tape: &Tape,
    bound: &Bound,
    loss: Tensor,
    router_inputs: &[Tensor],
    route: &[i32],
) -> model::Result<(Tensor, f32)> {
    let Some(n) = named else { return Ok((loss, 0.0)) };
    let ce = model::named_experts::named_expert_loss(tape, bound, router_inputs, route)?;
    let loss = autograd::ops::add_scaled(tape, &loss, &ce.loss, n.coef)
        .map_err(|e| model::ModelError::Invalid(e.to_string()))?;
    Ok((loss, ce.value))
}

/// Weights of micro-batches with `counts` counted tokens in their step: `n_i / Σ n`, so the
/// step's loss and gradient are the token mean over the whole accumulated batch (each
/// micro-batch's own loss is the mean over its tokens), not the mean of the micro-batch means.
pub fn token_mean_weights(counts: &[usize]) -> Vec<f32> {
    let total = counts.iter().sum::<usize>().max(1) as f32;
    counts.iter().map(|&n| n as f32 / total).collect()
}

impl Trainer {
    /// A trainer at the start of a phase.
    pub fn new(config: PhaseConfig, model: Qwen3, teacher: Option<Arc<Qwen3>>) -> Result<Self> {
        let cached = config.distill.as_ref().is_some_and(|d| d.teacher_cache.is_some());
        if config.kind == PhaseKind::Distill && teacher.is_none() && !cached {
            return Err(EngineError::config(&config.phase, "a distillation phase needs a teacher"));
        }
        if config.router.is_some() != model.moe.is_some() {
            return Err(EngineError::config(
                &config.phase,
                "router settings are for MoE models (and MoE models need them)".to_string(),
            ));
        }
        if let (Some(n), Some(m)) = (config.router.as_ref().and_then(|r| r.named_experts.as_ref()), &model.moe) {
            model::named_experts::check_map(&n.map, m.num_experts).map_err(|msg| {
                EngineError::config(&config.phase, format!("field `router.named_experts.map`: {msg}"))
            })?;
        }
        let opt = AdamW::new(
            &model.params,
            AdamWConfig {
                lr: config.lr.max,
                beta1: config.betas[0],
                beta2: config.betas[1],
                eps: 1e-8,
                weight_decay: config.weight_decay,
            },
        );
        let knobs = initial_knobs(&config);
        let state = TrainerState {
            phase: config.phase.clone(),
            step: 0,
            tokens: 0,
            cursor: LoaderCursor::default(),
            autoclip: AutoClip::new(config.autoclip.percentile, config.autoclip.window),
            breakers: Breakers::new(config.breakers.clone()),
            knobs: knobs.clone(),
            router_training: None,
            base_knobs: knobs,
            nonfinite_skipped: 0,
            nonfinite_streak: 0,
            actions: Vec::new(),
            last: None,
            router: Vec::new(),
            finishing: false,
            metrics_lines: None,
        };
        Ok(Trainer {
            config,
            model,
            teacher,
            opt,
            state,
            device: Device::Cpu,
            precision: Precision::F32,
            qat: None,
            pair_reference: None,
            teacher_cache: None,
            lr_override: None,
            freeze_weights: false,
        })
    }

    /// Runs the step's ops and AdamW on `device` from now on; the typed error of
    /// [`Tape::new_on`] when this build or machine cannot run it.
    pub fn set_device(&mut self, device: Device) -> Result<()> {
        Tape::new_on(Compute { device, precision: self.precision })?;
        self.device = device;
        Ok(())
    }

    /// Runs the step's GEMMs at `precision` from now on (bf16: operands rounded to bf16, f32
    /// accumulation; weights, gradients and AdamW state stay f32); the typed error of
    /// [`Tape::new_on`] when the trainer's device cannot run it.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        Tape::new_on(Compute { device: self.device, precision })?;
        self.precision = precision;
        Ok(())
    }

    /// The operand precision of the step's GEMMs.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Where the step runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Router settings of optimiser step `step` (None for a dense model): the phase schedules
    /// with the breakers' knobs on top.
    pub fn router_training_at(&self, step: u64) -> Option<RouterTraining> {
        let r = self.config.router.as_ref()?;
        Some(router_at(r, &self.state.knobs, &self.state.base_knobs, step, self.total_steps()))
    }

    /// Optimiser steps of the phase.
    pub fn total_steps(&self) -> u64 {
        self.config.total_steps()
    }

    /// True when the phase's steps are done.
    pub fn done(&self) -> bool {
        self.state.step >= self.total_steps()
    }

    /// The first optimiser step of P2's Q8 fake-quant (`sft.q8_fraction` of the steps, at the
    /// end); None when the phase has none.
    pub fn sft_q8_start(&self) -> Option<u64> {
        let f = self.config.sft.as_ref()?.q8_fraction;
        if f <= 0.0 {
            return None;
        }
        let total = self.total_steps();
        Some(total - ((f as f64 * total as f64).round() as u64).min(total))
    }

    /// Starts P2's Q8 fake-quant at its first step: experts + shared FFN (the QAT mask's
    /// quantized rules) at Q8_0, min-max steps.
    fn maybe_start_sft_q8(&mut self, step: u64) -> Result<()> {
        if self.qat.is_some() || self.sft_q8_start().is_none_or(|s| step < s) {
            return Ok(());
        }
        let mask = crate::qat_mask::load_mask(crate::qat_mask::DEFAULT_MASK_PATH)?;
        let mask = crate::qat_mask::stage_mask(&mask, kernels_cpu::quant::BlockType::Q8_0);
        let state = crate::qat_mask::calibrate(&self.model, &mask, SFT_Q8_GROUP, &[1.0])?;
        self.qat = Some(QatTraining::new(state, SFT_Q8_SCALE_LR_MULT));
        Ok(())
    }

    /// The QAT files of a checkpoint of this trainer (none without QAT).
    pub fn checkpoint_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        match &self.qat {
            Some(q) => q.checkpoint_files(),
            None => Ok(Vec::new()),
        }
    }

    /// The embedding's range in the flat parameters while the phase keeps it still (the first
    /// `sft.freeze_embeddings_frac` of P2's steps), else None.
    fn frozen_embedding(&self, step: u64) -> Option<std::ops::Range<usize>> {
        let frac = self.config.sft.as_ref()?.freeze_embeddings_frac;
        if step >= (frac as f64 * self.total_steps() as f64).round() as u64 {
            return None;
        }
        let e = self.model.params.entry(EMBEDDING).ok()?;
        Some(e.offset..e.offset + e.numel())
    }

    /// Forward + backward of one micro-batch, on a worker of the rayon pool (see
    /// `kernels_cpu::pool`).
    fn micro(&self, p: &PackedBatch, fwd: &ForwardOptions) -> Result<MicroOut> {
        kernels_cpu::pool::on_pool(|| self.micro_here(p, fwd))
    }

    fn micro_here(&self, p: &PackedBatch, fwd: &ForwardOptions) -> Result<MicroOut> {
        let (batch, targets) = crate::eval::token_batch_of(p.clone());
        let model = &self.model;
        if let Some(pref) = &self.config.preference {
            return self.preference_micro(p, &batch, &targets, fwd, &pref.loss);
        }
        // Mode B: each token's target expert from its row's domain (empty: no named experts).
        let named_cfg = self.named_experts();
        let route = match named_cfg {
            Some(n) => model::named_experts::route_targets(&p.domains, p.t, &targets, &n.map),
            None => Vec::new(),
        };
        let (loss, parts, grads, qat_grads) = match (&self.config.distill, &self.teacher) {
            (Some(d), _) if d.teacher_cache.is_some() => {
                let cache = self.teacher_cache.as_ref().ok_or_else(|| {
                    EngineError::Training("distillation from a teacher cache, but no cache is loaded".into())
                })?;
                let rows = cache.rows(&p.sequences)?;
                let opts =
                    DistillOptions { tau: d.tau, kl_coef: d.kl_coef, ce_coef: d.ce_coef, hidden_l2: d.hidden_l2 };
                self.gradient(fwd.compute(), |tape, bound| {
                    let o = model::distill_cached::distill_loss_cached(
                        model, tape, bound, &rows, &batch, &targets, fwd, &opts,
                    )?;
                    let (loss, named) = add_named_loss(named_cfg, tape, bound, o.loss, &o.router_inputs, &route)?;
                    let parts =
                        MicroParts { ce: o.ce, named, kl: o.kl, lb: o.lb, z: o.z, count: o.count, router: o.router };
                    Ok((loss, parts))
                })?
            }
            (Some(d), Some(teacher)) => {
                let th = teacher_hidden(teacher, &batch, fwd.compute())?;
                let opts =
                    DistillOptions { tau: d.tau, kl_coef: d.kl_coef, ce_coef: d.ce_coef, hidden_l2: d.hidden_l2 };
                self.gradient(fwd.compute(), |tape, bound| {
                    let o = distill_loss(model, tape, bound, &th, teacher, &batch, &targets, fwd, &opts)?;
                    let (loss, named) = add_named_loss(named_cfg, tape, bound, o.loss, &o.router_inputs, &route)?;
                    let parts =
                        MicroParts { ce: o.ce, named, kl: o.kl, lb: o.lb, z: o.z, count: o.count, router: o.router };
                    Ok((loss, parts))
                })?
            }
            _ => self.gradient(fwd.compute(), |tape, bound| {
                let o = model.loss(tape, bound, &batch, &targets, fwd)?;
                let (loss, named) = add_named_loss(named_cfg, tape, bound, o.loss, &o.router_inputs, &route)?;
                let parts = MicroParts { ce: o.ce, named, kl: 0.0, lb: o.lb, z: o.z, count: o.count, router: o.router };
                Ok((loss, parts))
            })?,
        };
        Ok(MicroOut { loss, parts, grads, qat_grads })
    }

    /// The phase's named-expert (Mode B) settings, if any.
    fn named_experts(&self) -> Option<&crate::phase::NamedExpertsConfig> {
        self.config.router.as_ref()?.named_experts.as_ref()
    }

    /// The objective's gradient with respect to the weights and, under QAT (through the fake
    /// quantizer), the flat gradient of the QAT parameters (empty otherwise).
    fn gradient<T: Send>(
        &self,
        on: Compute,
        objective: impl FnOnce(&Tape, &Bound) -> model::Result<(Tensor, T)> + Send,
    ) -> Result<(f32, T, Vec<f32>, Vec<f32>)> {
        match &self.qat {
            None => {
                let (value, extra, grads) = self.model.gradient(on, objective)?;
                Ok((value, extra, grads, Vec::new()))
            }
            Some(q) => {
                let (value, extra, grads, qg) = qat_gradient(&self.model, &q.state, on, objective)?;
                Ok((value, extra, grads, q.flat_grads(&qg)))
            }
        }
    }

    /// A preference micro-batch (pairs: chosen rows, then rejected rows) under DPO or SimPO; its
    /// `ce` part is the preference loss, its count the completion tokens.
    fn preference_micro(
        &self,
        p: &PackedBatch,
        batch: &model::TokenBatch,
        targets: &[i32],
        fwd: &ForwardOptions,
        loss: &model::preference::PreferenceLoss,
    ) -> Result<MicroOut> {
        let reference: Option<Vec<f32>> = match (&self.pair_reference, loss.needs_reference()) {
            (_, false) => None,
            (None, true) => return Err(EngineError::Training("DPO without reference log-probabilities".into())),
            (Some(table), true) => {
                let half = p.sequences.len() / 2;
                let get = |i: usize, side: usize| {
                    table.get(p.sequences[i] as usize).map(|r| r[side]).ok_or_else(|| {
                        EngineError::Training(format!("pair {} has no reference log-probabilities", p.sequences[i]))
                    })
                };
                Some((0..p.sequences.len()).map(|i| get(i, (i >= half) as usize)).collect::<Result<_>>()?)
            }
        };
        let model = &self.model;
        let (loss, parts, grads) = model.gradient(fwd.device, |tape, bound| {
            let o = model::preference::preference_loss(
                model,
                tape,
                bound,
                batch,
                targets,
                fwd,
                loss,
                reference.as_deref(),
            )?;
            let count = o.logprobs.counts.iter().sum();
            let parts = MicroParts { ce: o.value.loss, named: 0.0, kl: 0.0, lb: o.lb, z: o.z, count, router: o.router };
            Ok((o.loss, parts))
        })?;
        Ok(MicroOut { loss, parts, grads, qat_grads: Vec::new() })
    }

    /// One optimiser step over `micro` (the step's micro-batches, in order), ending at data
    /// cursor `cursor_after`. Returns the step record and the breaker actions it triggered
    /// (already applied to the knobs; the caller logs them with a checkpoint).
    pub fn step(
        &mut self,
        micro: &[PackedBatch],
        cursor_after: LoaderCursor,
    ) -> Result<(StepRecord, Vec<BreakerAction>)> {
        let step = self.state.step;
        self.maybe_start_sft_q8(step)?;
        let router_training = self.router_training_at(step);
        let lr = self.lr_override.unwrap_or_else(|| lr_at(&self.config.lr, step, self.total_steps()))
            * self.state.knobs.lr_scale;
        let bad = self.qat.as_ref().and_then(|q| {
            q.state
                .tensors
                .iter()
                .find(|(_, t)| t.step.iter().chain(&t.min).any(|v| !v.is_finite()))
                .map(|(n, _)| n.clone())
        });
        if let Some(name) = bad {
            // The fake quantizer refuses non-finite parameters: the step is skipped by the
            // non-finite guard like a non-finite loss.
            return self.skip_nonfinite(step, &format!("QAT parameters of `{name}` not finite"), cursor_after, lr);
        }
        let mut outs = Vec::with_capacity(micro.len());
        for (j, p) in micro.iter().enumerate() {
            let seed = self.config.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (step << 8) ^ j as u64;
            let fwd =
                ForwardOptions::train(seed, router_training.unwrap_or_default()).on(self.device).at(self.precision);
            outs.push(self.micro(p, &fwd)?);
        }
        let count: usize = outs.iter().map(|o| o.parts.count).sum();
        let weights = token_mean_weights(&outs.iter().map(|o| o.parts.count).collect::<Vec<_>>());
        let (mut loss, mut ce, mut kl, mut lb, mut z, mut named) = (0f32, 0f32, 0f32, 0f32, 0f32, 0f32);
        for (o, &w) in outs.iter().zip(&weights) {
            loss += w * o.loss;
            ce += w * o.parts.ce;
            named += w * o.parts.named;
            kl += w * o.parts.kl;
            lb += w * o.parts.lb;
            z += w * o.parts.z;
        }
        let mut grads = match &mut outs[..] {
            // One micro-batch with counted tokens: its weight is exactly 1, take its gradient.
            [one] if one.parts.count > 0 => std::mem::take(&mut one.grads),
            _ => {
                let mut sum = kernels_cpu::buffer::zeroed(self.model.params.numel());
                for (o, &w) in outs.iter().zip(&weights) {
                    kernels_cpu::elementwise::axpy(&mut sum, w, &o.grads);
                }
                sum
            }
        };
        let frozen = self.frozen_embedding(step);
        if let Some(r) = &frozen {
            grads[r.clone()].fill(0.0);
        }
        let grad_norm = profile::stage("grad_norm", || kernels_cpu::adamw::global_norm(&grads));
        let mut qat_grads = Vec::new();
        if let [first, ..] = &outs[..] {
            qat_grads = vec![0f32; first.qat_grads.len()];
            for o in &outs {
                kernels_cpu::elementwise::axpy(
                    &mut qat_grads,
                    o.parts.count as f32 / count.max(1) as f32,
                    &o.qat_grads,
                );
            }
        }
        // A non-finite step or min gradient skips the step like a non-finite weight gradient.
        let finite = loss.is_finite() && grad_norm.is_finite() && qat_grads.iter().all(|g| g.is_finite());
        let clip = self.state.autoclip.observe(if finite { grad_norm } else { f32::NAN });
        let router = merge_router(&outs.iter().map(|o| (o.parts.count, o.parts.router.clone())).collect::<Vec<_>>());
        if finite {
            let s = clip_scale(grad_norm, clip);
            if s != 1.0 {
                profile::stage("autoclip", || kernels_cpu::elementwise::scale(&mut grads, s));
            }
            self.opt.cfg.lr = lr;
            let kept = frozen.map(|r| self.model.params.flat()[r].to_vec());
            let (device, params) = (self.device, &mut self.model.params);
            if !self.freeze_weights {
                profile::stage("adamw", || self.opt.step_on(device, params, &grads))?;
            }
            if let Some(q) = &mut self.qat {
                q.step(&qat_grads, lr, self.config.betas);
            }
            if let Some(values) = kept {
                // A zero gradient still moves a weight through AdamW's decoupled decay.
                self.model.params.set(EMBEDDING, &values)?;
            }
            if let Some(rate) = self.config.router.as_ref().map(|r| r.bias_update_rate).filter(|&r| r > 0.0) {
                let counts: Vec<Vec<usize>> = router.iter().map(|r| r.counts.clone()).collect();
                crate::bias_balance::update_router_bias(&mut self.model.router_bias, &counts, rate);
            }
            self.state.nonfinite_streak = 0;
        } else {
            self.state.nonfinite_skipped += 1;
            self.state.nonfinite_streak += 1;
            if self.state.nonfinite_streak >= self.config.nonfinite_limit {
                return Err(EngineError::Training(format!(
                    "{} non-finite steps in a row (last loss {loss}, gradient norm {grad_norm}) at step {}",
                    self.state.nonfinite_streak,
                    step + 1
                )));
            }
        }
        self.state.step += 1;
        self.state.tokens += count as u64;
        self.state.cursor = cursor_after;
        self.state.router_training = router_training;
        let mut actions = Vec::new();
        if !router.is_empty() {
            actions = self.state.breakers.observe_step(self.state.step, &router, &self.state.knobs);
        }
        if !finite {
            actions.extend(self.state.breakers.observe_nonfinite(self.state.step, loss, grad_norm));
        }
        for a in &actions {
            a.apply(&mut self.state.knobs);
        }
        self.state.router = router.iter().map(LayerRouter::from).collect();
        let rec = StepRecord {
            step: self.state.step,
            loss,
            ce,
            kl,
            lb,
            z,
            grad_norm,
            clip,
            lr,
            tokens: count as u64,
            applied: finite,
            temperature: router_training.map_or(1.0, |r| r.temperature),
            named,
        };
        self.state.last = Some(rec.clone());
        Ok((rec, actions))
    }

    /// A step skipped by the non-finite guard before any forward (`why`): counted, the weights
    /// and optimiser untouched, an error once `nonfinite_limit` steps in a row were skipped.
    fn skip_nonfinite(
        &mut self,
        step: u64,
        why: &str,
        cursor_after: LoaderCursor,
        lr: f32,
    ) -> Result<(StepRecord, Vec<BreakerAction>)> {
        self.state.nonfinite_skipped += 1;
        self.state.nonfinite_streak += 1;
        if self.state.nonfinite_streak >= self.config.nonfinite_limit {
            return Err(EngineError::Training(format!(
                "{} non-finite steps in a row ({why}) at step {}",
                self.state.nonfinite_streak,
                step + 1
            )));
        }
        self.state.step += 1;
        self.state.cursor = cursor_after;
        let actions = self.state.breakers.observe_nonfinite(self.state.step, f32::NAN, f32::NAN);
        for a in &actions {
            a.apply(&mut self.state.knobs);
        }
        let rec = StepRecord {
            step: self.state.step,
            loss: f32::NAN,
            ce: f32::NAN,
            kl: 0.0,
            lb: 0.0,
            z: 0.0,
            grad_norm: f32::NAN,
            clip: 0.0,
            lr,
            tokens: 0,
            applied: false,
            temperature: 1.0,
            named: 0.0,
        };
        self.state.last = Some(rec.clone());
        Ok((rec, actions))
    }

    /// The trainer's JSON state (for a checkpoint).
    pub fn state_json(&self) -> String {
        serde_json::to_string_pretty(&self.state).unwrap_or_default()
    }

    /// Restores the state, model and optimiser from a checkpoint, after checking that its
    /// trainer.json belongs to this phase and agrees with its own files.
    pub fn restore(&mut self, loaded: crate::checkpoint::Loaded) -> Result<()> {
        let bad = |msg: String| EngineError::Checkpoint { path: loaded.path.clone(), msg };
        let state: TrainerState = serde_json::from_str(&loaded.trainer_json)
            .map_err(|e| bad(format!("{}: unreadable trainer state: {e}", crate::checkpoint::TRAINER_FILE)))?;
        if state.phase != self.config.phase {
            return Err(bad(format!("{} belongs to phase {}", crate::checkpoint::TRAINER_FILE, state.phase)));
        }
        if state.step > self.total_steps() {
            return Err(bad(format!(
                "{} says step {}, beyond the {} steps of phase {}",
                crate::checkpoint::TRAINER_FILE,
                state.step,
                self.total_steps(),
                self.config.phase
            )));
        }
        // Every step either updated the weights (one AdamW step) or was skipped as non-finite.
        if loaded.adam_step + state.nonfinite_skipped != state.step {
            return Err(bad(format!(
                "{} says step {} ({} skipped) but {} holds {} AdamW steps",
                crate::checkpoint::TRAINER_FILE,
                state.step,
                state.nonfinite_skipped,
                crate::checkpoint::OPTIMIZER_FILE,
                loaded.adam_step
            )));
        }
        if loaded.model.params.numel() != self.model.params.numel() || loaded.model.moe != self.model.moe {
            return Err(bad("model shape differs from the phase's model".into()));
        }
        let lr_mult = self.qat.as_ref().map_or(SFT_Q8_SCALE_LR_MULT, |q| q.lr_mult);
        let qat = QatTraining::from_checkpoint(&loaded.path, lr_mult)?;
        if let Some(start) = self.sft_q8_start() {
            if (state.step > start) != qat.is_some() {
                return Err(bad(format!(
                    "step {} of a phase with Q8 fake-quant from step {start}, but the checkpoint {} QAT state",
                    state.step,
                    if qat.is_some() { "holds a" } else { "holds no" }
                )));
            }
        }
        // The model file is architecture + weights (+ router bias); the router settings come
        // back with the trainer state.
        self.model = loaded.model;
        self.qat = qat;
        self.opt.m = loaded.adam_m;
        self.opt.v = loaded.adam_v;
        self.opt.step = loaded.adam_step;
        self.state = state;
        Ok(())
    }
}
