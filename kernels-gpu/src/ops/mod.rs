//! Host sequences: one per kernel (and the composite ones: an expert layer's GEMMs), generic over
//! the [`Launcher`] that runs them (the simulator or a GPU). Each takes host slices, checks their
//! lengths, mirrors them on the device, computes the launch shape, launches and reads the outputs
//! back. The simulator runs exactly these launches.
//!
//! Row and elementwise kernels use blocks of [`Launcher::block_threads`] threads; grid-stride
//! grids are capped at [`Launcher::max_grid`] blocks (small on the simulator, so simulated
//! launches stay cheap; results do not depend on it).

mod attention;
mod distill;
mod elementwise;
mod embedding;
mod gemm;
mod moe;
mod rope;
mod rows;

pub use attention::{attention_backward, attention_forward, AttnShape};
pub use distill::{hidden_l2_backward, hidden_l2_forward, lm_head_kl, KlShape};
pub use elementwise::{
    adamw_scalars, adamw_step, add_cols, add_scaled, copy_cols, fake_quant_backward, fake_quant_forward,
    swiglu_backward, swiglu_forward, swiglu_fused_backward, swiglu_fused_forward, AdamWHyper,
};
pub use embedding::{embedding_backward, embedding_forward};
pub use gemm::{experts_backward, experts_forward, grouped_gemm, matmul, to_bf16, ExpertsGemm, GemmElem, Trans};
pub use moe::{
    combine_backward, combine_forward, gather_backward, gather_forward, router_backward, router_forward,
    sort_by_expert, RouterSums, Scoring, Sorted,
};
pub use rope::{rope_backward, rope_forward};
pub use rows::{lm_head_ce, rmsnorm_backward, rmsnorm_forward, softmax_ce_forward_backward};

use crate::launcher::{LaunchDims, LaunchError, Launcher};
use crate::simt::Dim3;

/// `Err(InvalidLaunch(what))` unless `ok`.
pub(crate) fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), LaunchError> {
    if ok {
        Ok(())
    } else {
        Err(LaunchError::InvalidLaunch(what()))
    }
}

/// 1-D grid for `units` work items of `per_block` each, capped at the launcher's grid limit.
pub(crate) fn capped_grid<L: Launcher>(l: &L, units: usize, per_block: usize) -> Dim3 {
    Dim3::x(units.div_ceil(per_block.max(1)).clamp(1, l.max_grid() as usize) as u32)
}

/// A 1-D grid-stride launch over `units` items of `per_block` each, blocks of the launcher's size.
pub(crate) fn stride_dims<L: Launcher>(l: &L, units: usize, per_block: usize) -> LaunchDims {
    LaunchDims::linear(capped_grid(l, units, per_block), l.block_threads())
}

/// A grid-stride launch with one thread per element of `len`.
pub(crate) fn elementwise_dims<L: Launcher>(l: &L, len: usize) -> LaunchDims {
    stride_dims(l, len, l.block_threads() as usize)
}
