//! Host helpers of the MoE routing kernels: router forward / backward, sort by expert, gather,
//! combine.

use super::{capped_grid, ensure, stride_dims};
use crate::kernels::permute;
use crate::launcher::{LaunchDims, LaunchError, Launcher};
use crate::simt::{Dim3, Gmem};

/// How the router turns logits into routing scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scoring {
    /// `softmax(l̃ / temperature)` (temperature > 0).
    Softmax {
        /// Softmax temperature.
        temperature: f32,
    },
    /// `sigmoid(l̃)` (DeepSeek-V3), routing distribution `s / sum(s)`.
    Sigmoid,
}

impl Scoring {
    /// `(inv_temp, sigmoid flag)` as the kernels take them.
    fn kernel_args(self) -> (f32, u32) {
        match self {
            Scoring::Softmax { temperature } => (1.0 / temperature, 0),
            Scoring::Sigmoid => (1.0, 1),
        }
    }

    fn check(self) -> Result<(), LaunchError> {
        match self {
            Scoring::Softmax { temperature } => {
                ensure(temperature > 0.0, || format!("router: temperature {temperature} must be positive"))
            }
            Scoring::Sigmoid => Ok(()),
        }
    }
}

/// Load-balance and z-loss statistics of one router forward.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterSums {
    /// Top-1 choices per expert `[E]`.
    pub counts: Vec<u32>,
    /// `sum_t q_tj` per expert `[E]` (`q`: the routing distribution).
    pub prob_sum: Vec<f32>,
    /// `sum_t lse_t^2`.
    pub lse2_sum: f32,
    /// Switch load-balance loss `E * sum_j (counts_j / N) * (prob_sum_j / N)`.
    pub lb_loss: f32,
    /// z-loss `lse2_sum / N`.
    pub z_loss: f32,
}

/// [`crate::kernels::router::router_forward`]: `probs [N, E]`, `choice`, `lse`, `entropy` `[N]` from
/// `logits`, with `noise [N, E]` (already scaled) added to the logits before scoring when given.
#[allow(clippy::too_many_arguments)]
pub fn router_forward<L: Launcher>(
    l: &L,
    probs: &mut [f32],
    choice: &mut [u32],
    lse: &mut [f32],
    entropy: &mut [f32],
    logits: &[f32],
    noise: Option<&[f32]>,
    bias: Option<&[f32]>,
    e: usize,
    scoring: Scoring,
) -> Result<RouterSums, LaunchError> {
    let n = choice.len();
    ensure(e > 0 && probs.len() == n * e && logits.len() == n * e && lse.len() == n && entropy.len() == n, || {
        format!("router: shapes do not match N={n} E={e}")
    })?;
    ensure(bias.is_none_or(|b| b.len() == e), || "router: bias is not [E]".into())?;
    ensure(noise.is_none_or(|z| z.len() == n * e), || "router: noise is not [N, E]".into())?;
    scoring.check()?;
    let (mut counts, mut prob_sum, mut lse2) = (vec![0u32; e], vec![0f32; e], [0f32]);
    if n > 0 {
        let (pm, cm, lm, em) =
            (l.output(probs, false)?, l.output(choice, false)?, l.output(lse, false)?, l.output(entropy, false)?);
        let (cnm, psm, l2m) =
            (l.output(&mut counts, true)?, l.output(&mut prob_sum, true)?, l.output(&mut lse2, true)?);
        let xm = l.input(logits)?;
        let bm = bias.map(|b| l.input(b)).transpose()?;
        let b = bm.as_ref().map_or(Gmem::null(), |m| l.ptr(m));
        let zm = noise.map(|z| l.input(z)).transpose()?;
        let z = zm.as_ref().map_or(Gmem::null(), |m| l.ptr(m));
        let (inv_t, sig) = scoring.kernel_args();
        let block = l.block_threads();
        let dims = LaunchDims::linear(Dim3::x(n.div_ceil(block as usize) as u32), block);
        let (p, c, ls, en) = (l.ptr(&pm), l.ptr(&cm), l.ptr(&lm), l.ptr(&em));
        let (cn, ps, l2) = (l.ptr(&cnm), l.ptr(&psm), l.ptr(&l2m));
        // SAFETY: probs/logits/noise hold N*E, choice/lse/entropy N, counts/prob_sum/bias E, lse2 1
        // elements; one thread per token.
        unsafe { l.router_forward(dims, p, c, ls, en, cn, ps, l2, l.ptr(&xm), z, b, n, e, inv_t, sig) }?;
        l.read_back(&pm, probs)?;
        l.read_back(&cm, choice)?;
        l.read_back(&lm, lse)?;
        l.read_back(&em, entropy)?;
        l.read_back(&cnm, &mut counts)?;
        l.read_back(&psm, &mut prob_sum)?;
        l.read_back(&l2m, &mut lse2)?;
    }
    let nf = n.max(1) as f64;
    let lb = e as f64 * counts.iter().zip(&prob_sum).map(|(&c, &p)| c as f64 * p as f64).sum::<f64>() / (nf * nf);
    let z_loss = (lse2[0] as f64 / nf) as f32;
    Ok(RouterSums { counts, prob_sum, lse2_sum: lse2[0], lb_loss: lb as f32, z_loss })
}

/// [`crate::kernels::router::router_backward`]: accumulates into `dlogits [N, E]` the gradients of the routed
/// weight (`dgate`, with `expert_of_token`), of `dlb * lb_loss` and of `dz * z_loss`.
#[allow(clippy::too_many_arguments)]
pub fn router_backward<L: Launcher>(
    l: &L,
    dlogits: &mut [f32],
    dgate: Option<(&[f32], &[u32])>,
    probs: &[f32],
    logits: &[f32],
    lse: &[f32],
    counts: &[u32],
    dlb: f32,
    dz: f32,
    e: usize,
    scoring: Scoring,
) -> Result<(), LaunchError> {
    let n = lse.len();
    scoring.check()?;
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
    let (pm, xm, lsm) = (l.input(probs)?, l.input(logits)?, l.input(lse)?);
    let dlm = l.output(dlogits, true)?;
    let gate = dgate.map(|(g, x)| Ok::<_, LaunchError>((l.input(g)?, l.input(x)?))).transpose()?;
    let (dg, ex) = gate.as_ref().map_or((Gmem::null(), Gmem::null()), |(g, x)| (l.ptr(g), l.ptr(x)));
    let cm = if dlb != 0.0 { Some(l.input(&coeff)?) } else { None };
    let lc = cm.as_ref().map_or(Gmem::null(), |m| l.ptr(m));
    let ((inv_t, sig), z_scale) = (scoring.kernel_args(), 2.0 * dz / n as f32);
    let block = l.block_threads();
    let dims = LaunchDims::linear(Dim3::x(n.div_ceil(block as usize) as u32), block);
    let (dl, p, x, ls) = (l.ptr(&dlm), l.ptr(&pm), l.ptr(&xm), l.ptr(&lsm));
    // SAFETY: dlogits/probs/logits hold N*E, lse/dgate/expert_of_token N, coeff E elements.
    unsafe { l.router_backward(dims, dl, dg, ex, lc, p, x, ls, n, e, inv_t, z_scale, sig) }?;
    l.read_back(&dlm, dlogits)
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
pub fn sort_by_expert<L: Launcher>(l: &L, expert_of_token: &[u32], e: usize) -> Result<Sorted, LaunchError> {
    let n = expert_of_token.len();
    ensure(e > 0 && n < u32::MAX as usize, || format!("sort: E={e} N={n}"))?;
    let (mut order, mut offsets, mut inv) = (vec![0u32; n], vec![0u32; e + 1], vec![0u32; n]);
    let (om, offm, ivm) = (l.output(&mut order, false)?, l.output(&mut offsets, false)?, l.output(&mut inv, false)?);
    let xm = l.input(expert_of_token)?;
    let block = l.block_threads();
    let shared = permute::sort_shared_bytes(e, block as usize) as u32;
    let dims = LaunchDims { grid: Dim3::x(1), block: Dim3::x(block), shared_bytes: shared };
    // SAFETY: order/inv/expert_of_token hold N, offsets E+1 elements; one block as the kernel requires.
    unsafe { l.sort_by_expert(dims, l.ptr(&om), l.ptr(&offm), l.ptr(&ivm), l.ptr(&xm), n, e) }?;
    l.read_back(&om, &mut order)?;
    l.read_back(&offm, &mut offsets)?;
    l.read_back(&ivm, &mut inv)?;
    order.truncate(offsets[e] as usize);
    Ok(Sorted { order, offsets, inv })
}

fn check_offsets(offsets: &[u32], order: usize) -> Result<usize, LaunchError> {
    ensure(offsets.len() >= 2 && offsets[offsets.len() - 1] as usize <= order, || "permute: bad offsets".into())?;
    Ok(offsets.len() - 1)
}

/// [`permute::gather_forward`]: `xp [Nk, D] = x[order]`.
pub fn gather_forward<L: Launcher>(
    l: &L,
    xp: &mut [f32],
    x: &[f32],
    order: &[u32],
    offsets: &[u32],
    d: usize,
) -> Result<(), LaunchError> {
    let e = check_offsets(offsets, order.len())?;
    let nk = offsets[e] as usize;
    ensure(d > 0 && xp.len() == nk * d && x.len().is_multiple_of(d), || "gather: shapes".into())?;
    ensure(order.iter().all(|&t| (t as usize) < x.len() / d), || "gather: token outside x".into())?;
    if nk == 0 {
        return Ok(());
    }
    let (xm, orm, offm, om) = (l.input(x)?, l.input(order)?, l.input(offsets)?, l.output(xp, false)?);
    let dims = stride_dims(l, nk * d, l.block_threads() as usize);
    // SAFETY: xp holds Nk*D, x N*D, order Nk, offsets E+1 elements; every order entry is a row of x.
    unsafe { l.gather_forward(dims, l.ptr(&om), l.ptr(&xm), l.ptr(&orm), l.ptr(&offm), e, d) }?;
    l.read_back(&om, xp)
}

/// [`permute::gather_backward`]: `dx[t] += dxp[inv[t]]`.
pub fn gather_backward<L: Launcher>(
    l: &L,
    dx: &mut [f32],
    dxp: &[f32],
    inv: &[u32],
    d: usize,
) -> Result<(), LaunchError> {
    let n = inv.len();
    ensure(d > 0 && dx.len() == n * d && dxp.len().is_multiple_of(d), || "gather backward: shapes".into())?;
    ensure(inv.iter().all(|&p| p == permute::NONE || (p as usize) < dxp.len() / d), || "gather backward: inv".into())?;
    if n == 0 {
        return Ok(());
    }
    let (gm, ivm, om) = (l.input(dxp)?, l.input(inv)?, l.output(dx, true)?);
    let dims = stride_dims(l, n * d, l.block_threads() as usize);
    // SAFETY: dx holds N*D, inv N elements; every inv entry is NONE or a row of dxp.
    unsafe { l.gather_backward(dims, l.ptr(&om), l.ptr(&gm), l.ptr(&ivm), n, d) }?;
    l.read_back(&om, dx)
}

/// [`permute::combine_forward`]: `out[t] = weights[inv[t]] * yp[inv[t]]` (zero rows without one).
pub fn combine_forward<L: Launcher>(
    l: &L,
    out: &mut [f32],
    yp: &[f32],
    weights: Option<&[f32]>,
    inv: &[u32],
    d: usize,
) -> Result<(), LaunchError> {
    let n = inv.len();
    let nk = yp.len() / d.max(1);
    ensure(d > 0 && out.len() == n * d && yp.len() == nk * d, || "combine: shapes".into())?;
    ensure(weights.is_none_or(|w| w.len() == nk), || "combine: weights are not [Nk]".into())?;
    ensure(inv.iter().all(|&p| p == permute::NONE || (p as usize) < nk), || "combine: inv".into())?;
    if n == 0 {
        return Ok(());
    }
    let (ym, ivm, om) = (l.input(yp)?, l.input(inv)?, l.output(out, false)?);
    let wm = weights.map(|w| l.input(w)).transpose()?;
    let w = wm.as_ref().map_or(Gmem::null(), |m| l.ptr(m));
    let dims = stride_dims(l, n * d, l.block_threads() as usize);
    // SAFETY: out holds N*D, yp Nk*D, weights Nk, inv N elements; inv entries are NONE or rows of yp.
    unsafe { l.combine_forward(dims, l.ptr(&om), l.ptr(&ym), w, l.ptr(&ivm), n, d) }?;
    l.read_back(&om, out)
}

/// [`permute::combine_backward`]: accumulates `dyp [Nk, D]` and (when given) `dweights [Nk]`.
#[allow(clippy::too_many_arguments)]
pub fn combine_backward<L: Launcher>(
    l: &L,
    dyp: &mut [f32],
    dweights: Option<&mut [f32]>,
    dout: &[f32],
    yp: &[f32],
    weights: Option<&[f32]>,
    order: &[u32],
    offsets: &[u32],
    d: usize,
) -> Result<(), LaunchError> {
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
    let (gm, ym, orm, offm) = (l.input(dout)?, l.input(yp)?, l.input(order)?, l.input(offsets)?);
    let dym = l.output(dyp, true)?;
    let wm = weights.map(|w| l.input(w)).transpose()?;
    let w = wm.as_ref().map_or(Gmem::null(), |m| l.ptr(m));
    let mut dweights = dweights;
    let dwm = match dweights.as_deref_mut() {
        Some(dw) => Some(l.output(dw, true)?),
        None => None,
    };
    let dw = dwm.as_ref().map_or(Gmem::null(), |m| l.ptr(m));
    let dims = LaunchDims::linear(capped_grid(l, nk, 1), l.block_threads());
    let (dy, g, y) = (l.ptr(&dym), l.ptr(&gm), l.ptr(&ym));
    // SAFETY: dyp/yp hold Nk*D, dweights/weights/order Nk, offsets E+1 elements; order rows are in dout.
    unsafe { l.combine_backward(dims, dy, dw, g, y, w, l.ptr(&orm), l.ptr(&offm), e, d) }?;
    l.read_back(&dym, dyp)?;
    if let (Some(m), Some(host)) = (dwm.as_ref(), dweights) {
        l.read_back(m, host)?;
    }
    Ok(())
}
