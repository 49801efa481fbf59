//! One routed expert beside the shared expert as a dense `Qwen3ForCausalLM` ("named experts"):
//! `moe-cli export expert --expert e`.
//!
//! Every layer's FFN becomes the shared expert and routed expert `e` concatenated along the
//! intermediate dimension: `gate_proj = [gate_s; gate_e]` and `up_proj = [up_s; up_e]`
//! (`[S + W, D]`), `down_proj = [down_s | down_e]` (`[D, S + W]`). A SwiGLU FFN is a sum over its
//! neurons, so the dense FFN computes `shared(x) + expert_e(x)`, which is the MoE FFN of a token
//! routed to `e` exactly when the routed output's weight is 1 in value: router weighting `ste`
//! (weight 1, straight-through gradient) and `sigmoid` (the same). Under `prob` the routed output
//! is scaled by the softmax probability of the token, which no dense weight can fold, so such
//! models are refused. The router and its aux-loss-free bias only decide *which* expert a token
//! takes and are dropped.
//!
//! Which logits match: attention mixes a position with the positions before it, so the dense
//! model's logits at position `t` equal the MoE's exactly when every token of `t`'s document up to
//! and including `t` was routed to `e` in every layer ([`routed_prefix`]). Elsewhere the dense
//! model is the specialist's answer, not the MoE's. Tensors other than the FFNs are copied
//! unchanged; the storage dtype is the model's when it has one (concatenation is exact in it).

use super::export_qwen3;
use crate::error::{ModelError, Result};
pub use crate::named_experts::route_choices;
use crate::qwen3::{ag, Qwen3};
use crate::safetensors_io::FileDType;
use autograd::ops::RouterWeighting;
use autograd::DType;
use std::path::{Path, PathBuf};

/// The dense Qwen3 of the shared expert and routed expert `expert` of the MoE `model`.
///
/// Errors: a dense model, an expert index outside `0..E`, router weighting `prob`.
pub fn expert_as_dense(model: &Qwen3, expert: usize) -> Result<Qwen3> {
    let m = model.moe.as_ref().ok_or_else(|| {
        ModelError::Unsupported("export expert needs a MoE model; this model is dense (export it as qwen3)".into())
    })?;
    if expert >= m.num_experts {
        return Err(ModelError::Invalid(format!(
            "--expert {expert}: the model has {} routed experts (0..={})",
            m.num_experts,
            m.num_experts - 1
        )));
    }
    if m.weighting == RouterWeighting::Prob {
        return Err(ModelError::Unsupported(
            "router weighting `prob` scales the routed expert's output by the token's softmax probability, which \
             a dense FFN cannot fold; only `ste` and `sigmoid` models (routed weight 1) export one expert exactly"
                .into(),
        ));
    }
    let c = &model.config;
    let (d, s, w) = (c.hidden_size, m.shared_width, m.expert_width);
    let mut config = c.clone();
    config.intermediate_size = s + w;
    for k in ["moe", "architectures"] {
        config.raw.remove(k);
    }
    config.raw.insert("model_type".into(), "qwen3".into());
    let flat = model.params.flat();
    let get = |name: &str| -> Result<&[f32]> {
        let e = model.params.entry(name).map_err(ag)?;
        Ok(&flat[e.offset..e.offset + e.numel()])
    };
    let mut dense = Qwen3::from_init(config, None, DType::F32, |_, n| vec![0.0; n]);
    let names: Vec<String> = dense.params.entries().iter().map(|e| e.name.clone()).collect();
    for name in &names {
        let ffn = |suffix: &str| name.strip_suffix(suffix).map(|layer| layer.to_string());
        let values: Vec<f32> = if let Some(layer) = ffn(".mlp.down_proj.weight") {
            let shared: &[f32] =
                if s > 0 { get(&format!("{layer}.mlp.shared_experts.down_proj.weight"))? } else { &[] };
            let routed = get(&format!("{layer}.mlp.experts.{expert}.down_proj.weight"))?;
            // [D, S] | [D, W] -> [D, S + W], row by row.
            (0..d).flat_map(|r| shared[r * s..(r + 1) * s].iter().chain(&routed[r * w..(r + 1) * w])).copied().collect()
        } else if let Some((layer, proj)) = ffn(".mlp.gate_proj.weight")
            .map(|l| (l, "gate_proj"))
            .or_else(|| ffn(".mlp.up_proj.weight").map(|l| (l, "up_proj")))
        {
            // [S, D] ; [W, D] -> [S + W, D].
            let mut v = Vec::with_capacity((s + w) * d);
            if s > 0 {
                v.extend_from_slice(get(&format!("{layer}.mlp.shared_experts.{proj}.weight"))?);
            }
            v.extend_from_slice(get(&format!("{layer}.mlp.experts.{expert}.{proj}.weight"))?);
            v
        } else {
            get(name)?.to_vec()
        };
        dense.params.set(name, &values).map_err(ag)?;
    }
    let dtype = super::export_dtype(model);
    dense.file_dtypes = names.into_iter().map(|n| (n, dtype)).collect::<Vec<(String, FileDType)>>();
    Ok(dense)
}

/// Writes shared expert + routed expert `expert` of `model` as HF `Qwen3ForCausalLM` into the new
/// directory `out` (config.json + model.safetensors, atomically) and returns the files written.
pub fn export_expert(model: &Qwen3, expert: usize, out: &Path) -> Result<Vec<PathBuf>> {
    super::check_out(out)?;
    export_qwen3(&expert_as_dense(model, expert)?, out)
}

/// Positions (`[B*T]`, rows of `t` tokens, documents by `seg` when given) whose logits the dense
/// export of `expert` reproduces: the token and every earlier token of its document were routed
/// to `expert` in every layer (`choices [L][B*T]` from [`route_choices`]).
pub fn routed_prefix(choices: &[Vec<u32>], t: usize, seg: Option<&[u32]>, expert: u32) -> Vec<bool> {
    let n = choices.first().map_or(0, Vec::len);
    let mut out = vec![false; n];
    let mut ok = false;
    for j in 0..n {
        let starts = j % t == 0 || seg.is_some_and(|s| s[j] != s[j - 1]);
        let here = choices.iter().all(|c| c[j] == expert);
        ok = here && (starts || ok);
        out[j] = ok;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_prefix_follows_documents_and_layers() {
        // 2 layers, rows of 4, second row two documents.
        let l0 = vec![1, 1, 0, 1, 1, 1, 1, 1];
        let l1 = vec![1, 1, 1, 1, 1, 0, 1, 1];
        let seg = [0, 0, 0, 0, 1, 1, 2, 2];
        let got = routed_prefix(&[l0.clone(), l1.clone()], 4, Some(&seg), 1);
        assert_eq!(got, [true, true, false, false, true, false, true, true]);
        let got = routed_prefix(&[l0, l1], 4, None, 1);
        assert_eq!(got, [true, true, false, false, true, false, false, false]);
    }
}
