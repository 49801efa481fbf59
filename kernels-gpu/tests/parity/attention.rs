//! Causal GQA attention with document segments against kernels-cpu `attention`.

use super::report;
use kernels_cpu::attention::{attention_backward, attention_forward, AttnDims};
use kernels_cpu::check::{max_errors, rand_vec, rel_norm_err};
use kernels_gpu::launcher::SimLauncher;
use kernels_gpu::ops::{self, AttnShape};

/// Document ids `[B, T]`: row `b` split into `docs` documents at uneven, row-dependent points.
fn docs(nb: usize, t: usize, docs: usize) -> Vec<u32> {
    (0..nb)
        .flat_map(|b| (0..t).map(move |i| (1..docs).filter(|&d| i * docs * nb >= (d * nb + b) * t).count() as u32))
        .collect()
}

/// Absolute floor of [`report_norm`]: a gradient that is zero in exact arithmetic (one key per
/// query: softmax of one score has no gradient) is rounding noise of this size in both kernels.
const ABS_FLOOR: f64 = 1e-6;

/// Prints the max abs error and the error relative to the reference's norm; asserts the latter
/// (or every element within [`ABS_FLOOR`], for references that are zero in exact arithmetic).
fn report_norm(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let (abs, _) = max_errors(got, want);
    let rel = rel_norm_err(got, want);
    eprintln!(
        "{what}: max abs {abs:.3e}, |got - want| / |want| {rel:.3e} (tolerance {tol:.0e}, floor {ABS_FLOOR:.0e})"
    );
    assert!(rel <= tol || abs <= ABS_FLOOR, "{what}: relative error {rel:.3e} > {tol:.0e}, max abs {abs:.3e}");
}

#[test]
fn attention_forward_and_backward_match_kernels_cpu() {
    // (B, T, H, KV, Dh, documents per row, q multiplier): T not a multiple of the 16 / 8 / 32 row
    // tiles, GQA groups of 1, 2 and 3, Dh not a multiple of 32 and the largest (128), segments.
    let cases = [
        (1usize, 1usize, 1usize, 1usize, 8usize, 1usize, 1.0f32),
        (2, 45, 4, 2, 24, 1, 3.0),
        (2, 77, 6, 2, 40, 3, 2.0),
        (1, 70, 3, 3, 128, 2, 1.0),
        (3, 33, 2, 1, 32, 4, 4.0),
    ];
    for &(b, t, h, kv, dh, ndocs, qmul) in &cases {
        let dims = AttnDims { b, t, h, kv, dh };
        let shape = AttnShape { b, t, h, kv, dh };
        let q: Vec<f32> = rand_vec(b * t * h * dh, 1).iter().map(|x| x * qmul).collect();
        let (k, v) = (rand_vec(b * t * kv * dh, 2), rand_vec(b * t * kv * dh, 3));
        let seg_ids = docs(b, t, ndocs);
        let seg = (ndocs > 1).then_some(&seg_ids[..]);
        let tag = format!("attention b={b} t={t} h={h} kv={kv} dh={dh} docs={ndocs}");

        let (mut out, mut lse) = (vec![f32::NAN; q.len()], vec![f32::NAN; b * h * t]);
        ops::attention_forward(&SimLauncher, &mut out, &mut lse, &q, &k, &v, seg, shape).unwrap();
        let (mut wout, mut wlse) = (vec![0f32; q.len()], vec![0f32; b * h * t]);
        attention_forward(&mut wout, &mut wlse, &q, &k, &v, seg, dims);
        // Summation order of the tile products and exp (libm vs the CPU's polynomial) differ.
        report(&format!("{tag} forward out"), &out, &wout, 1e-5, 1e-5);
        report(&format!("{tag} forward lse"), &lse, &wlse, 1e-5, 1e-5);

        let dout = rand_vec(q.len(), 4);
        let (mut dq, mut dk, mut dv) = (rand_vec(q.len(), 5), rand_vec(k.len(), 6), rand_vec(v.len(), 7));
        let (init_q, init_k, init_v) = (dq.clone(), dk.clone(), dv.clone());
        let (mut wdq, mut wdk, mut wdv) = (dq.clone(), dk.clone(), dv.clone());
        ops::attention_backward(&SimLauncher, &mut dq, &mut dk, &mut dv, &dout, &wout, &wlse, &q, &k, &v, seg, shape)
            .unwrap();
        attention_backward(&mut wdq, &mut wdk, &mut wdv, &dout, &wout, &wlse, &q, &k, &v, seg, dims);
        // Compare the increments (the backward accumulates onto random initial values).
        let delta = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<f32>>();
        report_norm(&format!("{tag} backward dq"), &delta(&dq, &init_q), &delta(&wdq, &init_q), 1e-4);
        report_norm(&format!("{tag} backward dk"), &delta(&dk, &init_k), &delta(&wdk, &init_k), 1e-4);
        report_norm(&format!("{tag} backward dv"), &delta(&dv, &init_v), &delta(&wdv, &init_v), 1e-4);
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let s = AttnShape { b: 1, t: 2, h: 3, kv: 2, dh: 4 };
    let (mut out, mut lse) = (vec![0f32; 24], vec![0f32; 6]);
    assert!(
        ops::attention_forward(&SimLauncher, &mut out, &mut lse, &[0.0; 24], &[0.0; 16], &[0.0; 16], None, s).is_err()
    );
    let s = AttnShape { b: 1, t: 1, h: 1, kv: 1, dh: 129 };
    let (mut out, mut lse) = (vec![0f32; 129], vec![0f32; 1]);
    assert!(ops::attention_forward(&SimLauncher, &mut out, &mut lse, &[0.0; 129], &[0.0; 129], &[0.0; 129], None, s)
        .is_err());
    let s = AttnShape { b: 1, t: 2, h: 1, kv: 1, dh: 4 };
    let (mut out, mut lse) = (vec![0f32; 8], vec![0f32; 2]);
    let r = ops::attention_forward(&SimLauncher, &mut out, &mut lse, &[0.0; 8], &[0.0; 8], &[0.0; 8], Some(&[0]), s);
    assert!(r.is_err());
}
