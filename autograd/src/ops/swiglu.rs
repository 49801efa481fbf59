//! SwiGLU activation `silu(gate) * up`.

use super::ensure;
use crate::error::Result;
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::swiglu::{swiglu_backward, swiglu_forward};

/// `silu(gate) * up`, same shapes.
pub fn swiglu(tape: &Tape, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    ensure(gate.shape() == up.shape(), "swiglu", || format!("{:?} vs {:?}", gate.shape(), up.shape()))?;
    let mut out = vec![0f32; gate.numel()];
    swiglu_forward(&mut out, &gate.f32s(), &up.f32s());
    let (gt, ut) = (gate.clone(), up.clone());
    Ok(tape.record(Tensor::from_vec(out, gate.shape()), &[gate, up], move |dy, g| {
        let (mut dg, mut du) = (g.take(&gt), g.take(&ut));
        swiglu_backward(&mut dg, &mut du, dy, &gt.f32s(), &ut.f32s());
        g.put(&gt, dg);
        g.put(&ut, du);
    }))
}
