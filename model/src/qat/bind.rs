//! The QAT forward: the parameters bound as tape leaves as usual ([`Qwen3::bind`]), then every
//! fused weight that holds a fake-quantized tensor replaced by its fake quantization
//! (`autograd::ops::fake_quant_segments`: the other parts of the fused weight pass through), with
//! the steps and mins as leaves of their own. The latent weights receive straight-through
//! gradients, the steps and mins LSQ gradients ([`qat_gradient`]).

use super::state::QatState;
use crate::error::{ModelError, Result};
use crate::qwen3::{ag, Bound, FfnTensors, Qwen3};
use autograd::ops::{fake_quant_segments, FakeQuantSegment};
use autograd::{profile, Compute, Tape, Tensor};
use std::collections::BTreeMap;

/// The step and min leaves of one forward: `(tensor name, step, min)`.
pub type QatLeaves = Vec<(String, Tensor, Option<Tensor>)>;

/// Gradients of the QAT parameters by tensor name: `(d step, d min)` (d min empty for the
/// symmetric formats).
pub type QatGrads = BTreeMap<String, (Vec<f32>, Vec<f32>)>;

/// `leaf` (the fused parameters `names`, consecutive in the table) with its fake-quantized parts
/// quantized.
fn wrap(
    tape: &Tape,
    leaf: &Tensor,
    names: &[String],
    model: &Qwen3,
    qat: &QatState,
    out: &mut QatLeaves,
) -> Result<Tensor> {
    let offset = |n: &str| model.params.entry(n).map(|e| e.offset).map_err(ag);
    let base = offset(&names[0])?;
    let mut segs = Vec::new();
    for name in names {
        let Some(q) = qat.tensors.get(name) else { continue };
        let step = tape.leaf(&Tensor::from_vec(q.step.clone(), &[q.step.len()]));
        let min = q.dims.has_min().then(|| tape.leaf(&Tensor::from_vec(q.min.clone(), &[q.min.len()])));
        segs.push(FakeQuantSegment {
            offset: offset(name)? - base,
            dims: q.dims,
            step: step.clone(),
            min: min.clone(),
        });
        out.push((name.clone(), step, min));
    }
    if segs.is_empty() {
        return Ok(leaf.clone());
    }
    fake_quant_segments(tape, leaf, &segs).map_err(ag)
}

/// Binds `model` on `tape` with the tensors of `qat` fake-quantized; returns the bound tensors
/// (their `leaves` are the latent weights) and the QAT leaves.
pub fn bind_qat(model: &Qwen3, tape: &Tape, qat: &QatState) -> Result<(Bound, QatLeaves)> {
    for name in qat.tensors.keys() {
        if name.ends_with("mlp.gate.weight") || name.contains("norm") {
            return Err(ModelError::Invalid(format!("`{name}` (router or norm) cannot be fake-quantized")));
        }
    }
    let mut b = model.bind(tape);
    let mut leaves = QatLeaves::new();
    let n = |i: usize, s: &str| format!("model.layers.{i}.{s}.weight");
    let embed = vec!["model.embed_tokens.weight".to_string()];
    b.embed = wrap(tape, &b.embed, &embed, model, qat, &mut leaves)?;
    b.lm_head = if model.config.tie_word_embeddings {
        b.embed.clone()
    } else {
        wrap(tape, &b.lm_head, &["lm_head.weight".to_string()], model, qat, &mut leaves)?
    };
    for (i, l) in b.layers.iter_mut().enumerate() {
        let qkv = [n(i, "self_attn.q_proj"), n(i, "self_attn.k_proj"), n(i, "self_attn.v_proj")];
        l.qkv = wrap(tape, &l.qkv, &qkv, model, qat, &mut leaves)?;
        l.o = wrap(tape, &l.o, &[n(i, "self_attn.o_proj")], model, qat, &mut leaves)?;
        match &mut l.ffn {
            FfnTensors::Dense { gate_up, down } => {
                *gate_up = wrap(tape, gate_up, &[n(i, "mlp.gate_proj"), n(i, "mlp.up_proj")], model, qat, &mut leaves)?;
                *down = wrap(tape, down, &[n(i, "mlp.down_proj")], model, qat, &mut leaves)?;
            }
            FfnTensors::Moe { shared, experts, .. } => {
                if let Some((gu, down)) = shared {
                    let names = [n(i, "mlp.shared_experts.gate_proj"), n(i, "mlp.shared_experts.up_proj")];
                    *gu = wrap(tape, gu, &names, model, qat, &mut leaves)?;
                    *down = wrap(tape, down, &[n(i, "mlp.shared_experts.down_proj")], model, qat, &mut leaves)?;
                }
                let e = model.moe.as_ref().map_or(0, |m| m.num_experts);
                let names: Vec<String> = (0..e)
                    .flat_map(|x| ["gate_proj", "up_proj", "down_proj"].map(|k| n(i, &format!("mlp.experts.{x}.{k}"))))
                    .collect();
                *experts = wrap(tape, experts, &names, model, qat, &mut leaves)?;
            }
        }
    }
    let bound: std::collections::BTreeSet<&str> = leaves.iter().map(|(n, _, _)| n.as_str()).collect();
    if let Some(missing) = qat.tensors.keys().find(|k| !bound.contains(k.as_str())) {
        return Err(ModelError::Invalid(format!("QAT tensor `{missing}` is not a weight of this model")));
    }
    Ok((b, leaves))
}

/// [`Qwen3::gradient`] of the QAT model: the objective's value, the caller's extra, the flat
/// gradient of the latent weights (layout of `model.params`) and the gradients of the steps and
/// mins. Runs on a worker of the rayon pool.
pub fn qat_gradient<T: Send>(
    model: &Qwen3,
    qat: &QatState,
    on: impl Into<Compute>,
    objective: impl FnOnce(&Tape, &Bound) -> Result<(Tensor, T)> + Send,
) -> Result<(f32, T, Vec<f32>, QatGrads)> {
    let on = on.into();
    kernels_cpu::pool::on_pool(|| {
        let tape = Tape::new_on(on).map_err(ag)?;
        let (bound, leaves) = bind_qat(model, &tape, qat)?;
        let (loss, extra) = objective(&tape, &bound)?;
        let value = loss.item();
        let mut grads = tape.backward(&loss);
        let flat = profile::stage("flatten_grads", || model.params.flat_grads_at(&bound.leaves, &mut grads));
        let mut qg = QatGrads::new();
        for (name, s, m) in leaves {
            let ds = grads.remove(&s).unwrap_or_else(|| vec![0.0; s.numel()]);
            let dm = m.map(|m| grads.remove(&m).unwrap_or_else(|| vec![0.0; m.numel()])).unwrap_or_default();
            qg.insert(name, (ds, dm));
        }
        Ok((value, extra, flat, qg))
    })
}
