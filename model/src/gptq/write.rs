//! Writing a [`QuantizedModel`] as an HF GPTQ checkpoint that vLLM's `gptq_marlin` serves:
//! a MoE as `Dots1ForCausalLM` (the layout and config of [`crate::export::export_dots1`], shared
//! expert zero-padded to whole experts, plus `scoring_func: "sigmoid"` and `topk_method:
//! "noaux_tc"` that vLLM's Dots1 reads), a dense model as `Qwen3ForCausalLM`.
//!
//! Each quantized `X.weight` becomes `X.qweight`, `X.qzeros`, `X.scales` (f16), `X.g_idx`
//! ([`super::pack`]); experts keep per-expert keys. Everything else (router and its bias, norms,
//! embeddings, LM head, weights the mask left out) is written as the plain export writes it.
//! `quantization_config` in config.json and quantize_config.json: `quant_method gptq`, bits,
//! `group_size`, `desc_act`, `sym: true`, `checkpoint_format: "gptq"` (v1 zeros), and, when the
//! mask leaves some linears in float, `dynamic` rules `-:<module regex>` that tell vLLM to skip them
//! (merged modules — q/k/v, gate/up, a layer's experts — are quantized whole, see
//! `calibrate::selected_weights`).
//!
//! Padding of the shared expert (width S to P): gate/up get P - S rows of code `zero` (value 0);
//! down gets P - S input columns of code `zero` in groups after the real ones. The scale of a padded
//! group or row is `2 / maxq`, what the reference quantizer gives an all-zero row.

use super::pack::{pack_qweight, pack_qzeros};
use super::{is_quantizable, QuantMethod, QuantizedModel};
use crate::error::{ModelError, Result};
use crate::export::{
    base_config, check_exportable, check_out, config_text, dots1_config, export_dtype, shared_padding,
};
use crate::qwen3::{ag, router_bias_name};
use crate::safetensors_io::{write_checkpoint_dir, FileDType, TensorToWrite};
use kernels_cpu::gptq::QuantizedMatrix;
use kernels_cpu::quant::half::f32_to_f16;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn i32_tensor(name: String, shape: Vec<usize>, v: &[i32]) -> TensorToWrite<'static> {
    let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    TensorToWrite { name, dtype: FileDType::I32, shape, data: Cow::Owned(data) }
}

/// `m` widened to `rows` outputs and `cols` inputs with zero-valued codes (see the module doc).
fn pad(m: &QuantizedMatrix, rows: usize, cols: usize) -> QuantizedMatrix {
    if (rows, cols) == (m.rows, m.cols) {
        return m.clone();
    }
    let (g, zero) = (m.group, m.zero() as u8);
    let empty = 2.0 / ((1u32 << m.bits) - 1) as f32;
    let mut codes = vec![zero; rows * cols];
    for r in 0..m.rows {
        codes[r * cols..r * cols + m.cols].copy_from_slice(&m.codes[r * m.cols..(r + 1) * m.cols]);
    }
    let (old_groups, groups) = (m.cols / g, old_groups_plus(m.cols, cols, g));
    let mut scales = vec![empty; groups * rows];
    for gi in 0..old_groups {
        scales[gi * rows..gi * rows + m.rows].copy_from_slice(&m.scales[gi * m.rows..(gi + 1) * m.rows]);
    }
    let mut g_idx = m.g_idx.clone();
    g_idx.extend((0..cols - m.cols).map(|j| (old_groups + j / g) as u32));
    QuantizedMatrix { rows, cols, bits: m.bits, group: g, codes, scales, g_idx }
}

/// Groups after widening `old` columns to `new` (the added columns form whole groups of `g`).
fn old_groups_plus(old: usize, new: usize, g: usize) -> usize {
    old / g + (new - old).div_ceil(g)
}

/// The four GPTQ tensors of `base` (`X` of `X.weight`).
fn gptq_tensors(base: &str, m: &QuantizedMatrix) -> Result<Vec<TensorToWrite<'static>>> {
    let (n, k, groups) = (m.rows, m.cols, m.scales.len() / m.rows);
    let p = super::pack::per_word(m.bits)?;
    let scales: Vec<u8> = m.scales.iter().flat_map(|&s| f32_to_f16(s).to_le_bytes()).collect();
    let g_idx: Vec<i32> = m.g_idx.iter().map(|&g| g as i32).collect();
    Ok(vec![
        i32_tensor(format!("{base}.qweight"), vec![k / p, n], &pack_qweight(m)?),
        i32_tensor(format!("{base}.qzeros"), vec![groups, n / p], &pack_qzeros(m.zero(), m.bits, groups, n)?),
        TensorToWrite {
            name: format!("{base}.scales"),
            dtype: FileDType::F16,
            shape: vec![groups, n],
            data: Cow::Owned(scales),
        },
        i32_tensor(format!("{base}.g_idx"), vec![k], &g_idx),
    ])
}

/// `dynamic` rules for vLLM: one negative rule per float linear module (and its merged name).
fn dynamic_rules(q: &QuantizedModel) -> Map<String, Value> {
    let mut rules = Map::new();
    for e in q.model.params.entries().iter().filter(|e| is_quantizable(&e.name) && !q.tensors.contains_key(&e.name)) {
        let module = e.name.trim_end_matches(".weight");
        let merged = module
            .replace(".q_proj", ".qkv_proj")
            .replace(".k_proj", ".qkv_proj")
            .replace(".v_proj", ".qkv_proj")
            .replace(".gate_proj", ".gate_up_proj")
            .replace(".up_proj", ".gate_up_proj");
        let expert = module.split_once(".mlp.experts.").map(|(l, _)| format!("{l}.mlp.experts"));
        for m in [Some(module.to_string()), Some(merged), expert].into_iter().flatten() {
            rules.insert(format!("-:^{}$", m.replace('.', "\\.")), json!({}));
        }
    }
    rules
}

/// The `quantization_config` object.
fn quantization_config(q: &QuantizedModel) -> Value {
    let o = &q.options;
    let mut c = json!({
        "quant_method": "gptq",
        "bits": o.bits,
        "group_size": o.group,
        "desc_act": o.act_order && o.method == QuantMethod::Gptq,
        "sym": true,
        "lm_head": false,
        "checkpoint_format": "gptq",
        "damp_percent": kernels_cpu::gptq::DEFAULT_DAMP,
        "true_sequential": true,
        "static_groups": false,
        "meta": {"quantizer": "medmoe", "method": o.method.name()},
    });
    let rules = dynamic_rules(q);
    if !rules.is_empty() {
        c["dynamic"] = Value::Object(rules);
    }
    c
}

/// Writes `q` as a GPTQ checkpoint into the new directory `out` (config.json,
/// quantize_config.json, model.safetensors; atomically) and returns the files written.
///
/// Errors: `out` existing; a MoE that cannot be a Dots1 export (see `export_dots1`); shapes that
/// do not pack (N not a multiple of 32 / bits).
pub fn write_gptq(q: &QuantizedModel, out: &Path) -> Result<Vec<PathBuf>> {
    check_out(out)?;
    let model = &q.model;
    let dtype = export_dtype(model);
    let d = model.config.hidden_size;
    let (mut config, padded) = match &model.moe {
        Some(_) => {
            let m = check_exportable(model)?;
            let mut c = dots1_config(model, m, dtype);
            c.insert("scoring_func".into(), "sigmoid".into());
            c.insert("topk_method".into(), "noaux_tc".into());
            (c, Some((m.shared_width, shared_padding(m.shared_width, m.expert_width).1)))
        }
        None => {
            let mut c = base_config(model, dtype);
            c.insert("architectures".into(), json!(["Qwen3ForCausalLM"]));
            c.insert("model_type".into(), "qwen3".into());
            (c, None)
        }
    };
    let qc = quantization_config(q);
    config.insert("quantization_config".into(), qc.clone());
    let mut tensors = Vec::new();
    for e in model.params.entries() {
        let shared = e.name.contains(".mlp.shared_experts.");
        // The Dots1 shape of a shared-expert weight: [P, D] (gate/up) or [D, P] (down).
        let (rows, cols) = match padded {
            Some((_, p)) if shared && e.name.contains("down_proj") => (d, p),
            Some((_, p)) if shared => (p, d),
            _ => (e.shape[0], e.shape.get(1).copied().unwrap_or(1)),
        };
        if let Some(m) = q.tensors.get(&e.name) {
            let base = e.name.trim_end_matches(".weight");
            tensors.extend(gptq_tensors(base, &pad(m, rows, cols)).map_err(|err| match err {
                ModelError::Invalid(msg) => ModelError::Invalid(format!("`{}` {:?}: {msg}", e.name, e.shape)),
                other => other,
            })?);
            continue;
        }
        let v = model.params.get(&e.name).map_err(ag)?.to_vec();
        let (v, shape) = if shared && (rows, cols) != (e.shape[0], e.shape[1]) {
            let mut w = vec![0f32; rows * cols];
            for r in 0..e.shape[0] {
                w[r * cols..r * cols + e.shape[1]].copy_from_slice(&v[r * e.shape[1]..(r + 1) * e.shape[1]]);
            }
            (w, vec![rows, cols])
        } else {
            (v, e.shape.clone())
        };
        tensors.push(TensorToWrite::from_f32(e.name.clone(), dtype, shape, &v)?);
    }
    if let Some((0, p)) = padded {
        // No shared expert in our model: Dots1 still has one, all zero.
        for i in 0..model.config.num_hidden_layers {
            let n = |k: &str| format!("model.layers.{i}.mlp.shared_experts.{k}.weight");
            for (k, shape) in [("gate_proj", [p, d]), ("up_proj", [p, d]), ("down_proj", [d, p])] {
                tensors.push(TensorToWrite::from_f32(n(k), dtype, shape.to_vec(), &vec![0.0; p * d])?);
            }
        }
    }
    if model.moe.is_some() {
        for (i, bias) in model.router_bias.iter().enumerate() {
            tensors.push(TensorToWrite::from_f32(router_bias_name(i), FileDType::F32, vec![bias.len()], bias)?);
        }
    }
    let config = config_text(config);
    let qc_text = config_text(qc.as_object().cloned().unwrap_or_default());
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    atomicio::write_dir(out, |tmp| -> Result<Vec<PathBuf>> {
        atomicio::write_file(&tmp.join("config.json"), config.as_bytes())?;
        atomicio::write_file(&tmp.join("quantize_config.json"), qc_text.as_bytes())?;
        let mut files = write_checkpoint_dir(tmp, &tensors, Some(&metadata), None)?;
        files.push(tmp.join("config.json"));
        files.push(tmp.join("quantize_config.json"));
        Ok(files.iter().filter_map(|f| f.file_name()).map(|f| out.join(f)).collect())
    })
}
