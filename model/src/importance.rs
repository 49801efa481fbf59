//! Per-FFN-neuron importance: the data-free magnitude proxy (Taylor saliency over a corpus
//! comes with the importance command).

use crate::error::{ModelError, Result};
use crate::qwen3::Qwen3;

/// Magnitude importance `[L][F]`: for neuron j of a layer, `sum |gate[j,:]| + sum |up[j,:]| + sum |down[:,j]|`.
pub fn magnitude(model: &Qwen3) -> Result<Vec<Vec<f32>>> {
    if model.moe.is_some() {
        return Err(ModelError::Invalid("importance needs a dense model".into()));
    }
    let c = &model.config;
    let (f, d) = (c.intermediate_size, c.hidden_size);
    let flat = model.params.flat();
    let get = |name: String| -> Result<&[f32]> {
        let e = model.params.entry(&name).map_err(|_| ModelError::Invalid(format!("no tensor `{name}`")))?;
        Ok(&flat[e.offset..e.offset + e.numel()])
    };
    (0..c.num_hidden_layers)
        .map(|i| {
            let p = format!("model.layers.{i}.mlp");
            let (gate, up, down) = (
                get(format!("{p}.gate_proj.weight"))?,
                get(format!("{p}.up_proj.weight"))?,
                get(format!("{p}.down_proj.weight"))?,
            );
            Ok(magnitude_layer(gate, up, down, f, d))
        })
        .collect()
}

/// Magnitude importance `[F]` of one layer from its `gate [F, D]`, `up [F, D]`, `down [D, F]`
/// (the per-layer step of [`magnitude`], also used by streaming surgery).
pub fn magnitude_layer(gate: &[f32], up: &[f32], down: &[f32], f: usize, d: usize) -> Vec<f32> {
    let mut imp: Vec<f32> =
        (0..f).map(|j| gate[j * d..(j + 1) * d].iter().chain(&up[j * d..(j + 1) * d]).map(|x| x.abs()).sum()).collect();
    for r in 0..d {
        for (j, v) in imp.iter_mut().enumerate() {
            *v += down[r * f + j].abs();
        }
    }
    imp
}

/// Which Taylor form ranks neurons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaylorForm {
    /// First order: `|sum over the neuron's weights of grad * w|`.
    First,
    /// Squared: `sum over the neuron's weights of (grad * w)^2` (Fisher-style).
    Squared,
}

/// Streaming Taylor saliency: an EMA over batches of per-neuron scores, `[L * F]` each.
#[derive(Clone, Debug, PartialEq)]
pub struct TaylorState {
    /// Layers L.
    pub layers: usize,
    /// FFN width F.
    pub width: usize,
    /// EMA of the first-order score (not bias-corrected).
    pub first: Vec<f32>,
    /// EMA of the squared score (not bias-corrected).
    pub squared: Vec<f32>,
    /// EMA decay per batch.
    pub decay: f32,
    /// Batches folded in.
    pub batches: u64,
    /// Tokens folded in.
    pub tokens: u64,
}

impl TaylorState {
    /// Empty state for a model with `layers` FFNs of `width` neurons.
    pub fn new(layers: usize, width: usize, decay: f32) -> Self {
        TaylorState {
            layers,
            width,
            first: vec![0.0; layers * width],
            squared: vec![0.0; layers * width],
            decay,
            batches: 0,
            tokens: 0,
        }
    }

    /// Folds one batch in: gradients of the loss, then per-neuron `grad * w` sums.
    /// Returns the batch loss.
    pub fn update(&mut self, model: &Qwen3, batch: &crate::TokenBatch, targets: &[i32]) -> Result<f32> {
        self.update_at(model, batch, targets, autograd::Precision::F32)
    }

    /// [`TaylorState::update`] with the forward and backward GEMMs at `precision` (bf16: operands
    /// rounded, f32 accumulation; the gradients and the sums stay f32).
    pub fn update_at(
        &mut self,
        model: &Qwen3,
        batch: &crate::TokenBatch,
        targets: &[i32],
        precision: autograd::Precision,
    ) -> Result<f32> {
        let c = &model.config;
        if model.moe.is_some() || c.num_hidden_layers != self.layers || c.intermediate_size != self.width {
            return Err(ModelError::Invalid(format!(
                "importance state is for {} layers x {} neurons of a dense model",
                self.layers, self.width
            )));
        }
        let opts = crate::qwen3::ForwardOptions::eval().at(precision);
        let (out, grads) = model.loss_and_grads(batch, targets, &opts)?;
        let (loss, count) = (out.loss.item(), out.count);
        let (f, d) = (c.intermediate_size, c.hidden_size);
        let flat = model.params.flat();
        let decay = self.decay;
        for i in 0..self.layers {
            let mut gw = vec![0f64; f];
            let mut gw2 = vec![0f64; f];
            for name in ["gate_proj", "up_proj"] {
                let e = model.params.entry(&format!("model.layers.{i}.mlp.{name}.weight")).map_err(crate::qwen3::ag)?;
                for j in 0..f {
                    for k in e.offset + j * d..e.offset + (j + 1) * d {
                        let p = grads[k] as f64 * flat[k] as f64;
                        gw[j] += p;
                        gw2[j] += p * p;
                    }
                }
            }
            let e = model.params.entry(&format!("model.layers.{i}.mlp.down_proj.weight")).map_err(crate::qwen3::ag)?;
            for r in 0..d {
                for j in 0..f {
                    let k = e.offset + r * f + j;
                    let p = grads[k] as f64 * flat[k] as f64;
                    gw[j] += p;
                    gw2[j] += p * p;
                }
            }
            for j in 0..f {
                let s = &mut self.first[i * f + j];
                *s = decay * *s + (1.0 - decay) * gw[j].abs() as f32;
                let s = &mut self.squared[i * f + j];
                *s = decay * *s + (1.0 - decay) * gw2[j] as f32;
            }
        }
        self.batches += 1;
        self.tokens += count as u64;
        Ok(loss)
    }

    /// Bias-corrected scores `[L][F]` of `form`.
    pub fn scores(&self, form: TaylorForm) -> Vec<Vec<f32>> {
        let correction = 1.0 - (self.decay as f64).powi(self.batches.min(i32::MAX as u64) as i32);
        let src = match form {
            TaylorForm::First => &self.first,
            TaylorForm::Squared => &self.squared,
        };
        src.chunks(self.width.max(1))
            .map(|row| {
                row.iter().map(|&v| if correction > 0.0 { (v as f64 / correction) as f32 } else { 0.0 }).collect()
            })
            .collect()
    }
}

/// Writes an importance file: `importance [L, F]` (of `form`), `taylor_first`, `taylor_squared`,
/// `ranking [L, F]` (neuron indices by descending importance) and the EMA state in metadata,
/// atomically. `extra` metadata (data path, cursor) is kept for resuming.
pub fn write_importance(
    path: &std::path::Path,
    state: &TaylorState,
    form: TaylorForm,
    extra: &std::collections::HashMap<String, String>,
) -> Result<()> {
    use crate::safetensors_io::{f32_to_bytes, write_safetensors, FileDType, TensorToWrite};
    use std::borrow::Cow;
    let (l, f) = (state.layers, state.width);
    let scores: Vec<f32> = state.scores(form).concat();
    let ranking: Vec<u8> = state
        .scores(form)
        .iter()
        .flat_map(|row| crate::surgery::plan::rank_desc(row))
        .flat_map(|i| (i as i32).to_le_bytes())
        .collect();
    let t = |name: &str, v: &[f32]| -> Result<TensorToWrite<'static>> {
        Ok(TensorToWrite {
            name: name.into(),
            dtype: FileDType::F32,
            shape: vec![l, f],
            data: Cow::Owned(f32_to_bytes(v, FileDType::F32)?),
        })
    };
    let tensors = vec![
        t("importance", &scores)?,
        t("taylor_first", &state.first)?,
        t("taylor_squared", &state.squared)?,
        TensorToWrite { name: "ranking".into(), dtype: FileDType::I32, shape: vec![l, f], data: Cow::Owned(ranking) },
    ];
    let mut meta = extra.clone();
    meta.insert("format".into(), "medmoe-importance".into());
    meta.insert("version".into(), "1".into());
    meta.insert("form".into(), if form == TaylorForm::First { "first" } else { "squared" }.into());
    meta.insert("decay".into(), state.decay.to_string());
    meta.insert("batches".into(), state.batches.to_string());
    meta.insert("tokens".into(), state.tokens.to_string());
    write_safetensors(path, &tensors, Some(&meta))
}

/// Reads an importance file's EMA state and metadata (for resuming).
pub fn read_taylor_state(path: &std::path::Path) -> Result<(TaylorState, std::collections::HashMap<String, String>)> {
    let ck = crate::safetensors_io::SafetensorsReader::open(path)?;
    let meta = ck.metadata().cloned().unwrap_or_default();
    let bad = |msg: String| ModelError::Safetensors { path: path.to_path_buf(), msg };
    if meta.get("format").map(String::as_str) != Some("medmoe-importance") {
        return Err(bad("not a medmoe importance file (metadata format)".into()));
    }
    let info = ck
        .info("taylor_first")
        .ok_or_else(|| ModelError::MissingTensor { path: path.into(), tensor: "taylor_first".into() })?;
    let [layers, width] = info.shape[..] else { return Err(bad(format!("taylor_first has shape {:?}", info.shape))) };
    let num = |k: &str| -> Result<f64> {
        meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| bad(format!("metadata `{k}` missing or not a number")))
    };
    let state = TaylorState {
        layers,
        width,
        first: ck.read_f32("taylor_first")?,
        squared: ck.read_f32("taylor_squared")?,
        decay: num("decay")? as f32,
        batches: num("batches")? as u64,
        tokens: num("tokens")? as u64,
    };
    if state.squared.len() != layers * width {
        return Err(bad("taylor_squared does not match taylor_first".into()));
    }
    Ok((state, meta))
}

/// Reads `importance [L, F]` from an importance file, checking the shape the model needs.
pub fn read_importance(path: &std::path::Path, layers: usize, width: usize) -> Result<Vec<Vec<f32>>> {
    let ck = crate::safetensors_io::SafetensorsReader::open(path)?;
    let info = ck
        .info("importance")
        .ok_or_else(|| ModelError::MissingTensor { path: path.into(), tensor: "importance".into() })?;
    if info.shape != [layers, width] {
        return Err(ModelError::Tensor {
            path: path.into(),
            tensor: "importance".into(),
            msg: format!("shape {:?} does not fit the model, which needs [{layers}, {width}]", info.shape),
        });
    }
    Ok(ck.read_f32("importance")?.chunks(width.max(1)).map(<[f32]>::to_vec).collect())
}
