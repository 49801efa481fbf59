//! Grouped GEMM parameters shared by the FMA ([`super::gemm_fma`]) and tensor-core
//! ([`super::gemm_mma`]) kernels.
//!
//! Per group `g` (an expert): `C_g (+)= A_g · B_g` with `C_g [M, N]`, `A_g [M, K]`, `B_g [K, N]`.
//! Each operand is strided: element `(r, c)` of group `g` sits at `ptr[base_g + r * rs + c * cs]`,
//! where `base_g = g * group_stride` for per-expert tensors (weights) or `offsets[g] * rs` /
//! `offsets[g] * cs` for token-indexed tensors whose rows / columns are the group's tokens.
//! One of `M`, `N`, `K` may be [`TOKENS`]: the group's token count `offsets[g+1] - offsets[g]`.
//! The three GEMMs of an expert and their backward are all instances (see `ops::experts`).

use crate::simt::Gmem;

/// A dimension equal to the group's token count.
pub const TOKENS: usize = usize::MAX;

/// Which index of an operand runs over the group's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenAxis {
    /// A per-group tensor: `base_g = g * group_stride`.
    None,
    /// Rows are tokens: `base_g = offsets[g] * rs`.
    Rows,
    /// Columns are tokens: `base_g = offsets[g] * cs`.
    Cols,
}

/// One strided operand.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Operand<T> {
    /// Base pointer.
    pub ptr: Gmem<T>,
    /// Stride between rows (elements).
    pub rs: usize,
    /// Stride between columns (elements).
    pub cs: usize,
    /// Elements between groups when `axis` is [`TokenAxis::None`] (plus `offset`).
    pub group_stride: usize,
    /// Extra element offset of group 0 (e.g. `down_proj` inside an expert's weights).
    pub offset: usize,
    /// Which index runs over tokens.
    pub axis: TokenAxis,
}

impl<T: Copy> Operand<T> {
    /// The group's base pointer.
    ///
    /// # Safety
    /// `offsets` has `g + 2` entries when `axis` is not `None`; the result is in bounds.
    #[inline(always)]
    pub unsafe fn group_base(&self, offsets: Gmem<u32>, g: usize) -> Gmem<T> {
        let base = match self.axis {
            TokenAxis::None => g * self.group_stride,
            TokenAxis::Rows => offsets.read(g) as usize * self.rs,
            TokenAxis::Cols => offsets.read(g) as usize * self.cs,
        };
        self.ptr.add(self.offset + base)
    }
}

/// A grouped GEMM call (kernel parameter struct).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct GroupedGemm<T> {
    /// Left operand `[M, K]`.
    pub a: Operand<T>,
    /// Right operand `[K, N]`.
    pub b: Operand<T>,
    /// Output `[M, N]` (f32).
    pub c: Operand<f32>,
    /// Rows of C, or [`TOKENS`].
    pub m: usize,
    /// Columns of C, or [`TOKENS`].
    pub n: usize,
    /// Contraction length, or [`TOKENS`].
    pub k: usize,
    /// `[G + 1]` token offsets (null when no dimension is [`TOKENS`]).
    pub offsets: Gmem<u32>,
    /// `C += A·B` instead of `C = A·B`.
    pub accumulate: bool,
}

impl<T: Copy> GroupedGemm<T> {
    /// `(m, n, k)` of group `g`.
    ///
    /// # Safety
    /// `offsets` has `g + 2` entries when a dimension is [`TOKENS`].
    #[inline(always)]
    pub unsafe fn dims(&self, g: usize) -> (usize, usize, usize) {
        let count = if self.offsets.is_null() { 0 } else { (self.offsets.read(g + 1) - self.offsets.read(g)) as usize };
        let pick = |x: usize| if x == TOKENS { count } else { x };
        (pick(self.m), pick(self.n), pick(self.k))
    }
}
