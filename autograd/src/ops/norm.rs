//! RMSNorm over the last dimension.

use super::{ensure, rows};
use crate::backend::{kernel, kernel_bwd};
use crate::error::Result;
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::buffer::zeroed;

/// `x [.., C]` normalised by its root mean square and scaled by `w [C]`.
pub fn rmsnorm(tape: &Tape, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let c = x.last_dim();
    ensure(w.shape() == [c], "rmsnorm", || format!("x {:?} vs w {:?}", x.shape(), w.shape()))?;
    let n = rows(x);
    let be = tape.backend().clone();
    let (mut out, mut rstd) = (zeroed(n * c), zeroed(n));
    kernel("rmsnorm", be.rmsnorm_forward(&mut out, &mut rstd, &x.f32s(), &w.f32s(), n, c, eps))?;
    let (xs, ws) = (x.clone(), w.clone());
    Ok(tape.record(Tensor::from_vec(out, x.shape()), &[x, w], move |dy, g| {
        let (mut dx, mut dw) = (g.take(&xs), g.take(&ws));
        kernel_bwd("rmsnorm", be.rmsnorm_backward(&mut dx, &mut dw, dy, &xs.f32s(), &ws.f32s(), &rstd, n, c));
        g.put(&xs, dx);
        g.put(&ws, dw);
    }))
}
