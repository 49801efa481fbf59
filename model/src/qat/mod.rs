//! Quantization-aware training state of a model: which tensors are fake-quantized in which GGUF
//! format ([`plan`], from the mask file shared with `moe-cli export gguf`), and their learnable
//! steps and mins ([`state`], saved beside a checkpoint's weights), the QAT forward and
//! gradient ([`bind`]), and GPTQ's choice of codes on a stage's grid ([`gptq`]). The fake quantizer itself is
//! kernels-cpu's `fake_quant` (format-exact: a GGUF export of a QAT checkpoint writes its codes
//! directly and decodes to exactly the fake-quantized weights; see `gguf::write`).

pub mod bind;
pub mod gptq;
pub mod plan;
pub mod state;

pub use bind::{bind_qat, qat_gradient, QatGrads, QatLeaves};
pub use gptq::{gptq_on_qat_grid, GridCalibration};
pub use plan::{qat_plan, QatPlan, QatTensorPlan};
pub use state::{QatState, QatTensor, QAT_JSON, QAT_SAFETENSORS};
