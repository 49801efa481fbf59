//! Router of the fast path: logits, routing distribution and top-1 choice, the routed weight's
//! gradient, Switch load-balance and z losses with their gradients, statistics, and the
//! counter-based randomness (noise, expert dropout) that both paths share.
//!
//! Shapes: `logits`, `probs`, `dlogits` [N, E]; `choice`, `lse`, `entropy`, `dgate` `[N]`;
//! `counts`, `bias` `[E]`. `probs` holds `p = softmax(l̃ / temperature)` in the softmax modes and the
//! sigmoid scores `s = sigmoid(l̃)` in Sigmoid mode (see the module docs of [`crate::moe`]).

use super::{MoeParams, RouterStats, RouterWeighting};
use crate::gemm::{matmul, Trans};
use rayon::prelude::*;

/// Marks a token without a routed expert.
pub const NONE: u32 = u32::MAX;

/// `logits [N, E] = x [N, D] · routerᵀ` ([E, D]), in f32.
pub fn router_logits_forward(logits: &mut [f32], x: &[f32], router: &[f32], n: usize, d: usize, e: usize) {
    matmul(logits, x, router, n, d, e, Trans::No, Trans::Yes, false);
}

/// Accumulates `dx += dlogits · router` and `drouter += dlogitsᵀ · x`.
#[allow(clippy::too_many_arguments)]
pub fn router_logits_backward(
    dx: &mut [f32],
    drouter: &mut [f32],
    dlogits: &[f32],
    x: &[f32],
    router: &[f32],
    n: usize,
    d: usize,
    e: usize,
) {
    matmul(dx, dlogits, router, n, e, d, Trans::No, Trans::No, true);
    matmul(drouter, dlogits, x, e, n, d, Trans::Yes, Trans::No, true);
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash(seed: u64, stream: u64, a: u64, b: u64) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let h = mix(seed ^ mix(stream.wrapping_add(1).wrapping_mul(K)));
    let h = mix(h ^ a.wrapping_add(1).wrapping_mul(K));
    mix(h ^ b.wrapping_add(1).wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

const STREAM_NOISE_A: u64 = 1;
const STREAM_NOISE_B: u64 = 2;
const STREAM_DROPOUT: u64 = 3;

/// Standard normal sample for logit `(t, j)` (Box-Muller over two hashed uniforms).
pub fn noise_sample(seed: u64, t: usize, j: usize) -> f32 {
    let unit = |h: u64| (h >> 11) as f64 / (1u64 << 53) as f64;
    let u1 = 1.0 - unit(hash(seed, STREAM_NOISE_A, t as u64, j as u64)); // (0, 1]
    let u2 = unit(hash(seed, STREAM_NOISE_B, t as u64, j as u64));
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Uniform sample in [0, 1) deciding whether token `t` loses its expert (`< expert_dropout`).
pub fn dropout_sample(seed: u64, t: usize) -> f32 {
    (hash(seed, STREAM_DROPOUT, t as u64, 0) >> 40) as f32 / (1u32 << 24) as f32
}

fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

/// One token: fills `prob` `[E]`, returns (choice, lse of raw logits, entropy of q).
fn route_row(prob: &mut [f32], logits: &[f32], bias: Option<&[f32]>, t: usize, p: &MoeParams) -> (u32, f32, f32) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    let lse = max + sum.ln();
    for (j, (pr, &l)) in prob.iter_mut().zip(logits).enumerate() {
        *pr = if p.router_noise > 0.0 { l + p.router_noise * noise_sample(p.seed, t, j) } else { l };
    }
    if p.weighting == RouterWeighting::Sigmoid {
        prob.iter_mut().for_each(|v| *v = sigmoid(*v));
    } else {
        let inv_t = 1.0 / p.temperature;
        let m = prob.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut s = 0f32;
        for v in prob.iter_mut() {
            *v = ((*v - m) * inv_t).exp();
            s += *v;
        }
        prob.iter_mut().for_each(|v| *v /= s);
    }
    let mut best = 0usize;
    let mut best_score = f32::NEG_INFINITY;
    for (j, &v) in prob.iter().enumerate() {
        let score = v + bias.map_or(0.0, |b| b[j]);
        if score > best_score {
            (best, best_score) = (j, score);
        }
    }
    let norm: f32 = if p.weighting == RouterWeighting::Sigmoid { prob.iter().sum() } else { 1.0 };
    let entropy = -prob.iter().map(|&v| v / norm).filter(|&q| q > 0.0).map(|q| q * q.ln()).sum::<f32>();
    (best as u32, lse, entropy)
}

/// Routes every token: `probs` [N, E], top-1 `choice` `[N]` (`argmax(probs + bias)`, ties: the
/// lowest expert), `lse` `[N]` of the raw logits, `entropy` `[N]` of the routing distribution.
#[allow(clippy::too_many_arguments)]
pub fn route_forward(
    probs: &mut [f32],
    choice: &mut [u32],
    lse: &mut [f32],
    entropy: &mut [f32],
    logits: &[f32],
    bias: Option<&[f32]>,
    e: usize,
    params: &MoeParams,
) {
    let n = choice.len();
    assert!(probs.len() == n * e && logits.len() == n * e && lse.len() == n && entropy.len() == n, "route: lengths");
    probs
        .par_chunks_mut(e)
        .zip(logits.par_chunks(e))
        .zip(choice.par_iter_mut().zip(lse.par_iter_mut().zip(entropy.par_iter_mut())))
        .enumerate()
        .for_each(|(t, ((pr, l), (c, (ls, en))))| (*c, *ls, *en) = route_row(pr, l, bias, t, params));
}

/// Accumulates into `dlogits` the gradient of the routed weights `g_t` given `dgate_t = dL/dg_t`,
/// for tokens with an expert: `p_e (δ_ej - p_j) / temperature` (Ste and Prob: the gradient of
/// `p_e`), `s_e (1 - s_e)` at `j = e` (Sigmoid: the gradient of `s_e`).
pub fn gate_backward(
    dlogits: &mut [f32],
    dgate: &[f32],
    probs: &[f32],
    expert_of_token: &[u32],
    e: usize,
    params: &MoeParams,
) {
    let sigmoid_mode = params.weighting == RouterWeighting::Sigmoid;
    let inv_t = 1.0 / params.temperature;
    dlogits.par_chunks_mut(e).zip(probs.par_chunks(e)).zip(dgate.par_iter().zip(expert_of_token)).for_each(
        |((dl, p), (&dg, &ex))| {
            if ex == NONE {
                return;
            }
            let pe = p[ex as usize];
            if sigmoid_mode {
                dl[ex as usize] += dg * pe * (1.0 - pe);
            } else {
                let c = dg * pe * inv_t;
                for (j, (d, &pj)) in dl.iter_mut().zip(p).enumerate() {
                    *d += c * (if j == ex as usize { 1.0 } else { 0.0 } - pj);
                }
            }
        },
    );
}

/// Top-1 choices per expert `[E]`.
pub fn choice_counts(choice: &[u32], e: usize) -> Vec<usize> {
    let mut counts = vec![0usize; e];
    for &c in choice {
        counts[c as usize] += 1;
    }
    counts
}

/// Switch load-balance loss `E * sum_i f_i * mean_t q_ti` with `f_i = counts_i / N`.
pub fn lb_loss_forward(probs: &[f32], counts: &[usize], e: usize, weighting: RouterWeighting) -> f32 {
    let n = probs.len() / e;
    if n == 0 {
        return 0.0;
    }
    let mut total = 0f64;
    for row in probs.chunks(e) {
        let norm: f32 = if weighting == RouterWeighting::Sigmoid { row.iter().sum() } else { 1.0 };
        total += row.iter().zip(counts).map(|(&q, &c)| (q / norm) as f64 * c as f64).sum::<f64>();
    }
    (e as f64 * total / (n as f64 * n as f64)) as f32
}

/// Accumulates `dlb * d lb / d logits` into `dlogits` (through `q`; `f` carries no gradient).
pub fn lb_loss_backward(dlogits: &mut [f32], dlb: f32, probs: &[f32], counts: &[usize], e: usize, params: &MoeParams) {
    let n = probs.len() / e;
    if n == 0 {
        return;
    }
    // c_i = dlb * d lb / d q_ti = dlb * E * f_i / N.
    let c: Vec<f32> =
        counts.iter().map(|&k| (dlb as f64 * e as f64 * k as f64 / (n as f64 * n as f64)) as f32).collect();
    let sigmoid_mode = params.weighting == RouterWeighting::Sigmoid;
    let inv_t = 1.0 / params.temperature;
    dlogits.par_chunks_mut(e).zip(probs.par_chunks(e)).for_each(|(dl, p)| {
        if sigmoid_mode {
            // q = s / S: dL/ds_j = (c_j - sum_i c_i q_i) / S; ds/dl = s (1 - s).
            let s_sum: f32 = p.iter().sum();
            let mean: f32 = p.iter().zip(&c).map(|(&s, &ci)| ci * s).sum::<f32>() / s_sum;
            for ((d, &s), &cj) in dl.iter_mut().zip(p).zip(&c) {
                *d += (cj - mean) / s_sum * s * (1.0 - s);
            }
        } else {
            let mean: f32 = p.iter().zip(&c).map(|(&pj, &cj)| pj * cj).sum();
            for ((d, &pj), &cj) in dl.iter_mut().zip(p).zip(&c) {
                *d += pj * (cj - mean) * inv_t;
            }
        }
    });
}

/// Router z-loss `mean_t lse_t^2`.
pub fn z_loss_forward(lse: &[f32]) -> f32 {
    if lse.is_empty() {
        return 0.0;
    }
    (lse.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / lse.len() as f64) as f32
}

/// Accumulates `dz * d z / d logits = dz * 2 lse_t / N * softmax(l_t)` into `dlogits`.
pub fn z_loss_backward(dlogits: &mut [f32], dz: f32, logits: &[f32], lse: &[f32], e: usize) {
    let n = lse.len();
    if n == 0 {
        return;
    }
    let scale = 2.0 * dz / n as f32;
    dlogits.par_chunks_mut(e).zip(logits.par_chunks(e)).zip(lse).for_each(|((dl, l), &ls)| {
        for (d, &v) in dl.iter_mut().zip(l) {
            *d += scale * ls * (v - ls).exp();
        }
    });
}

/// Statistics from the choices' `counts` `[E]`, per-token `entropy` `[N]`, tokens dropped by
/// capacity (`overflowed`) and in all (`dropped`, capacity + expert dropout), out of `n`.
pub fn router_stats(counts: &[usize], entropy: &[f32], overflowed: usize, dropped: usize, n: usize) -> RouterStats {
    let frac = |k: usize| if n == 0 { 0.0 } else { (k as f64 / n as f64) as f32 };
    let share: Vec<f32> = counts.iter().map(|&c| frac(c)).collect();
    let load_entropy = -share.iter().filter(|&&s| s > 0.0).map(|&s| s as f64 * (s as f64).ln()).sum::<f64>() as f32;
    let mean_entropy = if n == 0 { 0.0 } else { entropy.iter().map(|&v| v as f64).sum::<f64>() / n as f64 };
    RouterStats {
        counts: counts.to_vec(),
        share,
        entropy: mean_entropy as f32,
        load_entropy,
        overflow_frac: frac(overflowed),
        dropped_frac: frac(dropped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_is_argmax_of_score_plus_bias_with_ties_to_the_lowest_expert() {
        let logits = [0.0f32, 2.0, 2.0, 1.0, /* t1 */ 0.5, 0.5, 0.5, 0.5];
        let mut probs = vec![0.0; 8];
        let (mut choice, mut lse, mut ent) = (vec![0u32; 2], vec![0.0; 2], vec![0.0; 2]);
        let p = MoeParams::default();
        route_forward(&mut probs, &mut choice, &mut lse, &mut ent, &logits, None, 4, &p);
        assert_eq!(choice, [1, 0]);
        assert!((ent[1] - 4f32.ln()).abs() < 1e-6, "uniform entropy {}", ent[1]);
        let want_lse = (1f64 + 2.0 * 2f64.exp() + 1f64.exp()).ln() as f32;
        assert!((lse[0] - want_lse).abs() < 1e-6);
        route_forward(&mut probs, &mut choice, &mut lse, &mut ent, &logits, Some(&[0.0, 0.0, 0.0, 0.01]), 4, &p);
        assert_eq!(choice, [1, 3]);
        let sig = MoeParams { weighting: RouterWeighting::Sigmoid, ..p };
        route_forward(&mut probs, &mut choice, &mut lse, &mut ent, &logits, Some(&[0.9, 0.0, 0.0, 0.0]), 4, &sig);
        assert_eq!(choice, [0, 0]); // sigmoid(0) + 0.9 = 1.4 > sigmoid(2) = 0.88
        assert!((probs[1] - 0.880_797).abs() < 1e-6);
    }

    #[test]
    fn temperature_sharpens_softmax_but_keeps_the_choice() {
        let logits = [0.3f32, -0.2, 0.1];
        let run = |t: f32| {
            let mut probs = vec![0.0; 3];
            let (mut c, mut l, mut en) = (vec![0u32], vec![0.0], vec![0.0]);
            let p = MoeParams { temperature: t, ..MoeParams::default() };
            route_forward(&mut probs, &mut c, &mut l, &mut en, &logits, None, 3, &p);
            (probs, c[0], en[0])
        };
        let (p1, c1, e1) = run(1.0);
        let (p2, c2, e2) = run(0.25);
        assert_eq!((c1, c2), (0, 0));
        assert!(p2[0] > p1[0] && e2 < e1);
        let want = (0.3f64 / 0.25).exp() / [0.3f64, -0.2, 0.1].iter().map(|v| (v / 0.25).exp()).sum::<f64>();
        assert!((p2[0] as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn randomness_is_deterministic_and_roughly_standard() {
        let z: Vec<f32> = (0..20_000).map(|i| noise_sample(7, i / 16, i % 16)).collect();
        let again: Vec<f32> = (0..20_000).map(|i| noise_sample(7, i / 16, i % 16)).collect();
        assert_eq!(z, again);
        assert_ne!(noise_sample(7, 0, 0), noise_sample(8, 0, 0));
        let mean = z.iter().map(|&v| v as f64).sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        let u: Vec<f32> = (0..20_000).map(|t| dropout_sample(3, t)).collect();
        assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
        let below = u.iter().filter(|&&v| v < 0.25).count() as f64 / u.len() as f64;
        assert!((below - 0.25).abs() < 0.02, "P(u < 0.25) = {below}");
    }

    #[test]
    fn stats_on_a_hand_made_routing() {
        // 8 tokens, 4 experts: counts 4, 2, 2, 0; 1 dropped by capacity, 2 in all.
        let counts = choice_counts(&[0, 0, 1, 0, 2, 1, 0, 2], 4);
        assert_eq!(counts, [4, 2, 2, 0]);
        let s = router_stats(&counts, &[0.5; 8], 1, 2, 8);
        assert_eq!(s.share, [0.5, 0.25, 0.25, 0.0]);
        assert!((s.load_entropy as f64 - 1.5 * 2f64.ln()).abs() < 1e-6);
        assert_eq!((s.entropy, s.overflow_frac, s.dropped_frac), (0.5, 0.125, 0.25));
        assert_eq!(router_stats(&[0, 0], &[], 0, 0, 0).share, [0.0, 0.0]);
    }

    #[test]
    fn lb_loss_is_one_when_uniform_and_e_when_collapsed() {
        let e = 4;
        let uniform = vec![0.25f32; 8 * e];
        let counts = [2, 2, 2, 2];
        assert!((lb_loss_forward(&uniform, &counts, e, RouterWeighting::Prob) - 1.0).abs() < 1e-6);
        let collapsed: Vec<f32> = (0..8 * e).map(|i| if i % e == 0 { 1.0 } else { 0.0 }).collect();
        assert!((lb_loss_forward(&collapsed, &[8, 0, 0, 0], e, RouterWeighting::Prob) - 4.0).abs() < 1e-6);
        assert!((z_loss_forward(&[1.0, 3.0]) - 5.0).abs() < 1e-6);
    }
}
