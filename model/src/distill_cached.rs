//! Phase p0's objective from a teacher logit cache ([`crate::logit_cache`]) instead of a live
//! teacher: `kl_coef · KD_k + ce_coef · CE + lb_coef · lb + z_coef · z`, where `KD_k` is the mean
//! over counted rows of `tau² · KL` over the teacher's cached top-k tokens plus one tail bucket
//! (`autograd::ops::lm_head_topk_distill`). The hidden-state L2 term needs the teacher's hidden
//! states, which a cache does not hold, so it is refused.

use crate::batch::TokenBatch;
use crate::distill::{DistillOptions, DistillOutput};
use crate::error::{ModelError, Result};
use crate::logit_cache::CachedRows;
use crate::qwen3::{ag, Bound, ForwardOptions, Qwen3};
use autograd::ops::{self, CachedTeacher};
use autograd::{Tape, Tensor};

/// The distillation objective of `student` on `batch` against the cached teacher rows `teacher`
/// (`[B*T, k]` ids and logits, `[B*T]` log-sum-exps at `opts.tau`).
#[allow(clippy::too_many_arguments)]
pub fn distill_loss_cached(
    student: &Qwen3,
    tape: &Tape,
    bound: &Bound,
    teacher: &CachedRows,
    batch: &TokenBatch,
    targets: &[i32],
    fwd: &ForwardOptions,
    opts: &DistillOptions,
) -> Result<DistillOutput> {
    opts.validate()?;
    if opts.hidden_l2 > 0.0 {
        return Err(ModelError::Invalid(
            "distill options: hidden_l2 needs the teacher's hidden states, which a logit cache does not hold".into(),
        ));
    }
    let n = batch.rows();
    if teacher.lse.len() != n {
        return Err(ModelError::Invalid(format!("teacher cache rows: {} for a batch of {n}", teacher.lse.len())));
    }
    let (hidden, aux) = student.forward_hidden(tape, bound, batch, fwd)?;
    let off = Tape::inference_on(tape.compute()).map_err(ag)?;
    let tape_for = |coef: f32| if coef > 0.0 { tape } else { &off };
    let cached = CachedTeacher { ids: &teacher.ids, logits: &teacher.logits, lse: &teacher.lse };
    let kd = ops::lm_head_topk_distill(tape_for(opts.kl_coef), &hidden, &bound.lm_head, cached, targets, opts.tau)
        .map_err(ag)?;
    let ce = ops::lm_head_cross_entropy(tape_for(opts.ce_coef), &hidden, &bound.lm_head, targets).map_err(ag)?;
    let (kl, ce_value) = (kd.loss.item(), ce.loss.item());
    let mut loss = Tensor::zeros(&[]);
    for (term, coef) in [(&kd.loss, opts.kl_coef), (&ce.loss, opts.ce_coef)] {
        if coef > 0.0 {
            loss = ops::add_scaled(tape, &loss, term, coef).map_err(ag)?;
        }
    }
    let (loss, lb, z) = student.add_router_losses(tape, loss, &aux, &fwd.router)?;
    Ok(DistillOutput {
        loss,
        kl,
        ce: ce_value,
        hidden_l2: 0.0,
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
    use crate::distill::{distill_loss, teacher_hidden};
    use crate::init::qwen3_init;
    use crate::logit_cache::teacher_topk;
    use crate::moe_spec::MoeSpec;
    use autograd::ops::RouterWeighting;
    use autograd::{DType, Device};

    #[test]
    fn with_k_equal_to_the_vocabulary_it_is_the_live_teacher_objective() {
        let v = 29;
        let json = format!(
            r#"{{"model_type": "qwen3", "vocab_size": {v}, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                "max_position_embeddings": 64}}"#
        );
        let config = Qwen3Config::from_json(&json, std::path::Path::new("t.json")).unwrap();
        let spec = MoeSpec { num_experts: 4, expert_width: 6, shared_width: 8, weighting: RouterWeighting::Ste };
        let student = Qwen3::from_init(config.clone(), Some(spec), DType::F32, qwen3_init(1, 0.3));
        let teacher = Qwen3::from_init(config, None, DType::F32, qwen3_init(2, 0.3));
        let batch = TokenBatch::new((0..18).map(|i| (i * 5 % v) as u32).collect(), 2, 9).unwrap();
        let targets: Vec<i32> = (0..18).map(|i| if i % 9 == 8 { -100 } else { (i * 3 % v) as i32 }).collect();
        let opts = DistillOptions { tau: 1.5, kl_coef: 1.0, ce_coef: 0.25, hidden_l2: 0.0 };
        let fwd = ForwardOptions::eval();
        let grads = |cached: Option<&CachedRows>| {
            let th = teacher_hidden(&teacher, &batch, Device::Cpu).unwrap();
            student
                .gradient(Device::Cpu, |tape, bound| {
                    let o = match cached {
                        Some(c) => distill_loss_cached(&student, tape, bound, c, &batch, &targets, &fwd, &opts)?,
                        None => distill_loss(&student, tape, bound, &th, &teacher, &batch, &targets, &fwd, &opts)?,
                    };
                    Ok((o.loss, o.kl))
                })
                .unwrap()
        };
        let full = teacher_topk(&teacher, &batch, v, opts.tau).unwrap();
        let (live, live_kl, g_live) = grads(None);
        let (cached, cached_kl, g_cached) = grads(Some(&full));
        assert!((live - cached).abs() < 1e-5 && (live_kl - cached_kl).abs() < 1e-5, "{live} {cached}");
        let err = kernels_cpu::check::rel_norm_err(&g_cached, &g_live);
        assert!(err < 1e-4, "gradient rel err {err}");
        // Top-5 with the tail bucket: a lower bound of the full KL (merging buckets loses information).
        let top5 = teacher_topk(&teacher, &batch, 5, opts.tau).unwrap();
        let (_, kl5, _) = grads(Some(&top5));
        assert!(kl5 <= live_kl + 1e-6 && kl5 > 0.0, "top-5 KL {kl5} vs full {live_kl}");
        let e = distill_loss_cached(
            &student,
            &Tape::inference(),
            &student.bind(&Tape::inference()),
            &top5,
            &batch,
            &targets,
            &fwd,
            &DistillOptions { hidden_l2: 0.05, ..opts },
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("hidden_l2"), "{e}");
    }
}
