//! Format-exact fake quantization for quantization-aware training (QAT): a learnable step per
//! group of weights (LSQ, Esser et al. 2019) and, for the asymmetric formats, a learnable min
//! (LSQ+, Bhalgat et al. 2020), whose forward is **bit for bit** the dequantization of the GGUF
//! blocks [`encode_rows`] writes from the same parameters (the blocks `kernels_cpu::quant`
//! decodes exactly as ggml does). A QAT model therefore exports to GGUF with no re-quantization:
//! the exported file runs exactly the weights the model was trained and evaluated with.
//!
//! Shapes ([`FakeQuantDims`]): weights `w [rows, row_len]` in HF layout (`[out, in]`: GGUF rows run
//! along the input dimension); groups of `group` consecutive values of a row; steps `s` and mins
//! `m` `[rows, row_len / group]` (`m` empty for the symmetric formats).
//!
//! How a learnable float maps to the stored block fields, per format (`f16()` is ggml's f32 -> f16,
//! round to nearest even; every rounding of a value to an integer is half to even; `c` is the
//! signed code, `q` the stored unsigned level):
//!
//! | format | stored fields | effective step `s̃`, min `m̃` | code | value (the dequantizer's order) |
//! |---|---|---|---|---|
//! | Q8_0 (32) | `d = f16(s_g)` per block | `s̃ = d` | `c ∈ [-127, 127]` | `c · s̃` |
//! | Q5_0 (32) | `d = f16(s_g)` | `s̃ = d` | `c ∈ [-16, 15]`, `q = c + 16` | `c · s̃` |
//! | Q6_K (256 = 16 x 16) | `d = f16(max_b s / 127)`, i8 `sc_g = clamp(⌊s_g / d⌉, 1, 127)` | `s̃ = d · sc_g` | `c ∈ [-32, 31]`, `q = c + 32` | `s̃ · c` |
//! | Q5_1 (32) | `d = f16(s_g)`, `m = f16(-m_g)` | `s̃ = d`, `m̃ = -m` | `q ∈ [0, 31]` | `q · s̃ + m` |
//! | Q5_K (256 = 8 x 32) | `d = f16(max_b s / 63)`, `dmin = f16(max_b m⁺ / 63)`, 6-bit `sc_g = clamp(⌊s_g / d⌉, 1, 63)`, `mm_g = clamp(⌊m⁺_g / dmin⌉, 0, 63)` | `s̃ = d · sc_g`, `m̃ = dmin · mm_g` | `q ∈ [0, 31]` | `s̃ · q − m̃` |
//!
//! (`max_b` is over the groups of one 256-value super-block, `m⁺ = max(m, 0)`: Q5_K stores a
//! non-negative min.) The code of a weight is `clamp(⌊w / s̃⌉)` (symmetric) or
//! `clamp(⌊(w + m̃) / s̃⌉, 0, 31)` (asymmetric), the formula ggml's K-quant re-quantization uses.
//! A group spans whole sub-blocks (a multiple of 32 values, 16 for Q6_K) and, for the K-quants,
//! divides 256; several sub-blocks of a group store the same sub-scale. A row whose length is not
//! a multiple of 256 is treated as zero-padded to the next super-block (the GGUF writer pads the
//! shared expert that way): padded groups take the last real group's step and a zero min, which
//! changes no stored field of the real groups. A step is floored at [`MIN_STEP`] (the smallest
//! f16 subnormal); a step whose stored value is 0 (a K-quant super-block of tiny steps) gives
//! codes 0 and no gradient.
//!
//! Gradients (straight-through through every rounding, the f16 and sub-scale roundings of the
//! step included: `∂s̃/∂s_g = ∂m̃/∂m_g = 1`), with `u = w / s̃` or `(w + m̃) / s̃` and the clamp
//! range `[lo, hi]` of `c` or `q`:
//! - `∂ŵ/∂w = 1` when `lo <= u <= hi`, else 0 (torch's clamp lets the bounds through);
//! - `∂ŵ/∂s̃ = ⌊u⌉ − u` inside, the clamped code outside;
//! - `∂ŵ/∂m̃ = 0` inside, `−1` outside (asymmetric only);
//! - the per-group sums are multiplied by LSQ's `g = 1 / sqrt(group · hi)`.
//!
//! Files: `grid.rs` (the stored fields and effective step/min of one row's groups), `forward.rs`
//! (`fake_quant_forward` / `fake_quant_backward`), `encode.rs` (the GGUF blocks), `init.rs`
//! (min-max initialisation, the optional MSE clip search, keeping the clip range across a
//! bit-width change), `naive.rs` (f64 reference of the forward and gradients, and the
//! straight-through surrogate the finite-difference tests differentiate), `table.rs` (the grid of
//! a whole tensor, to quantize one weight at a time: GPTQ on the QAT grid).

mod encode;
mod forward;
mod grid;
mod init;
mod naive;
mod table;

pub use encode::encode_rows;
pub use forward::{fake_quant_backward, fake_quant_forward};
pub use init::{init_minmax, init_mse, rescale_for_format};
pub use naive::{fake_quant_naive, ste_surrogate_loss, NaiveFakeQuant};
pub use table::GridTable;

use crate::quant::BlockType;

/// The smallest step the quantizer uses (the smallest f16 subnormal, 2^-24): smaller or
/// non-positive steps are raised to it.
pub const MIN_STEP: f32 = 5.960_464_5e-8;

/// The layout of one fake-quantized weight tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeQuantDims {
    /// The GGUF block type the tensor is exported as (Q8_0, Q5_0, Q6_K, Q5_1 or Q5_K).
    pub ty: BlockType,
    /// Rows (output features).
    pub rows: usize,
    /// Values per row (input features).
    pub row_len: usize,
    /// Values per learnable step (and min).
    pub group: usize,
}

/// Why a layout cannot be fake-quantized.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FakeQuantError {
    /// The block type has no fake quantizer.
    #[error("{0} has no fake quantizer (Q8_0, Q5_0, Q6_K, Q5_1, Q5_K)")]
    Format(BlockType),
    /// The group size does not fit the format or the row.
    #[error("{ty}: group {group} must be a positive multiple of {sub}{k}, and divide the row length {row_len}")]
    Group {
        /// The block type.
        ty: BlockType,
        /// The group size.
        group: usize,
        /// The sub-block size of the format.
        sub: usize,
        /// `" dividing 256"` for the K-quants.
        k: &'static str,
        /// The row length.
        row_len: usize,
    },
    /// A buffer does not have the length the layout implies.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// The length the layout implies.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// Rows of `row_len` values cannot be encoded as `ty` rows of `out_row_len`.
    #[error("{ty}: rows of {row_len} values (groups of {group}) cannot be padded to stored rows of {out_row_len}")]
    Padding {
        /// The block type.
        ty: BlockType,
        /// The row length of the weights.
        row_len: usize,
        /// The stored row length asked for.
        out_row_len: usize,
        /// The group size.
        group: usize,
    },
}

impl FakeQuantDims {
    /// Checks that `ty` has a fake quantizer and `group` fits it and the row.
    pub fn check(&self) -> Result<(), FakeQuantError> {
        let (sub, k) = match self.ty {
            BlockType::Q8_0 | BlockType::Q5_0 | BlockType::Q5_1 => (32, ""),
            BlockType::Q5_K => (32, " dividing 256"),
            BlockType::Q6_K => (16, " dividing 256"),
            other => return Err(FakeQuantError::Format(other)),
        };
        let g = self.group;
        let ok = g > 0
            && g.is_multiple_of(sub)
            && self.row_len.is_multiple_of(g)
            && (k.is_empty() || 256usize.is_multiple_of(g));
        if !ok {
            return Err(FakeQuantError::Group { ty: self.ty, group: g, sub, k, row_len: self.row_len });
        }
        Ok(())
    }

    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.row_len / self.group
    }

    /// Length of `s` (and of `m` for the asymmetric formats): `rows * row_len / group`.
    pub fn params_len(&self) -> usize {
        self.rows * self.groups_per_row()
    }

    /// Whether the format has a learnable min (Q5_K, Q5_1).
    pub fn has_min(&self) -> bool {
        has_min(self.ty)
    }

    /// Length of `m`: [`Self::params_len`] for the asymmetric formats, else 0.
    pub fn min_len(&self) -> usize {
        if self.has_min() {
            self.params_len()
        } else {
            0
        }
    }
}

/// Whether `ty` is asymmetric (a learnable min as well as a step).
pub fn has_min(ty: BlockType) -> bool {
    matches!(ty, BlockType::Q5_K | BlockType::Q5_1)
}

/// `(lo, hi)`: the clamp range of the code (`c` signed for the symmetric formats, `q` for the
/// asymmetric ones). `hi` is LSQ's `Q_P`.
pub fn code_range(ty: BlockType) -> (i32, i32) {
    match ty {
        BlockType::Q8_0 => (-127, 127),
        BlockType::Q6_K => (-32, 31),
        BlockType::Q5_0 => (-16, 15),
        _ => (0, 31),
    }
}

/// LSQ's gradient scale `1 / sqrt(group · Q_P)`.
pub fn grad_scale(ty: BlockType, group: usize) -> f32 {
    (1.0 / ((group as f64) * code_range(ty).1 as f64).sqrt()) as f32
}
