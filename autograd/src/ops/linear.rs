//! `y = x · wᵀ` with `w` in HF Linear layout `[out, in]`.

use super::{ensure, rows};
use crate::error::Result;
use crate::sim::{matmul_into_grad, matmul_new_on, sim};
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
    let out = sim("linear", matmul_new_on(dev, &x.f32s(), &w.f32s(), n, k, m, Trans::No, Trans::Yes))?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dim") = m;
    let (xs, ws) = (x.clone(), w.clone());
    Ok(tape.record(Tensor::from_vec(out, &shape), &[x, w], move |dy, g| {
        matmul_into_grad("linear", g, &xs, dev, dy, &ws.f32s(), n, m, k, Trans::No, Trans::No);
        matmul_into_grad("linear", g, &ws, dev, dy, &xs.f32s(), m, n, k, Trans::Yes, Trans::No);
    }))
}
