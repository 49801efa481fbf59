//! Rotary position embedding over heads.

use super::{ensure, rows};
use crate::backend::{kernel, kernel_bwd};
use crate::error::Result;
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::buffer::zeroed;
use kernels_cpu::rope::RopeTable;
use std::sync::Arc;

/// Rotates `x [N, heads * Dh]` by the angles of `pos [N]` (positions must be `< table.max_pos`).
pub fn rope(tape: &Tape, x: &Tensor, pos: &Arc<[u32]>, table: &Arc<RopeTable>, heads: usize) -> Result<Tensor> {
    let n = rows(x);
    ensure(x.last_dim() == heads * table.head_dim && pos.len() == n, "rope", || {
        format!("x {:?}, {heads} heads of {}, {} positions", x.shape(), table.head_dim, pos.len())
    })?;
    if let Some(&p) = pos.iter().find(|&&p| p as usize >= table.max_pos) {
        return Err(crate::AutogradError::Index {
            op: "rope",
            msg: format!("position {p} beyond the table of {} positions", table.max_pos),
        });
    }
    let mut out = zeroed(x.numel());
    let be = tape.backend().clone();
    kernel("rope", be.rope_forward(&mut out, &x.f32s(), pos, table, n, heads))?;
    let (xs, pos, table) = (x.clone(), pos.clone(), table.clone());
    Ok(tape.record(Tensor::from_vec(out, x.shape()), &[x], move |dy, g| {
        g.accumulate(&xs, |dx| kernel_bwd("rope", be.rope_backward(dx, dy, &pos, &table, n, heads)));
    }))
}
