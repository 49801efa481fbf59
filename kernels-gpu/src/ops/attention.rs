//! Host sequences of the attention kernels (FlashAttention-2 style forward, backward in three launches).

use super::{ensure, stride_dims};
use crate::kernels::attention as attn;
use crate::launcher::{LaunchDims, LaunchError, Launcher};
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
    fn check(&self, q: usize, k: usize, v: usize, seg: Option<&[u32]>) -> Result<(), LaunchError> {
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
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<L: Launcher>(
    l: &L,
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    s: AttnShape,
) -> Result<(), LaunchError> {
    s.check(q.len(), k.len(), v.len(), seg)?;
    ensure(out.len() == q.len() && lse.len() == s.b * s.h * s.t, || "attention: out / lse shapes".into())?;
    if q.is_empty() {
        return Ok(());
    }
    let (qm, km, vm) = (l.input(q)?, l.input(k)?, l.input(v)?);
    let (om, lm) = (l.output(out, false)?, l.output(lse, false)?);
    let sm = seg.map(|sg| l.input(sg)).transpose()?;
    let sg = sm.as_ref().map_or(Gmem::null(), |m| l.ptr(m));
    let AttnShape { b, t, h, kv, dh } = s;
    let scale = s.scale();
    let grid = Dim3::new(t.div_ceil(attn::FWD_BQ) as u32, h as u32, b as u32);
    let dims = LaunchDims { grid, block: Dim3::x(attn::THREADS), shared_bytes: attn::forward_shared_bytes(dh) as u32 };
    let (o, ls) = (l.ptr(&om), l.ptr(&lm));
    // SAFETY: q/out hold B*T*H*Dh, k/v B*T*KV*Dh, lse B*H*T, seg B*T elements (checked); the grid
    // is one block per query tile, head and sequence as the kernel requires.
    unsafe { l.attention_forward(dims, o, ls, l.ptr(&qm), l.ptr(&km), l.ptr(&vm), sg, t, h, kv, dh, scale) }?;
    l.read_back(&om, out)?;
    l.read_back(&lm, lse)
}

/// [`attn::attention_backward_dvec`], then [`attn::attention_backward_dq`] and
/// [`attn::attention_backward_dkv`]: accumulates `dq`, `dk`, `dv` from `dout` and the forward's
/// `out`, `lse` and inputs.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<L: Launcher>(
    l: &L,
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
) -> Result<(), LaunchError> {
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
    let dvecm = l.scratch::<f32>(b * h * t)?;
    let (gm, om, lm) = (l.input(dout)?, l.input(out)?, l.input(lse)?);
    let (qm, km, vm) = (l.input(q)?, l.input(k)?, l.input(v)?);
    let (dqm, dkm, dvm) = (l.output(dq, true)?, l.output(dk, true)?, l.output(dv, true)?);
    let sm = seg.map(|sg| l.input(sg)).transpose()?;
    let sg = sm.as_ref().map_or(Gmem::null(), |m| l.ptr(m));
    let (dvr, g, ls) = (l.ptr(&dvecm), l.ptr(&gm), l.ptr(&lm));
    let (qq, kk, vv) = (l.ptr(&qm), l.ptr(&km), l.ptr(&vm));
    let dims = stride_dims(l, b * t * h, l.block_threads() as usize);
    // SAFETY (all three launches): buffers of the checked shapes; dvec holds B*H*T elements.
    unsafe { l.attention_backward_dvec(dims, dvr, g, l.ptr(&om), b, t, h, dh) }?;
    let block = Dim3::x(attn::THREADS);
    let grid = Dim3::new(t.div_ceil(attn::DQ_BQ) as u32, h as u32, b as u32);
    let dims = LaunchDims { grid, block, shared_bytes: attn::dq_shared_bytes(dh) as u32 };
    unsafe { l.attention_backward_dq(dims, l.ptr(&dqm), g, ls, dvr, qq, kk, vv, sg, t, h, kv, dh, scale) }?;
    let grid = Dim3::new(t.div_ceil(attn::DKV_BK) as u32, kv as u32, b as u32);
    let dims = LaunchDims { grid, block, shared_bytes: attn::dkv_shared_bytes(dh) as u32 };
    let (dkk, dvv) = (l.ptr(&dkm), l.ptr(&dvm));
    unsafe { l.attention_backward_dkv(dims, dkk, dvv, g, ls, dvr, qq, kk, vv, sg, t, h, kv, dh, scale) }?;
    l.read_back(&dqm, dq)?;
    l.read_back(&dkm, dk)?;
    l.read_back(&dvm, dv)
}
