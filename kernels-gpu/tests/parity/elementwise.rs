//! SwiGLU, AdamW, the residual add and column slices against kernels-cpu.

use super::report;
use kernels_cpu::check::rand_vec;
use kernels_gpu::launcher::SimLauncher;
use kernels_gpu::ops;

/// Gates spread over [-12, 12] plus extremes.
fn gates(len: usize, seed: u64) -> Vec<f32> {
    let mut g: Vec<f32> = rand_vec(len, seed).iter().map(|v| 12.0 * v).collect();
    for (slot, v) in g.iter_mut().zip([100.0, -100.0, 0.0, -0.0, 87.5, -87.5, 30.0, -30.0]) {
        *slot = v;
    }
    g
}

#[test]
fn swiglu_forward_and_backward_match_kernels_cpu() {
    for &len in &[1usize, 75, 37 * 75, 10_007] {
        let (g, u, dout) = (gates(len, 1), rand_vec(len, 2), rand_vec(len, 3));
        let (mut got, mut want) = (vec![0f32; len], vec![0f32; len]);
        ops::swiglu_forward(&SimLauncher, &mut got, &g, &u).unwrap();
        kernels_cpu::swiglu::swiglu_forward(&mut want, &g, &u);
        // CPU exp is a ~2 ulp polynomial, the simulator's is libm's.
        report(&format!("swiglu forward len={len}"), &got, &want, 1e-6, 2e-6);
        let (mut dg, mut du) = (rand_vec(len, 4), rand_vec(len, 5));
        let (mut wg, mut wu) = (dg.clone(), du.clone());
        ops::swiglu_backward(&SimLauncher, &mut dg, &mut du, &dout, &g, &u).unwrap();
        kernels_cpu::swiglu::swiglu_backward(&mut wg, &mut wu, &dout, &g, &u);
        report(&format!("swiglu backward dgate len={len}"), &dg, &wg, 1e-6, 2e-6);
        report(&format!("swiglu backward dup len={len}"), &du, &wu, 1e-6, 2e-6);
    }
}

#[test]
fn fused_swiglu_matches_kernels_cpu() {
    let (n, f) = (37usize, 75usize);
    let gu: Vec<f32> = rand_vec(n * 2 * f, 6).iter().map(|x| x * 6.0).collect();
    let (mut out, mut want) = (vec![0f32; n * f], vec![0f32; n * f]);
    ops::swiglu_fused_forward(&SimLauncher, &mut out, &gu, f).unwrap();
    kernels_cpu::swiglu::swiglu_fused_forward(&mut want, &gu, f);
    report("swiglu fused forward", &out, &want, 1e-6, 2e-6);
    let dout = rand_vec(n * f, 7);
    let mut dgu = rand_vec(n * 2 * f, 8);
    let mut wdgu = dgu.clone();
    ops::swiglu_fused_backward(&SimLauncher, &mut dgu, &dout, &gu, f).unwrap();
    kernels_cpu::swiglu::swiglu_fused_backward(&mut wdgu, &dout, &gu, f);
    report("swiglu fused backward", &dgu, &wdgu, 1e-6, 2e-6);
}

#[test]
fn adamw_matches_kernels_cpu_over_ten_steps() {
    let cfgs = [
        (1e-2, 0.9, 0.95, 1e-8, 0.1),
        (3e-4, 0.8, 0.999, 1e-6, 0.01),
        (1e-3, 0.3, 0.9, 1e-8, 0.0), // beta1 < 0.5: torch's lerp takes its other branch
    ];
    for (ci, &(lr, beta1, beta2, eps, weight_decay)) in cfgs.iter().enumerate() {
        let h = ops::AdamWHyper { lr, beta1, beta2, eps, weight_decay };
        let c = kernels_cpu::adamw::AdamWConfig { lr, beta1, beta2, eps, weight_decay };
        for &len in &[1usize, 75, 10_007] {
            let mut p = rand_vec(len, 1);
            let (mut m, mut v) = (vec![0f32; len], vec![0f32; len]);
            let (mut wp, mut wm, mut wv) = (p.clone(), m.clone(), v.clone());
            for step in 1..=10u64 {
                let g: Vec<f32> = rand_vec(len, 100 + step)
                    .iter()
                    .zip(rand_vec(len, 200 + step))
                    .map(|(a, b)| a * b.abs().powi(3))
                    .collect();
                ops::adamw_step(&SimLauncher, &mut p, &g, &mut m, &mut v, &h, step).unwrap();
                kernels_cpu::adamw::adamw_step(&mut wp, &g, &mut wm, &mut wv, &c, step);
            }
            // Same operations in the same order with IEEE sqrt / division: equal up to 1 ulp.
            report(&format!("adamw param cfg {ci} len={len}"), &p, &wp, 0.0, 1.2e-7);
            report(&format!("adamw m cfg {ci} len={len}"), &m, &wm, 0.0, 1.2e-7);
            report(&format!("adamw v cfg {ci} len={len}"), &v, &wv, 0.0, 1.2e-7);
        }
    }
}

#[test]
fn helpers_reject_mismatched_lengths() {
    let mut out = vec![0f32; 3];
    assert!(ops::swiglu_forward(&SimLauncher, &mut out, &[0.0; 3], &[0.0; 2]).is_err());
}

#[test]
fn add_scaled_and_column_slices_match_kernels_cpu_bitwise() {
    for &(rows, cols, start, width) in
        &[(1usize, 1usize, 0usize, 1usize), (37, 13, 3, 5), (300, 75, 70, 5), (129, 9, 0, 9)]
    {
        let len = rows * cols;
        let (a, b) = (rand_vec(len, 11), rand_vec(len, 12));
        for scale in [1.0f32, 0.37, -2.5] {
            let mut got = vec![0f32; len];
            ops::add_scaled(&SimLauncher, &mut got, &a, &b, scale).unwrap();
            let want: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| x + scale * y).collect();
            report(&format!("add_scaled {scale} len={len}"), &got, &want, 0.0, 0.0);
        }
        let mut slice = vec![0f32; rows * width];
        ops::copy_cols(&SimLauncher, &mut slice, &a, cols, start).unwrap();
        let want = kernels_cpu::buffer::copy_cols(&a, cols, start, width);
        report(&format!("copy_cols [{rows}, {cols}] {start}+{width}"), &slice, &want, 0.0, 0.0);
        let (mut dx, mut wdx) = (b.clone(), b.clone());
        ops::add_cols(&SimLauncher, &mut dx, &slice, cols, start).unwrap();
        kernels_cpu::buffer::add_cols(&mut wdx, &slice, cols, start);
        report(&format!("add_cols [{rows}, {cols}] {start}+{width}"), &dx, &wdx, 0.0, 0.0);
    }
    assert!(ops::copy_cols(&SimLauncher, &mut [0.0; 4], &[0.0; 6], 3, 2).is_err(), "slice past the last column");
    assert!(ops::add_cols(&SimLauncher, &mut [0.0; 6], &[0.0; 5], 3, 0).is_err(), "ragged slice");
}
