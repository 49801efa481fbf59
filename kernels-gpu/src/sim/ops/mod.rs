//! Host helpers: one per kernel, taking slices, checking their lengths, computing the launch shape
//! and running the kernel in the simulator. `Device::Sim` calls these; a CUDA launcher uses the
//! same shapes (documented on each kernel) with GPU-sized blocks.
//!
//! The simulator helpers use blocks of 128 threads (64 for the FMA GEMM) and cap grid-stride grids
//! at [`MAX_SIM_BLOCKS`] blocks, so simulated launches stay cheap; results do not depend on it.

mod attention;
mod elementwise;
mod embedding;
mod gemm;
mod moe;
mod rope;
mod rows;

pub use attention::{attention_backward, attention_forward, AttnShape};
pub use elementwise::{
    adamw_scalars, adamw_step, fake_quant_backward, fake_quant_forward, swiglu_backward, swiglu_forward,
    swiglu_fused_backward, swiglu_fused_forward, AdamWHyper,
};
pub use embedding::{embedding_backward, embedding_forward};
pub use gemm::{experts_backward, experts_forward, grouped_gemm, to_bf16, ExpertsGemm, GemmElem};
pub use moe::{
    combine_backward, combine_forward, gather_backward, gather_forward, router_backward, router_forward,
    sort_by_expert, RouterSums, Sorted,
};
pub use rope::{rope_backward, rope_forward};
pub use rows::{rmsnorm_backward, rmsnorm_forward, softmax_ce_forward_backward};

use super::SimError;
use crate::simt::{Dim3, Gmem};

/// Threads per block of the simulator helpers (elementwise and row kernels).
pub const SIM_BLOCK: u32 = 128;
/// Largest grid of the grid-stride launches in the simulator.
pub const MAX_SIM_BLOCKS: u32 = 32;

/// A read-only input as a kernel pointer (kernels never write through it).
pub(crate) fn rd<T: Copy>(s: &[T]) -> Gmem<T> {
    Gmem::new(s.as_ptr() as *mut T)
}

/// An output as a kernel pointer.
pub(crate) fn wr<T: Copy>(s: &mut [T]) -> Gmem<T> {
    Gmem::new(s.as_mut_ptr())
}

/// `Err(InvalidLaunch(what))` unless `ok`.
pub(crate) fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), SimError> {
    if ok {
        Ok(())
    } else {
        Err(SimError::InvalidLaunch(what()))
    }
}

/// 1-D grid for `units` work items of `per_block` each, capped at [`MAX_SIM_BLOCKS`].
pub(crate) fn capped_grid(units: usize, per_block: usize) -> Dim3 {
    Dim3::x(units.div_ceil(per_block.max(1)).clamp(1, MAX_SIM_BLOCKS as usize) as u32)
}
