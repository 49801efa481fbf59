//! Quantization-aware training state of a model: which tensors are fake-quantized in which GGUF
//! format ([`plan`], from the mask file shared with `moe-cli export gguf`), and their learnable
//! steps and mins ([`state`], saved beside a checkpoint's weights), and the QAT forward and
//! gradient ([`bind`]). The fake quantizer itself is
//! kernels-cpu's `fake_quant` (format-exact: a GGUF export of a QAT checkpoint writes its codes
//! directly and decodes to exactly the fake-quantized weights; see `gguf::write`).

pub mod bind;
pub mod plan;
pub mod state;

pub use bind::{bind_qat, qat_gradient, QatGrads, QatLeaves};
pub use plan::{qat_plan, QatPlan, QatTensorPlan};
pub use state::{QatState, QatTensor, QAT_JSON, QAT_SAFETENSORS};
