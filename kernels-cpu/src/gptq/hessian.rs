//! The layer-input Hessian `H = 2/T · Σ_t x_t x_tᵀ` accumulated over calibration batches.

use super::GptqError;
use crate::gemm::{matmul_new, Trans};

/// Rows multiplied in one f32 GEMM before the sum is added into the f64 accumulator.
const CHUNK: usize = 256;

/// Running `Σ x xᵀ [K, K]` in f64 over the rows seen so far.
#[derive(Clone, Debug)]
pub struct Hessian {
    /// K.
    cols: usize,
    /// `Σ x xᵀ` `[K, K]`.
    sum: Vec<f64>,
    /// Rows (tokens) added.
    rows: usize,
}

impl Hessian {
    /// An empty accumulator for inputs of width `cols`.
    pub fn new(cols: usize) -> Self {
        Hessian { cols, sum: vec![0.0; cols * cols], rows: 0 }
    }

    /// K.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Tokens accumulated.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Adds the rows of `x [rows, K]` (chunks of 256 rows as f32 GEMMs, summed in f64).
    pub fn add(&mut self, x: &[f32]) -> Result<(), GptqError> {
        let k = self.cols;
        if k == 0 || !x.len().is_multiple_of(k) {
            return Err(GptqError::Length { what: "Hessian input", got: x.len(), want: k });
        }
        for chunk in x.chunks(CHUNK * k) {
            let r = chunk.len() / k;
            let xtx = matmul_new(chunk, chunk, k, r, k, Trans::Yes, Trans::No);
            self.sum.iter_mut().zip(&xtx).for_each(|(s, &v)| *s += v as f64);
            self.rows += r;
        }
        Ok(())
    }

    /// `H = 2/T · Σ x xᵀ` (all zeros when no rows were added).
    pub fn finish(&self) -> Vec<f64> {
        let f = if self.rows == 0 { 0.0 } else { 2.0 / self.rows as f64 };
        self.sum.iter().map(|s| s * f).collect()
    }
}
