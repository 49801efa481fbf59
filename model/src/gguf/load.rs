//! A GGUF file (ours, or any `qwen3` / `glm4moe` / `dots1` file of the same layout) as our model:
//! the config comes from the metadata ([`super::keys::config_from_metadata`]), every tensor is
//! decoded to f32 with our ggml-identical dequantizers and its rows are scattered back to our
//! HF-named parameters by the same plan the writer gathers them with ([`super::names::plan`]).
//! So quantized models run through the same code as f32 ones (`logits`, `inspect`, the evaluator).
//!
//! A `dots1` file always holds `output.weight`, so it loads untied: after quantization the LM head
//! and the embedding can differ, and llama.cpp uses each for its own job, as we then do.

use super::format::MetaValue;
use super::keys::config_from_metadata;
use super::names::{plan, Segment};
use super::read::GgufFile;
use crate::error::{ModelError, Result};
use crate::qwen3::{param_specs, Qwen3};
use autograd::DType;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Whether `path` is meant as a GGUF file: a file named `*.gguf` or starting with the GGUF magic
/// (a damaged `.gguf` then gets the GGUF reader's error, not a missing config.json).
pub fn is_gguf_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && (path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            || std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF")
}

/// Loads the GGUF file `path` as our model, parameters stored as `storage`.
pub fn load_gguf(path: &Path, storage: DType) -> Result<Qwen3> {
    let file = GgufFile::open(path)?;
    let kv: HashMap<String, MetaValue> = file.metadata.iter().cloned().collect();
    let embd = file
        .tensor("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor { path: path.to_path_buf(), tensor: "token_embd.weight".into() })?;
    if embd.ne.len() != 2 {
        return Err(ModelError::Tensor {
            path: path.to_path_buf(),
            tensor: embd.name.clone(),
            msg: format!("dims {:?}, expected [hidden, vocab]", embd.ne),
        });
    }
    let vocab = embd.ne[1];
    let has_output = file.tensor("output.weight").is_some();
    let (config, moe, arch) = config_from_metadata(&kv, vocab, has_output, path)?;
    let planned = plan(&config, moe.as_ref(), arch);
    let expected: HashSet<&str> = planned.iter().map(|t| t.name.as_str()).collect();
    if let Some(t) = file.tensors.iter().find(|t| !expected.contains(t.name.as_str())) {
        return Err(ModelError::Tensor {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            msg: format!("not a tensor of a `{}` model with this file's metadata", arch.name()),
        });
    }
    let specs = param_specs(&config, moe.as_ref());
    let mut values: HashMap<String, Vec<f32>> = HashMap::with_capacity(specs.len());
    let mut bias = vec![Vec::new(); if moe.is_some() { config.num_hidden_layers } else { 0 }];
    for t in &planned {
        let stored = file
            .tensor(&t.name)
            .ok_or_else(|| ModelError::MissingTensor { path: path.to_path_buf(), tensor: t.name.clone() })?;
        if stored.ne != t.ne {
            return Err(ModelError::Tensor {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                msg: format!("dims {:?} disagree with the metadata, which implies {:?}", stored.ne, t.ne),
            });
        }
        let data = file.dequantize(&t.name)?;
        let row_len = t.row_len();
        let mut r = 0;
        for seg in &t.segments {
            match seg {
                Segment::Hf { name, first_row, rows, cols } => {
                    let numel = specs.iter().find(|(n, _)| n == name).map_or(0, |(_, s)| s.iter().product());
                    let dst = values.entry(name.clone()).or_insert_with(|| vec![0.0; numel]);
                    for k in 0..*rows {
                        let src = &data[(r + k) * row_len..(r + k) * row_len + cols];
                        dst[(first_row + k) * cols..(first_row + k + 1) * cols].copy_from_slice(src);
                    }
                }
                Segment::Zero { .. } => {}
                Segment::RouterBias { layer } => bias[*layer] = data[r * row_len..(r + 1) * row_len].to_vec(),
            }
            r += seg.rows();
        }
    }
    let mut model =
        Qwen3::from_init(config, moe, storage, |name, numel| values.remove(name).unwrap_or_else(|| vec![0.0; numel]));
    if model.moe.is_some() {
        model.router_bias = bias;
    }
    Ok(model)
}
