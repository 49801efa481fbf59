//! Host helpers of the MoE routing kernels: router forward / backward, sort by expert, gather,
//! combine.

use super::{capped_grid, ensure, rd, wr, SIM_BLOCK};
use crate::kernels::{permute, router};
use crate::sim::{launch, SimError};
use crate::simt::{Dim3, Gmem};

/// Load-balance and z-loss statistics of one router forward.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterSums {
    /// Top-1 choices per expert `[E]`.
    pub counts: Vec<u32>,
    /// `sum_t p_tj` per expert `[E]`.
    pub prob_sum: Vec<f32>,
    /// `sum_t lse_t^2`.
    pub lse2_sum: f32,
    /// Switch load-balance loss `E * sum_j (counts_j / N) * (prob_sum_j / N)`.
    pub lb_loss: f32,
    /// z-loss `lse2_sum / N`.
    pub z_loss: f32,
}

/// [`router::router_forward`]: `probs [N, E]`, `choice`, `lse`, `entropy` `[N]` from `logits`.
#[allow(clippy::too_many_arguments)]
pub fn router_forward(
    probs: &mut [f32],
    choice: &mut [u32],
    lse: &mut [f32],
    entropy: &mut [f32],
    logits: &[f32],
    bias: Option<&[f32]>,
    e: usize,
    temperature: f32,
) -> Result<RouterSums, SimError> {
    let n = choice.len();
    ensure(e > 0 && probs.len() == n * e && logits.len() == n * e && lse.len() == n && entropy.len() == n, || {
        format!("router: shapes do not match N={n} E={e}")
    })?;
    ensure(bias.is_none_or(|b| b.len() == e), || "router: bias is not [E]".into())?;
    ensure(temperature > 0.0, || format!("router: temperature {temperature} must be positive"))?;
    let (mut counts, mut prob_sum, mut lse2) = (vec![0u32; e], vec![0f32; e], [0f32]);
    if n > 0 {
        let (p, c, l, en) = (wr(probs), wr(choice), wr(lse), wr(entropy));
        let (cn, ps, l2, x) = (wr(&mut counts), wr(&mut prob_sum), wr(&mut lse2), rd(logits));
        let b = bias.map_or(Gmem::null(), rd);
        let inv_t = 1.0 / temperature;
        launch(Dim3::x(n.div_ceil(SIM_BLOCK as usize) as u32), Dim3::x(SIM_BLOCK), 0, |ctx| {
            router::router_forward(ctx, p, c, l, en, cn, ps, l2, x, b, n, e, inv_t)
        })?;
    }
    let nf = n.max(1) as f64;
    let lb = e as f64 * counts.iter().zip(&prob_sum).map(|(&c, &p)| c as f64 * p as f64).sum::<f64>() / (nf * nf);
    let z_loss = (lse2[0] as f64 / nf) as f32;
    Ok(RouterSums { counts, prob_sum, lse2_sum: lse2[0], lb_loss: lb as f32, z_loss })
}

/// [`router::router_backward`]: accumulates into `dlogits [N, E]` the gradients of the routed
/// weight (`dgate`, with `expert_of_token`), of `dlb * lb_loss` and of `dz * z_loss`.
#[allow(clippy::too_many_arguments)]
pub fn router_backward(
    dlogits: &mut [f32],
    dgate: Option<(&[f32], &[u32])>,
    probs: &[f32],
    logits: &[f32],
    lse: &[f32],
    counts: &[u32],
    dlb: f32,
    dz: f32,
    e: usize,
    temperature: f32,
) -> Result<(), SimError> {
    let n = lse.len();
    ensure(
        e > 0 && dlogits.len() == n * e && probs.len() == n * e && logits.len() == n * e && counts.len() == e,
        || format!("router backward: shapes do not match N={n} E={e}"),
    )?;
    ensure(dgate.is_none_or(|(g, x)| g.len() == n && x.len() == n), || "router backward: dgate is not [N]".into())?;
    if n == 0 {
        return Ok(());
    }
    let nf = n as f64;
    let coeff: Vec<f32> = counts.iter().map(|&k| (dlb as f64 * e as f64 * k as f64 / (nf * nf)) as f32).collect();
    let (dl, p, l, ls) = (wr(dlogits), rd(probs), rd(logits), rd(lse));
    let (dg, ex) = dgate.map_or((Gmem::null(), Gmem::null()), |(g, x)| (rd(g), rd(x)));
    let lc = if dlb != 0.0 { rd(&coeff) } else { Gmem::null() };
    let (inv_t, z_scale) = (1.0 / temperature, 2.0 * dz / n as f32);
    launch(Dim3::x(n.div_ceil(SIM_BLOCK as usize) as u32), Dim3::x(SIM_BLOCK), 0, |ctx| {
        router::router_backward(ctx, dl, dg, ex, lc, p, l, ls, n, e, inv_t, z_scale)
    })
}

/// Result of [`sort_by_expert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sorted {
    /// Token of each permuted row `[Nk]`.
    pub order: Vec<u32>,
    /// `[E+1]` row offsets per expert.
    pub offsets: Vec<u32>,
    /// Permuted row of each token (`NONE`: none) `[N]`.
    pub inv: Vec<u32>,
}

/// [`permute::sort_by_expert`]: the stable counting sort of `expert_of_token [N]` over `e` experts.
pub fn sort_by_expert(expert_of_token: &[u32], e: usize) -> Result<Sorted, SimError> {
    let n = expert_of_token.len();
    ensure(e > 0 && n < u32::MAX as usize, || format!("sort: E={e} N={n}"))?;
    let (mut order, mut offsets, mut inv) = (vec![0u32; n], vec![0u32; e + 1], vec![0u32; n]);
    let (o, off, iv, x) = (wr(&mut order), wr(&mut offsets), wr(&mut inv), rd(expert_of_token));
    launch(Dim3::x(1), Dim3::x(SIM_BLOCK), permute::sort_shared_bytes(e, SIM_BLOCK as usize), |ctx| {
        permute::sort_by_expert(ctx, o, off, iv, x, n, e)
    })?;
    order.truncate(offsets[e] as usize);
    Ok(Sorted { order, offsets, inv })
}

fn check_offsets(offsets: &[u32], order: usize) -> Result<usize, SimError> {
    ensure(offsets.len() >= 2 && offsets[offsets.len() - 1] as usize <= order, || "permute: bad offsets".into())?;
    Ok(offsets.len() - 1)
}

/// [`permute::gather_forward`]: `xp [Nk, D] = x[order]`.
pub fn gather_forward(xp: &mut [f32], x: &[f32], order: &[u32], offsets: &[u32], d: usize) -> Result<(), SimError> {
    let e = check_offsets(offsets, order.len())?;
    let nk = offsets[e] as usize;
    ensure(d > 0 && xp.len() == nk * d && x.len().is_multiple_of(d), || "gather: shapes".into())?;
    ensure(order.iter().all(|&t| (t as usize) < x.len() / d), || "gather: token outside x".into())?;
    let (o, xx, or, off) = (wr(xp), rd(x), rd(order), rd(offsets));
    launch(capped_grid(nk * d, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        permute::gather_forward(ctx, o, xx, or, off, e, d)
    })
}

/// [`permute::gather_backward`]: `dx[t] += dxp[inv[t]]`.
pub fn gather_backward(dx: &mut [f32], dxp: &[f32], inv: &[u32], d: usize) -> Result<(), SimError> {
    let n = inv.len();
    ensure(d > 0 && dx.len() == n * d && dxp.len().is_multiple_of(d), || "gather backward: shapes".into())?;
    ensure(inv.iter().all(|&p| p == permute::NONE || (p as usize) < dxp.len() / d), || "gather backward: inv".into())?;
    let (o, g, iv) = (wr(dx), rd(dxp), rd(inv));
    launch(capped_grid(n * d, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        permute::gather_backward(ctx, o, g, iv, n, d)
    })
}

/// [`permute::combine_forward`]: `out[t] = weights[inv[t]] * yp[inv[t]]` (zero rows without one).
pub fn combine_forward(
    out: &mut [f32],
    yp: &[f32],
    weights: Option<&[f32]>,
    inv: &[u32],
    d: usize,
) -> Result<(), SimError> {
    let n = inv.len();
    let nk = yp.len() / d.max(1);
    ensure(d > 0 && out.len() == n * d && yp.len() == nk * d, || "combine: shapes".into())?;
    ensure(weights.is_none_or(|w| w.len() == nk), || "combine: weights are not [Nk]".into())?;
    ensure(inv.iter().all(|&p| p == permute::NONE || (p as usize) < nk), || "combine: inv".into())?;
    let (o, y, iv) = (wr(out), rd(yp), rd(inv));
    let w = weights.map_or(Gmem::null(), rd);
    launch(capped_grid(n * d, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        permute::combine_forward(ctx, o, y, w, iv, n, d)
    })
}

/// [`permute::combine_backward`]: accumulates `dyp [Nk, D]` and (when given) `dweights [Nk]`.
#[allow(clippy::too_many_arguments)]
pub fn combine_backward(
    dyp: &mut [f32],
    dweights: Option<&mut [f32]>,
    dout: &[f32],
    yp: &[f32],
    weights: Option<&[f32]>,
    order: &[u32],
    offsets: &[u32],
    d: usize,
) -> Result<(), SimError> {
    let e = check_offsets(offsets, order.len())?;
    let nk = offsets[e] as usize;
    ensure(d > 0 && dyp.len() == nk * d && yp.len() == nk * d && dout.len().is_multiple_of(d), || {
        "combine backward: shapes".into()
    })?;
    ensure(weights.is_none_or(|w| w.len() == nk), || "combine backward: weights".into())?;
    ensure(dweights.as_ref().is_none_or(|w| w.len() == nk), || "combine backward: dweights".into())?;
    ensure(order.iter().all(|&t| (t as usize) < dout.len() / d), || "combine backward: order".into())?;
    if nk == 0 {
        return Ok(());
    }
    let (dy, g, y, or, off) = (wr(dyp), rd(dout), rd(yp), rd(order), rd(offsets));
    let w = weights.map_or(Gmem::null(), rd);
    let dw = dweights.map_or(Gmem::null(), wr);
    launch(capped_grid(nk, 1), Dim3::x(SIM_BLOCK), 0, |ctx| {
        permute::combine_backward(ctx, dy, dw, g, y, w, or, off, e, d)
    })
}
