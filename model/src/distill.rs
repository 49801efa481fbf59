//! Phase p0 objective: knowledge distillation of the MoE student from the dense teacher.
//!
//! `loss = kl_coef · KD + ce_coef · CE + hidden_l2 · L2 + lb_coef · lb + z_coef · z`, where
//! - `KD` is the mean over counted rows of `tau² · KL(p_t ‖ p_s)` with `p = softmax(logits / tau)`
//!   (fused over the vocabulary; neither model's `[N, V]` logits are materialised),
//! - `CE` the student's next-token cross-entropy,
//! - `L2` the mean over counted rows of `‖h_s − h_t‖² / D` between the final normalised hidden
//!   states (coefficient at most 0.1, so it only nudges the representation),
//! - `lb`, `z` the router losses weighted by the forward options' router settings, exactly as
//!   in [`Qwen3::loss`].
//!
//! The teacher is a constant: its final hidden states are computed beforehand (on an inference
//! tape, [`teacher_hidden`]) and only the student's parameters receive gradients.

use crate::batch::TokenBatch;
use crate::error::{ModelError, Result};
use crate::qwen3::{ag, Bound, ForwardOptions, Qwen3};
use autograd::ops::{self, RouterStats};
use autograd::{Tape, Tensor};

/// Largest allowed weight of the hidden-state L2 term.
pub const MAX_HIDDEN_L2: f32 = 0.1;

/// Weights and temperature of the distillation objective.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillOptions {
    /// Softmax temperature of both distributions (> 0; the KL is multiplied by `tau²`).
    pub tau: f32,
    /// Weight of the KL term (>= 0).
    pub kl_coef: f32,
    /// Weight of the student's cross-entropy on the targets (>= 0).
    pub ce_coef: f32,
    /// Weight of the last-hidden-state L2 term, in `[0, 0.1]`.
    pub hidden_l2: f32,
}

impl Default for DistillOptions {
    /// Pure KL at `tau = 1`.
    fn default() -> Self {
        DistillOptions { tau: 1.0, kl_coef: 1.0, ce_coef: 0.0, hidden_l2: 0.0 }
    }
}

impl DistillOptions {
    /// Checks `tau > 0`, coefficients `>= 0` and `hidden_l2 <= 0.1` (all finite).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Invalid(format!("distill options: {msg}")));
        if !(self.tau > 0.0 && self.tau.is_finite()) {
            return bad(format!("tau {} must be positive and finite", self.tau));
        }
        for (name, c) in [("kl_coef", self.kl_coef), ("ce_coef", self.ce_coef), ("hidden_l2", self.hidden_l2)] {
            if !(c >= 0.0 && c.is_finite()) {
                return bad(format!("{name} {c} must be finite and >= 0"));
            }
        }
        if self.hidden_l2 > MAX_HIDDEN_L2 {
            return bad(format!("hidden_l2 {} is above {MAX_HIDDEN_L2}", self.hidden_l2));
        }
        Ok(())
    }
}

/// Everything a distillation loss evaluation produced (mirrors [`crate::qwen3::LossOutput`]).
pub struct DistillOutput {
    /// Scalar objective `kl_coef·kl + ce_coef·ce + hidden_l2·L2 + lb_coef·lb + z_coef·z` (what
    /// backward starts from).
    pub loss: Tensor,
    /// Mean `tau² · KL(p_t ‖ p_s)` over counted rows.
    pub kl: f32,
    /// Mean student cross-entropy.
    pub ce: f32,
    /// Mean `‖h_s − h_t‖² / D` over counted rows (0 when the hidden widths differ).
    pub hidden_l2: f32,
    /// Load-balance loss, mean over MoE layers (0 for dense).
    pub lb: f32,
    /// Router z-loss, mean over MoE layers (0 for dense).
    pub z: f32,
    /// Tokens that counted (targets other than `-100`).
    pub count: usize,
    /// Per-row student cross-entropy `[B*T]` (0 for ignored rows).
    pub row_losses: Vec<f32>,
    /// Per-row `tau² · KL` `[B*T]` (0 for ignored rows).
    pub row_kl: Vec<f32>,
    /// Router statistics per MoE layer of the student.
    pub router: Vec<RouterStats>,
    /// The student's router input of each MoE layer `[B*T, D]`.
    pub router_inputs: Vec<Tensor>,
}

/// The teacher's final normalised hidden states `[B*T, Dt]` (inference tape on `on`: a device,
/// or a [`autograd::Compute`] with its GEMM precision; evaluation mode), the input
/// [`distill_loss`] expects.
pub fn teacher_hidden(teacher: &Qwen3, batch: &TokenBatch, on: impl Into<autograd::Compute>) -> Result<Vec<f32>> {
    let on = on.into();
    let tape = Tape::inference_on(on).map_err(ag)?;
    let p = teacher.bind(&tape);
    let fwd = ForwardOptions::eval().on(on.device).at(on.precision);
    let (hidden, _) = teacher.forward_hidden(&tape, &p, batch, &fwd)?;
    Ok(hidden.to_vec())
}

/// The teacher's LM head `[V, Dt]` (the embedding when tied), as an untracked tensor.
fn teacher_head(teacher: &Qwen3) -> Result<Tensor> {
    let name = if teacher.config.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    teacher.params.get(name).map_err(ag)
}

/// Distillation objective of `student` (bound as `bound` on `tape`, run under `fwd`) on `batch` against the
/// teacher's precomputed final hidden states `teacher_hidden [B*T, Dt]` and the teacher's LM
/// head. `targets [B*T]` are the next tokens (`-100` = ignore; ignored rows count in no term).
/// Terms whose coefficient is 0 are still reported but computed without gradient.
#[allow(clippy::too_many_arguments)]
pub fn distill_loss(
    student: &Qwen3,
    tape: &Tape,
    bound: &Bound,
    teacher_hidden: &[f32],
    teacher: &Qwen3,
    batch: &TokenBatch,
    targets: &[i32],
    fwd: &ForwardOptions,
    opts: &DistillOptions,
) -> Result<DistillOutput> {
    opts.validate()?;
    let (n, d, dt) = (batch.rows(), student.config.hidden_size, teacher.config.hidden_size);
    if student.config.vocab_size != teacher.config.vocab_size {
        return Err(ModelError::Invalid(format!(
            "student vocabulary {} differs from the teacher's {}",
            student.config.vocab_size, teacher.config.vocab_size
        )));
    }
    if teacher_hidden.len() != n * dt {
        return Err(ModelError::Invalid(format!(
            "teacher hidden states hold {} values, expected {n} rows x {dt}",
            teacher_hidden.len()
        )));
    }
    if opts.hidden_l2 > 0.0 && d != dt {
        return Err(ModelError::Invalid(format!("hidden_l2 needs equal hidden widths, student {d} vs teacher {dt}")));
    }
    let (hidden, aux) = student.forward_hidden(tape, bound, batch, fwd)?;
    let h_t = Tensor::from_vec(teacher_hidden.to_vec(), &[n, dt]);
    let w_t = teacher_head(teacher)?;
    // Terms with weight 0 run on an inference tape: reported, never differentiated.
    let off = Tape::inference_on(tape.compute()).map_err(ag)?;
    let tape_for = |coef: f32| if coef > 0.0 { tape } else { &off };

    let kd = ops::lm_head_distill(tape_for(opts.kl_coef), &hidden, &bound.lm_head, &h_t, &w_t, targets, opts.tau)
        .map_err(ag)?;
    let ce = ops::lm_head_cross_entropy(tape_for(opts.ce_coef), &hidden, &bound.lm_head, targets).map_err(ag)?;
    let l2 = if d == dt {
        Some(ops::hidden_l2(tape_for(opts.hidden_l2), &hidden, &h_t, targets).map_err(ag)?)
    } else {
        None
    };

    let (kl, ce_value, l2_value) = (kd.loss.item(), ce.loss.item(), l2.as_ref().map_or(0.0, Tensor::item));
    let mut loss = Tensor::zeros(&[]);
    for (term, coef) in [(Some(&kd.loss), opts.kl_coef), (Some(&ce.loss), opts.ce_coef), (l2.as_ref(), opts.hidden_l2)]
    {
        if let (Some(term), true) = (term, coef > 0.0) {
            loss = ops::add_scaled(tape, &loss, term, coef).map_err(ag)?;
        }
    }
    let (loss, lb, z) = student.add_router_losses(tape, loss, &aux, &fwd.router)?;
    Ok(DistillOutput {
        loss,
        kl,
        ce: ce_value,
        hidden_l2: l2_value,
        lb,
        z,
        count: ce.count,
        row_losses: ce.row_losses,
        row_kl: kd.row_kl,
        router_inputs: aux.iter().map(|a| a.input.clone()).collect(),
        router: aux.into_iter().map(|a| a.stats).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Qwen3Config;
    use crate::init::qwen3_init;
    use crate::moe_spec::MoeSpec;
    use crate::router_training::RouterTraining;
    use autograd::ops::RouterWeighting;
    use autograd::{DType, Device};
    use kernels_cpu::check::to_f64;
    use kernels_cpu::cross_entropy::{cross_entropy_naive, IGNORE_INDEX};
    use kernels_cpu::distill::{hidden_l2_naive, kl_naive};

    const V: usize = 41;

    fn config(tied: bool) -> Qwen3Config {
        let json = format!(
            r#"{{"model_type": "qwen3", "vocab_size": {V}, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                "max_position_embeddings": 64, "tie_word_embeddings": {tied}, "rope_theta": 10000.0}}"#
        );
        Qwen3Config::from_json(&json, std::path::Path::new("tiny.json")).unwrap()
    }

    fn spec() -> MoeSpec {
        MoeSpec { num_experts: 4, expert_width: 6, shared_width: 8, weighting: RouterWeighting::Ste }
    }

    /// Evaluation-mode forward with the router losses weighted `lb_coef`, `z_coef`.
    fn fwd(lb_coef: f32, z_coef: f32) -> ForwardOptions {
        ForwardOptions {
            router: RouterTraining { lb_coef, z_coef, ..RouterTraining::eval() },
            ..ForwardOptions::eval()
        }
    }

    /// A tiny random model; std 0.3 so the logits are O(1) and the KL is not trivially small.
    fn model(moe: Option<MoeSpec>, tied: bool, seed: u64) -> Qwen3 {
        Qwen3::from_init(config(tied), moe, DType::F32, qwen3_init(seed, 0.3))
    }

    fn batch() -> (TokenBatch, Vec<i32>) {
        let ids: Vec<u32> = (0..2 * 9).map(|i| ((i * 17 + 5) % V) as u32).collect();
        let targets =
            (0..18).map(|i| if i % 9 == 8 || i == 4 { IGNORE_INDEX } else { ((i * 7 + 3) % V) as i32 }).collect();
        (TokenBatch::new(ids, 2, 9).unwrap(), targets)
    }

    /// The objective evaluated on an inference tape.
    fn eval_loss(student: &Qwen3, teacher: &Qwen3, f: &ForwardOptions, opts: &DistillOptions) -> DistillOutput {
        let (b, t) = batch();
        let th = teacher_hidden(teacher, &b, Device::Cpu).unwrap();
        let tape = Tape::inference();
        distill_loss(student, &tape, &student.bind(&tape), &th, teacher, &b, &t, f, opts).unwrap()
    }

    /// The objective and its flat gradient over the student's parameters.
    fn loss_and_grads(
        student: &Qwen3,
        teacher: &Qwen3,
        f: &ForwardOptions,
        opts: &DistillOptions,
    ) -> (DistillOutput, Vec<f32>) {
        let (b, t) = batch();
        let th = teacher_hidden(teacher, &b, Device::Cpu).unwrap();
        let tape = Tape::new();
        let bound = student.bind(&tape);
        let out = distill_loss(student, &tape, &bound, &th, teacher, &b, &t, f, opts).unwrap();
        let mut grads = tape.backward(&out.loss);
        let flat = student.params.flat_grads_at(&bound.leaves, &mut grads);
        (out, flat)
    }

    #[test]
    fn identical_teacher_gives_zero_kl_and_zero_gradient() {
        // Router loss weights 0, so the whole objective is the KL.
        let student = model(Some(spec()), false, 1);
        let teacher = student.clone();
        let opts = DistillOptions { tau: 2.0, ..Default::default() };
        let (out, g) = loss_and_grads(&student, &teacher, &fwd(0.0, 0.0), &opts);
        let worst = g.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("teacher == student: kl {:.2e}, max |grad| {worst:.2e}", out.kl);
        // Same kernels on the same inputs: zero up to rounding (tolerance 1e-6).
        assert!(out.kl.abs() <= 1e-6 && out.loss.item().abs() <= 1e-6, "kl {}", out.kl);
        assert!(worst <= 1e-6, "max |grad| {worst:.3e}");
        assert!(out.ce > 0.0 && out.count == 15 && out.hidden_l2 == 0.0);
        // A different teacher gives a positive KL and a gradient.
        let (out, g) = loss_and_grads(&student, &model(None, false, 2), &fwd(0.0, 0.0), &opts);
        assert!(out.kl > 0.05 && g.iter().any(|&x| x.abs() > 1e-4), "kl {}", out.kl);
    }

    #[test]
    fn loss_matches_naive_computation_from_materialised_logits() {
        let (b, t) = batch();
        for (tied, tau) in [(false, 2.0f32), (true, 0.8)] {
            let student = model(Some(spec()), tied, 3);
            let f = fwd(0.02, 1e-3);
            let teacher = model(None, !tied, 4);
            let opts = DistillOptions { tau, kl_coef: 0.7, ce_coef: 0.5, hidden_l2: 0.05 };
            let out = eval_loss(&student, &teacher, &f, &opts);
            let (zs, zt) = (to_f64(&student.logits(&b).unwrap()), to_f64(&teacher.logits(&b).unwrap()));
            let count = t.iter().filter(|&&x| x != IGNORE_INDEX).count() as f64;
            let mean = |rows: Vec<f64>| rows.iter().sum::<f64>() / count;
            let kl = mean(kl_naive(&zs, &zt, &t, V, tau as f64));
            let ce = mean(cross_entropy_naive(&zs, &t, V));
            let hs = to_f64(&teacher_hidden(&student, &b, Device::Cpu).unwrap());
            let ht = to_f64(&teacher_hidden(&teacher, &b, Device::Cpu).unwrap());
            let l2 = mean(hidden_l2_naive(&hs, &ht, &t, 16));
            // The router losses come from the same forward as Qwen3::loss's.
            let tape = Tape::inference();
            let ref_loss = student.loss(&tape, &student.bind(&tape), &b, &t, &f).unwrap();
            assert_eq!((out.lb, out.z, out.count), (ref_loss.lb, ref_loss.z, ref_loss.count));
            assert_eq!(out.row_losses, ref_loss.row_losses);
            let want = 0.7 * kl + 0.5 * ce + 0.05 * l2 + 0.02 * out.lb as f64 + 1e-3 * out.z as f64;
            let rel = |got: f32, want: f64| (got as f64 - want).abs() / want.abs();
            let errs = [rel(out.kl, kl), rel(out.ce, ce), rel(out.hidden_l2, l2), rel(out.loss.item(), want)];
            eprintln!(
                "tied {tied} tau {tau}: kl {kl:.4} ce {ce:.4} l2 {l2:.4}; rel errs (kl, ce, l2, total) {:?}",
                errs.map(|e| format!("{e:.2e}"))
            );
            // Tolerance: 1e-5 relative for each term and the total.
            assert!(errs.iter().all(|&e| e <= 1e-5), "relative errors {errs:?}");
            assert!(kl > 0.05 && l2 > 0.05 && out.lb > 0.0, "trivial test data");
        }
    }

    #[test]
    fn gradient_matches_finite_differences_along_a_direction() {
        // Parameters after the last router (so a perturbation cannot flip a routing decision):
        // final norm, untied LM head, last layer's shared and routed experts.
        let student = model(Some(spec()), false, 5);
        let teacher = model(None, false, 6);
        let opts = DistillOptions { tau: 1.5, kl_coef: 1.0, ce_coef: 0.3, hidden_l2: 0.1 };
        let f = fwd(0.02, 1e-3);
        let (_, g) = loss_and_grads(&student, &teacher, &f, &opts);
        let last = student.config.num_hidden_layers - 1;
        let picked: Vec<_> = student
            .params
            .entries()
            .iter()
            .filter(|e| {
                e.name == "model.norm.weight"
                    || e.name == "lm_head.weight"
                    || e.name.starts_with(&format!("model.layers.{last}.mlp.experts."))
                    || e.name.starts_with(&format!("model.layers.{last}.mlp.shared_experts."))
            })
            .map(|e| (e.offset, e.numel()))
            .collect();
        assert_eq!(picked.len(), 2 + 3 + 4 * 3);
        // Direction: the gradient itself on the picked tensors, scaled to max |u| = 1, plus a
        // random part so that wrong-sign or missing entries cannot hide.
        let mut dir = vec![0f32; student.params.numel()];
        let r = kernels_cpu::check::rand_vec(dir.len(), 9);
        let gmax = picked.iter().flat_map(|&(o, len)| &g[o..o + len]).fold(0f32, |m, x| m.max(x.abs()));
        for &(o, len) in &picked {
            for i in o..o + len {
                dir[i] = g[i] / gmax + 0.1 * r[i];
            }
        }
        let analytic: f64 = g.iter().zip(&dir).map(|(&a, &b)| a as f64 * b as f64).sum();
        let at = |eps: f32| {
            let mut m = student.clone();
            let flat = m.params.flat_mut().unwrap();
            flat.iter_mut().zip(&dir).for_each(|(p, &u)| *p += eps * u);
            eval_loss(&m, &teacher, &f, &opts).loss.item() as f64
        };
        // h = 3e-3 balances truncation (O(h²), 4e-5 relative at h = 1e-2) and f32 rounding.
        let h = 3e-3f32;
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        let rel = (fd - analytic).abs() / analytic.abs();
        eprintln!("directional derivative: analytic {analytic:.6}, f32 central difference {fd:.6}, rel err {rel:.2e}");
        // Tolerance: 2e-4 relative (f32 forward, central differences with h = 3e-3).
        assert!(rel <= 2e-4, "analytic {analytic} vs finite differences {fd}: rel err {rel:.3e}");
        // Coordinates outside the picked tensors get gradients too (earlier layers), but no
        // gradient is NaN.
        assert!(g.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn bad_options_and_inputs_are_invalid() {
        let good = DistillOptions { tau: 1.0, kl_coef: 1.0, ce_coef: 0.5, hidden_l2: 0.1 };
        assert!(good.validate().is_ok());
        let bad = [
            DistillOptions { tau: 0.0, ..good },
            DistillOptions { tau: -1.0, ..good },
            DistillOptions { tau: f32::NAN, ..good },
            DistillOptions { kl_coef: -0.1, ..good },
            DistillOptions { ce_coef: f32::INFINITY, ..good },
            DistillOptions { hidden_l2: 0.11, ..good },
            DistillOptions { hidden_l2: -0.01, ..good },
        ];
        for o in bad {
            assert!(matches!(o.validate(), Err(ModelError::Invalid(_))), "{o:?} accepted");
        }
        let student = model(Some(spec()), false, 1);
        let teacher = model(None, false, 2);
        let (b, t) = batch();
        let th = teacher_hidden(&teacher, &b, Device::Cpu).unwrap();
        let tape = Tape::new();
        let bound = student.bind(&tape);
        let run = fwd(0.0, 0.0);
        let call = |th: &[f32], teacher: &Qwen3, t: &[i32], o: &DistillOptions| {
            distill_loss(&student, &tape, &bound, th, teacher, &b, t, &run, o).err()
        };
        assert!(call(&th, &teacher, &t, &good).is_none());
        assert!(matches!(call(&th, &teacher, &t, &DistillOptions { tau: 0.0, ..good }), Some(ModelError::Invalid(_))));
        assert!(matches!(call(&th[1..], &teacher, &t, &good), Some(ModelError::Invalid(_))));
        assert!(matches!(call(&th, &teacher, &t[1..], &good), Some(ModelError::Invalid(_))));
        let mut bad_t = t.clone();
        bad_t[0] = V as i32;
        assert!(matches!(call(&th, &teacher, &bad_t, &good), Some(ModelError::Invalid(_))));
        let mut wide = config(false);
        wide.hidden_size = 24;
        let wide = Qwen3::from_init(wide, None, DType::F32, qwen3_init(7, 0.3));
        let wide_h = teacher_hidden(&wide, &b, Device::Cpu).unwrap();
        assert!(matches!(call(&wide_h, &wide, &t, &good), Some(ModelError::Invalid(_))));
        // Different widths are fine without the hidden-state term.
        let no_l2 = DistillOptions { hidden_l2: 0.0, ..good };
        assert!(call(&wide_h, &wide, &t, &no_l2).is_none());
        let mut other_vocab = config(false);
        other_vocab.vocab_size = V + 1;
        let other = Qwen3::from_init(other_vocab, None, DType::F32, qwen3_init(8, 0.3));
        assert!(matches!(call(&th, &other, &t, &no_l2), Some(ModelError::Invalid(_))));
    }
}
