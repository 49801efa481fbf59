use super::naive::{attention_naive_lse, probs};
use super::*;
use crate::check::{
    assert_close, assert_grad_matches_fd, dot64, finite_diff, max_errors, rand_vec, rel_norm_err,
    to_f64,
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
            s.push(
                (0..docs)
                    .filter(|&d| d > 0 && i * docs * nb >= (d * nb + b) * t)
                    .count() as u32,
            );
        }
    }
    s
}

/// Random inputs; `q` scaled by `qmul` so softmax rows get peaky.
fn inputs(d: AttnDims, seed: u64, qmul: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let q = rand_vec(d.b * d.t * d.h * d.dh, seed)
        .iter()
        .map(|x| x * qmul)
        .collect();
    let k = rand_vec(d.b * d.t * d.kv * d.dh, seed + 1);
    let v = rand_vec(d.b * d.t * d.kv * d.dh, seed + 2);
    (q, k, v)
}

fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    d: AttnDims,
) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![f32::NAN; q.len()];
    let mut lse = vec![f32::NAN; d.b * d.h * d.t];
    attention_forward(&mut out, &mut lse, q, k, v, seg, d);
    (out, lse)
}

/// Gradients of `sum(out * dout)` from one backward call on zeroed buffers.
fn backward(
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    d: AttnDims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (out, lse) = forward(q, k, v, seg, d);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(&mut dq, &mut dk, &mut dv, dout, &out, &lse, q, k, v, seg, d);
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
    let AttnDims {
        b: nb,
        t,
        h,
        kv,
        dh,
    } = d;
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
                let dp: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..dh)
                            .map(|c| dout[qi(b, i, hd) + c] * v[ki(b, j, kh) + c])
                            .sum()
                    })
                    .collect();
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
    for &(t, h, kv, dh) in &[
        (1, 6, 2, 8),
        (7, 6, 2, 24),
        (67, 4, 4, 8),
        (130, 6, 2, 24),
        (130, 4, 4, 8),
    ] {
        for qmul in [1.0, 6.0] {
            let d = dims(2, t, h, kv, dh);
            check_forward(
                d,
                None,
                qmul,
                &format!("T={t} H={h} KV={kv} Dh={dh} q*{qmul}"),
            );
        }
    }
}

#[test]
fn forward_matches_naive_with_packed_documents() {
    for &(t, h, kv, dh, ndocs) in &[
        (7, 6, 2, 8, 2),
        (67, 6, 2, 24, 3),
        (130, 4, 4, 8, 2),
        (130, 6, 2, 24, 3),
    ] {
        let d = dims(3, t, h, kv, dh);
        let seg = docs(d.b, t, ndocs);
        check_forward(
            d,
            Some(&seg),
            4.0,
            &format!("T={t} H={h} KV={kv} Dh={dh} docs={ndocs}"),
        );
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
    let (s0, s1) = (2.0 * 0.5, 2.0 * -1.0);
    let p0 = 1.0 / (1.0 + f64::exp(s1 - s0));
    assert!((out[0] - 3.0).abs() < 1e-12 && (out[1] - (p0 * 3.0 + (1.0 - p0) * 5.0)).abs() < 1e-12);
    let seg = [4, 9];
    let out = attention_naive(&[1.0, 2.0], &[0.5, -1.0], &[3.0, 5.0], Some(&seg), d);
    assert!((out[1] - 5.0).abs() < 1e-12);
}

#[test]
fn backward_matches_finite_differences() {
    let cases: [(AttnDims, Option<Vec<u32>>); 3] = [
        (dims(1, 5, 4, 2, 4), None),
        (dims(2, 3, 2, 1, 3), None),
        (dims(2, 6, 2, 2, 4), Some(docs(2, 6, 2))),
    ];
    for (d, seg) in cases {
        let seg = seg.as_deref();
        let (q, k, v) = inputs(d, 11, 2.0);
        let r = rand_vec(q.len(), 99);
        let (dq, dk, dv) = backward(&r, &q, &k, &v, seg, d);
        let (q64, k64, v64) = (to_f64(&q), to_f64(&k), to_f64(&v));
        let eps = 1e-5;
        let fq = finite_diff(
            |x| dot64(&attention_naive(x, &k64, &v64, seg, d), &r),
            &q64,
            eps,
        );
        let fk = finite_diff(
            |x| dot64(&attention_naive(&q64, x, &v64, seg, d), &r),
            &k64,
            eps,
        );
        let fv = finite_diff(
            |x| dot64(&attention_naive(&q64, &k64, x, seg, d), &r),
            &v64,
            eps,
        );
        let what = format!("{d:?} seg={}", seg.is_some());
        for (name, g, f) in [("dq", &dq, &fq), ("dk", &dk, &fk), ("dv", &dv, &fv)] {
            eprintln!(
                "{what}: {name} vs fd rel norm err {:.2e}",
                rel_norm_err(g, &f32s(f))
            );
        }
        assert_grad_matches_fd(&dq, &fq, 1e-4, &format!("{what}: dq"));
        assert_grad_matches_fd(&dk, &fk, 1e-4, &format!("{what}: dk"));
        assert_grad_matches_fd(&dv, &fv, 1e-4, &format!("{what}: dv"));
    }
}

/// Backward vs [`naive_backward`]: norm-wise relative error <= 1e-4 per gradient.
fn check_backward(d: AttnDims, seg: Option<&[u32]>, what: &str) {
    let (q, k, v) = inputs(d, 3, 4.0);
    let r = rand_vec(q.len(), 5);
    let (dq, dk, dv) = backward(&r, &q, &k, &v, seg, d);
    let (wq, wk, wv) = naive_backward(&to_f64(&r), &to_f64(&q), &to_f64(&k), &to_f64(&v), seg, d);
    for (name, got, want) in [("dq", &dq, &wq), ("dk", &dk, &wk), ("dv", &dv, &wv)] {
        let err = rel_norm_err(got, &f32s(want));
        let (a, _) = max_errors(got, &f32s(want));
        eprintln!("{what}: {name} rel norm err {err:.2e}, max abs {a:.2e}");
        assert!(err <= 1e-4, "{what}: {name} rel norm err {err:.3e} > 1e-4");
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
    let (gq, gk, gv) = backward(&r, &q, &k, &v, Some(&seg), d);
    let (out, lse) = forward(&q, &k, &v, Some(&seg), d);
    let (iq, ik, iv) = (
        rand_vec(q.len(), 31),
        rand_vec(k.len(), 32),
        rand_vec(v.len(), 33),
    );
    let (mut dq, mut dk, mut dv) = (iq.clone(), ik.clone(), iv.clone());
    for _ in 0..2 {
        attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &r,
            &out,
            &lse,
            &q,
            &k,
            &v,
            Some(&seg),
            d,
        );
    }
    for (name, got, init, g) in [
        ("dq", &dq, &iq, &gq),
        ("dk", &dk, &ik, &gk),
        ("dv", &dv, &iv, &gv),
    ] {
        let want: Vec<f32> = init.iter().zip(g).map(|(a, b)| a + 2.0 * b).collect();
        assert_close(got, &want, 1e-5, 1e-5, &format!("accumulate {name}"));
    }
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
fn empty_batch_is_a_no_op() {
    let d = dims(0, 5, 2, 1, 4);
    let (out, lse) = forward(&[], &[], &[], None, d);
    assert!(out.is_empty() && lse.is_empty());
}

#[test]
#[should_panic(expected = "not a multiple")]
fn rejects_heads_not_multiple_of_kv() {
    let d = dims(1, 2, 3, 2, 4);
    forward(&[0.0; 24], &[0.0; 16], &[0.0; 16], None, d);
}
