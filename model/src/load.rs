//! Loading a Qwen3 model directory (config.json + safetensors, single or sharded) and saving
//! it back in HF layout.

use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::expected_tensors::check_tensor_files;
use crate::moe_spec::MoeSpec;
use crate::qwen3::{router_bias_name, Qwen3};
use crate::safetensors_io::{f32_to_bytes, write_checkpoint_dir, FileDType, SafetensorsReader, TensorToWrite};
use autograd::DType;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

impl Qwen3 {
    /// Loads `dir` with f32 parameter storage (for training and exact inference).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_as(dir, DType::F32)
    }

    /// Loads `dir` keeping parameters in `storage` (bf16/f16 halve the memory of frozen weights).
    /// Every tensor's shape and dtype is checked against config.json before any is read.
    /// A Dots1 export (`model_type: "dots1"`) loads as the medmoe MoE model it came from; a `.gguf`
    /// file (instead of a directory) loads dequantized ([`crate::gguf::load_gguf`]).
    pub fn load_as(dir: &Path, storage: DType) -> Result<Self> {
        if crate::gguf::is_gguf_file(dir) {
            return crate::gguf::load_gguf(dir, storage);
        }
        let config_path = dir.join("config.json");
        if crate::gptq::is_gptq_dir(dir) {
            return crate::gptq::load_gptq(dir, storage);
        }
        if crate::export::is_dots1_config(&config_path) {
            return crate::export::load_dots1(dir, storage);
        }
        let config = Qwen3Config::from_file(&config_path)?;
        let moe = MoeSpec::from_config(&config, &config_path)?;
        let ckpt = SafetensorsReader::open(dir)?;
        let file_dtypes = check_tensor_files(dir, &config, moe.as_ref(), &ckpt)?;
        let mut error = None;
        let n_layers = config.num_hidden_layers;
        let mut model = Qwen3::from_init(config, moe, storage, |name, numel| match ckpt.read_f32(name) {
            Ok(v) => v,
            Err(e) => {
                error.get_or_insert(e);
                vec![0.0; numel]
            }
        });
        if let Some(e) = error {
            return Err(e);
        }
        model.file_dtypes = file_dtypes;
        if let Some(m) = &model.moe {
            // The balancing bias is optional (zeros when absent), but must fit when present.
            for i in 0..n_layers {
                let name = router_bias_name(i);
                if let Some(info) = ckpt.info(&name) {
                    if info.shape != [m.num_experts] {
                        return Err(ModelError::Tensor {
                            path: ckpt.path_of(&name).map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf()),
                            tensor: name,
                            msg: format!("shape {:?} disagrees with moe.num_experts {}", info.shape, m.num_experts),
                        });
                    }
                    model.router_bias[i] = ckpt.read_f32(&name)?;
                }
            }
        }
        Ok(model)
    }

    /// Every tensor of the model (parameters under HF names, then the router balancing biases)
    /// ready to write: in the dtype it was loaded with, or all f32 when `f32_only` (training
    /// checkpoints, which must resume bit-exactly).
    pub fn tensors_to_write(&self, f32_only: bool) -> Result<Vec<TensorToWrite<'static>>> {
        let dtypes: HashMap<&str, FileDType> = self.file_dtypes.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        let flat = self.params.flat();
        let mut tensors = Vec::with_capacity(self.params.entries().len() + self.router_bias.len());
        for e in self.params.entries() {
            let dtype =
                if f32_only { FileDType::F32 } else { dtypes.get(e.name.as_str()).copied().unwrap_or(FileDType::F32) };
            let bytes = f32_to_bytes(&flat[e.offset..e.offset + e.numel()], dtype)?;
            tensors.push(TensorToWrite {
                name: e.name.clone(),
                dtype,
                shape: e.shape.clone(),
                data: Cow::Owned(bytes),
            });
        }
        for (i, bias) in self.router_bias.iter().enumerate() {
            let bytes = f32_to_bytes(bias, FileDType::F32)?;
            tensors.push(TensorToWrite {
                name: router_bias_name(i),
                dtype: FileDType::F32,
                shape: vec![bias.len()],
                data: Cow::Owned(bytes),
            });
        }
        Ok(tensors)
    }

    /// The config.json text of the model (with its `moe` section for MoE models).
    pub fn config_json(&self) -> String {
        let mut config = self.config.clone();
        if let Some(m) = &self.moe {
            m.apply_to(&mut config);
        }
        config.to_json_string()
    }

    /// Saves config.json + safetensors in HF layout into a new directory `dir`, each tensor in
    /// the dtype it was loaded with (so a load/save round trip is bit-identical). The directory
    /// appears complete or not at all ([`atomicio::write_dir`]); `dir` must not exist.
    pub fn save(&self, dir: &Path, max_shard_bytes: Option<u64>) -> Result<Vec<PathBuf>> {
        let tensors = self.tensors_to_write(false)?;
        let config = self.config_json();
        atomicio::write_dir(dir, |tmp| {
            atomicio::write_file(&tmp.join("config.json"), config.as_bytes())?;
            let mut files = write_checkpoint_dir(tmp, &tensors, None, max_shard_bytes)?;
            files.push(tmp.join("config.json"));
            Ok(files.iter().filter_map(|f| f.file_name()).map(|f| dir.join(f)).collect())
        })
    }
}
