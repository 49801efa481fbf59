//! Residual add.

use super::ensure;
use crate::backend::kernel;
use crate::error::Result;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// `a + b` (same shapes).
pub fn add(tape: &Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ensure(a.shape() == b.shape(), "add", || format!("{:?} vs {:?}", a.shape(), b.shape()))?;
    let out = kernel("add", tape.backend().add_scaled(&a.f32s(), &b.f32s(), 1.0))?;
    let (at, bt) = (a.clone(), b.clone());
    Ok(tape.record(Tensor::from_vec(out, a.shape()), &[a, b], move |dy, g| {
        g.add_scaled_slice(&at, 1.0, dy);
        g.add_scaled_slice(&bt, 1.0, dy);
    }))
}

/// `a + scale * b` (same shapes): how auxiliary losses join the objective.
pub fn add_scaled(tape: &Tape, a: &Tensor, b: &Tensor, scale: f32) -> Result<Tensor> {
    ensure(a.shape() == b.shape(), "add_scaled", || format!("{:?} vs {:?}", a.shape(), b.shape()))?;
    let out = kernel("add_scaled", tape.backend().add_scaled(&a.f32s(), &b.f32s(), scale))?;
    let (at, bt) = (a.clone(), b.clone());
    Ok(tape.record(Tensor::from_vec(out, a.shape()), &[a, b], move |dy, g| {
        g.add_scaled_slice(&at, 1.0, dy);
        g.add_scaled_slice(&bt, scale, dy);
    }))
}
