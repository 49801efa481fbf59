//! Fast vs naive path on every output and gradient; f64 finite differences; the straight-through
//! weightings; dense-equivalent mode against a plain dense SwiGLU; a hand-made routing.

use super::naive::moe_naive_f64;
use super::router::NONE;
use super::*;
use crate::check::{assert_grad_matches_fd, finite_diff, rand_vec, rel_norm_err, to_f64};

/// One layer's inputs: `x` has a constant first feature that the router's first rows amplify,
/// so the routing is skewed towards experts 0 and 1 (capacity then drops tokens).
struct Case {
    dims: MoeDims,
    x: Vec<f32>,
    router: Vec<f32>,
    experts: Vec<f32>,
    bias: Vec<f32>,
    r: Vec<f32>,
}

fn case(n: usize, d: usize, e: usize, w: usize, seed: u64) -> Case {
    skewed_case(n, d, e, w, seed, 2.0)
}

fn skewed_case(n: usize, d: usize, e: usize, w: usize, seed: u64, skew: f32) -> Case {
    let mut x = rand_vec(n * d, seed);
    let mut router: Vec<f32> = rand_vec(e * d, seed + 1).iter().map(|v| 0.7 * v).collect();
    for t in 0..n {
        x[t * d] = 0.5 + 0.5 * x[t * d].abs();
    }
    router[0] = skew;
    router[d] = 0.6 * skew;
    let experts = rand_vec(e * 3 * w * d, seed + 2).iter().map(|v| v * 0.6).collect();
    let bias = rand_vec(e, seed + 3).iter().map(|v| 0.05 * v).collect();
    Case { dims: MoeDims { n, d, e, w }, x, router, experts, bias, r: rand_vec(n * d, seed + 4) }
}

/// Loss weights of `L = sum(out * r) + A * lb + B * z`.
const A: f32 = 0.7;
const B: f32 = 0.3;

struct ForwardAndGrads {
    fwd: MoeForward,
    dx: Vec<f32>,
    drouter: Vec<f32>,
    dexperts: Vec<f32>,
}

/// Forward and the gradients of `L` on `path`.
fn run(c: &Case, path: MoePath, p: &MoeParams, bias: bool) -> ForwardAndGrads {
    let MoeDims { n, d, e, .. } = c.dims;
    let bias = if bias { Some(&c.bias[..]) } else { None };
    let fwd = moe_forward(path, &c.x, &c.router, &c.experts, bias, c.dims, p);
    let (mut dx, mut drouter, mut dexperts) = (vec![0.0; n * d], vec![0.0; e * d], vec![0.0; c.experts.len()]);
    moe_backward_out(&mut dx, &mut drouter, &mut dexperts, &c.r, &c.x, &c.router, &c.experts, &fwd.saved, c.dims);
    for (which, scale) in [(AuxLoss::LoadBalance, A), (AuxLoss::Z, B)] {
        moe_backward_aux(&mut dx, &mut drouter, which, scale, &c.x, &c.router, &fwd.saved, c.dims);
    }
    ForwardAndGrads { fwd, dx, drouter, dexperts }
}

fn rel(a: f32, b: f32) -> f64 {
    (a as f64 - b as f64).abs() / (b as f64).abs().max(1e-30)
}

/// Fast vs naive: same routing and statistics; out, losses and gradients within `TOL` (norm-wise).
fn compare_paths(c: &Case, p: &MoeParams, bias: bool, what: &str) -> ForwardAndGrads {
    const TOL: f64 = 1e-5;
    let fast = run(c, MoePath::Fast, p, bias);
    let naive = run(c, MoePath::Naive, p, bias);
    assert_eq!(fast.fwd.expert_of_token, naive.fwd.expert_of_token, "{what}: routing differs");
    let (fs, ns) = (&fast.fwd.stats, &naive.fwd.stats);
    assert_eq!((&fs.counts, fs.overflow_frac, fs.dropped_frac), (&ns.counts, ns.overflow_frac, ns.dropped_frac));
    assert!(rel(fs.entropy, ns.entropy) < 1e-5 && rel(fs.load_entropy, ns.load_entropy) < 1e-6, "{what}: stats");
    let errs = [
        ("out", rel_norm_err(&fast.fwd.out, &naive.fwd.out)),
        ("lb", rel(fast.fwd.lb_loss, naive.fwd.lb_loss)),
        ("z", rel(fast.fwd.z_loss, naive.fwd.z_loss)),
        ("dx", rel_norm_err(&fast.dx, &naive.dx)),
        ("drouter", rel_norm_err(&fast.drouter, &naive.drouter)),
        ("dexperts", rel_norm_err(&fast.dexperts, &naive.dexperts)),
    ];
    let report: Vec<String> = errs.iter().map(|(name, err)| format!("{name} {err:.2e}")).collect();
    eprintln!("{what}: dropped {:.3} overflow {:.3}: {}", fs.dropped_frac, fs.overflow_frac, report.join(", "));
    for (name, err) in errs {
        assert!(err <= TOL, "{what}: {name} fast vs naive rel err {err:.3e} > {TOL:.0e}");
    }
    fast
}

const WEIGHTINGS: [RouterWeighting; 3] = [RouterWeighting::Ste, RouterWeighting::Prob, RouterWeighting::Sigmoid];

/// In a 2-thread pool, so the skewed dropless routing (one expert above half the rows) also
/// runs the schedule where a dominant expert gets all threads.
#[test]
fn fast_matches_naive_on_every_output_and_gradient() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("rayon pool");
    pool.install(fast_matches_naive_cases);
}

fn fast_matches_naive_cases() {
    let c = skewed_case(203, 37, 6, 19, 11, 4.0);
    for weighting in WEIGHTINGS {
        let base = MoeParams { weighting, temperature: 0.8, ..MoeParams::default() };
        let settings = [
            ("dropless", base, false),
            ("cf 0.5", MoeParams { capacity_factor: Some(0.5), ..base }, true),
            ("cf 1.25", MoeParams { capacity_factor: Some(1.25), ..base }, false),
            ("dropout 0.3", MoeParams { expert_dropout: 0.3, seed: 5, ..base }, true),
            (
                "noise + dropout + cf 1.25",
                MoeParams { router_noise: 0.5, expert_dropout: 0.1, capacity_factor: Some(1.25), seed: 9, ..base },
                true,
            ),
        ];
        for (name, p, bias) in settings {
            let fast = compare_paths(&c, &p, bias, &format!("{weighting:?} {name}"));
            let s = &fast.fwd.stats;
            if p.capacity_factor.is_some() {
                assert!(s.overflow_frac > 0.0, "{weighting:?} {name}: capacity dropped nothing");
            }
            if p.expert_dropout > 0.0 {
                assert!(s.dropped_frac > s.overflow_frac, "{weighting:?} {name}: expert dropout dropped nothing");
            }
            if name == "dropless" {
                let top = s.share.iter().fold(0f32, |m, &v| m.max(v));
                assert!(top > 0.5, "{weighting:?}: no dominant expert (top share {top})");
            }
            let dropped = fast.fwd.expert_of_token.iter().filter(|&&v| v == NONE).count();
            assert_eq!(s.dropped_frac, dropped as f32 / 203.0);
        }
    }
}

#[test]
fn same_seed_same_drops_other_seed_other_drops() {
    let c = case(300, 8, 4, 3, 21);
    let p = MoeParams { expert_dropout: 0.25, router_noise: 0.3, seed: 1, ..MoeParams::default() };
    let a = moe_forward(MoePath::Fast, &c.x, &c.router, &c.experts, None, c.dims, &p);
    let b = moe_forward(MoePath::Fast, &c.x, &c.router, &c.experts, None, c.dims, &p);
    let other = moe_forward(MoePath::Fast, &c.x, &c.router, &c.experts, None, c.dims, &MoeParams { seed: 2, ..p });
    assert_eq!(a.expert_of_token, b.expert_of_token);
    assert_eq!(a.out, b.out);
    assert_ne!(a.expert_of_token, other.expert_of_token);
    assert!((a.stats.dropped_frac - 0.25).abs() < 0.07, "dropped {}", a.stats.dropped_frac);
}

#[test]
fn backward_accumulates() {
    let c = case(50, 9, 4, 5, 31);
    let p = MoeParams { weighting: RouterWeighting::Prob, capacity_factor: Some(1.0), ..MoeParams::default() };
    for path in [MoePath::Fast, MoePath::Naive] {
        let once = run(&c, path, &p, false);
        let fwd = &once.fwd;
        let (mut dx, mut dr, mut de) = (once.dx.clone(), once.drouter.clone(), once.dexperts.clone());
        moe_backward_out(&mut dx, &mut dr, &mut de, &c.r, &c.x, &c.router, &c.experts, &fwd.saved, c.dims);
        moe_backward_aux(&mut dx, &mut dr, AuxLoss::LoadBalance, A, &c.x, &c.router, &fwd.saved, c.dims);
        moe_backward_aux(&mut dx, &mut dr, AuxLoss::Z, B, &c.x, &c.router, &fwd.saved, c.dims);
        let twice = |v: &[f32]| v.iter().map(|g| 2.0 * g).collect::<Vec<f32>>();
        for (got, one, name) in [(&dx, &once.dx, "dx"), (&dr, &once.drouter, "drouter"), (&de, &once.dexperts, "dex")] {
            assert!(rel_norm_err(got, &twice(one)) < 1e-6, "{path:?} {name} does not accumulate");
        }
    }
}

/// The split backward (out and both aux losses up to the logits, then one router projection)
/// gives the gradients of the three separate calls, on both paths; `logits` is `x · routerᵀ`.
#[test]
fn split_backward_through_the_logits_equals_the_separate_calls() {
    let c = case(97, 11, 5, 7, 41);
    let MoeDims { n, d, e, .. } = c.dims;
    let mut want_logits = vec![0f32; n * e];
    let (no, yes) = (crate::gemm::Trans::No, crate::gemm::Trans::Yes);
    crate::gemm::matmul_naive(&mut want_logits, &c.x, &c.router, n, d, e, no, yes, false);
    for path in [MoePath::Fast, MoePath::Naive] {
        for weighting in WEIGHTINGS {
            let p = MoeParams { weighting, capacity_factor: Some(1.0), temperature: 0.9, ..MoeParams::default() };
            let sep = run(&c, path, &p, true);
            assert!(rel_norm_err(&sep.fwd.logits, &want_logits) <= 1e-6, "{path:?} {weighting:?}: logits");
            let (mut dx, mut dr, mut de) = (vec![0.0; n * d], vec![0.0; e * d], vec![0.0; c.experts.len()]);
            let mut dl = vec![0.0; n * e];
            moe_backward_out_logits(&mut dx, &mut dl, &mut de, &c.r, &c.x, &c.experts, &sep.fwd.saved, c.dims);
            moe_backward_aux_logits(&mut dl, AuxLoss::LoadBalance, A, &sep.fwd.saved, c.dims);
            moe_backward_aux_logits(&mut dl, AuxLoss::Z, B, &sep.fwd.saved, c.dims);
            moe_backward_logits(&mut dx, &mut dr, &dl, &c.x, &c.router, &sep.fwd.saved, c.dims);
            for (got, want, name) in [(&dx, &sep.dx, "dx"), (&dr, &sep.drouter, "drouter"), (&de, &sep.dexperts, "dex")]
            {
                let err = rel_norm_err(got, want);
                assert!(err <= 1e-6, "{path:?} {weighting:?} {name}: split vs separate rel err {err:.3e}");
            }
        }
    }
}

/// `L(θ)` in f64 for finite differences, with `θ = (x, router, experts)` concatenated. With
/// `surrogate = Some(s0)` the routed weight is `1 + score - s0` (the straight-through function
/// whose derivative Ste and Sigmoid claim). Panics if the routing moved (FD would be invalid).
fn loss_f64(c: &Case, p: &MoeParams, theta: &[f64], surrogate: Option<&[f64]>, routing: &[u32]) -> f64 {
    let MoeDims { n, d, e, .. } = c.dims;
    let (x, rest) = theta.split_at(n * d);
    let (router, experts) = rest.split_at(e * d);
    let f = moe_naive_f64(x, router, experts, None, c.dims, p);
    assert_eq!(f.expert_of_token, routing, "finite-difference step changed the routing");
    let routed: f64 = (0..n)
        .map(|t| {
            let g = match surrogate {
                Some(s0) if f.expert_of_token[t] != NONE => 1.0 + f.gate_score[t] - s0[t],
                _ => f.gate[t],
            };
            let dot: f64 = (0..d).map(|k| f.y[t * d + k] * c.r[t * d + k] as f64).sum();
            g * dot
        })
        .sum();
    routed + A as f64 * f.lb_loss + B as f64 * f.z_loss
}

/// Both paths' gradients of `L` against f64 central differences (norm-wise relative `TOL`).
fn check_fd(c: &Case, p: &MoeParams, straight_through: bool, what: &str) {
    const TOL: f64 = 1e-5;
    let MoeDims { n, d, e, .. } = c.dims;
    let theta: Vec<f64> = [to_f64(&c.x), to_f64(&c.router), to_f64(&c.experts)].concat();
    let base = moe_naive_f64(&to_f64(&c.x), &to_f64(&c.router), &to_f64(&c.experts), None, c.dims, p);
    let s0 = straight_through.then_some(&base.gate_score[..]);
    let fd = finite_diff(|th| loss_f64(c, p, th, s0, &base.expert_of_token), &theta, 1e-5);
    let (fd_x, rest) = fd.split_at(n * d);
    let (fd_router, fd_experts) = rest.split_at(e * d);
    for path in [MoePath::Naive, MoePath::Fast] {
        let g = run(c, path, p, false);
        assert_eq!(g.fwd.expert_of_token, base.expert_of_token);
        let errs = [
            rel_norm_err(&g.dx, &fd_x.iter().map(|&v| v as f32).collect::<Vec<_>>()),
            rel_norm_err(&g.drouter, &fd_router.iter().map(|&v| v as f32).collect::<Vec<_>>()),
            rel_norm_err(&g.dexperts, &fd_experts.iter().map(|&v| v as f32).collect::<Vec<_>>()),
        ];
        eprintln!("{what} {path:?} vs f64 FD: dx {:.2e} drouter {:.2e} dexperts {:.2e}", errs[0], errs[1], errs[2]);
        assert_grad_matches_fd(&g.dx, fd_x, TOL, &format!("{what} {path:?} dx"));
        assert_grad_matches_fd(&g.drouter, fd_router, TOL, &format!("{what} {path:?} drouter"));
        assert_grad_matches_fd(&g.dexperts, fd_experts, TOL, &format!("{what} {path:?} dexperts"));
    }
}

#[test]
fn prob_gradients_match_finite_differences() {
    for (e, seed) in [(3, 41), (4, 43)] {
        let c = case(7, 5, e, 3, seed);
        let p = MoeParams { weighting: RouterWeighting::Prob, temperature: 0.7, ..MoeParams::default() };
        check_fd(&c, &p, false, &format!("prob E={e} dropless"));
        let p = MoeParams { capacity_factor: Some(1.0), ..p };
        let f = moe_naive_f64(&to_f64(&c.x), &to_f64(&c.router), &to_f64(&c.experts), None, c.dims, &p);
        assert!(f.stats.overflow_frac > 0.0, "E={e}: capacity 1.0 dropped nothing");
        check_fd(&c, &p, false, &format!("prob E={e} cf 1.0"));
    }
}

/// Ste and Sigmoid: the gradient is that of `L` with `g = 1 + score - sg(score)`; finite
/// differences of that surrogate (with `sg(score)` frozen at the evaluation point) must match.
#[test]
fn straight_through_gradients_match_finite_differences_of_the_surrogate() {
    let c = case(7, 5, 4, 3, 47);
    for weighting in [RouterWeighting::Ste, RouterWeighting::Sigmoid] {
        let p = MoeParams { weighting, temperature: 1.3, capacity_factor: Some(1.0), ..MoeParams::default() };
        check_fd(&c, &p, true, &format!("{weighting:?}"));
    }
}

/// For the same routing, `dL/dg_t = <dout_t, y_t>` does not depend on the weighting, and `g`
/// depends on the logits through `p_e` in both Ste and Prob: the router gradients are equal.
/// The experts see `dout * g`: Prob's expert gradient with `dout = r` equals Ste's with
/// `dout_t = p_t * r_t`.
#[test]
fn ste_router_gradient_equals_prob_router_gradient() {
    let c = case(120, 16, 5, 7, 51);
    let base = MoeParams { temperature: 0.9, capacity_factor: Some(1.25), ..MoeParams::default() };
    let ste = run(&c, MoePath::Fast, &MoeParams { weighting: RouterWeighting::Ste, ..base }, false);
    let prob = run(&c, MoePath::Fast, &MoeParams { weighting: RouterWeighting::Prob, ..base }, false);
    assert_eq!(ste.fwd.expert_of_token, prob.fwd.expert_of_token);
    let err = rel_norm_err(&ste.drouter, &prob.drouter);
    eprintln!("ste vs prob drouter rel err {err:.2e}");
    assert!(err <= 1e-6, "Ste router gradient differs from Prob's: {err:.3e}");
    let MoeDims { n, d, e, .. } = c.dims;
    let naive = moe_naive_f64(&to_f64(&c.x), &to_f64(&c.router), &to_f64(&c.experts), None, c.dims, &base);
    let scaled: Vec<f32> = (0..n * d).map(|i| c.r[i] * naive.gate_score[i / d] as f32).collect();
    let (mut dx, mut dr, mut de) = (vec![0.0; n * d], vec![0.0; e * d], vec![0.0; c.experts.len()]);
    moe_backward_out(&mut dx, &mut dr, &mut de, &scaled, &c.x, &c.router, &c.experts, &ste.fwd.saved, c.dims);
    let err = rel_norm_err(&de, &prob.dexperts);
    eprintln!("ste(dout * p) vs prob dexperts rel err {err:.2e}");
    assert!(err <= 1e-6, "Ste expert gradient with dout * p differs from Prob's: {err:.3e}");
}

/// Dense-equivalent mode equals one dense SwiGLU over the experts' concatenated weights.
#[test]
fn dense_equivalent_equals_the_dense_swiglu_over_concatenated_experts() {
    use crate::gemm::{matmul, Trans};
    use crate::swiglu::swiglu_forward;
    let c = case(45, 12, 4, 5, 61);
    let MoeDims { n, d, e, w } = c.dims;
    let (mut gate, mut up, mut down) = (vec![0.0; e * w * d], vec![0.0; e * w * d], vec![0.0; d * e * w]);
    for i in 0..e {
        let wts = &c.experts[i * 3 * w * d..(i + 1) * 3 * w * d];
        gate[i * w * d..(i + 1) * w * d].copy_from_slice(&wts[..w * d]);
        up[i * w * d..(i + 1) * w * d].copy_from_slice(&wts[w * d..2 * w * d]);
        for r in 0..d {
            down[r * e * w + i * w..r * e * w + (i + 1) * w]
                .copy_from_slice(&wts[2 * w * d + r * w..2 * w * d + (r + 1) * w]);
        }
    }
    let f = e * w;
    let (mut h, mut u, mut a, mut want) = (vec![0.0; n * f], vec![0.0; n * f], vec![0.0; n * f], vec![0.0; n * d]);
    matmul(&mut h, &c.x, &gate, n, d, f, Trans::No, Trans::Yes, false);
    matmul(&mut u, &c.x, &up, n, d, f, Trans::No, Trans::Yes, false);
    swiglu_forward(&mut a, &h, &u);
    matmul(&mut want, &a, &down, n, f, d, Trans::No, Trans::Yes, false);
    for weighting in WEIGHTINGS {
        let p = MoeParams { weighting, dense_equivalent: true, capacity_factor: Some(0.5), ..MoeParams::default() };
        let fast = compare_paths(&c, &p, false, &format!("dense {weighting:?}"));
        let err = rel_norm_err(&fast.fwd.out, &want);
        eprintln!("dense {weighting:?} vs dense SwiGLU: rel err {err:.2e}");
        assert!(err <= 1e-6, "dense-equivalent vs dense SwiGLU rel err {err:.3e}");
        assert_eq!((fast.fwd.stats.dropped_frac, fast.fwd.stats.overflow_frac), (0.0, 0.0));
    }
}

/// Two features, two experts: router rows `[4, 0]` and `[-4, 0]`, so tokens with a positive
/// first feature go to expert 0 with `p_0 = sigmoid(8 a_t)`, in order of `a_t`.
#[test]
fn hand_made_routing_capacity_and_stats() {
    let a = [0.3f32, -0.2, 0.9, 0.1, 0.5, -0.7, 0.2, 0.9];
    let x: Vec<f32> = a.iter().flat_map(|&v| [v, 1.0]).collect();
    let router = vec![4.0, 0.0, -4.0, 0.0];
    let dims = MoeDims { n: 8, d: 2, e: 2, w: 3 };
    let experts = rand_vec(2 * 3 * 3 * 2, 71);
    // Capacity ceil(0.5 * 8 / 2) = 2: expert 0 (tokens 0, 2, 3, 4, 6, 7) keeps its two highest
    // scores, tokens 2 and 7 (a = 0.9 each); expert 1 (tokens 1, 5) fits.
    let p = MoeParams { capacity_factor: Some(0.5), ..MoeParams::default() };
    for path in [MoePath::Fast, MoePath::Naive] {
        let f = moe_forward(path, &x, &router, &experts, None, dims, &p);
        assert_eq!(f.expert_of_token, [NONE, 1, 0, NONE, NONE, 1, NONE, 0], "{path:?}");
        let s = &f.stats;
        assert_eq!((s.counts.clone(), s.share.clone()), (vec![6, 2], vec![0.75, 0.25]), "{path:?}");
        assert_eq!((s.overflow_frac, s.dropped_frac), (0.5, 0.5), "{path:?}");
        assert!((s.load_entropy as f64 - -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln())).abs() < 1e-6);
        for t in [0, 3, 4, 6] {
            assert!(f.out[t * 2..t * 2 + 2].iter().all(|&v| v == 0.0), "{path:?}: dropped token {t} has output");
        }
        // Capacity 3 keeps the next best (token 4, a = 0.5).
        let f = moe_forward(path, &x, &router, &experts, None, dims, &MoeParams { capacity_factor: Some(0.75), ..p });
        assert_eq!(f.expert_of_token, [NONE, 1, 0, NONE, 0, 1, NONE, 0], "{path:?}");
    }
}
