//! The naive reference path: per-token loops in f64, one token at a time through its expert,
//! written for clarity, not speed. [`moe_naive_f64`] also serves finite differences (f64 in).
//! Only the randomness ([`noise_sample`], [`dropout_sample`]) is shared with the fast path.

use super::router::{dropout_sample, noise_sample, router_stats, NONE};
use super::{capacity, AuxLoss, MoeDims, MoeForward, MoeParams, MoeSaved, RouterStats, RouterWeighting};

/// Everything the f64 reference forward computes.
#[derive(Clone, Debug)]
pub struct NaiveF64 {
    /// Settings of the call.
    pub params: MoeParams,
    /// Routed contribution [N, D].
    pub out: Vec<f64>,
    /// Unweighted expert output [N, D] (sum over experts in dense-equivalent mode, 0 if dropped).
    pub y: Vec<f64>,
    /// Routed weight in value `[N]` (`1`, or `p_e` for Prob; 0 if dropped).
    pub gate: Vec<f64>,
    /// Score of the kept expert `[N]`: `p_e` (softmax modes) or `s_e` (Sigmoid); 0 if dropped.
    pub gate_score: Vec<f64>,
    /// Raw logits [N, E].
    pub logits: Vec<f64>,
    /// Probabilities (softmax modes) or sigmoid scores [N, E].
    pub probs: Vec<f64>,
    /// Log-sum-exp of the raw logits `[N]`.
    pub lse: Vec<f64>,
    /// Top-1 choice before dropout and capacity `[N]`.
    pub choice: Vec<u32>,
    /// Kept expert `[N]` (`NONE`: dropped).
    pub expert_of_token: Vec<u32>,
    /// Top-1 choices per expert `[E]`.
    pub counts: Vec<usize>,
    /// Load-balance loss.
    pub lb_loss: f64,
    /// Z-loss.
    pub z_loss: f64,
    /// Router statistics.
    pub stats: RouterStats,
}

fn silu_parts(h: f64) -> (f64, f64) {
    let s = 1.0 / (1.0 + (-h).exp());
    (s, h * s)
}

/// One expert on one row: `(h `[W]`, u `[W]`, y `[D]`)`.
fn expert_row(wts: &[f64], x: &[f64], w: usize, d: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (gate, up, down) = (&wts[..w * d], &wts[w * d..2 * w * d], &wts[2 * w * d..]);
    let mut h = vec![0.0; w];
    let mut u = vec![0.0; w];
    for k in 0..w {
        for j in 0..d {
            h[k] += gate[k * d + j] * x[j];
            u[k] += up[k * d + j] * x[j];
        }
    }
    let mut y = vec![0.0; d];
    for i in 0..d {
        for k in 0..w {
            y[i] += down[i * w + k] * silu_parts(h[k]).1 * u[k];
        }
    }
    (h, u, y)
}

/// Backward of one expert on one row: accumulates `dx` `[D]` and `dwts` [3*W*D] from `dy` `[D]`.
fn expert_row_backward(dx: &mut [f64], dwts: &mut [f64], dy: &[f64], wts: &[f64], x: &[f64], w: usize, d: usize) {
    let (h, u, _) = expert_row(wts, x, w, d);
    let (gate, up, down) = (&wts[..w * d], &wts[w * d..2 * w * d], &wts[2 * w * d..]);
    for k in 0..w {
        let (s, silu) = silu_parts(h[k]);
        let mut da = 0.0;
        for i in 0..d {
            da += down[i * w + k] * dy[i];
            dwts[2 * w * d + i * w + k] += dy[i] * silu * u[k];
        }
        let dh = da * u[k] * s * (1.0 + h[k] * (1.0 - s));
        let du = da * silu;
        for j in 0..d {
            dwts[k * d + j] += dh * x[j];
            dwts[w * d + k * d + j] += du * x[j];
            dx[j] += gate[k * d + j] * dh + up[k * d + j] * du;
        }
    }
}

/// The reference forward on f64 inputs (`bias` `[E]` is added to the scores for the choice).
pub fn moe_naive_f64(
    x: &[f64],
    router: &[f64],
    experts: &[f64],
    bias: Option<&[f64]>,
    dims: MoeDims,
    params: &MoeParams,
) -> NaiveF64 {
    let MoeDims { n, d, e, w } = dims;
    let sigmoid_mode = params.weighting == RouterWeighting::Sigmoid;
    let (mut logits, mut probs) = (vec![0.0; n * e], vec![0.0; n * e]);
    let (mut lse, mut choice, mut entropy) = (vec![0.0; n], vec![0u32; n], vec![0f32; n]);
    for t in 0..n {
        let l = &mut logits[t * e..(t + 1) * e];
        for (j, lj) in l.iter_mut().enumerate() {
            *lj = (0..d).map(|k| x[t * d + k] * router[j * d + k]).sum();
        }
        let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        lse[t] = max + l.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
        let noisy: Vec<f64> = (0..e)
            .map(|j| {
                let noise = if params.router_noise > 0.0 { noise_sample(params.seed, t, j) } else { 0.0 };
                l[j] + params.router_noise as f64 * noise as f64
            })
            .collect();
        let p = &mut probs[t * e..(t + 1) * e];
        if sigmoid_mode {
            for j in 0..e {
                p[j] = 1.0 / (1.0 + (-noisy[j]).exp());
            }
        } else {
            let tau = params.temperature as f64;
            let m = noisy.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = noisy.iter().map(|&v| ((v - m) / tau).exp()).sum();
            for j in 0..e {
                p[j] = ((noisy[j] - m) / tau).exp() / z;
            }
        }
        let mut best = 0;
        for j in 1..e {
            let b = |i: usize| bias.map_or(0.0, |b| b[i]);
            if p[j] + b(j) > p[best] + b(best) {
                best = j;
            }
        }
        choice[t] = best as u32;
        let norm: f64 = if sigmoid_mode { p.iter().sum() } else { 1.0 };
        entropy[t] = -p.iter().map(|&v| v / norm).filter(|&q| q > 0.0).map(|q| q * q.ln()).sum::<f64>() as f32;
    }
    let mut counts = vec![0usize; e];
    for &c in &choice {
        counts[c as usize] += 1;
    }
    // Routing distribution q (softmax modes: p; Sigmoid: s / sum(s)).
    let q = |t: usize, i: usize| {
        let row = &probs[t * e..(t + 1) * e];
        row[i] / if sigmoid_mode { row.iter().sum() } else { 1.0 }
    };
    let mut lb_loss = 0.0;
    if n > 0 {
        for (i, &count) in counts.iter().enumerate() {
            let big_p: f64 = (0..n).map(|t| q(t, i)).sum::<f64>() / n as f64;
            lb_loss += count as f64 / n as f64 * big_p;
        }
        lb_loss *= e as f64;
    }
    let z_loss = if n > 0 { lse.iter().map(|v| v * v).sum::<f64>() / n as f64 } else { 0.0 };

    let mut ex = choice.clone();
    let (mut overflowed, mut dropped_out) = (0, 0);
    if !params.dense_equivalent {
        for (t, et) in ex.iter_mut().enumerate() {
            if params.expert_dropout > 0.0 && dropout_sample(params.seed, t) < params.expert_dropout {
                *et = NONE;
                dropped_out += 1;
            }
        }
        let cap = capacity(params.capacity_factor, n, e);
        for i in 0..e as u32 {
            let mut mine: Vec<usize> = (0..n).filter(|&t| ex[t] == i).collect();
            while mine.len() > cap {
                // Drop the lowest score; on ties the later token (`<=` keeps scanning).
                let mut worst = 0;
                for (k, &t) in mine.iter().enumerate() {
                    if probs[t * e + i as usize] <= probs[mine[worst] * e + i as usize] {
                        worst = k;
                    }
                }
                ex[mine.remove(worst)] = NONE;
                overflowed += 1;
            }
        }
    }

    let (mut out, mut y) = (vec![0.0; n * d], vec![0.0; n * d]);
    let (mut gate, mut gate_score) = (vec![0.0; n], vec![0.0; n]);
    for t in 0..n {
        let xt = &x[t * d..(t + 1) * d];
        let run = |i: usize| expert_row(&experts[i * 3 * w * d..(i + 1) * 3 * w * d], xt, w, d).2;
        let yt = &mut y[t * d..(t + 1) * d];
        if params.dense_equivalent {
            for i in 0..e {
                yt.iter_mut().zip(run(i)).for_each(|(a, b)| *a += b);
            }
            gate[t] = 1.0;
        } else if ex[t] != NONE {
            yt.copy_from_slice(&run(ex[t] as usize));
            gate_score[t] = probs[t * e + ex[t] as usize];
            gate[t] = if params.weighting == RouterWeighting::Prob { gate_score[t] } else { 1.0 };
        }
        for k in 0..d {
            out[t * d + k] = gate[t] * yt[k];
        }
    }
    let stats = router_stats(&counts, &entropy, overflowed, overflowed + dropped_out, n);
    NaiveF64 {
        params: *params,
        out,
        y,
        gate,
        gate_score,
        logits,
        probs,
        lse,
        choice,
        expert_of_token: ex,
        counts,
        lb_loss,
        z_loss,
        stats,
    }
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn add_into(dst: &mut [f32], src: &[f64]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s as f32);
}

pub(super) fn naive_forward(
    x: &[f32],
    router: &[f32],
    experts: &[f32],
    bias: Option<&[f32]>,
    dims: MoeDims,
    params: &MoeParams,
) -> MoeForward {
    let bias = bias.map(wide);
    let r = moe_naive_f64(&wide(x), &wide(router), &wide(experts), bias.as_deref(), dims, params);
    MoeForward {
        out: r.out.iter().map(|&v| v as f32).collect(),
        lb_loss: r.lb_loss as f32,
        z_loss: r.z_loss as f32,
        logits: r.logits.iter().map(|&v| v as f32).collect(),
        stats: r.stats.clone(),
        expert_of_token: r.expert_of_token.clone(),
        saved: MoeSaved::Naive(Box::new(r)),
    }
}

/// `dx += dl · router`, `drouter += dlᵀ · x` for one token's logit gradient `dl` `[E]`.
fn project_row(dx: &mut [f64], drouter: &mut [f64], dl: &[f64], xt: &[f64], router: &[f64], d: usize) {
    for (j, &g) in dl.iter().enumerate() {
        for k in 0..d {
            dx[k] += g * router[j * d + k];
            drouter[j * d + k] += g * xt[k];
        }
    }
}

/// `dx += dl · router`, `drouter += dlᵀ · x` over all tokens (`dl` [N, E]), in f64, added into f32.
fn project_rows(dx: &mut [f32], drouter: &mut [f32], dl: &[f64], x: &[f32], router: &[f32], dims: MoeDims) {
    let MoeDims { n, d, e, .. } = dims;
    let (x, router) = (wide(x), wide(router));
    let (mut gx, mut gr) = (vec![0.0; n * d], vec![0.0; e * d]);
    for t in 0..n {
        project_row(&mut gx[t * d..(t + 1) * d], &mut gr, &dl[t * e..(t + 1) * e], &x[t * d..(t + 1) * d], &router, d);
    }
    add_into(dx, &gx);
    add_into(drouter, &gr);
}

/// Gradients of `sum(out * dout)` in f64: (dx through the experts [N, D], dlogits through the
/// routed weight [N, E], dexperts [E, 3*W*D]).
fn out_grads(dout: &[f32], x: &[f32], experts: &[f32], s: &NaiveF64, dims: MoeDims) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let MoeDims { n, d, e, w } = dims;
    let (x, experts) = (wide(x), wide(experts));
    let (mut gx, mut gl, mut ge) = (vec![0.0; n * d], vec![0.0; n * e], vec![0.0; experts.len()]);
    let len = 3 * w * d;
    for t in 0..n {
        let xt = &x[t * d..(t + 1) * d];
        let go: Vec<f64> = dout[t * d..(t + 1) * d].iter().map(|&v| v as f64).collect();
        let gxt = &mut gx[t * d..(t + 1) * d];
        if s.params.dense_equivalent {
            for i in 0..e {
                expert_row_backward(
                    gxt,
                    &mut ge[i * len..(i + 1) * len],
                    &go,
                    &experts[i * len..(i + 1) * len],
                    xt,
                    w,
                    d,
                );
            }
            continue;
        }
        let ex = s.expert_of_token[t];
        if ex == NONE {
            continue;
        }
        let i = ex as usize;
        let dy: Vec<f64> = go.iter().map(|&v| v * s.gate[t]).collect();
        expert_row_backward(gxt, &mut ge[i * len..(i + 1) * len], &dy, &experts[i * len..(i + 1) * len], xt, w, d);
        // dL/dg = <dout, y>; g (or its straight-through surrogate) is p_e or s_e.
        let dgate: f64 = go.iter().zip(&s.y[t * d..(t + 1) * d]).map(|(a, b)| a * b).sum();
        let p = &s.probs[t * e..(t + 1) * e];
        let dl = &mut gl[t * e..(t + 1) * e];
        if s.params.weighting == RouterWeighting::Sigmoid {
            dl[i] = dgate * p[i] * (1.0 - p[i]);
        } else {
            for j in 0..e {
                let delta = if i == j { 1.0 } else { 0.0 };
                dl[j] = dgate * p[i] * (delta - p[j]) / s.params.temperature as f64;
            }
        }
    }
    (gx, gl, ge)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn naive_backward_out(
    dx: &mut [f32],
    drouter: &mut [f32],
    dexperts: &mut [f32],
    dout: &[f32],
    x: &[f32],
    router: &[f32],
    experts: &[f32],
    s: &NaiveF64,
    dims: MoeDims,
) {
    let (gx, gl, ge) = out_grads(dout, x, experts, s, dims);
    add_into(dx, &gx);
    add_into(dexperts, &ge);
    project_rows(dx, drouter, &gl, x, router, dims);
}

#[allow(clippy::too_many_arguments)]
pub(super) fn naive_backward_out_logits(
    dx: &mut [f32],
    dlogits: &mut [f32],
    dexperts: &mut [f32],
    dout: &[f32],
    x: &[f32],
    experts: &[f32],
    s: &NaiveF64,
    dims: MoeDims,
) {
    let (gx, gl, ge) = out_grads(dout, x, experts, s, dims);
    add_into(dx, &gx);
    add_into(dlogits, &gl);
    add_into(dexperts, &ge);
}

/// `dloss * d aux / d logits` [N, E] in f64.
fn aux_grads(which: AuxLoss, dloss: f32, s: &NaiveF64, dims: MoeDims) -> Vec<f64> {
    let MoeDims { n, e, .. } = dims;
    let mut gl = vec![0.0; n * e];
    let (dloss, nf, tau) = (dloss as f64, n as f64, s.params.temperature as f64);
    for t in 0..n {
        let dl = &mut gl[t * e..(t + 1) * e];
        let l = &s.logits[t * e..(t + 1) * e];
        let p = &s.probs[t * e..(t + 1) * e];
        match which {
            AuxLoss::Z => {
                for j in 0..e {
                    dl[j] = dloss * 2.0 * s.lse[t] / nf * (l[j] - s.lse[t]).exp();
                }
            }
            AuxLoss::LoadBalance => {
                // d lb / d q_ti = E f_i / N; chain through q's Jacobian, one entry at a time.
                let c: Vec<f64> = s.counts.iter().map(|&k| dloss * e as f64 * (k as f64 / nf) / nf).collect();
                if s.params.weighting == RouterWeighting::Sigmoid {
                    let sum: f64 = p.iter().sum();
                    for j in 0..e {
                        let mut ds = 0.0;
                        for i in 0..e {
                            let delta = if i == j { 1.0 } else { 0.0 };
                            ds += c[i] * (delta - p[i] / sum) / sum;
                        }
                        dl[j] = ds * p[j] * (1.0 - p[j]);
                    }
                } else {
                    for j in 0..e {
                        for i in 0..e {
                            let delta = if i == j { 1.0 } else { 0.0 };
                            dl[j] += c[i] * p[i] * (delta - p[j]) / tau;
                        }
                    }
                }
            }
        }
    }
    gl
}

#[allow(clippy::too_many_arguments)]
pub(super) fn naive_backward_aux(
    dx: &mut [f32],
    drouter: &mut [f32],
    which: AuxLoss,
    dloss: f32,
    x: &[f32],
    router: &[f32],
    s: &NaiveF64,
    dims: MoeDims,
) {
    project_rows(dx, drouter, &aux_grads(which, dloss, s, dims), x, router, dims);
}

pub(super) fn naive_backward_aux_logits(dlogits: &mut [f32], which: AuxLoss, dloss: f32, s: &NaiveF64, dims: MoeDims) {
    add_into(dlogits, &aux_grads(which, dloss, s, dims));
}

/// Backward of the router projection in f64 from an f32 `dlogits` [N, E].
pub(super) fn naive_backward_logits(
    dx: &mut [f32],
    drouter: &mut [f32],
    dlogits: &[f32],
    x: &[f32],
    router: &[f32],
    dims: MoeDims,
) {
    project_rows(dx, drouter, &wide(dlogits), x, router, dims);
}
