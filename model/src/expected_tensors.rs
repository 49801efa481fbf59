//! What a checkpoint directory must hold for a config: every tensor the config (and its `moe`
//! section) implies, with the implied shape and a float dtype that agrees with config.json's
//! `torch_dtype`. Shared by the loaders ([`crate::load`], the Dots1 reader in [`crate::export`]) and
//! the streaming surgery, which check headers before reading any tensor.

use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::moe_spec::MoeSpec;
use crate::qwen3::param_specs;
use crate::safetensors_io::{FileDType, SafetensorsReader};
use std::path::Path;

/// The safetensors dtype that config.json's `torch_dtype` names, if it names a float type.
pub(crate) fn config_dtype(c: &Qwen3Config) -> Option<FileDType> {
    match c.torch_dtype.as_deref()? {
        "float32" => Some(FileDType::F32),
        "bfloat16" => Some(FileDType::BF16),
        "float16" => Some(FileDType::F16),
        _ => None,
    }
}

/// Checks every tensor that `config` (and `moe`) implies against `ckpt` (opened from `dir`): present,
/// the shape config.json implies, a float dtype, and the dtype config.json's `torch_dtype` names.
/// Returns each tensor's file dtype in [`param_specs`] order. Nothing is read but the headers.
pub(crate) fn check_tensor_files(
    dir: &Path,
    config: &Qwen3Config,
    moe: Option<&MoeSpec>,
    ckpt: &SafetensorsReader,
) -> Result<Vec<(String, FileDType)>> {
    let want_dtype = config_dtype(config);
    let specs = param_specs(config, moe);
    let mut file_dtypes = Vec::with_capacity(specs.len());
    for (name, shape) in &specs {
        let info = ckpt.info(name).ok_or_else(|| ModelError::MissingTensor {
            path: ckpt.files().first().cloned().unwrap_or_else(|| dir.to_path_buf()),
            tensor: name.clone(),
        })?;
        let path = ckpt.path_of(name).map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf());
        let bad = |msg: String| ModelError::Tensor { path: path.clone(), tensor: name.clone(), msg };
        if &info.shape != shape {
            return Err(bad(format!("shape {:?} disagrees with config.json, which implies {:?}", info.shape, shape)));
        }
        if !matches!(info.dtype, FileDType::F32 | FileDType::BF16 | FileDType::F16) {
            return Err(bad(format!("dtype {} is not a float type (F32, BF16, F16)", info.dtype.name())));
        }
        if let Some(w) = want_dtype.filter(|&w| w != info.dtype) {
            return Err(bad(format!(
                "dtype {} disagrees with config.json torch_dtype ({})",
                info.dtype.name(),
                w.name()
            )));
        }
        file_dtypes.push((name.clone(), info.dtype));
    }
    Ok(file_dtypes)
}
