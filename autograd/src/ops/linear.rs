//! `y = x · wᵀ` with `w` in HF Linear layout `[out, in]`.

use super::{ensure, rows};
use crate::error::Result;
use crate::sim::{matmul_on, sim, sim_bwd};
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::gemm::Trans;

/// `x [.., K]`, `w [M, K]` → `[.., M]`. On `Device::Sim` the three GEMMs run as the simulated
/// grouped FMA GEMM with one group.
pub fn linear(tape: &Tape, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    ensure(w.shape().len() == 2 && w.shape()[1] == x.last_dim(), "linear", || {
        format!("x {:?} vs w {:?}", x.shape(), w.shape())
    })?;
    let (n, k, m) = (rows(x), x.last_dim(), w.shape()[0]);
    let dev = tape.device();
    let mut out = vec![0f32; n * m];
    sim("linear", matmul_on(dev, &mut out, &x.f32s(), &w.f32s(), n, k, m, Trans::No, Trans::Yes, false))?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dim") = m;
    let (xs, ws) = (x.clone(), w.clone());
    Ok(tape.record(Tensor::from_vec(out, &shape), &[x, w], move |dy, g| {
        g.accumulate(&xs, |dx| {
            sim_bwd("linear", matmul_on(dev, dx, dy, &ws.f32s(), n, m, k, Trans::No, Trans::No, true));
        });
        g.accumulate(&ws, |dw| {
            sim_bwd("linear", matmul_on(dev, dw, dy, &xs.f32s(), m, n, k, Trans::Yes, Trans::No, true));
        });
    }))
}
