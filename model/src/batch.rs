//! A batch of token ids with positions and optional document segments.

use crate::error::{ModelError, Result};
use std::sync::Arc;

/// `B` rows of `T` tokens, flattened `[B*T]`.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// Token ids `[B*T]`.
    pub ids: Vec<u32>,
    /// Rows.
    pub b: usize,
    /// Tokens per row.
    pub t: usize,
    /// Position of each token `[B*T]` (0.. per row, or per document).
    pub pos: Arc<[u32]>,
    /// Document id of each token `[B*T]` for per-document attention masks (None = one document per row).
    pub seg: Option<Arc<[u32]>>,
}

impl TokenBatch {
    /// `ids [B*T]` with positions `0..T` in every row.
    pub fn new(ids: Vec<u32>, b: usize, t: usize) -> Result<Self> {
        if b == 0 || t == 0 || ids.len() != b * t {
            return Err(ModelError::Invalid(format!("batch of {} ids is not {b} rows of {t}", ids.len())));
        }
        let pos: Arc<[u32]> = (0..b * t).map(|i| (i % t) as u32).collect();
        Ok(TokenBatch { ids, b, t, pos, seg: None })
    }

    /// Rows of equal length.
    pub fn from_rows(rows: &[Vec<u32>]) -> Result<Self> {
        let t = rows.first().map_or(0, |r| r.len());
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != t) {
            return Err(ModelError::Invalid(format!("row {i} has {} tokens, row 0 has {t}", r.len())));
        }
        Self::new(rows.concat(), rows.len(), t)
    }

    /// `B*T`.
    pub fn rows(&self) -> usize {
        self.b * self.t
    }
}
