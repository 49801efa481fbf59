//! Export to stock Hugging Face architectures, and reading those exports back.
//!
//! - [`export_dots1`]: a medmoe MoE model as `Dots1ForCausalLM` (Qwen3 attention + DeepSeek-V3
//!   style MoE with an ungated shared expert). Top-1 routing with `norm_topk_prob` gives the routed
//!   expert weight 1, as our `ste` / `sigmoid` weightings do, so transformers reproduces our logits.
//! - [`export_qwen3`]: a dense model as `Qwen3ForCausalLM`, tensors bit-identical.
//! - [`export_expert`]: the shared expert + one routed expert of a MoE model as a dense
//!   `Qwen3ForCausalLM` ("named experts"; exact on tokens routed to that expert, see [`expert`]).
//!
//! [`crate::Qwen3::load`] also reads a Dots1 directory (`model_type: "dots1"`) back into the medmoe
//! MoE model (`dots1_load`), so `moe-cli logits` works on exports.
//!
//! Tensors keep the dtype they were loaded with when the whole model agrees on one; a model with
//! mixed storage dtypes (e.g. bf16 attention + f32 experts fresh from surgery) is written as F32,
//! which is lossless, because HF configs name a single `dtype`.
//!
//! Architecture Invariant: an export directory appears complete or not at all
//! ([`atomicio::write_dir`]).

mod dots1;
mod dots1_load;
pub mod expert;
mod qwen3;

pub(crate) use dots1::{check_exportable, dots1_config};
pub use dots1::{export_dots1, shared_padding, MEDMOE_KEY};
pub(crate) use dots1_load::DOTS1_KEYS;
pub(crate) use dots1_load::{is_dots1_config, load_dots1};
pub use expert::{expert_as_dense, export_expert};
pub use qwen3::export_qwen3;

use crate::error::Result;
use crate::qwen3::{ag, Qwen3};
use crate::safetensors_io::{write_checkpoint_dir, FileDType, TensorToWrite};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The one dtype every parameter was stored in, or F32 when they differ (lossless).
pub fn export_dtype(model: &Qwen3) -> FileDType {
    let mut dtypes = model.file_dtypes.iter().map(|(_, d)| *d);
    match dtypes.next() {
        Some(first) if dtypes.all(|d| d == first) => first,
        _ => FileDType::F32,
    }
}

/// The HF `dtype` spelling of a float safetensors dtype.
pub(crate) fn hf_dtype_name(d: FileDType) -> &'static str {
    match d {
        FileDType::BF16 => "bfloat16",
        FileDType::F16 => "float16",
        _ => "float32",
    }
}

/// Fails early (before any work) when `out` exists; the atomic writer checks again.
pub(crate) fn check_out(out: &Path) -> Result<()> {
    Ok(atomicio::ensure_absent(out)?)
}

/// The f32 values of parameter `name`.
pub(crate) fn values(model: &Qwen3, name: &str) -> Result<Vec<f32>> {
    Ok(model.params.get(name).map_err(ag)?.to_vec())
}

/// Writes `config` (JSON text) and `tensors` (one model.safetensors with the `{"format": "pt"}`
/// metadata `save_pretrained` writes) into the new directory `out`, atomically.
pub(crate) fn write_export(out: &Path, config: &str, tensors: &[TensorToWrite]) -> Result<Vec<PathBuf>> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    atomicio::write_dir(out, |tmp| {
        let path = tmp.join("config.json");
        atomicio::write_file(&path, config.as_bytes())?;
        let mut files = write_checkpoint_dir(tmp, tensors, Some(&metadata), None)?;
        files.push(path);
        Ok(files.iter().filter_map(|f| f.file_name()).map(|f| out.join(f)).collect())
    })
}

/// The model's config as a JSON object with the typed fields written back, the medmoe-only keys
/// removed, and the fields every export shares: `dtype`, both spellings of RoPE theta (top-level
/// `rope_theta` for transformers v4 readers, `rope_parameters` for v5; our reader checks they
/// agree) and every layer full attention.
pub(crate) fn base_config(model: &Qwen3, dtype: FileDType) -> Map<String, Value> {
    let mut config = model.config.clone();
    config.torch_dtype = None;
    let text = config.to_json_string();
    // The typed config serialises to an object; an empty map cannot happen.
    let mut m: Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
    for k in ["moe", "torch_dtype", "transformers_version"] {
        m.remove(k);
    }
    let c = &model.config;
    m.insert("dtype".into(), hf_dtype_name(dtype).into());
    let theta = serde_json::Number::from_f64(c.rope_theta).map(Value::Number).unwrap_or(Value::Null);
    m.insert("rope_theta".into(), theta.clone());
    m.insert("rope_parameters".into(), serde_json::json!({"rope_theta": theta, "rope_type": "default"}));
    m.insert("use_sliding_window".into(), false.into());
    m.insert("sliding_window".into(), Value::Null);
    m.insert("max_window_layers".into(), c.num_hidden_layers.into());
    m.insert("layer_types".into(), vec![Value::from("full_attention"); c.num_hidden_layers].into());
    m.insert("hidden_act".into(), "silu".into());
    m.insert("attention_bias".into(), false.into());
    m
}

/// Pretty JSON text of a config object with sorted keys (like transformers), newline-terminated.
pub(crate) fn config_text(m: Map<String, Value>) -> String {
    let sorted: std::collections::BTreeMap<String, Value> = m.into_iter().collect();
    // Serialising a map of plain JSON values cannot fail.
    let mut s = serde_json::to_string_pretty(&sorted).unwrap_or_default();
    s.push('\n');
    s
}
