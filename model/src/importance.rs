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
            let mut imp: Vec<f32> = (0..f)
                .map(|j| gate[j * d..(j + 1) * d].iter().chain(&up[j * d..(j + 1) * d]).map(|x| x.abs()).sum())
                .collect();
            for r in 0..d {
                for (j, v) in imp.iter_mut().enumerate() {
                    *v += down[r * f + j].abs();
                }
            }
            Ok(imp)
        })
        .collect()
}
