//! `y = x · wᵀ` with `w` in HF Linear layout `[out, in]`.

use super::{ensure, rows};
use crate::backend::{kernel, kernel_bwd, Backend};
use crate::error::Result;
use crate::tape::{Gradients, Tape};
use crate::tensor::Tensor;
use kernels_cpu::gemm::Trans;

/// `x [.., K]`, `w [M, K]` → `[.., M]` (three GEMMs: forward, `dx = dy · w`, `dw = dyᵀ · x`).
pub fn linear(tape: &Tape, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    ensure(w.shape().len() == 2 && w.shape()[1] == x.last_dim(), "linear", || {
        format!("x {:?} vs w {:?}", x.shape(), w.shape())
    })?;
    let (n, k, m) = (rows(x), x.last_dim(), w.shape()[0]);
    let be = tape.backend().clone();
    let out = kernel("linear", be.matmul_new(&x.f32s(), &w.f32s(), n, k, m, Trans::No, Trans::Yes))?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dim") = m;
    let (xs, ws) = (x.clone(), w.clone());
    Ok(tape.record(Tensor::from_vec(out, &shape), &[x, w], move |dy, g| {
        matmul_into_grad(&*be, g, &xs, dy, &ws.f32s(), (n, m, k), (Trans::No, Trans::No));
        matmul_into_grad(&*be, g, &ws, dy, &xs.f32s(), (m, n, k), (Trans::Yes, Trans::No));
    }))
}

/// Adds `op(a) · op(b)` (`[M, N]` from `(m, k, n)`) to the gradient of `t`: into its buffer when
/// it has one, else as a fresh product (no zero-filled buffer to add to).
fn matmul_into_grad(
    be: &dyn Backend,
    g: &mut Gradients,
    t: &Tensor,
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    (ta, tb): (Trans, Trans),
) {
    g.add_or_insert(
        t,
        |acc| kernel_bwd("linear", be.matmul(acc, a, b, m, k, n, ta, tb, true)),
        || kernel_bwd("linear", be.matmul_new(a, b, m, k, n, ta, tb)),
    );
}
