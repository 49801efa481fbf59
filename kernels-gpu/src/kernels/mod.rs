//! The kernels, each generic over [`crate::simt::Simt`]; `core` only.
//!
//! One file per op with its forward and backward kernels side by side (outputs first; backward
//! kernels accumulate into gradients unless their docs say otherwise). Each kernel's doc comment
//! states its launch shape (grid / block / dynamic shared bytes); `ops` has the host helper that
//! computes it. "Grid-stride" kernels accept any 1-D grid and block: each thread handles elements
//! `i = global_thread, global_thread + total_threads, ...`.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod distill;
pub mod elementwise;
pub mod embedding;
pub mod fake_quant;
pub mod gemm;
pub mod gemm_fma;
pub mod gemm_mma;
pub mod permute;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod router;
pub mod selftest;
pub mod swiglu;

use crate::simt::Simt;

/// `(first index, stride)` of a 1-D grid-stride loop.
#[inline(always)]
pub fn grid_stride<C: Simt>(ctx: &C) -> (usize, usize) {
    let (b, bd, g) = (ctx.block_idx().x as usize, ctx.block_dim().x as usize, ctx.grid_dim().x as usize);
    (b * bd + ctx.thread_idx().x as usize, g * bd)
}
