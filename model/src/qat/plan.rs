//! Which of our tensors a QAT run fake-quantizes, and as what: the GGUF mask file (the one file
//! the trainer and `moe-cli export gguf --mask` share) resolved against the model's GGUF plan.
//!
//! For every GGUF tensor llama-quantize would quantize, the first mask rule matching its GGUF name
//! gives its type; F32 / F16 / BF16 rules leave it unquantized. A row length the type cannot take
//! falls back as llama-quantize does (Q5_K -> Q5_1, Q6_K -> Q8_0: the shared expert's and the
//! routed experts' down projections when their width is not a multiple of 256). Each HF tensor
//! feeding the GGUF tensor is then fake-quantized in that type, groups of `group` values along its
//! rows, its rows zero-padded to the GGUF row (the padded shared expert) as the writer pads them.
//!
//! Refused, with the reason: a rule that would quantize a tensor llama.cpp keeps in F32 (the router
//! `ffn_gate_inp`, norms, 1-D tensors); a type with no fake quantizer (Q4_K, Q4_0, or a fallback
//! to F16); a group that does not fit a tensor's rows or the format's blocks; one HF tensor asked
//! for in two types (tied embeddings with two rules).

use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::gguf::mask::{glob_match, Mask};
use crate::gguf::names::{plan, Arch, Segment};
use crate::gguf::policy::{fallback, quantizable};
use crate::moe_spec::MoeSpec;
use kernels_cpu::fake_quant::FakeQuantDims;
use kernels_cpu::quant::BlockType;
use std::collections::BTreeMap;

/// One fake-quantized HF tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QatTensorPlan {
    /// HF tensor name.
    pub name: String,
    /// Its layout: type, rows, row length (HF), group.
    pub dims: FakeQuantDims,
    /// The GGUF row length its rows are stored in (>= `dims.row_len`: zero padding).
    pub stored_row_len: usize,
    /// The GGUF tensor it goes into (messages).
    pub gguf_name: String,
}

/// The fake-quantized tensors of a model, by HF name.
pub type QatPlan = BTreeMap<String, QatTensorPlan>;

fn is_quantized(t: BlockType) -> bool {
    !matches!(t, BlockType::F32 | BlockType::F16 | BlockType::BF16)
}

/// Why llama.cpp keeps a tensor unquantized (for the refusal).
fn kept_reason(name: &str) -> &'static str {
    if name.contains("ffn_gate_inp") {
        "the router (`ffn_gate_inp`) stays F32 in every llama.cpp file and routing is sensitive to it"
    } else if name.contains("_norm.weight") {
        "norm weights stay F32 in every llama.cpp file"
    } else {
        "1-D tensors and biases stay F32 in every llama.cpp file"
    }
}

/// The QAT plan of a model with `config` / `moe`, written as `arch`, under `mask`, `group` values
/// per learnable step.
pub fn qat_plan(config: &Qwen3Config, moe: Option<&MoeSpec>, arch: Arch, mask: &Mask, group: usize) -> Result<QatPlan> {
    let field = |i: usize, msg: String| ModelError::ConfigField {
        path: mask.path.clone(),
        field: format!("[{i}].pattern"),
        msg,
    };
    let tensor_err = |t: &str, msg: String| ModelError::Tensor { path: mask.path.clone(), tensor: t.to_string(), msg };
    let mut out = QatPlan::new();
    let mut used = vec![false; mask.rules.len()];
    for t in plan(config, moe, arch) {
        let Some(i) = mask.rules.iter().position(|r| glob_match(&r.pattern, &t.name)) else { continue };
        used[i] = true;
        let rule = &mask.rules[i];
        if !is_quantized(rule.ty) {
            continue;
        }
        if !quantizable(&t.name, &t.ne) {
            return Err(field(
                i,
                format!(
                    "`{}` would quantize `{}` as {}, refused: {}; narrow the pattern (or give such tensors \
                     an f32/bf16 rule first)",
                    rule.pattern,
                    t.name,
                    rule.ty,
                    kept_reason(&t.name)
                ),
            ));
        }
        let choice = fallback(rule.ty, t.row_len()).map_err(|msg| tensor_err(&t.name, msg))?;
        let ty = choice.ty;
        for seg in &t.segments {
            let Segment::Hf { name, first_row, rows, cols } = seg else { continue };
            let dims = FakeQuantDims { ty, rows: first_row + rows, row_len: *cols, group };
            dims.check().map_err(|e| {
                tensor_err(
                    &t.name,
                    format!(
                        "rule [{i}] (`{}`): `{name}` ({} values per row{}) cannot be fake-quantized: {e}",
                        rule.pattern,
                        cols,
                        choice.fallback_from.map(|f| format!(", {f} falls back to {ty}")).unwrap_or_default()
                    ),
                )
            })?;
            let entry = out.entry(name.clone()).or_insert_with(|| QatTensorPlan {
                name: name.clone(),
                dims,
                stored_row_len: t.row_len(),
                gguf_name: t.name.clone(),
            });
            // K/V heads repeated (dots1) come back as more segments of the same tensor.
            entry.dims.rows = entry.dims.rows.max(dims.rows);
            if entry.dims.ty != ty || entry.stored_row_len != t.row_len() {
                return Err(tensor_err(
                    &t.name,
                    format!(
                        "`{name}` is also stored in `{}` as {}; one tensor trains in one format",
                        entry.gguf_name, entry.dims.ty
                    ),
                ));
            }
        }
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(field(i, format!("`{}` matches no tensor of this model", mask.rules[i].pattern)));
    }
    if out.is_empty() {
        return Err(ModelError::ConfigJson {
            path: mask.path.clone(),
            msg: "the mask quantizes no tensor: nothing to train with fake quantization".into(),
        });
    }
    Ok(out)
}
