//! Top-1 softmax router over precomputed logits (`x · routerᵀ` is a GEMM): probabilities with
//! temperature, top-1 choice, logsumexp for the z-loss, per-token entropy, and the load-balance
//! statistics; and the backward of the routed weight, the load-balance loss and the z-loss.
//! Every weighting of kernels-cpu `moe::router`: softmax (`Ste` / `Prob`) and sigmoid scores, with
//! the router noise the host draws (kernels-cpu's counter-based samples, so both backends agree).
//!
//! Shapes: `logits`, `probs`, `dlogits` `[N, E]`; `choice`, `lse`, `entropy`, `dgate`,
//! `expert_of_token` `[N]`; `counts` (u32), `prob_sum`, `lb_coeff`, `bias` `[E]`; `lse2_sum` `[1]`.

use super::reduce::warp_sum;
use crate::simt::{Gmem, Simt};

/// Marks a token without a routed expert.
pub const NONE: u32 = u32::MAX;

/// Logistic function, written as kernels-cpu writes it (no overflow for either sign).
#[inline(always)]
fn sigmoid<C: Simt>(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + C::exp(-v))
    } else {
        let e = C::exp(v);
        e / (1.0 + e)
    }
}

/// Routes token `t = global thread`. With `l̃ = logits[t] + noise[t]` (noise: the host's
/// pre-scaled Gaussian noise `[N, E]`, or null): `probs[t] = softmax(l̃ * inv_temp)` (max-shifted;
/// `sigmoid == 0`) or the sigmoid scores `sigmoid(l̃)` (`sigmoid != 0`, DeepSeek-V3; no
/// temperature); `choice[t] = argmax(probs[t] + bias)` (ties: lowest expert), `lse[t] =
/// logsumexp(logits[t])` of the raw logits, `entropy[t] = -sum q ln q` of the routing
/// distribution `q = p` (softmax) or `s / sum(s)` (sigmoid); accumulates `counts[choice] += 1`,
/// `prob_sum[j] += sum_t q_tj` and `lse2_sum[0] += sum_t lse_t^2` (per-warp sums, then one atomic
/// per warp). From these the host gets `lb = E * sum_j (counts_j / N) * (prob_sum_j / N)` and
/// `z = lse2_sum / N`.
///
/// Launch: grid `(ceil(N / block), 1, 1)`, block a multiple of 32 (GPU 128, sim 128), no shared
/// memory. Every thread of a warp takes part in the warp sums (threads past N add zeros).
#[allow(clippy::too_many_arguments)]
pub fn router_forward<C: Simt>(
    ctx: &C,
    probs: Gmem<f32>,
    choice: Gmem<u32>,
    lse: Gmem<f32>,
    entropy: Gmem<f32>,
    counts: Gmem<u32>,
    prob_sum: Gmem<f32>,
    lse2_sum: Gmem<f32>,
    logits: Gmem<f32>,
    noise: Gmem<f32>,
    bias: Gmem<f32>,
    n: usize,
    e: usize,
    inv_temp: f32,
    sigmoid_mode: u32,
) {
    let t = ctx.block_idx().x as usize * ctx.block_dim().x as usize + ctx.thread_idx().x as usize;
    let live = t < n;
    let lane0 = ctx.lane_id() == 0;
    let (mut my_lse, mut norm) = (0f32, 1f32);
    // SAFETY: all row accesses are guarded by `live` (t < n, j < e); probs row t is this thread's.
    unsafe {
        if live {
            let (l, p) = (logits.add(t * e), probs.add(t * e));
            let mut max = f32::NEG_INFINITY;
            for j in 0..e {
                max = max.max(l.read(j));
            }
            let mut s = 0f32;
            for j in 0..e {
                s += C::exp(l.read(j) - max);
            }
            my_lse = max + C::ln(s);
            let noisy = |j: usize| if noise.is_null() { l.read(j) } else { l.read(j) + noise.read(t * e + j) };
            if sigmoid_mode != 0 {
                norm = 0.0;
                for j in 0..e {
                    let x = sigmoid::<C>(noisy(j));
                    p.write(j, x);
                    norm += x;
                }
            } else {
                // Temperature softmax, shifted by the max (temperature > 0 keeps the argmax).
                let mut m = f32::NEG_INFINITY;
                for j in 0..e {
                    m = m.max(noisy(j));
                }
                let mut sum = 0f32;
                for j in 0..e {
                    let x = C::exp((noisy(j) - m) * inv_temp);
                    p.write(j, x);
                    sum += x;
                }
                for j in 0..e {
                    p.write(j, p.read(j) / sum);
                }
            }
            let (mut best, mut best_score, mut ent) = (0usize, f32::NEG_INFINITY, 0f32);
            for j in 0..e {
                let pj = p.read(j);
                let score = pj + if bias.is_null() { 0.0 } else { bias.read(j) };
                if score > best_score {
                    (best, best_score) = (j, score);
                }
                let q = pj / norm;
                if q > 0.0 {
                    ent -= q * C::ln(q);
                }
            }
            choice.write(t, best as u32);
            lse.write(t, my_lse);
            entropy.write(t, ent);
            ctx.atomic_add_u32(counts, best, 1);
        }
        for j in 0..e {
            let q = if live { probs.read(t * e + j) / norm } else { 0.0 };
            let total = warp_sum(ctx, q);
            if lane0 {
                ctx.atomic_add_f32(prob_sum, j, total);
            }
        }
        let z = warp_sum(ctx, my_lse * my_lse);
        if lane0 {
            ctx.atomic_add_f32(lse2_sum, 0, z);
        }
    }
}

/// Accumulates into `dlogits[t]` (one thread per token), softmax mode (`sigmoid_mode == 0`):
/// - routed weight (when `dgate` is not null and the token has an expert `c`):
///   `dgate_t * p_c * (δ_cj - p_j) * inv_temp`;
/// - load balance (when `lb_coeff` is not null, `lb_coeff_j = dlb * E * counts_j / N^2`):
///   `p_j * (lb_coeff_j - sum_i p_i lb_coeff_i) * inv_temp`;
///
/// sigmoid mode (`probs` holds the scores `s`, `S = sum s`):
/// - routed weight: `dgate_t * s_c (1 - s_c)` at `j = c`;
/// - load balance through `q = s / S`: `(lb_coeff_j - sum_i lb_coeff_i s_i / S) / S * s_j (1 - s_j)`;
///
/// both modes:
/// - z-loss: `z_scale * lse_t * exp(logits_tj - lse_t)` with `z_scale = 2 dz / N` (0: off).
///
/// Launch: grid `(ceil(N / block), 1, 1)`, any block (GPU 128), no shared memory.
#[allow(clippy::too_many_arguments)]
pub fn router_backward<C: Simt>(
    ctx: &C,
    dlogits: Gmem<f32>,
    dgate: Gmem<f32>,
    expert_of_token: Gmem<u32>,
    lb_coeff: Gmem<f32>,
    probs: Gmem<f32>,
    logits: Gmem<f32>,
    lse: Gmem<f32>,
    n: usize,
    e: usize,
    inv_temp: f32,
    z_scale: f32,
    sigmoid_mode: u32,
) {
    let t = ctx.block_idx().x as usize * ctx.block_dim().x as usize + ctx.thread_idx().x as usize;
    if t >= n {
        return;
    }
    // SAFETY: t < n, j < e, c < e; row t of dlogits belongs to this thread.
    unsafe {
        let (p, dl, l) = (probs.add(t * e), dlogits.add(t * e), logits.add(t * e));
        if !dgate.is_null() {
            let c = expert_of_token.read(t);
            if c != NONE && (c as usize) < e && sigmoid_mode != 0 {
                let (g, pc) = (dgate.read(t), p.read(c as usize));
                dl.write(c as usize, dl.read(c as usize) + g * pc * (1.0 - pc));
            } else if c != NONE && (c as usize) < e {
                let k = dgate.read(t) * p.read(c as usize) * inv_temp;
                for j in 0..e {
                    let delta = if j == c as usize { 1.0 } else { 0.0 };
                    dl.write(j, dl.read(j) + k * (delta - p.read(j)));
                }
            }
        }
        if !lb_coeff.is_null() && sigmoid_mode != 0 {
            let (mut s_sum, mut mean) = (0f32, 0f32);
            for j in 0..e {
                s_sum += p.read(j);
                mean += lb_coeff.read(j) * p.read(j);
            }
            mean /= s_sum;
            for j in 0..e {
                let sj = p.read(j);
                dl.write(j, dl.read(j) + (lb_coeff.read(j) - mean) / s_sum * sj * (1.0 - sj));
            }
        } else if !lb_coeff.is_null() {
            let mut mean = 0f32;
            for j in 0..e {
                mean += p.read(j) * lb_coeff.read(j);
            }
            for j in 0..e {
                dl.write(j, dl.read(j) + p.read(j) * (lb_coeff.read(j) - mean) * inv_temp);
            }
        }
        if z_scale != 0.0 {
            let ls = lse.read(t);
            for j in 0..e {
                dl.write(j, dl.read(j) + z_scale * ls * C::exp(l.read(j) - ls));
            }
        }
    }
}
