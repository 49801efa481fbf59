//! Differentiable ops: each checks its inputs, runs its forward on the tape's backend
//! ([`crate::backend`]) and records the matching backward (which runs on the same backend). No op
//! branches on the device.

mod attention;
mod distill;
mod distill_topk;
mod elementwise;
mod embedding;
mod fake_quant;
mod linear;
mod loss;
mod moe;
mod norm;
mod rope;
mod seq_logprob;
mod slice;
mod swiglu;

pub use attention::attention;
pub use distill::{hidden_l2, lm_head_distill, DistillLoss};
pub use distill_topk::{lm_head_topk_distill, CachedTeacher};
pub use elementwise::{add, add_scaled};
pub use embedding::embedding;
pub use fake_quant::{fake_quant, fake_quant_segments, FakeQuantDims, FakeQuantSegment};
pub use linear::linear;
pub use loss::{lm_head_cross_entropy, CrossEntropyOutput};
pub use moe::{moe_routed, MoeConfig, MoeOutput, MoePath, RouterStats, RouterWeighting};
pub use norm::rmsnorm;
pub use rope::rope;
pub use seq_logprob::{lm_head_sequence_logprobs, lm_head_sequence_objective, SequenceLogProbs};
pub use slice::slice_cols;
pub use swiglu::{swiglu, swiglu_fused};

use crate::error::{AutogradError, Result};
use crate::tensor::Tensor;

/// Checks a condition on shapes, or returns a shape error from `op`.
pub(crate) fn ensure(cond: bool, op: &'static str, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(AutogradError::Shape { op, msg: msg() })
    }
}

/// Rows of a tensor seen as `[rows, last_dim]`.
pub(crate) fn rows(t: &Tensor) -> usize {
    t.numel() / t.last_dim().max(1)
}
