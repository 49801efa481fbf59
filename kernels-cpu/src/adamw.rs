//! AdamW, reproducing `torch.optim.AdamW` (single-tensor CPU path) operation by operation.
//!
//! `param`, `grad`, `m` (first moment) and `v` (second moment) are flat slices of one length.
//! torch derives its scalars from Python floats (f64) and applies them to f32 tensors:
//!
//! ```text
//! p = p * (1 - lr*wd)                       decoupled weight decay
//! m = fma(1 - beta1, g - m, m)              m.lerp_(g, 1 - beta1)
//! v = v * beta2 + ((1 - beta2) * g) * g     v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
//! bc1 = 1 - beta1^step, bc2 = 1 - beta2^step                (f64)
//! denom = sqrt(v) / sqrt(bc2) + eps
//! p = p + (-(lr / bc1) * m) / denom         p.addcdiv_(m, denom, value=-lr/bc1)
//! ```
//!
//! The element loop runs in parallel over fixed-size chunks; on x86-64 CPUs with AVX2 and FMA it
//! is compiled for them (one instruction per `mul_add`) and chosen at run time.
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// AdamW hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f32,
    /// Decay rate of the first moment.
    pub beta1: f32,
    /// Decay rate of the second moment.
    pub beta2: f32,
    /// Added to `sqrt(v_hat)` in the denominator.
    pub eps: f32,
    /// Decoupled weight decay: each step multiplies parameters by `1 - lr * weight_decay`.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// The f64 a config author meant by an f32 hyperparameter: the shortest decimal that rounds to
/// `x`, read as f64 (`0.95f32` gives `0.95f64`, not `0.949999988..`). torch computes `1 - beta2`,
/// `beta1 ** step`, ... from Python floats, so this is what makes our scalars equal to its ones.
fn intended_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// The per-step scalars, derived in f64 as torch does and rounded to f32 where torch applies them
/// to an f32 tensor.
#[derive(Clone, Copy, Debug)]
struct Scalars {
    /// `1 - lr * wd`.
    decay: f32,
    /// lerp weight `1 - beta1`.
    w1: f32,
    /// `beta2`.
    b2: f32,
    /// `1 - beta2`.
    c2: f32,
    /// `sqrt(1 - beta2^step)`.
    bc2_sqrt: f32,
    /// `eps`.
    eps: f32,
    /// `-lr / (1 - beta1^step)`.
    neg_step: f32,
}

impl Scalars {
    fn new(cfg: &AdamWConfig, step: u64) -> Self {
        let lr = intended_f64(cfg.lr);
        let b1 = intended_f64(cfg.beta1);
        let b2 = intended_f64(cfg.beta2);
        let wd = intended_f64(cfg.weight_decay);
        let eps = intended_f64(cfg.eps);
        let bc1 = 1.0 - b1.powf(step as f64);
        let bc2 = 1.0 - b2.powf(step as f64);
        Scalars {
            decay: (1.0 - lr * wd) as f32,
            w1: (1.0 - b1) as f32,
            b2: b2 as f32,
            c2: (1.0 - b2) as f32,
            bc2_sqrt: bc2.powf(0.5) as f32,
            eps: eps as f32,
            neg_step: (-(lr / bc1)) as f32,
        }
    }
}

#[inline(always)]
fn step_body(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], k: Scalars) {
    // torch's vectorized lerp: small weights start from m, large ones from g.
    let (coeff, from_grad) = if k.w1.abs() < 0.5 { (k.w1, 0.0) } else { (k.w1 - 1.0, 1.0) };
    for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
        let pd = *p * k.decay;
        let base = if from_grad == 0.0 { *m } else { g };
        let mn = (g - *m).mul_add(coeff, base);
        let vn = *v * k.b2 + k.c2 * g * g;
        let denom = vn.sqrt() / k.bc2_sqrt + k.eps;
        *p = pd + k.neg_step * mn / denom;
        *m = mn;
        *v = vn;
    }
}

crate::isa_dispatch!(fn step_chunk(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], k: Scalars) => step_body);

/// One AdamW step (`step` is 1-based: the first update passes 1), updating `param`, `m`, `v`.
pub fn adamw_step(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], cfg: &AdamWConfig, step: u64) {
    let len = param.len();
    assert!(grad.len() == len && m.len() == len && v.len() == len, "adamw: length mismatch");
    assert!(step >= 1, "adamw: step is 1-based");
    let k = Scalars::new(cfg, step);
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| step_chunk(p, g, m, v, k));
}

/// Global L2 norm of a gradient, summed in f64. Fixed chunks summed in order, so the value is
/// the same for every thread count (it feeds clipping, which must resume bitwise).
pub fn global_norm(grad: &[f32]) -> f32 {
    let partial: Vec<f64> = grad.par_chunks(CHUNK).map(sum_squares).collect();
    partial.iter().sum::<f64>().sqrt() as f32
}

crate::isa_dispatch!(
    /// `sum(g^2)` of one chunk in f64, over eight lanes (one serial chain of f64 adds was 4
    /// cycles per element), compiled for each ISA (the same bits on all: the same operations in
    /// the same order).
    fn sum_squares(c: &[f32]) -> f64 => sum_squares_body
);

#[inline(always)]
fn sum_squares_body(c: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = c.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&g| (g as f64) * (g as f64)).sum();
    for x in chunks {
        for k in 0..8 {
            lanes[k] += (x[k] as f64) * (x[k] as f64);
        }
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7])) + tail
}

/// Naive reference of [`adamw_step`] in f64.
pub fn adamw_naive(param: &mut [f64], grad: &[f64], m: &mut [f64], v: &mut [f64], cfg: &AdamWConfig, step: u64) {
    let len = param.len();
    assert!(grad.len() == len && m.len() == len && v.len() == len, "adamw_naive: length mismatch");
    assert!(step >= 1, "adamw_naive: step is 1-based");
    let lr = intended_f64(cfg.lr);
    let b1 = intended_f64(cfg.beta1);
    let b2 = intended_f64(cfg.beta2);
    let wd = intended_f64(cfg.weight_decay);
    let eps = intended_f64(cfg.eps);
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = 1.0 - b2.powi(step as i32);
    for i in 0..len {
        let g = grad[i];
        param[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g;
        v[i] = b2 * v[i] + (1.0 - b2) * g * g;
        let denom = v[i].sqrt() / bc2.sqrt() + eps;
        param[i] -= lr / bc1 * m[i] / denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, max_errors, rand_vec, to_f64};

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// The norm matches an f64 reference on ragged sizes and is the same on 1 and 2 threads.
    #[test]
    fn global_norm_matches_f64_and_ignores_thread_count() {
        for n in [0, 1, 7, 9, CHUNK - 1, CHUNK + 3, 3 * CHUNK + 5] {
            let g: Vec<f32> = rand_vec(n, 5).iter().map(|x| x * 3.0).collect();
            let want = g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| global_norm(&g));
            let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(|| global_norm(&g));
            assert_eq!(one.to_bits(), two.to_bits(), "n = {n}");
            assert!((one as f64 - want).abs() <= 1e-6 * want.max(1e-30), "n = {n}: {one} vs {want}");
        }
    }

    #[test]
    fn hyperparameters_read_as_their_decimal() {
        assert_eq!(intended_f64(0.95), 0.95f64);
        assert_eq!(intended_f64(0.9), 0.9f64);
        assert_eq!(intended_f64(1e-8), 1e-8f64);
        assert_eq!(intended_f64(3e-4), 3e-4f64);
        let d = AdamWConfig::default();
        assert_eq!((d.lr, d.beta1, d.beta2, d.eps, d.weight_decay), (1e-3, 0.9, 0.95, 1e-8, 0.0));
    }

    #[test]
    fn several_steps_match_naive_with_weight_decay_and_bias_correction() {
        let cfgs = [
            AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() },
            AdamWConfig { lr: 3e-4, beta1: 0.8, beta2: 0.999, eps: 1e-6, weight_decay: 0.01 },
            // beta1 < 0.5: torch's lerp takes its other branch.
            AdamWConfig { lr: 1e-3, beta1: 0.3, beta2: 0.9, eps: 1e-8, weight_decay: 0.0 },
        ];
        for (ci, cfg) in cfgs.iter().enumerate() {
            for &len in &[1usize, 75, 100_003] {
                let mut p = rand_vec(len, 1);
                let (mut m, mut v) = (vec![0.0f32; len], vec![0.0f32; len]);
                let mut p64 = to_f64(&p);
                let (mut m64, mut v64) = (vec![0.0f64; len], vec![0.0f64; len]);
                for step in 1..=10u64 {
                    // Gradients of mixed scale, some tiny.
                    let g: Vec<f32> = rand_vec(len, 100 + step)
                        .iter()
                        .zip(rand_vec(len, 200 + step))
                        .map(|(a, b)| a * b.abs().powi(3))
                        .collect();
                    adamw_step(&mut p, &g, &mut m, &mut v, cfg, step);
                    adamw_naive(&mut p64, &to_f64(&g), &mut m64, &mut v64, cfg, step);
                }
                let (pa, pr) = max_errors(&p, &f32s(&p64));
                let (ma, _) = max_errors(&m, &f32s(&m64));
                let (va, _) = max_errors(&v, &f32s(&v64));
                eprintln!("adamw cfg {ci} len={len}: param max abs {pa:.2e} (rel {pr:.2e}), m max abs {ma:.2e}, v max abs {va:.2e}");
                // p: 10 steps x 2 f32 roundings (decay, update) of |p| <= 1, plus ~1e-4 of the
                // lr-sized update.
                // m and v carry f32 rounding of sums of O(1) gradients: ~1e-8 absolute.
                let lr = cfg.lr as f64;
                assert_close(&p, &f32s(&p64), lr * 1e-4, 2e-6, &format!("adamw param cfg {ci} len={len}"));
                assert_close(&m, &f32s(&m64), 1e-7, 1e-5, &format!("adamw m cfg {ci} len={len}"));
                assert_close(&v, &f32s(&v64), 1e-7, 1e-5, &format!("adamw v cfg {ci} len={len}"));
            }
        }
    }

    #[test]
    fn first_step_moves_by_lr_against_the_gradient_sign() {
        // At step 1, m_hat / sqrt(v_hat) = g / |g|, so p1 = p0 * (1 - lr*wd) - lr * sign(g) (up to eps).
        let cfg = AdamWConfig { lr: 0.01, weight_decay: 0.5, ..Default::default() };
        let p0 = rand_vec(1031, 3);
        let g: Vec<f32> = rand_vec(1031, 4).iter().map(|x| x + x.signum()).collect();
        let mut p = p0.clone();
        let (mut m, mut v) = (vec![0.0; 1031], vec![0.0; 1031]);
        adamw_step(&mut p, &g, &mut m, &mut v, &cfg, 1);
        let want: Vec<f32> = p0.iter().zip(&g).map(|(&p, &g)| p * (1.0 - 0.005) - 0.01 * g.signum()).collect();
        assert_close(&p, &want, 1e-6, 0.0, "adamw first step");
    }
}
