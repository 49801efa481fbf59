//! Host helpers of the attention kernels (FlashAttention-2 style forward, backward in three launches).

use super::{capped_grid, ensure, rd, wr, SIM_BLOCK};
use crate::kernels::attention as attn;
use crate::sim::{launch, SimError};
use crate::simt::{Dim3, Gmem};

/// Attention dimensions (kernels-cpu `AttnDims`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch size B.
    pub b: usize,
    /// Tokens per sequence T.
    pub t: usize,
    /// Query heads H (a multiple of `kv`).
    pub h: usize,
    /// Key / value heads KV.
    pub kv: usize,
    /// Head dim Dh (at most [`attn::MAX_DH`]).
    pub dh: usize,
}

impl AttnShape {
    /// The score scale `1 / sqrt(Dh)`, rounded as kernels-cpu computes it.
    pub fn scale(&self) -> f32 {
        1.0 / (self.dh as f32).sqrt()
    }

    /// Checks the dimensions and the lengths of q `[B,T,H,Dh]`, k / v `[B,T,KV,Dh]`, seg `[B,T]`.
    fn check(&self, q: usize, k: usize, v: usize, seg: Option<&[u32]>) -> Result<(), SimError> {
        let AttnShape { b, t, h, kv, dh } = *self;
        ensure(kv > 0 && h.is_multiple_of(kv), || format!("attention: H={h} is not a multiple of KV={kv}"))?;
        ensure(dh > 0 && dh <= attn::MAX_DH, || format!("attention: Dh={dh} not in 1..={}", attn::MAX_DH))?;
        ensure(b <= 65535 && h <= 65535 && t.div_ceil(attn::DQ_BQ) <= u32::MAX as usize, || {
            format!("attention: grid too large for B={b} H={h} T={t}")
        })?;
        ensure(q == b * t * h * dh && k == b * t * kv * dh && v == k, || {
            format!("attention: q, k, v are not [B,T,H|KV,Dh] for {self:?}")
        })?;
        ensure(seg.is_none_or(|s| s.len() == b * t), || "attention: seg is not [B,T]".into())
    }
}

/// [`attn::attention_forward`]: `out` `[B,T,H,Dh]` and `lse` `[B,H,T]` from q, k, v and optional
/// document ids `seg` `[B,T]`.
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    s: AttnShape,
) -> Result<(), SimError> {
    s.check(q.len(), k.len(), v.len(), seg)?;
    ensure(out.len() == q.len() && lse.len() == s.b * s.h * s.t, || "attention: out / lse shapes".into())?;
    if q.is_empty() {
        return Ok(());
    }
    let (o, l, qq, kk, vv) = (wr(out), wr(lse), rd(q), rd(k), rd(v));
    let sg = seg.map_or(Gmem::null(), rd);
    let AttnShape { b, t, h, kv, dh } = s;
    let scale = s.scale();
    let grid = Dim3::new(t.div_ceil(attn::FWD_BQ) as u32, h as u32, b as u32);
    launch(grid, Dim3::x(attn::THREADS), attn::forward_shared_bytes(dh), |ctx| {
        attn::attention_forward(ctx, o, l, qq, kk, vv, sg, t, h, kv, dh, scale)
    })
}

/// [`attn::attention_backward_dvec`], then [`attn::attention_backward_dq`] and
/// [`attn::attention_backward_dkv`]: accumulates `dq`, `dk`, `dv` from `dout` and the forward's
/// `out`, `lse` and inputs.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    out: &[f32],
    lse: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    s: AttnShape,
) -> Result<(), SimError> {
    s.check(q.len(), k.len(), v.len(), seg)?;
    ensure(
        dq.len() == q.len()
            && dk.len() == k.len()
            && dv.len() == v.len()
            && dout.len() == q.len()
            && out.len() == q.len()
            && lse.len() == s.b * s.h * s.t,
        || "attention backward: dq, dk, dv, dout, out or lse shapes".into(),
    )?;
    if q.is_empty() {
        return Ok(());
    }
    let AttnShape { b, t, h, kv, dh } = s;
    let scale = s.scale();
    let mut dvec = vec![0f32; b * h * t];
    let (dvw, g, o) = (wr(&mut dvec), rd(dout), rd(out));
    launch(capped_grid(b * t * h, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        attn::attention_backward_dvec(ctx, dvw, g, o, b, t, h, dh)
    })?;
    let (dqq, dkk, dvv, l, dvr) = (wr(dq), wr(dk), wr(dv), rd(lse), rd(&dvec));
    let (qq, kk, vv) = (rd(q), rd(k), rd(v));
    let sg = seg.map_or(Gmem::null(), rd);
    let grid = Dim3::new(t.div_ceil(attn::DQ_BQ) as u32, h as u32, b as u32);
    launch(grid, Dim3::x(attn::THREADS), attn::dq_shared_bytes(dh), |ctx| {
        attn::attention_backward_dq(ctx, dqq, g, l, dvr, qq, kk, vv, sg, t, h, kv, dh, scale)
    })?;
    let grid = Dim3::new(t.div_ceil(attn::DKV_BK) as u32, kv as u32, b as u32);
    launch(grid, Dim3::x(attn::THREADS), attn::dkv_shared_bytes(dh), |ctx| {
        attn::attention_backward_dkv(ctx, dkk, dvv, g, l, dvr, qq, kk, vv, sg, t, h, kv, dh, scale)
    })
}
