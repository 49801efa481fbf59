//! GPTQ on the QAT grid: the Hessian-aware part of a QAT stage's calibration pass.
//!
//! The min-max + MSE clip search of [`super::QatState::init`] (or the clip range carried over
//! from the previous format) fixes each group's step and min; this pass then chooses the codes
//! as GPTQ does, column by column with the error of each column spread over the later ones by the
//! inverse Hessian of the layer's inputs (`kernels_cpu::gptq::gptq_on_grid`), layer by layer in
//! the partly quantized model ([`crate::gptq::sequential_pass`]: routed experts on the tokens the
//! router sends them, experts below the token threshold rounded to nearest). The result is a set
//! of *latent* weights whose fake quantization with the unchanged steps and mins is GPTQ's
//! choice; the QAT forward, the training that follows and the export all read the latent weights
//! through the same fake quantizer, so nothing else changes. A tensor whose GPTQ output error
//! would exceed round-to-nearest's on the same grid (GPTQ is greedy) keeps its weights.

use super::QatState;
use crate::batch::TokenBatch;
use crate::error::{ModelError, Result};
use crate::gptq::{is_quantizable, sequential_pass, LinearQuantizer, LinearWeight, QuantMethod, TensorReport};
use crate::qwen3::Qwen3;
use kernels_cpu::fake_quant::GridTable;
use kernels_cpu::gptq::{gptq_on_grid, output_error, DEFAULT_BLOCK, DEFAULT_DAMP};
use std::collections::BTreeMap;

/// What [`gptq_on_qat_grid`] found.
pub struct GridCalibration {
    /// The latent weights of every tensor the pass reached, by HF name.
    pub latent: BTreeMap<String, Vec<f32>>,
    /// One entry per tensor: GPTQ or round-to-nearest, and both output errors.
    pub report: Vec<TensorReport>,
    /// Routed experts below the token threshold: (layer, expert, tokens).
    pub starved_experts: Vec<(usize, usize, usize)>,
}

struct GridQuantizer<'a> {
    state: &'a QatState,
    act_order: bool,
    damp: f64,
    latent: BTreeMap<String, Vec<f32>>,
}

impl LinearQuantizer for GridQuantizer<'_> {
    fn uses_hessian(&self) -> bool {
        true
    }

    fn quantize(&mut self, x: LinearWeight) -> Result<(Vec<f32>, TensorReport)> {
        let LinearWeight { name, w, n, k, h, tokens, use_hessian } = x;
        let t = self
            .state
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::Invalid(format!("GPTQ on the QAT grid: `{name}` has no QAT parameters")))?;
        if (t.dims.rows, t.dims.row_len) != (n, k) {
            return Err(ModelError::Invalid(format!(
                "GPTQ on the QAT grid: `{name}` is [{n}, {k}], its QAT layout [{}, {}]",
                t.dims.rows, t.dims.row_len
            )));
        }
        let rtn = t.fake_quantize(w);
        let rtn_error = h.map(|h| output_error(w, &rtn, h, k));
        let mut chosen = (w.to_vec(), rtn, QuantMethod::Rtn, rtn_error, 0);
        if let (Some(h), true) = (h, use_hessian) {
            let table = GridTable::new(&t.step, &t.min, t.dims);
            let value = |r: usize, c: usize, x: f32| table.value(r, c, x);
            let (latent, stats) = gptq_on_grid(w, n, k, h, self.damp, DEFAULT_BLOCK, self.act_order, &value)
                .map_err(|e| ModelError::Invalid(format!("`{name}` [{n}, {k}]: {e}")))?;
            let values = t.fake_quantize(&latent);
            let error = output_error(w, &values, h, k);
            if rtn_error.is_some_and(|r| error <= r) {
                chosen = (latent, values, QuantMethod::Gptq, Some(error), stats.dead_columns);
            }
        }
        let (latent, values, method, error, dead_columns) = chosen;
        self.latent.insert(name.to_string(), latent);
        Ok((values, TensorReport { name: name.to_string(), method, tokens, error, rtn_error, dead_columns }))
    }
}

/// GPTQ on the grid of `state` for every linear weight it fake-quantizes, with calibration
/// `batch` through `model` (f32 storage; the weights of `state`'s tensors are the ones to
/// quantize). Routed experts with fewer than `min_expert_tokens` tokens (None: hidden size / 4)
/// are rounded to nearest; `act_order` quantizes the columns by descending Hessian diagonal;
/// `damp` is the relative damping of the Hessian (None: GPTQ's 0.01). Tensors the pass does not
/// reach (not a linear projection) are absent from the result.
pub fn gptq_on_qat_grid(
    model: &Qwen3,
    state: &QatState,
    batch: &TokenBatch,
    min_expert_tokens: Option<usize>,
    act_order: bool,
    damp: Option<f64>,
) -> Result<GridCalibration> {
    let selected: Vec<String> = state.tensors.keys().filter(|n| is_quantizable(n)).cloned().collect();
    let damp = damp.unwrap_or(DEFAULT_DAMP);
    let mut q = GridQuantizer { state, act_order, damp, latent: BTreeMap::new() };
    let out = sequential_pass(model, batch, selected, min_expert_tokens, &mut q, &mut |_| {})?;
    Ok(GridCalibration { latent: q.latent, report: out.report, starved_experts: out.starved_experts })
}
