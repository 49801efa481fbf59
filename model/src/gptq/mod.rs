//! Post-training weight quantization of a model (GPTQ or round-to-nearest) from calibration
//! activations, HF GPTQ checkpoints (what vLLM's `gptq_marlin` serves) and reading them back.
//!
//! - [`calibrate`]: the sequential pass. Layer by layer, each quantized linear gets the Hessian of
//!   *its own inputs* as the partly quantized model computes them ("true sequential", as the
//!   reference GPTQ): q/k/v from `input_layernorm(x)`, then `o_proj` from the attention output of the
//!   quantized q/k/v, then the FFN from `post_attention_layernorm` of the residual with the quantized
//!   `o_proj`, `down_proj` from the SwiGLU of the quantized gate/up; the next layer sees the output
//!   of this layer with all its quantized weights. A routed expert's Hessian is built from the
//!   tokens the router sends to it under evaluation settings (dropless, capacity 1.0, no noise);
//!   an expert with fewer than [`QuantizeOptions::min_expert_tokens`] tokens (default: a quarter of
//!   the hidden size, so its Hessian has rank below K/4) falls back to round-to-nearest and is
//!   reported. Router, norms, embeddings and the LM head are never quantized.
//! - [`pack`]: GPTQ tensor packing (`qweight`, `qzeros` with v1 zeros, `scales` f16, `g_idx`).
//! - [`write`]: the checkpoint (Dots1 for MoE, Qwen3 for dense; `quantization_config`).
//! - [`load`]: a GPTQ directory dequantized at load, so `logits` / `inspect` read it.
//!
//! The numeric core (Hessian, GPTQ, RTN) is `kernels_cpu::gptq`.

pub mod calibrate;
pub mod load;
pub mod pack;
pub mod write;

pub use calibrate::{quantize_model, sequential_pass, LinearQuantizer, LinearWeight, PassOutput};
pub use load::{is_gptq_dir, load_gptq};
pub use write::write_gptq;

use kernels_cpu::gptq::QuantizedMatrix;
use std::collections::BTreeMap;

/// How the weights are quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMethod {
    /// GPTQ with the calibration Hessians.
    Gptq,
    /// Round-to-nearest (calibration data unused).
    Rtn,
}

impl QuantMethod {
    /// `gptq` / `rtn`.
    pub fn name(self) -> &'static str {
        match self {
            QuantMethod::Gptq => "gptq",
            QuantMethod::Rtn => "rtn",
        }
    }
}

/// Settings of one quantization run.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeOptions {
    /// GPTQ or RTN.
    pub method: QuantMethod,
    /// 4 or 8 (what gptq_marlin serves).
    pub bits: u32,
    /// 32, 64 or 128.
    pub group: usize,
    /// GPTQ act-order (`desc_act`).
    pub act_order: bool,
    /// Routed experts with fewer calibration tokens fall back to RTN (None: hidden size / 4).
    pub min_expert_tokens: Option<usize>,
}

impl QuantizeOptions {
    /// The numeric settings of one matrix.
    pub fn gptq_config(&self) -> kernels_cpu::gptq::GptqConfig {
        kernels_cpu::gptq::GptqConfig::new(self.bits, self.group, self.act_order)
    }
}

/// How one weight was quantized.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorReport {
    /// Parameter name (`....weight`).
    pub name: String,
    /// The method actually used (RTN for a starved expert under GPTQ).
    pub method: QuantMethod,
    /// Calibration tokens in its Hessian.
    pub tokens: usize,
    /// Output error `Σ (w-w')ᵀ H (w-w')` of the chosen quantization (None without a Hessian).
    pub error: Option<f64>,
    /// The same for round-to-nearest, for comparison.
    pub rtn_error: Option<f64>,
    /// Input columns never active on the calibration data.
    pub dead_columns: usize,
}

/// A quantized model: the dequantized weights in place, the codes of every quantized tensor.
pub struct QuantizedModel {
    /// The model with every quantized weight replaced by its dequantized value (f16 scales).
    pub model: crate::Qwen3,
    /// Codes, scales and g_idx by parameter name (`....weight`).
    pub tensors: BTreeMap<String, QuantizedMatrix>,
    /// One entry per quantized tensor, in quantization order.
    pub report: Vec<TensorReport>,
    /// Routed experts that fell back to RTN: (layer, expert, tokens).
    pub starved_experts: Vec<(usize, usize, usize)>,
    /// The settings used.
    pub options: QuantizeOptions,
}

/// The parameters that are linear weights GPTQ may quantize (attention projections, dense and
/// shared FFN, routed experts); router, norms, embeddings and LM head are not among them.
pub fn is_quantizable(name: &str) -> bool {
    name.starts_with("model.layers.")
        && name.ends_with("_proj.weight")
        && (name.contains(".self_attn.") || name.contains(".mlp."))
}
