//! Causal grouped-query attention (tiled kernel; the log-sum-exp is saved for backward).

use super::ensure;
use crate::backend::{kernel, kernel_bwd};
use crate::error::Result;
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::attention::AttnDims;
use kernels_cpu::buffer::zeroed;
use std::sync::Arc;

/// `q [B*T, H*Dh]`, `k`/`v [B*T, KV*Dh]` → `[B*T, H*Dh]`; `seg [B*T]` (optional) restricts
/// attention to tokens of the same packed document.
pub fn attention(
    tape: &Tape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seg: Option<&Arc<[u32]>>,
    dims: AttnDims,
) -> Result<Tensor> {
    let n = dims.b * dims.t;
    ensure(
        q.numel() == n * dims.h * dims.dh
            && k.numel() == n * dims.kv * dims.dh
            && v.shape() == k.shape()
            && dims.kv > 0
            && dims.dh > 0
            && dims.h.is_multiple_of(dims.kv)
            && seg.is_none_or(|s| s.len() == n),
        "attention",
        || format!("q {:?} k {:?} v {:?} for {dims:?}", q.shape(), k.shape(), v.shape()),
    )?;
    let mut out = zeroed(q.numel());
    let mut lse = zeroed(dims.b * dims.h * dims.t);
    let be = tape.backend().clone();
    let r = be.attention_forward(&mut out, &mut lse, &q.f32s(), &k.f32s(), &v.f32s(), seg.map(|s| &s[..]), dims);
    kernel("attention", r)?;
    let out = Tensor::from_vec(out, q.shape());
    if !tape.needs_grad(&[q, k, v]) {
        return Ok(out);
    }
    let (qs, ks, vs, os, seg) = (q.clone(), k.clone(), v.clone(), out.clone(), seg.cloned());
    Ok(tape.record(out, &[q, k, v], move |dy, g| {
        let (mut dq, mut dk, mut dv) = (g.take(&qs), g.take(&ks), g.take(&vs));
        let r = be.attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            dy,
            &os.f32s(),
            &lse,
            &qs.f32s(),
            &ks.f32s(),
            &vs.f32s(),
            seg.as_ref().map(|s| &s[..]),
            dims,
        );
        kernel_bwd("attention", r);
        g.put(&qs, dq);
        g.put(&ks, dk);
        g.put(&vs, dv);
    }))
}
