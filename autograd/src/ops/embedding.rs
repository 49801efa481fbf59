//! Token embedding lookup.

use super::ensure;
use crate::backend::{kernel, kernel_bwd};
use crate::error::{AutogradError, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::buffer::zeroed;
use std::sync::Arc;

/// `ids [N]` rows of `table [V, D]` → `[N, D]`; an id `>= V` is an error.
pub fn embedding(tape: &Tape, ids: &[u32], table: &Tensor) -> Result<Tensor> {
    ensure(table.shape().len() == 2, "embedding", || format!("table {:?}", table.shape()))?;
    let (v, d) = (table.shape()[0], table.shape()[1]);
    if let Some((i, &bad)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= v) {
        return Err(AutogradError::Index {
            op: "embedding",
            msg: format!("token id {bad} at position {i} is outside the vocabulary of {v}"),
        });
    }
    let mut out = zeroed(ids.len() * d);
    let be = tape.backend().clone();
    kernel("embedding", be.embedding_forward(&mut out, ids, &table.f32s(), d))?;
    let (tt, ids) = (table.clone(), Arc::<[u32]>::from(ids));
    Ok(tape.record(Tensor::from_vec(out, &[ids.len(), d]), &[table], move |dy, g| {
        g.accumulate(&tt, |dt| kernel_bwd("embedding", be.embedding_backward(dt, dy, &ids, d)));
    }))
}
