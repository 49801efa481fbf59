use super::backward::{backward_with, BwdPath};
use super::naive::{attention_naive_lse, probs};
use super::*;
use crate::check::{
    assert_close, assert_grad_matches_fd, dot64, finite_diff, max_errors, rand_vec, rel_norm_err, to_f64,
};

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Document ids [B, T]: row b is split into `docs` documents at uneven, row-dependent points.
fn docs(nb: usize, t: usize, docs: usize) -> Vec<u32> {
    let mut s = Vec::with_capacity(nb * t);
    for b in 0..nb {
        for i in 0..t {
            // Boundaries at roughly (d + 0.3 b / nb) / docs of the row, never tile aligned.
            s.push((0..docs).filter(|&d| d > 0 && i * docs * nb >= (d * nb + b) * t).count() as u32);
        }
    }
    s
}

/// Random inputs; `q` scaled by `qmul` so softmax rows get peaky.
fn inputs(d: AttnDims, seed: u64, qmul: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let q = rand_vec(d.b * d.t * d.h * d.dh, seed).iter().map(|x| x * qmul).collect();
    let k = rand_vec(d.b * d.t * d.kv * d.dh, seed + 1);
    let v = rand_vec(d.b * d.t * d.kv * d.dh, seed + 2);
    (q, k, v)
}

fn forward(q: &[f32], k: &[f32], v: &[f32], seg: Option<&[u32]>, d: AttnDims) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![f32::NAN; q.len()];
    let mut lse = vec![f32::NAN; d.b * d.h * d.t];
    attention_forward(&mut out, &mut lse, q, k, v, seg, d);
    (out, lse)
}

const PATHS: [BwdPath; 2] = [BwdPath::Split, BwdPath::Fused];

/// Gradients of `sum(out * dout)` from one backward call on zeroed buffers.
fn backward(
    path: BwdPath,
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    d: AttnDims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (out, lse) = forward(q, k, v, seg, d);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    backward_with(GemmBackend::Auto, path, &mut dq, &mut dk, &mut dv, dout, &out, &lse, q, k, v, seg, d);
    (dq, dk, dv)
}

/// Analytic f64 backward on materialised softmax: (dq, dk, dv).
fn naive_backward(
    dout: &[f64],
    q: &[f64],
    k: &[f64],
    v: &[f64],
    seg: Option<&[u32]>,
    d: AttnDims,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let AttnDims { b: nb, t, h, kv, dh } = d;
    let scale = 1.0 / (dh as f64).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let qi = |b: usize, i: usize, hd: usize| ((b * t + i) * h + hd) * dh;
    let ki = |b: usize, j: usize, kh: usize| ((b * t + j) * kv + kh) * dh;
    for b in 0..nb {
        for hd in 0..h {
            let kh = hd / (h / kv);
            let (p, _) = probs(q, k, seg, d, b, hd);
            for i in 0..t {
                // dP_ij = dO_i · V_j; dS_ij = P_ij (dP_ij - sum_l P_il dP_il).
                let dp: Vec<f64> =
                    (0..t).map(|j| (0..dh).map(|c| dout[qi(b, i, hd) + c] * v[ki(b, j, kh) + c]).sum()).collect();
                let rs: f64 = (0..t).map(|j| p[i * t + j] * dp[j]).sum();
                for j in 0..t {
                    let pij = p[i * t + j];
                    let ds = pij * (dp[j] - rs);
                    for c in 0..dh {
                        dv[ki(b, j, kh) + c] += pij * dout[qi(b, i, hd) + c];
                        dq[qi(b, i, hd) + c] += scale * ds * k[ki(b, j, kh) + c];
                        dk[ki(b, j, kh) + c] += scale * ds * q[qi(b, i, hd) + c];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

fn dims(b: usize, t: usize, h: usize, kv: usize, dh: usize) -> AttnDims {
    AttnDims { b, t, h, kv, dh }
}

/// Forward `out` and `lse` against the f64 reference: out |err| <= 2e-6 + 1e-5 |ref|, lse 1e-5 + 1e-5 |ref|.
fn check_forward(d: AttnDims, seg: Option<&[u32]>, qmul: f32, what: &str) {
    let (q, k, v) = inputs(d, 7, qmul);
    let (out, lse) = forward(&q, &k, &v, seg, d);
    let (want, want_lse) = attention_naive_lse(&to_f64(&q), &to_f64(&k), &to_f64(&v), seg, d);
    assert_close(&out, &f32s(&want), 2e-6, 1e-5, &format!("{what}: out"));
    assert_close(&lse, &f32s(&want_lse), 1e-5, 1e-5, &format!("{what}: lse"));
    let (la, _) = max_errors(&lse, &f32s(&want_lse));
    let (a, r) = max_errors(&out, &f32s(&want));
    eprintln!("{what}: out max abs {a:.2e} rel {r:.2e}, lse max abs {la:.2e}");
}

#[test]
fn forward_matches_naive_on_awkward_sizes() {
    for &(t, h, kv, dh) in &[(1, 6, 2, 8), (7, 6, 2, 24), (67, 4, 4, 8), (130, 6, 2, 24), (130, 4, 4, 8)] {
        for qmul in [1.0, 6.0] {
            let d = dims(2, t, h, kv, dh);
            check_forward(d, None, qmul, &format!("T={t} H={h} KV={kv} Dh={dh} q*{qmul}"));
        }
    }
}

#[test]
fn forward_matches_naive_with_packed_documents() {
    for &(t, h, kv, dh, ndocs) in &[(7, 6, 2, 8, 2), (67, 6, 2, 24, 3), (130, 4, 4, 8, 2), (130, 6, 2, 24, 3)] {
        let d = dims(3, t, h, kv, dh);
        let seg = docs(d.b, t, ndocs);
        check_forward(d, Some(&seg), 4.0, &format!("T={t} H={h} KV={kv} Dh={dh} docs={ndocs}"));
    }
    // Ids need not be contiguous runs: token i belongs to document i % 3.
    let d = dims(1, 130, 4, 2, 8);
    let seg: Vec<u32> = (0..130).map(|i| i % 3).collect();
    check_forward(d, Some(&seg), 4.0, "interleaved documents");
}

#[test]
fn naive_is_softmax_of_visible_keys() {
    // Regression guard for the reference itself: T=2, one head, Dh=1, hand-computed.
    let d = dims(1, 2, 1, 1, 1);
    let out = attention_naive(&[1.0, 2.0], &[0.5, -1.0], &[3.0, 5.0], None, d);
    let (s0, s1) = (2.0 * 0.5, -2.0);
    let p0 = 1.0 / (1.0 + f64::exp(s1 - s0));
    assert!((out[0] - 3.0).abs() < 1e-12 && (out[1] - (p0 * 3.0 + (1.0 - p0) * 5.0)).abs() < 1e-12);
    let seg = [4, 9];
    let out = attention_naive(&[1.0, 2.0], &[0.5, -1.0], &[3.0, 5.0], Some(&seg), d);
    assert!((out[1] - 5.0).abs() < 1e-12);
}

#[test]
fn backward_matches_finite_differences() {
    let cases: [(AttnDims, Option<Vec<u32>>); 3] =
        [(dims(1, 5, 4, 2, 4), None), (dims(2, 3, 2, 1, 3), None), (dims(2, 6, 2, 2, 4), Some(docs(2, 6, 2)))];
    for (d, seg) in cases {
        let seg = seg.as_deref();
        let (q, k, v) = inputs(d, 11, 2.0);
        let r = rand_vec(q.len(), 99);
        let (q64, k64, v64) = (to_f64(&q), to_f64(&k), to_f64(&v));
        let eps = 1e-5;
        let loss = |q: &[f64], k: &[f64], v: &[f64]| dot64(&attention_naive(q, k, v, seg, d), &r);
        let fq = finite_diff(|x| loss(x, &k64, &v64), &q64, eps);
        let fk = finite_diff(|x| loss(&q64, x, &v64), &k64, eps);
        let fv = finite_diff(|x| loss(&q64, &k64, x), &v64, eps);
        for path in PATHS {
            let (dq, dk, dv) = backward(path, &r, &q, &k, &v, seg, d);
            let what = format!("{path:?} {d:?} seg={}", seg.is_some());
            for (name, g, f) in [("dq", &dq, &fq), ("dk", &dk, &fk), ("dv", &dv, &fv)] {
                let err = rel_norm_err(g, &f32s(f));
                eprintln!("{what}: {name} vs fd rel norm err {err:.2e}");
                assert_grad_matches_fd(g, f, 1e-4, &format!("{what}: {name}"));
            }
        }
    }
}

/// Both backward schedules vs [`naive_backward`]: norm-wise relative error <= 1e-4 per
/// gradient; and the schedules agree with each other to |err| <= 1e-6 + 1e-5 |ref|.
fn check_backward(d: AttnDims, seg: Option<&[u32]>, what: &str) {
    let (q, k, v) = inputs(d, 3, 4.0);
    let r = rand_vec(q.len(), 5);
    let want = naive_backward(&to_f64(&r), &to_f64(&q), &to_f64(&k), &to_f64(&v), seg, d);
    let want = [f32s(&want.0), f32s(&want.1), f32s(&want.2)];
    let split = backward(BwdPath::Split, &r, &q, &k, &v, seg, d);
    let fused = backward(BwdPath::Fused, &r, &q, &k, &v, seg, d);
    for (path, got) in [("split", &split), ("fused", &fused)] {
        for (name, got, want) in [("dq", &got.0, &want[0]), ("dk", &got.1, &want[1]), ("dv", &got.2, &want[2])] {
            let err = rel_norm_err(got, want);
            let (a, _) = max_errors(got, want);
            eprintln!("{what} {path}: {name} rel norm err {err:.2e}, max abs {a:.2e}");
            assert!(err <= 1e-4, "{what} {path}: {name} rel norm err {err:.3e} > 1e-4");
        }
    }
    for (name, s, f) in [("dq", &split.0, &fused.0), ("dk", &split.1, &fused.1), ("dv", &split.2, &fused.2)] {
        let (a, _) = max_errors(f, s);
        eprintln!("{what}: {name} split vs fused max abs {a:.2e}");
        assert_close(f, s, 1e-6, 1e-5, &format!("{what}: {name} fused vs split"));
    }
}

#[test]
fn backward_matches_naive_on_medium_shapes() {
    check_backward(dims(2, 130, 6, 2, 24), None, "T=130 H=6 KV=2");
    check_backward(dims(2, 130, 4, 4, 8), None, "T=130 H=4 KV=4");
    let seg = docs(2, 130, 3);
    check_backward(dims(2, 130, 6, 2, 24), Some(&seg), "T=130 H=6 KV=2 docs=3");
    check_backward(dims(1, 67, 2, 1, 8), None, "T=67 H=2 KV=1");
}

#[test]
fn backward_accumulates() {
    let d = dims(2, 70, 4, 2, 8);
    let seg = docs(2, 70, 2);
    let (q, k, v) = inputs(d, 21, 2.0);
    let r = rand_vec(q.len(), 22);
    let (out, lse) = forward(&q, &k, &v, Some(&seg), d);
    let init = [rand_vec(q.len(), 31), rand_vec(k.len(), 32), rand_vec(v.len(), 33)];
    for path in PATHS {
        let (gq, gk, gv) = backward(path, &r, &q, &k, &v, Some(&seg), d);
        let [mut dq, mut dk, mut dv] = init.clone();
        for _ in 0..2 {
            let (dq, dk, dv) = (&mut dq, &mut dk, &mut dv);
            backward_with(GemmBackend::Auto, path, dq, dk, dv, &r, &out, &lse, &q, &k, &v, Some(&seg), d);
        }
        let got = [("dq", &dq, &gq), ("dk", &dk, &gk), ("dv", &dv, &gv)];
        for ((name, got, g), init) in got.into_iter().zip(&init) {
            let want: Vec<f32> = init.iter().zip(g).map(|(a, b)| a + 2.0 * b).collect();
            assert_close(got, &want, 1e-5, 1e-5, &format!("{path:?}: accumulate {name}"));
        }
    }
}

#[test]
fn backward_schedule_choice() {
    assert_eq!(BwdPath::choose(16, 2), BwdPath::Fused);
    assert_eq!(BwdPath::choose(8, 8), BwdPath::Fused);
    assert_eq!(BwdPath::choose(1, 2), BwdPath::Split);
    assert_eq!(BwdPath::choose(6, 4), BwdPath::Split);
    // The public entry point runs on whichever schedule fits the pool.
    let d = dims(1, 40, 2, 1, 8);
    let (q, k, v) = inputs(d, 41, 1.0);
    let r = rand_vec(q.len(), 42);
    let (out, lse) = forward(&q, &k, &v, None, d);
    let want = backward(BwdPath::Split, &r, &q, &k, &v, None, d);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(&mut dq, &mut dk, &mut dv, &r, &out, &lse, &q, &k, &v, None, d);
    assert_close(&dq, &want.0, 1e-6, 1e-5, "public dq");
    assert_close(&dk, &want.1, 1e-6, 1e-5, "public dk");
    assert_close(&dv, &want.2, 1e-6, 1e-5, "public dv");
}

#[test]
fn long_sequence_multi_tile_matches_naive() {
    let d = dims(1, 1100, 2, 1, 8);
    check_forward(d, None, 3.0, "T=1100");
    check_backward(d, None, "T=1100");
    let seg = docs(1, 1100, 3);
    check_forward(d, Some(&seg), 3.0, "T=1100 docs=3");
    check_backward(d, Some(&seg), "T=1100 docs=3");
}

#[test]
fn empty_shapes_are_a_no_op() {
    for d in [dims(0, 5, 2, 1, 4), dims(2, 0, 2, 1, 4), dims(1, 3, 0, 1, 4)] {
        let kv = vec![0.5; d.b * d.t * d.kv * d.dh];
        let (out, lse) = forward(&[], &kv, &kv, None, d);
        assert!(out.is_empty() && lse.is_empty());
        let (mut dk, mut dv) = (kv.clone(), kv.clone());
        attention_backward(&mut [], &mut dk, &mut dv, &[], &[], &[], &[], &kv, &kv, None, d);
        assert_eq!((dk, dv), (kv.clone(), kv), "{d:?}: untouched");
    }
}

#[test]
#[should_panic(expected = "not a multiple")]
fn rejects_heads_not_multiple_of_kv() {
    let d = dims(1, 2, 3, 2, 4);
    forward(&[0.0; 24], &[0.0; 16], &[0.0; 16], None, d);
}
