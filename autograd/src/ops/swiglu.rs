//! SwiGLU activation `silu(gate) * up`.

use super::ensure;
use crate::backend::{kernel, kernel_bwd};
use crate::error::Result;
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::buffer::zeroed;

/// `silu(gate) * up`, same shapes.
pub fn swiglu(tape: &Tape, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    ensure(gate.shape() == up.shape(), "swiglu", || format!("{:?} vs {:?}", gate.shape(), up.shape()))?;
    let be = tape.backend().clone();
    let mut out = zeroed(gate.numel());
    kernel("swiglu", be.swiglu_forward(&mut out, &gate.f32s(), &up.f32s()))?;
    let (gt, ut) = (gate.clone(), up.clone());
    Ok(tape.record(Tensor::from_vec(out, gate.shape()), &[gate, up], move |dy, g| {
        let (mut dg, mut du) = (g.take(&gt), g.take(&ut));
        kernel_bwd("swiglu", be.swiglu_backward(&mut dg, &mut du, dy, &gt.f32s(), &ut.f32s()));
        g.put(&gt, dg);
        g.put(&ut, du);
    }))
}

/// `silu(gate) * up` from one fused projection `gu [N, 2F]` (rows `[gate, up]`) → `[N, F]`,
/// without copying the halves out.
pub fn swiglu_fused(tape: &Tape, gu: &Tensor) -> Result<Tensor> {
    let two_f = gu.last_dim();
    ensure(two_f > 0 && two_f.is_multiple_of(2), "swiglu_fused", || format!("last dim of {:?} is not 2F", gu.shape()))?;
    let f = two_f / 2;
    let n = gu.numel() / two_f;
    let be = tape.backend().clone();
    let mut out = zeroed(n * f);
    kernel("swiglu_fused", be.swiglu_fused_forward(&mut out, &gu.f32s(), f))?;
    let gt = gu.clone();
    Ok(tape.record(Tensor::from_vec(out, &[n, f]), &[gu], move |dy, g| {
        g.accumulate(&gt, |dgu| kernel_bwd("swiglu_fused", be.swiglu_fused_backward(dgu, dy, &gt.f32s(), f)));
    }))
}
