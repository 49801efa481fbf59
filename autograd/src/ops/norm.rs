//! RMSNorm over the last dimension.

use super::{ensure, rows};
use crate::error::Result;
use crate::sim::{sim, sim_bwd};
use crate::tape::Tape;
use crate::tensor::{Device, Tensor};
use kernels_cpu::buffer::zeroed;
use kernels_cpu::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use kernels_gpu::sim::ops as gpu;

/// `x [.., C]` normalised by its root mean square and scaled by `w [C]`.
pub fn rmsnorm(tape: &Tape, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let c = x.last_dim();
    ensure(w.shape() == [c], "rmsnorm", || format!("x {:?} vs w {:?}", x.shape(), w.shape()))?;
    let n = rows(x);
    let dev = tape.device();
    let (mut out, mut rstd) = (zeroed(n * c), zeroed(n));
    if dev == Device::Sim {
        sim("rmsnorm", gpu::rmsnorm_forward(&mut out, &mut rstd, &x.f32s(), &w.f32s(), n, c, eps))?;
    } else {
        rmsnorm_forward(&mut out, &mut rstd, &x.f32s(), &w.f32s(), n, c, eps);
    }
    let (xs, ws) = (x.clone(), w.clone());
    Ok(tape.record(Tensor::from_vec(out, x.shape()), &[x, w], move |dy, g| {
        let (mut dx, mut dw) = (g.take(&xs), g.take(&ws));
        if dev == Device::Sim {
            let r = gpu::rmsnorm_backward(&mut dx, &mut dw, dy, &xs.f32s(), &ws.f32s(), &rstd, n, c);
            sim_bwd("rmsnorm", r);
        } else {
            rmsnorm_backward(&mut dx, &mut dw, dy, &xs.f32s(), &ws.f32s(), &rstd, n, c);
        }
        g.put(&xs, dx);
        g.put(&ws, dw);
    }))
}
