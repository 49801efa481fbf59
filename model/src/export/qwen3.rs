//! A dense model as Hugging Face `Qwen3ForCausalLM` (teachers, baselines): the tensors are
//! bit-identical to what was loaded (each in its stored dtype, when the model has one).

use super::{base_config, check_out, config_text, export_dtype, values, write_export};
use crate::error::{ModelError, Result};
use crate::qwen3::Qwen3;
use crate::safetensors_io::TensorToWrite;
use std::path::{Path, PathBuf};

/// Writes the dense `model` as HF `Qwen3ForCausalLM` into the new directory `out` (config.json +
/// model.safetensors, written atomically) and returns the files written.
///
/// Errors: an MoE model ([`ModelError::Unsupported`]: use the dots1 format); `out` existing.
pub fn export_qwen3(model: &Qwen3, out: &Path) -> Result<Vec<PathBuf>> {
    check_out(out)?;
    if let Some(m) = &model.moe {
        return Err(ModelError::Unsupported(format!(
            "the qwen3 format is for dense models and this is a MoE model ({} routed experts x {} + shared {}); \
             export it with the dots1 format",
            m.num_experts, m.expert_width, m.shared_width
        )));
    }
    let dtype = export_dtype(model);
    let tensors = model
        .params
        .entries()
        .iter()
        .map(|e| TensorToWrite::from_f32(e.name.clone(), dtype, e.shape.clone(), &values(model, &e.name)?))
        .collect::<Result<Vec<_>>>()?;
    let mut config = base_config(model, dtype);
    config.insert("architectures".into(), serde_json::json!(["Qwen3ForCausalLM"]));
    config.insert("model_type".into(), "qwen3".into());
    let config = config_text(config);
    write_export(out, &config, &tensors)
}
