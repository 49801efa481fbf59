//! GPTQ (Frantar et al. 2022) and round-to-nearest weight quantization of one linear layer,
//! symmetric, with groups along the input dimension: the numeric core of `moe-cli quantize`.
//!
//! Shapes: a linear weight `W [N, K]` (HF layout `[out, in]`, `y = x · Wᵀ`), calibration inputs
//! `X [T, K]` (T tokens), Hessian `H = 2/T · Xᵀ X  [K, K]` ([`Hessian`]). Groups of `G` consecutive
//! input columns share one scale per output row: `scales [K/G, N]`, `g_idx [K]` maps a column to
//! its group (with act-order the groups follow the permuted column order, so `g_idx` is not
//! monotone). Codes `q ∈ [0, 2^bits)`, zero point `z = 2^(bits-1)` (symmetric), and the
//! dequantized weight is `W'[n, k] = scale[g_idx[k], n] · (q[n, k] - z)`.
//!
//! [`gptq_quantize`] transcribes the reference `fasterquant` (IST-DASLab `gptq.py`, AutoGPTQ 0.7.1
//! `quantization/gptq.py`) step by step, in f64 (the reference runs in f32):
//! 1. dead columns (`H[i,i] == 0`): `H[i,i] = 1`, `W[:, i] = 0`;
//! 2. act-order: columns sorted by descending `diag(H)` (stable: equal diagonals keep their order);
//! 3. damping `H += damp · mean(diag H) · I` (damp 0.01), then `Hinv` = the upper Cholesky factor
//!    of `H⁻¹`;
//! 4. lazy column blocks of 128: inside a block each column is quantized and its error
//!    `(w - q) / Hinv[i,i]` is spread over the block's later columns; after the block the rest of
//!    the matrix gets the whole block's error in one product;
//! 5. group parameters are found when a group's first column comes up, from the *matrix outside
//!    the current block* — exactly as the reference, whose `find_params(W[:, i:i+G])` reads `W`,
//!    which has the updates of earlier blocks but not those of the current block's earlier
//!    columns (with G = 128 the two coincide);
//! 6. the quantizer is the reference `Quantizer` with `sym=True`: `xmin = min(row, 0)`,
//!    `xmax = max(row, 0)`, `xmax = max(|xmin|, xmax)` and `xmin = -xmax` only where `xmin < 0`
//!    (a group with no negative value keeps `xmin = 0`, so its scale is `xmax / maxq`), an all-zero
//!    row uses `[-1, 1]`, `scale = (xmax - xmin) / maxq`, `q = clamp(round(w / scale) + z, 0, maxq)`
//!    with round half to even (torch.round).
//!
//! [`rtn_quantize`] is the same quantizer on the unmodified weights, groups in column order.
//! [`gptq_on_grid`] is steps 1, 3 and 4 with a grid fixed in advance instead of the quantizer of
//! step 6 (the QAT grid of a GGUF format, whose steps and mins the QAT calibration chose): it
//! returns the error-compensated latent weights whose rounding to that grid is GPTQ's choice.
//! [`output_error`] is the layer-output error `Σ_n (w_n - w'_n)ᵀ H (w_n - w'_n)` both are judged by.
//!
//! The scales kept here are the f32 rounding of the algorithm's f64 scales; GPTQ checkpoints
//! store them as f16, and [`QuantizedMatrix::dequantize`] uses the f16 values, as every runtime
//! reading the checkpoint does.

mod cholesky;
mod hessian;
mod quantizer;
mod solve;
#[cfg(test)]
mod tests;

pub use cholesky::{cholesky_lower, inverse_upper_factor};
pub use hessian::Hessian;
pub use quantizer::{output_error, GroupQuantizer};
pub use solve::{gptq_on_grid, gptq_quantize, rtn_quantize};

/// Default relative damping (`percdamp`), as the paper and AutoGPTQ.
pub const DEFAULT_DAMP: f64 = 0.01;
/// Default lazy-update block width, as the reference.
pub const DEFAULT_BLOCK: usize = 128;

/// How to quantize one matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqConfig {
    /// Bits per weight (2..=8; vLLM's gptq_marlin serves 4 and 8).
    pub bits: u32,
    /// Input columns per group (must divide K).
    pub group: usize,
    /// Quantize columns in order of descending Hessian diagonal (GPTQ only).
    pub act_order: bool,
    /// Relative damping added to the Hessian diagonal.
    pub damp: f64,
    /// Lazy-update block width.
    pub block: usize,
}

impl GptqConfig {
    /// `bits`, `group`, act-order, with the reference damping and block width.
    pub fn new(bits: u32, group: usize, act_order: bool) -> Self {
        GptqConfig { bits, group, act_order, damp: DEFAULT_DAMP, block: DEFAULT_BLOCK }
    }

    /// Largest code, `2^bits - 1`.
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// Checks the settings against a `[rows, cols]` matrix.
    pub fn check(&self, rows: usize, cols: usize) -> Result<(), GptqError> {
        if !(2..=8).contains(&self.bits) {
            return Err(GptqError::Bits(self.bits));
        }
        if self.group == 0 || !cols.is_multiple_of(self.group) {
            return Err(GptqError::Group { group: self.group, cols });
        }
        if rows == 0 || self.block == 0 || self.damp.is_nan() || self.damp < 0.0 {
            return Err(GptqError::Settings(format!(
                "rows {rows}, block {}, damp {} (rows and block must be positive, damp >= 0)",
                self.block, self.damp
            )));
        }
        Ok(())
    }
}

/// A quantized `[rows, cols]` matrix in GPTQ terms.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedMatrix {
    /// N (output features).
    pub rows: usize,
    /// K (input features).
    pub cols: usize,
    /// Bits per code.
    pub bits: u32,
    /// Columns per group.
    pub group: usize,
    /// Codes `[N, K]` in the original column order, each in `0..=maxq`.
    pub codes: Vec<u8>,
    /// Scales `[K/G, N]` (f32 rounding of the algorithm's values).
    pub scales: Vec<f32>,
    /// Group of each input column `[K]`.
    pub g_idx: Vec<u32>,
}

impl QuantizedMatrix {
    /// The symmetric zero point `2^(bits-1)`.
    pub fn zero(&self) -> u32 {
        1 << (self.bits - 1)
    }

    /// The scales as stored in a checkpoint (IEEE half, round to nearest even) and read back.
    pub fn scales_f16(&self) -> Vec<f32> {
        use crate::quant::half::{f16_to_f32, f32_to_f16};
        self.scales.iter().map(|&s| f16_to_f32(f32_to_f16(s))).collect()
    }

    /// `W' [N, K]` with the f16 scales a checkpoint holds.
    pub fn dequantize(&self) -> Vec<f32> {
        let scales = self.scales_f16();
        let z = self.zero() as f32;
        let mut w = vec![0f32; self.rows * self.cols];
        for (n, row) in w.chunks_mut(self.cols.max(1)).enumerate() {
            for (k, x) in row.iter_mut().enumerate() {
                let s = scales[self.g_idx[k] as usize * self.rows + n];
                *x = s * (self.codes[n * self.cols + k] as f32 - z);
            }
        }
        w
    }
}

/// What [`gptq_quantize`] reports besides the codes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GptqStats {
    /// The reference's `Losses` summed: `Σ (w - q)² / Hinv[i,i]² / 2`.
    pub loss: f64,
    /// Columns whose Hessian diagonal was 0 (their weights quantize as 0).
    pub dead_columns: usize,
}

/// Why a matrix could not be quantized.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GptqError {
    /// Unsupported bit width.
    #[error("{0} bits is not supported (2 to 8; vLLM's gptq_marlin serves 4 and 8)")]
    Bits(u32),
    /// The group size does not divide the input width.
    #[error("group size {group} does not divide the {cols} input columns")]
    Group {
        /// Requested group size.
        group: usize,
        /// K.
        cols: usize,
    },
    /// Other invalid settings.
    #[error("invalid GPTQ settings: {0}")]
    Settings(String),
    /// A buffer has the wrong length.
    #[error("{what} has {got} values, expected {want}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length the shape implies.
        want: usize,
    },
    /// The damped Hessian is not positive definite (non-finite inputs, or damping 0 on a
    /// singular Hessian).
    #[error("the damped Hessian is not positive definite (pivot {pivot}); are the calibration inputs finite?")]
    NotPositiveDefinite {
        /// Column where the factorization failed.
        pivot: usize,
    },
}
