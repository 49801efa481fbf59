//! A medmoe MoE model as Hugging Face `Dots1ForCausalLM` (config.json + model.safetensors).
//!
//! Why the function is unchanged (checked against transformers 5.23 in `tests/dots1_export.rs`):
//! - Dots1's router scores `s = sigmoid(x · Wᵣᵀ)` in f32 and picks `argmax(s + e_score_correction_bias)`
//!   (group top-k with `n_group = topk_group = 1` is plain top-k). Our `sigmoid` weighting chooses the
//!   same way; our softmax weighting (`ste`) chooses `argmax(softmax(logits / T))`, which is
//!   `argmax(logits) = argmax(sigmoid(logits))` for any temperature, when the bias is zero.
//!   (A tie, or logits so large that sigmoid rounds two of them to 1.0, can choose differently.)
//! - With top-1 and `norm_topk_prob`, the routed weight is `s / (s + 1e-20)`, which is exactly 1 in
//!   f32 for `s > 1e-13`, and `routed_scaling_factor` is 1: our weight is 1 in value too. The
//!   `prob` weighting (weight `p`) has no Dots1 equivalent and is refused.
//! - Dots1's shared expert has width `n_shared_experts * moe_intermediate_size`, so our shared
//!   width S is zero-padded to `P = ceil(S / W) * W` (at least one expert): padded rows of gate/up
//!   give `silu(0) * 0 = 0` and padded columns of down are zero, so the output is unchanged.
//! - Our evaluation is dropless; Dots1 has no capacity.
//!
//! Tensor layout: per-expert names `mlp.experts.{e}.{gate,up,down}_proj.weight`, exactly what
//! `save_pretrained` of transformers 5.23 writes for Dots1 (it fuses them on load into
//! `experts.gate_up_proj [E, 2W, D]` / `experts.down_proj [E, D, W]` through its checkpoint
//! conversion mapping, with no missing or unexpected keys) and what transformers 4.x and other
//! readers of the original checkpoints expect. `mlp.gate.e_score_correction_bias [E]` is always F32
//! (Dots1 keeps it in f32). The medmoe `moe` section is kept under the extra config key
//! [`MEDMOE_KEY`] (ignored by transformers) so loading the export back restores the exact spec.

use super::{base_config, check_out, config_text, export_dtype, values, write_export};
use crate::error::{ModelError, Result};
use crate::moe_spec::MoeSpec;
use crate::qwen3::{router_bias_name, Qwen3};
use crate::safetensors_io::{FileDType, TensorToWrite};
use autograd::ops::RouterWeighting;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Config key holding the medmoe `moe` section in a Dots1 export.
pub const MEDMOE_KEY: &str = "medmoe";

/// `(n_shared_experts, P)` for shared width `s` and expert width `w`: `ceil(s / w)` experts (at
/// least one, all zero when `s = 0`) and the padded width `P = n_shared_experts * w`.
pub fn shared_padding(s: usize, w: usize) -> (usize, usize) {
    let n = s.div_ceil(w.max(1)).max(1);
    (n, n * w)
}

/// Why `model` cannot be exported to Dots1 exactly, if it cannot; else its MoE spec.
pub(crate) fn check_exportable(model: &Qwen3) -> Result<&MoeSpec> {
    let m = model.moe.as_ref().ok_or_else(|| {
        ModelError::Unsupported(
            "the dots1 format is for MoE models and this model is dense; export it with the qwen3 format".into(),
        )
    })?;
    match m.weighting {
        RouterWeighting::Prob => {
            return Err(ModelError::Unsupported(
                "router weighting `prob` cannot be exported to Dots1 exactly: our routed expert's output is scaled by \
                 its softmax probability p, Dots1 (top-1, norm_topk_prob) scales it by exactly 1; only models with \
                 router weighting `ste` or `sigmoid` export exactly"
                    .into(),
            ))
        }
        RouterWeighting::Ste => {
            if let Some(i) = model.router_bias.iter().position(|b| b.iter().any(|&x| x != 0.0)) {
                return Err(ModelError::Unsupported(format!(
                    "layer {i} has a non-zero router bias with router weighting `ste`: we choose by softmax + bias, \
                     Dots1 by sigmoid + bias, which differ; only `sigmoid` models may carry a bias"
                )));
            }
        }
        RouterWeighting::Sigmoid => {}
    }
    if m.num_experts < 2 {
        return Err(ModelError::Unsupported(format!(
            "Dots1 needs at least 2 routed experts (its router takes the top-2 scores of a group); this model has {}",
            m.num_experts
        )));
    }
    let (l, e) = (model.config.num_hidden_layers, m.num_experts);
    if model.router_bias.len() != l || model.router_bias.iter().any(|b| b.len() != e) {
        return Err(ModelError::Invalid(format!("router bias must be [{l}][{e}] (layers x experts)")));
    }
    Ok(m)
}

/// `[rows, cols]` row-major `v` widened to `[rows, new_cols]` with zero columns on the right.
fn pad_cols(v: &[f32], rows: usize, cols: usize, new_cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * new_cols];
    if cols > 0 {
        for (o, r) in out.chunks_mut(new_cols).zip(v.chunks(cols)) {
            o[..cols].copy_from_slice(r);
        }
    }
    out
}

/// The Dots1 config.json object of `model` (spec `m`, tensors in `dtype`).
pub(crate) fn dots1_config(model: &Qwen3, m: &MoeSpec, dtype: FileDType) -> serde_json::Map<String, Value> {
    let (n_shared, _) = shared_padding(m.shared_width, m.expert_width);
    let mut c = base_config(model, dtype);
    let fields: [(&str, Value); 12] = [
        ("architectures", serde_json::json!(["Dots1ForCausalLM"])),
        ("model_type", "dots1".into()),
        ("moe_intermediate_size", m.expert_width.into()),
        ("n_routed_experts", m.num_experts.into()),
        ("n_shared_experts", n_shared.into()),
        ("num_experts_per_tok", 1.into()),
        ("norm_topk_prob", true.into()),
        ("routed_scaling_factor", 1.0.into()),
        ("n_group", 1.into()),
        ("topk_group", 1.into()),
        ("first_k_dense_replace", 0.into()),
        (MEDMOE_KEY, m.to_json()),
    ];
    for (k, v) in fields {
        c.insert(k.into(), v);
    }
    c
}

/// Writes `model` (a medmoe MoE model) as HF `Dots1ForCausalLM` into the new directory `out`
/// (config.json + model.safetensors, written atomically) and returns the files written.
///
/// Errors: a dense model, router weighting `prob`, a non-zero router bias with `ste` weighting,
/// fewer than 2 experts ([`ModelError::Unsupported`]); `out` existing ([`ModelError::Invalid`]).
pub fn export_dots1(model: &Qwen3, out: &Path) -> Result<Vec<PathBuf>> {
    check_out(out)?;
    let m = check_exportable(model)?;
    let dtype = export_dtype(model);
    let (d, s) = (model.config.hidden_size, m.shared_width);
    let (_, p) = shared_padding(s, m.expert_width);
    let mut tensors = Vec::with_capacity(model.params.entries().len() + 4 * model.config.num_hidden_layers);
    for e in model.params.entries().iter().filter(|e| !e.name.contains(".mlp.shared_experts.")) {
        tensors.push(TensorToWrite::from_f32(e.name.clone(), dtype, e.shape.clone(), &values(model, &e.name)?)?);
    }
    for (i, bias) in model.router_bias.iter().enumerate() {
        let prefix = format!("model.layers.{i}.mlp.shared_experts");
        for k in ["gate_proj", "up_proj"] {
            let name = format!("{prefix}.{k}.weight");
            let mut v = if s > 0 { values(model, &name)? } else { Vec::new() };
            v.resize(p * d, 0.0);
            tensors.push(TensorToWrite::from_f32(name, dtype, vec![p, d], &v)?);
        }
        let name = format!("{prefix}.down_proj.weight");
        let down = if s > 0 { values(model, &name)? } else { Vec::new() };
        tensors.push(TensorToWrite::from_f32(name, dtype, vec![d, p], &pad_cols(&down, d, s, p))?);
        tensors.push(TensorToWrite::from_f32(router_bias_name(i), FileDType::F32, vec![bias.len()], bias)?);
    }
    let config = config_text(dots1_config(model, m, dtype));
    write_export(out, &config, &tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_width_pads_to_whole_experts() {
        assert_eq!(shared_padding(20, 12), (2, 24));
        assert_eq!(shared_padding(24, 12), (2, 24));
        assert_eq!(shared_padding(1216, 512), (3, 1536));
        assert_eq!(shared_padding(0, 16), (1, 16));
        assert_eq!(pad_cols(&[1.0, 2.0, 3.0, 4.0], 2, 2, 3), vec![1.0, 2.0, 0.0, 3.0, 4.0, 0.0]);
        assert_eq!(pad_cols(&[], 2, 0, 2), vec![0.0; 4]);
    }
}
