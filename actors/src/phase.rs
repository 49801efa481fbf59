//! Phase configuration: one JSON file per phase in configs/phases/ holding the seed plan's
//! values, plus per-preset overrides (token budgets, learning rates and windows scaled to the
//! model) merged on top.

use crate::breakers::BreakerConfig;
use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a phase trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// Next-token pretraining of the dense base from scratch.
    Base,
    /// Knowledge distillation from the dense teacher (P0).
    Distill,
    /// Continued pretraining (P1).
    Cpt,
    /// Supervised fine-tuning on chat conversations, assistant tokens only (P2).
    Sft,
    /// Preference optimisation (DPO / SimPO) on sampled answer pairs (P3).
    Preference,
    /// Staged quantization-aware training with KD from the pre-QAT model (P4).
    Qat,
}

/// Cosine learning rate with linear warmup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrConfig {
    /// Peak learning rate (after warmup).
    pub max: f32,
    /// Final learning rate (end of the cosine).
    pub min: f32,
    /// Fraction of the steps spent warming up (the seed plan says 3-5%).
    pub warmup_frac: f32,
}

/// AutoClip: clip the gradient norm at a percentile of the recent norms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoClipConfig {
    /// Percentile of the window used as the clip threshold (10 in the seed plan).
    pub percentile: f32,
    /// Gradient norms remembered.
    pub window: usize,
}

/// Domain mixing over the phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// Domain weights of mixed batches.
    pub weights: BTreeMap<String, f64>,
    /// Fraction of the phase (from its start) whose batches are domain-biased: every batch is
    /// drawn from one domain, picked with `weights`.
    #[serde(default)]
    pub biased_frac: f64,
}

/// Router settings and schedules (MoE phases).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSchedule {
    /// Load-balance coefficient at the start and the end of the phase (linear).
    pub lb: [f32; 2],
    /// Router softmax temperature at the start and the end (linear).
    pub temperature: [f32; 2],
    /// z-loss coefficient.
    pub z: f32,
    /// Capacity factor in training.
    pub capacity: f32,
    /// Expert dropout probability.
    #[serde(default)]
    pub expert_dropout: f32,
    /// Router noise std.
    #[serde(default)]
    pub noise: f32,
    /// Aux-loss-free balancing (DeepSeek-V3): after each optimiser step every MoE layer's
    /// router bias moves `b_i -= rate * sign(load_i - mean load)` by the step's token counts.
    /// 0 (the default) is off; DeepSeek-V3 and the seed plan use 1e-3.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bias_update_rate: f32,
    /// Named experts (Mode B): the router supervised by document domain tags (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_experts: Option<NamedExpertsConfig>,
}

/// Mode B router supervision: every token of a document whose domain is in `map` is pulled toward
/// the mapped routed expert in every MoE layer (cross-entropy of the router logits), with weight
/// `coef` in the objective (see `model::named_experts`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedExpertsConfig {
    /// Weight of the router cross-entropy in the objective.
    pub coef: f32,
    /// Domain tag -> routed expert index (the same in every layer).
    pub map: BTreeMap<String, usize>,
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

/// Distillation settings (P0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Softmax temperature of the KL.
    pub tau: f32,
    /// Weight of the KL term.
    pub kl_coef: f32,
    /// Weight of the next-token cross-entropy.
    #[serde(default)]
    pub ce_coef: f32,
    /// Weight of the last-hidden L2 (at most 0.1).
    #[serde(default)]
    pub hidden_l2: f32,
    /// Distil from a teacher logit cache (top-k logits + log-sum-exp per token) instead of
    /// running the teacher (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_cache: Option<TeacherCacheConfig>,
}

/// The teacher logit cache of a distillation phase (`model::logit_cache`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherCacheConfig {
    /// Teacher tokens cached per position (the rest of the distribution is one tail bucket).
    #[serde(default = "default_cache_k")]
    pub k: usize,
    /// A cache built beforehand to use (it must match the run's teacher, pack, tokenizer, k and
    /// tau, and hold every sequence the phase draws); absent: the phase builds its own in
    /// `<stage>/teacher-cache` for the sequences it draws.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<std::path::PathBuf>,
}

fn default_cache_k() -> usize {
    model::logit_cache::DEFAULT_K
}

/// Supervised fine-tuning settings (P2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftPhaseConfig {
    /// Conversations generated from the run's world.
    pub examples: usize,
    /// Share of hard two-hop cases answered under `/think` with a rationale.
    pub hard_fraction: f64,
    /// Share of multiple-choice questions in P3's prompt form answered with the letter and the
    /// option text (absent: none, the conversations of configs written before it).
    #[serde(default)]
    pub mcq_fraction: f64,
    /// Share of those questions asked under `/think`, answered after a one-sentence rationale.
    #[serde(default = "default_mcq_think_fraction")]
    pub mcq_think_fraction: f64,
    /// Untie the LM head from the embedding at the start of the phase.
    pub untie_embeddings: bool,
    /// Fraction of the steps (from the start) during which the embedding does not move.
    pub freeze_embeddings_frac: f32,
    /// Fraction of the steps (at the end) trained with Q8 fake-quant on experts + shared FFN
    /// (0.15 in the seed plan): the QAT mask's tensors at Q8_0 through `Trainer::qat`.
    #[serde(default)]
    pub q8_fraction: f32,
    /// Long rows (seed plan: seq 2048 with ~25% at 8192): a share of the micro-batches holds
    /// fewer, longer rows with the same token positions (absent: every row has `seq_len`).
    #[serde(default)]
    pub long: Option<LongRows>,
}

/// The long rows of an SFT phase: `fraction` of the micro-batches (and so of the trained
/// positions) hold rows of `seq_len` tokens, `micro_batch x phase seq_len / seq_len` of them.
/// Conversations longer than the phase's rows go there, then seeded others until their tokens
/// are about `fraction` of all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongRows {
    /// Tokens of a long row.
    pub seq_len: usize,
    /// Share of the micro-batches made of long rows, in [0, 1).
    pub fraction: f64,
}

impl LongRows {
    /// Long rows of one micro-batch of a phase with `micro_batch` rows of `seq_len`.
    pub fn rows_per_micro(&self, micro_batch: usize, seq_len: usize) -> usize {
        micro_batch * seq_len / self.seq_len.max(1)
    }

    /// True when micro-batch `k` is made of long rows: the long ones are spread evenly,
    /// `floor(k f)` of the first `k` (so any window of micro-batches holds its share).
    pub fn is_long(&self, k: u64) -> bool {
        self.long_before(k + 1) > self.long_before(k)
    }

    /// Long micro-batches among the first `k`.
    pub fn long_before(&self, k: u64) -> u64 {
        (k as f64 * self.fraction).floor() as u64
    }
}

fn default_mcq_think_fraction() -> f64 {
    0.15
}

/// Preference optimisation settings (P3): candidates sampled from the P2 model on the world's
/// verifiable prompts, rule-based reward, (correct, most confident wrong) pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencePhaseConfig {
    /// `{"method": "dpo", "beta": 0.1}` or `{"method": "simpo", "beta": 2.5, "gamma_beta_ratio": 0.55}`.
    pub loss: model::preference::PreferenceLoss,
    /// Verifiable prompts sampled.
    pub prompts: usize,
    /// Candidates per prompt (3-4).
    pub candidates: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling threshold.
    pub top_p: f32,
    /// Sample from the k most likely tokens only (0 = all).
    #[serde(default)]
    pub top_k: usize,
    /// New tokens per candidate at most.
    pub max_new_tokens: usize,
    /// Share of prompts asked under `/think`.
    pub think_fraction: f64,
    /// A model directory to use as DPO's frozen reference instead of the P2 model (its
    /// vocabulary must be the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<std::path::PathBuf>,
}

/// Periodic evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSchedule {
    /// Evaluate every this many optimiser steps (0: only at the end).
    pub every: u64,
    /// Dev sequences per domain in a periodic evaluation.
    pub dev_seqs: usize,
    /// MCQ items per set in a periodic evaluation.
    pub mcq_items: usize,
    /// MCQ items per set in the final evaluation (0: all).
    #[serde(default)]
    pub final_mcq_items: usize,
    /// Dev sequences per domain in the final evaluation.
    #[serde(default)]
    pub final_dev_seqs: usize,
}

/// One phase, resolved for a preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseConfig {
    /// Phase name (`base`, `p0`, `p1`).
    pub phase: String,
    /// What it trains.
    pub kind: PhaseKind,
    /// Token budget of the phase (left out, or 0, when `same_tokens_as` sets it).
    #[serde(default)]
    pub tokens: u64,
    /// Train on exactly the micro-batches of these phases, in order (their streams, seeds and
    /// mixes), instead of a stream of its own: the budget is the sum of theirs. `baseline-small`
    /// uses `["base", "p0", "p1"]`: the small dense reference sees the tokens the MoE's line saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub same_tokens_as: Vec<String>,
    /// Tokens per optimiser step (gradient accumulation reaches it).
    pub tokens_per_step: u64,
    /// Sequences per micro-batch.
    pub micro_batch: usize,
    /// Tokens per sequence (the pack's sequence length must match).
    pub seq_len: usize,
    /// Learning-rate schedule.
    pub lr: LrConfig,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// AdamW betas.
    pub betas: [f32; 2],
    /// Gradient clipping.
    pub autoclip: AutoClipConfig,
    /// Domain mixing (left out when `same_tokens_as` gives the stream).
    #[serde(default)]
    pub mix: MixConfig,
    /// Router settings (MoE phases).
    #[serde(default)]
    pub router: Option<RouterSchedule>,
    /// Distillation settings (P0).
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    /// Supervised fine-tuning settings (P2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<SftPhaseConfig>,
    /// Preference optimisation settings (P3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferencePhaseConfig>,
    /// Staged QAT settings (P4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qat: Option<crate::qat_policy::QatPhaseConfig>,
    /// Evaluation schedule.
    pub eval: EvalSchedule,
    /// Checkpoint every this many optimiser steps.
    pub checkpoint_every: u64,
    /// Complete checkpoints kept.
    pub keep_last: usize,
    /// Circuit breakers.
    #[serde(default)]
    pub breakers: BreakerConfig,
    /// Non-finite steps in a row that end the phase with an error.
    #[serde(default = "default_nonfinite_limit")]
    pub nonfinite_limit: u32,
    /// Seed of data order and routing randomness.
    #[serde(default)]
    pub seed: u64,
}

fn default_nonfinite_limit() -> u32 {
    8
}

/// The embedded phase files.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("base", include_str!("../../configs/phases/base.json")),
    ("p0", include_str!("../../configs/phases/p0.json")),
    ("p1", include_str!("../../configs/phases/p1.json")),
    ("p2", include_str!("../../configs/phases/p2.json")),
    ("p3", include_str!("../../configs/phases/p3.json")),
    ("p4", include_str!("../../configs/phases/p4.json")),
    ("baseline-small", include_str!("../../configs/phases/baseline-small.json")),
    ("teacher-continued", include_str!("../../configs/phases/teacher-continued.json")),
];

/// The names of the embedded phases, for messages (`base, p0, p1, ...`).
pub fn phase_names() -> String {
    EMBEDDED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Deserialises a resolved phase config; an error names the field by its path, under
/// `presets.<name>.` when that preset's override holds it.
fn from_value_at(
    v: serde_json::Value,
    source: &str,
    preset: Option<(&str, &serde_json::Value)>,
) -> Result<PhaseConfig> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let top = field.split(['.', '[']).next().unwrap_or_default();
        let at = match preset {
            Some((p, _)) if field == "." => format!("presets.{p}"),
            Some((p, patch)) if patch.get(top).is_some() => format!("field `presets.{p}.{field}`"),
            _ if field == "." => "top level".to_string(),
            _ => format!("field `{field}`"),
        };
        EngineError::config(source, format!("{at}: {inner}"))
    })
}

/// Merges `patch` into `base` (objects recursively, everything else replaced).
fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

impl PhaseConfig {
    /// Parses a phase file and resolves it for `preset` (its `presets.<preset>` object is merged
    /// over the seed-plan values; a file without that preset is used as it is). Every preset of
    /// the file is resolved, so an unknown field or a wrong type anywhere in it is refused, with
    /// the file and the field's path (`presets.tiny.lr.max`).
    pub fn parse(text: &str, source: &str, preset: &str) -> Result<Self> {
        let mut v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| EngineError::config(source, format!("not JSON: {e}")))?;
        let presets = v.as_object_mut().and_then(|o| o.remove("presets"));
        let _ = v.as_object_mut().and_then(|o| o.remove("comment"));
        let presets = match presets {
            None => serde_json::Map::new(),
            Some(serde_json::Value::Object(m)) => m,
            Some(_) => return Err(EngineError::config(source, "presets: expected an object of preset overrides")),
        };
        let mut chosen = None;
        for (name, patch) in presets.iter().map(|(n, p)| (Some(n.as_str()), Some(p))).chain([(None, None)]) {
            let mut resolved = v.clone();
            if let Some(p) = patch {
                merge(&mut resolved, p);
            }
            let c = from_value_at(resolved, source, name.zip(patch))?;
            if name == Some(preset) || (name.is_none() && chosen.is_none()) {
                chosen = Some(c);
            }
        }
        let c = chosen.expect("the file's own values always resolve");
        c.validate(source)?;
        Ok(c)
    }

    /// The embedded config of `phase` for `preset`.
    pub fn embedded(phase: &str, preset: &str) -> Result<Self> {
        let (_, text) = EMBEDDED.iter().find(|(n, _)| *n == phase).ok_or_else(|| {
            EngineError::config("phase", format!("unknown phase `{phase}` (known: {})", phase_names()))
        })?;
        Self::parse(text, &format!("configs/phases/{phase}.json"), preset)
    }

    fn validate(&self, source: &str) -> Result<()> {
        let bad = |msg: String| Err(EngineError::config(source, msg));
        if self.micro_batch == 0 || self.seq_len < 2 {
            return bad(format!("micro_batch {} and seq_len {} must be positive", self.micro_batch, self.seq_len));
        }
        if self.tokens_per_step < self.micro_tokens() {
            return bad(format!(
                "tokens_per_step {} is below one micro-batch ({})",
                self.tokens_per_step,
                self.micro_tokens()
            ));
        }
        if !self.same_tokens_as.is_empty() {
            if self.tokens != 0 {
                return bad(format!(
                    "field `tokens`: {} but `same_tokens_as` {:?} sets the budget; leave `tokens` out",
                    self.tokens, self.same_tokens_as
                ));
            }
            if !matches!(self.kind, PhaseKind::Base | PhaseKind::Cpt) || self.router.is_some() {
                return bad(format!(
                    "field `same_tokens_as`: only a dense `base` (from scratch) or `cpt` phase can take it, not {:?}{}",
                    self.kind,
                    if self.router.is_some() { " with a router" } else { "" }
                ));
            }
        } else if self.tokens < self.tokens_per_step {
            return bad(format!("tokens {} is below one step ({})", self.tokens, self.tokens_per_step));
        }
        let lr = &self.lr;
        if !(lr.max > 0.0 && lr.min >= 0.0 && lr.min <= lr.max && (0.0..1.0).contains(&lr.warmup_frac)) {
            return bad(format!("lr {lr:?}: need 0 <= min <= max, 0 < max, 0 <= warmup_frac < 1"));
        }
        if !(0.0..=100.0).contains(&self.autoclip.percentile) || self.autoclip.window == 0 {
            return bad(format!("autoclip {:?}", self.autoclip));
        }
        if !self.same_tokens_as.is_empty() {
            if self.mix != MixConfig::default() {
                return bad(format!(
                    "field `mix`: the stream is the one of {:?} (`same_tokens_as`); leave `mix` out",
                    self.same_tokens_as
                ));
            }
        } else if self.mix.weights.is_empty() || self.mix.weights.values().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return bad(format!("mix weights {:?}", self.mix.weights));
        }
        if let Some(d) = &self.distill {
            if !(d.tau > 0.0 && d.kl_coef >= 0.0 && d.ce_coef >= 0.0 && (0.0..=0.1).contains(&d.hidden_l2)) {
                return bad(format!("distill {d:?}: tau > 0, coefficients >= 0, hidden_l2 <= 0.1"));
            }
            if let Some(c) = &d.teacher_cache {
                if c.k == 0 {
                    return bad("field `distill.teacher_cache.k`: must be at least 1".into());
                }
                if d.hidden_l2 > 0.0 {
                    return bad(format!(
                        "field `distill.hidden_l2`: {} needs the teacher's hidden states, which a teacher logit cache \
                         does not hold (set it to 0 or drop `distill.teacher_cache`)",
                        d.hidden_l2
                    ));
                }
            }
        }
        if let Some(r) = &self.router {
            let rate = r.bias_update_rate;
            if !(rate.is_finite() && rate >= 0.0) {
                return bad(format!("router.bias_update_rate {rate} must be finite and >= 0"));
            }
            if let Some(n) = &r.named_experts {
                if !(n.coef.is_finite() && n.coef >= 0.0) {
                    return bad(format!("field `router.named_experts.coef`: {} must be finite and >= 0", n.coef));
                }
                if n.map.is_empty() {
                    return bad("field `router.named_experts.map`: the domain -> expert map is empty".into());
                }
                if matches!(self.kind, PhaseKind::Sft | PhaseKind::Preference) {
                    return bad(format!(
                        "field `router.named_experts`: a {:?} phase has no document domains",
                        self.kind
                    ));
                }
            }
        }
        if (self.kind == PhaseKind::Distill && self.distill.is_none())
            || (self.distill.is_some() && !matches!(self.kind, PhaseKind::Distill | PhaseKind::Qat))
        {
            return bad("a distill phase needs a `distill` section (and only it and qat phases take one)".into());
        }
        if (self.kind == PhaseKind::Qat) != self.qat.is_some() {
            return bad("a qat phase needs a `qat` section (and only it)".into());
        }
        if let Some(q) = &self.qat {
            q.validate(source)?;
            q.check_budget(self.tokens, source)?;
        }
        if (self.kind == PhaseKind::Sft) != self.sft.is_some() {
            return bad("an sft phase needs an `sft` section (and only it)".into());
        }
        if let Some(s) = &self.sft {
            if s.examples == 0 || !(0.0..=1.0).contains(&s.hard_fraction) {
                return bad(format!(
                    "sft: examples {} must be positive, hard_fraction {} in [0, 1]",
                    s.examples, s.hard_fraction
                ));
            }
            for (name, f) in [
                ("freeze_embeddings_frac", s.freeze_embeddings_frac as f64),
                ("q8_fraction", s.q8_fraction as f64),
                ("mcq_fraction", s.mcq_fraction),
                ("mcq_think_fraction", s.mcq_think_fraction),
            ] {
                if !(0.0..=1.0).contains(&f) {
                    return bad(format!("field `sft.{name}`: {f} is not a fraction in [0, 1]"));
                }
            }
            if s.hard_fraction + s.mcq_fraction > 1.0 {
                return bad(format!(
                    "sft: hard_fraction {} + mcq_fraction {} exceed 1 (both are shares of the conversations)",
                    s.hard_fraction, s.mcq_fraction
                ));
            }
            if let Some(l) = &s.long {
                let positions = self.micro_batch * self.seq_len;
                if l.seq_len <= self.seq_len || !positions.is_multiple_of(l.seq_len) {
                    return bad(format!(
                        "field `sft.long.seq_len`: {} must be longer than seq_len {} and divide a micro-batch's \
                         {positions} positions (micro_batch {} x seq_len), so long micro-batches train as many",
                        l.seq_len, self.seq_len, self.micro_batch
                    ));
                }
                if !(0.0..1.0).contains(&l.fraction) {
                    return bad(format!("field `sft.long.fraction`: {} is not in [0, 1)", l.fraction));
                }
            }
        }
        if (self.kind == PhaseKind::Preference) != self.preference.is_some() {
            return bad("a preference phase needs a `preference` section (and only it)".into());
        }
        if let Some(p) = &self.preference {
            p.loss.validate().map_err(|e| EngineError::config(source, format!("field `preference.loss`: {e}")))?;
            if p.prompts == 0 || !(2..=16).contains(&p.candidates) || p.max_new_tokens == 0 {
                return bad(format!(
                    "preference: prompts {} must be positive, candidates {} in 2..=16, max_new_tokens {} positive",
                    p.prompts, p.candidates, p.max_new_tokens
                ));
            }
            let sampling = model::generate::Sampling { temperature: p.temperature, top_k: p.top_k, top_p: p.top_p };
            if p.temperature <= 0.0 || sampling.validate().is_err() || !(0.0..=1.0).contains(&p.think_fraction) {
                return bad(format!(
                    "preference: temperature {} must be > 0 (never greedy), top_p {} in (0, 1], think_fraction {} in [0, 1]",
                    p.temperature, p.top_p, p.think_fraction
                ));
            }
            if !self.micro_batch.is_multiple_of(2) {
                return bad(format!(
                    "micro_batch {}: a preference micro-batch holds pairs (an even number of sequences)",
                    self.micro_batch
                ));
            }
        }
        if self.checkpoint_every == 0 || self.keep_last == 0 {
            return bad("checkpoint_every and keep_last must be positive".into());
        }
        Ok(())
    }

    /// Tokens in one micro-batch.
    pub fn micro_tokens(&self) -> u64 {
        (self.micro_batch * self.seq_len) as u64
    }

    /// Micro-batches per optimiser step.
    pub fn accumulation(&self) -> u64 {
        self.tokens_per_step.div_ceil(self.micro_tokens())
    }

    /// Optimiser steps of the phase.
    pub fn total_steps(&self) -> u64 {
        (self.tokens / (self.accumulation() * self.micro_tokens())).max(1)
    }

    /// SHA-256 (hex) of the resolved config: part of the stage manifest.
    pub fn hash(&self) -> String {
        crate::manifest::sha256_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_phases_resolve_for_tiny() {
        for (name, _) in EMBEDDED {
            let c = PhaseConfig::embedded(name, "tiny").unwrap();
            assert_eq!(&c.phase, name);
            if !c.same_tokens_as.is_empty() {
                // The budget is set by the run from the phases named (tests/stages).
                let want: &[&str] = if *name == "baseline-small" { &["base", "p0", "p1"] } else { &["p0", "p1"] };
                assert_eq!(c.same_tokens_as, want);
                assert_eq!(c.tokens, 0);
                continue;
            }
            assert!(c.total_steps() >= 10, "{name}: {} steps", c.total_steps());
            let seed = PhaseConfig::embedded(name, "seed-plan").unwrap();
            assert!(seed.tokens > c.tokens * 1000, "{name}: seed plan budget {} vs tiny {}", seed.tokens, c.tokens);
        }
        let p1 = PhaseConfig::embedded("p1", "tiny").unwrap();
        assert_eq!(p1.router.as_ref().unwrap().lb, [0.015, 0.01]);
        assert_eq!(p1.router.as_ref().unwrap().temperature, [0.9, 0.6]);
        assert!((p1.mix.biased_frac - 1.0 / 3.0).abs() < 0.01);
        let p0 = PhaseConfig::embedded("p0", "tiny").unwrap();
        assert_eq!(p0.distill.as_ref().unwrap().tau, 1.0);
        assert_eq!(p0.router.as_ref().unwrap().capacity, 1.25);
        // The router settings the MoE presets used to carry live here now.
        let r = p0.router.as_ref().unwrap();
        assert_eq!((r.temperature, r.lb, r.z), ([0.9, 0.9], [0.01, 0.01], 1e-4));
        assert_eq!(r.bias_update_rate, 0.0, "bias balancing is off unless a phase asks for it");
    }

    #[test]
    fn bias_update_rate_is_read_checked_and_left_out_of_the_hash_when_off() {
        let text = include_str!("../../configs/phases/p1.json");
        let off = PhaseConfig::parse(text, "p1.json", "tiny").unwrap();
        assert!(!serde_json::to_string(&off).unwrap().contains("bias_update_rate"), "off: not serialised");
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["router"]["bias_update_rate"] = serde_json::json!(1e-3);
        let on = PhaseConfig::parse(&v.to_string(), "p1.json", "tiny").unwrap();
        assert_eq!(on.router.as_ref().unwrap().bias_update_rate, 1e-3);
        assert_ne!(on.hash(), off.hash());
        v["router"]["bias_update_rate"] = serde_json::json!(-1e-3);
        let e = PhaseConfig::parse(&v.to_string(), "p1.json", "tiny").unwrap_err().to_string();
        assert!(e.contains("bias_update_rate"), "{e}");
    }

    #[test]
    fn sft_and_preference_phases_carry_their_sections_and_check_them() {
        use model::preference::PreferenceLoss;
        let p2 = PhaseConfig::embedded("p2", "tiny").unwrap();
        let s = p2.sft.as_ref().unwrap();
        assert_eq!((s.freeze_embeddings_frac, s.q8_fraction, s.untie_embeddings), (0.2, 0.15, true));
        let r = p2.router.as_ref().unwrap();
        assert_eq!((r.temperature, r.lb), ([0.5, 0.4], [0.01, 0.01]));
        let p3 = PhaseConfig::embedded("p3", "tiny").unwrap();
        let p = p3.preference.as_ref().unwrap();
        assert_eq!(p.loss, PreferenceLoss::Dpo { beta: 0.1 });
        assert_eq!((p.prompts, p.candidates, p.temperature, p.top_p, p.max_new_tokens), (256, 4, 0.7, 0.8, 64));
        let text = include_str!("../../configs/phases/p3.json");
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
            edit(&mut v);
            PhaseConfig::parse(&v.to_string(), "p3.json", "tiny")
        };
        let simpo = with(&|v| {
            v["preference"]["loss"] = serde_json::json!({ "method": "simpo", "beta": 2.5, "gamma_beta_ratio": 0.55 })
        });
        assert_eq!(
            simpo.unwrap().preference.unwrap().loss,
            PreferenceLoss::Simpo { beta: 2.5, gamma_beta_ratio: 0.55 }
        );
        let e = with(&|v| v["preference"]["loss"] = serde_json::json!({ "method": "ipo", "beta": 0.1 })).unwrap_err();
        assert!(e.to_string().contains("preference.loss"), "{e}");
        let e = with(&|v| v["preference"]["temperature"] = 0.0.into()).unwrap_err().to_string();
        assert!(e.contains("never greedy"), "{e}");
        let e = with(&|v| v["presets"]["tiny"]["micro_batch"] = 7.into()).unwrap_err().to_string();
        assert!(e.contains("even"), "{e}");
        let e = with(&|v| v["kind"] = "cpt".into()).unwrap_err().to_string();
        assert!(e.contains("`preference` section"), "{e}");
    }

    #[test]
    fn experiment_configs_resolve_and_their_sections_are_checked() {
        let text = include_str!("../../configs/experiments/p1-named-experts.json");
        let p1 = PhaseConfig::parse(text, "p1-named-experts.json", "tiny").unwrap();
        let n = p1.router.as_ref().unwrap().named_experts.as_ref().unwrap();
        assert_eq!((n.coef, n.map.get("medical")), (0.1, Some(&0)));
        assert_ne!(p1.hash(), PhaseConfig::embedded("p1", "tiny").unwrap().hash());
        // Direct Q5: one Q5_K stage of the staged run's total tokens, the rest as p4.json.
        for preset in ["tiny", "seed"] {
            let text = include_str!("../../configs/experiments/p4-direct-q5.json");
            let direct = PhaseConfig::parse(text, "p4-direct-q5.json", preset).unwrap();
            let staged = PhaseConfig::embedded("p4", preset).unwrap();
            let (d, s) = (direct.qat.as_ref().unwrap(), staged.qat.as_ref().unwrap());
            assert_eq!(d.stages.len(), 1);
            assert_eq!(d.stages[0].ty, s.stages.last().unwrap().ty);
            assert_eq!(s.train_weights, preset == "seed", "LSQ for the seed plan, steps alone for tiny");
            assert_eq!(d.stages[0].tokens, s.stages.iter().map(|x| x.tokens).sum::<u64>(), "{preset}");
            let (mut d, mut s) = (d.clone(), s.clone());
            (d.stages, s.stages) = (Vec::new(), Vec::new());
            assert_eq!(d, s, "{preset}: only the stages differ");
            assert_eq!((direct.tokens, direct.lr.max), (staged.tokens, staged.lr.max));
        }
        let text = include_str!("../../configs/experiments/p0-teacher-cache.json");
        let p0 = PhaseConfig::parse(text, "p0-teacher-cache.json", "tiny").unwrap();
        assert_eq!(p0.distill.as_ref().unwrap().teacher_cache.as_ref().unwrap().k, 20);
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
            edit(&mut v);
            PhaseConfig::parse(&v.to_string(), "x.json", "tiny").map(|_| ()).unwrap_err().to_string()
        };
        let e = with(&|v| v["distill"]["hidden_l2"] = 0.05.into());
        assert!(e.contains("distill.hidden_l2") && e.contains("teacher logit cache"), "{e}");
        let e = with(&|v| v["distill"]["teacher_cache"]["k"] = 0.into());
        assert!(e.contains("teacher_cache.k"), "{e}");
        let e = with(&|v| v["router"]["named_experts"] = serde_json::json!({"coef": -1.0, "map": {"medical": 1}}));
        assert!(e.contains("named_experts.coef"), "{e}");
        let e = with(&|v| v["router"]["named_experts"] = serde_json::json!({"coef": 0.1, "map": {}}));
        assert!(e.contains("named_experts.map"), "{e}");
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let base = include_str!("../../configs/phases/p1.json");
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        v["lr"]["max"] = serde_json::json!(-1.0);
        let e = PhaseConfig::parse(&v.to_string(), "x.json", "seed-plan").unwrap_err().to_string();
        assert!(e.contains("x.json") && e.contains("lr"), "{e}");
        let e = PhaseConfig::parse("{", "y.json", "tiny").unwrap_err().to_string();
        assert!(e.contains("y.json") && e.contains("not JSON"), "{e}");
        let e = PhaseConfig::parse(r#"{"phase": "p9"}"#, "z.json", "tiny").unwrap_err().to_string();
        assert!(e.contains("z.json") && e.contains("missing field"), "{e}");
        assert!(PhaseConfig::embedded("p7", "tiny").is_err());
    }

    #[test]
    fn wrong_types_and_unknown_fields_name_the_field_in_every_preset() {
        let base = include_str!("../../configs/phases/p1.json");
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        v["betas"][1] = "high".into();
        let e = PhaseConfig::parse(&v.to_string(), "x.json", "tiny").unwrap_err().to_string();
        assert!(e.contains("x.json") && e.contains("field `betas[1]`") && e.contains("invalid type"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        // A preset other than the one resolved is checked too.
        v["presets"]["big"] = serde_json::json!({ "eval": { "evry": 3 } });
        let e = PhaseConfig::parse(&v.to_string(), "x.json", "tiny").unwrap_err().to_string();
        assert!(e.contains("field `presets.big.eval") && e.contains("unknown field `evry`"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        v["presets"]["tiny"]["keep_last"] = (-1).into();
        let e = PhaseConfig::parse(&v.to_string(), "x.json", "tiny").unwrap_err().to_string();
        assert!(e.contains("field `presets.tiny.keep_last`"), "{e}");
    }
}
