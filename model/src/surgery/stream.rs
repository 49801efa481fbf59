//! Streaming dense → MoE surgery: the dense checkpoint is memory-mapped, never loaded whole, and the MoE
//! checkpoint is written tensor by tensor.
//!
//! Attention, norm and embedding tensors are copied as raw bytes from the mapping; one layer's dense FFN
//! (`gate`, `up`, `down`) at a time is decoded to f32, ranked (magnitude importance, or a row of an importance
//! file), planned with [`plan_one_layer`] and converted with [`convert_layer`], the very steps of the in-memory
//! [`plan_model`](super::apply::plan_model) / [`convert`](super::apply::convert) path, so the result is the same
//! bit for bit (for F32 input; for BF16/F16 input every tensor is the in-memory result rounded to the input's
//! dtype, which is exact for copied weights). Every MoE tensor takes the dtype of the dense tensor it comes from
//! (router: `gate_proj`'s); the balancing biases are F32 zeros, as [`Qwen3::save`](crate::Qwen3::save) writes.

use super::apply::{check_widths, convert_layer, plan_one_layer, surgery_rng, SurgeryOptions};
use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::expected_tensors::check_tensor_files;
use crate::importance::{magnitude_layer, read_importance};
use crate::moe_spec::MoeSpec;
use crate::qwen3::{param_specs, router_bias_name};
use crate::safetensors_io::{f32_to_bytes, write_checkpoint_streaming, FileDType, SafetensorsReader, TensorSpec};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where neuron importance comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportanceSource {
    /// Data-free magnitude (computed layer by layer from the mapped weights).
    Magnitude,
    /// An importance file (`importance [L, F]`, as `moe-cli importance` writes).
    File(PathBuf),
}

/// What a streaming surgery wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamReport {
    /// Files of the output directory (final paths).
    pub files: Vec<PathBuf>,
    /// Parameters of the MoE model (tied embeddings once; balancing biases not counted).
    pub num_params: usize,
    /// Bytes of tensor data written.
    pub tensor_bytes: u64,
}

/// The layer index and FFN-ness of a parameter name (`model.layers.{i}.mlp.*`).
fn mlp_layer(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    rest.starts_with("mlp.").then(|| i.parse().ok()).flatten()
}

/// Converts the dense Qwen3 checkpoint in `dense_dir` to the MoE of `spec` and writes it to the new directory
/// `out` (config.json with the `moe` section + safetensors, sharded above `max_shard_bytes`), atomically: on
/// any error no `out` is left behind. `progress(done, total)` counts tensor bytes written.
pub fn surgery_streaming(
    dense_dir: &Path,
    spec: &MoeSpec,
    importance: &ImportanceSource,
    opts: &SurgeryOptions,
    out: &Path,
    max_shard_bytes: Option<u64>,
    progress: impl FnMut(u64, u64),
) -> Result<StreamReport> {
    atomicio::ensure_absent(out)?;
    let config_path = dense_dir.join("config.json");
    let already_moe =
        || ModelError::Invalid(format!("{} is already a MoE model; surgery needs a dense Qwen3", dense_dir.display()));
    if crate::export::is_dots1_config(&config_path) {
        return Err(already_moe());
    }
    let config = Qwen3Config::from_file(&config_path)?;
    if MoeSpec::from_config(&config, &config_path)?.is_some() {
        return Err(already_moe());
    }
    let (l, f, d) = (config.num_hidden_layers, config.intermediate_size, config.hidden_size);
    check_widths(spec, f)?;
    let ckpt = SafetensorsReader::open(dense_dir)?;
    let dense_dtypes: HashMap<String, FileDType> =
        check_tensor_files(dense_dir, &config, None, &ckpt)?.into_iter().collect();
    let file_importance = match importance {
        ImportanceSource::Magnitude => None,
        ImportanceSource::File(p) => Some(read_importance(p, l, f)?),
    };

    // Output layout: param_specs order (layer by layer, the order the conversion produces), then the biases.
    let mut specs = Vec::new();
    for (name, shape) in param_specs(&config, Some(spec)) {
        let dtype = match mlp_layer(&name) {
            None => dense_dtypes.get(&name).copied(),
            Some(i) => {
                let src = if name.ends_with("up_proj.weight") {
                    "up_proj"
                } else if name.ends_with("down_proj.weight") {
                    "down_proj"
                } else {
                    "gate_proj"
                };
                dense_dtypes.get(&format!("model.layers.{i}.mlp.{src}.weight")).copied()
            }
        }
        .ok_or_else(|| ModelError::Invalid(format!("no dense tensor for the MoE tensor `{name}`")))?;
        specs.push(TensorSpec { name, dtype, shape });
    }
    let num_params: usize = specs.iter().map(|s| s.shape.iter().product::<usize>()).sum();
    specs.extend((0..l).map(|i| TensorSpec {
        name: router_bias_name(i),
        dtype: FileDType::F32,
        shape: vec![spec.num_experts],
    }));

    let mut out_config = config.clone();
    spec.apply_to(&mut out_config);
    let config_text = out_config.to_json_string();
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();

    let mut rng = surgery_rng(opts);
    let mut next_layer = 0usize;
    let mut layer_tensors: HashMap<String, Vec<f32>> = HashMap::new();
    let produce = |i: usize| -> Result<Cow<[u8]>> {
        let s = &specs[i];
        if s.name.ends_with(".e_score_correction_bias") {
            return Ok(Cow::Owned(vec![0u8; spec.num_experts * 4]));
        }
        let Some(layer) = mlp_layer(&s.name) else {
            return Ok(Cow::Borrowed(ckpt.bytes(&s.name)?));
        };
        if !layer_tensors.contains_key(&s.name) && layer == next_layer {
            // First tensor of this layer's MoE FFN: convert the whole layer (the only f32 copy in memory).
            layer_tensors.clear();
            let p = format!("model.layers.{layer}.mlp");
            let gate = ckpt.read_f32(&format!("{p}.gate_proj.weight"))?;
            let up = ckpt.read_f32(&format!("{p}.up_proj.weight"))?;
            let down = ckpt.read_f32(&format!("{p}.down_proj.weight"))?;
            let imp = match &file_importance {
                Some(rows) => Cow::Borrowed(&rows[layer]),
                None => Cow::Owned(magnitude_layer(&gate, &up, &down, f, d)),
            };
            let plan = plan_one_layer(&gate, &up, &imp, f, d, spec, opts, layer);
            layer_tensors.extend(convert_layer(&gate, &up, &down, f, d, &plan, spec, opts, layer, &mut rng));
            next_layer += 1;
        }
        let values = layer_tensors
            .remove(&s.name)
            .ok_or_else(|| ModelError::Invalid(format!("surgery produced no tensor `{}`", s.name)))?;
        Ok(Cow::Owned(f32_to_bytes(&values, s.dtype)?))
    };
    let tensor_bytes: u64 = specs.iter().map(|s| (s.shape.iter().product::<usize>() * s.dtype.size()) as u64).sum();
    let files = atomicio::write_dir(out, |tmp| -> Result<Vec<PathBuf>> {
        let cfg = tmp.join("config.json");
        atomicio::write_file(&cfg, config_text.as_bytes())?;
        let mut files = write_checkpoint_streaming(tmp, &specs, Some(&metadata), max_shard_bytes, produce, progress)?;
        files.push(cfg);
        files.extend(crate::tokenizer_files::copy_tokenizer_files(dense_dir, tmp)?);
        Ok(files.iter().filter_map(|f| f.file_name()).map(|f| out.join(f)).collect())
    })?;
    Ok(StreamReport { files, num_params, tensor_bytes })
}

#[cfg(test)]
mod tests {
    use super::mlp_layer;

    #[test]
    fn mlp_layer_names() {
        assert_eq!(mlp_layer("model.layers.12.mlp.experts.3.up_proj.weight"), Some(12));
        assert_eq!(mlp_layer("model.layers.0.mlp.gate.weight"), Some(0));
        assert_eq!(mlp_layer("model.layers.0.self_attn.q_proj.weight"), None);
        assert_eq!(mlp_layer("model.embed_tokens.weight"), None);
    }
}
