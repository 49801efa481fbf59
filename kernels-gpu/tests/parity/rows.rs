//! RMSNorm and softmax cross-entropy against kernels-cpu.

use super::report;
use kernels_cpu::check::rand_vec;
use kernels_gpu::launcher::SimLauncher;
use kernels_gpu::ops;

const EPS: f32 = 1e-6;

#[test]
fn rmsnorm_forward_and_backward_match_kernels_cpu() {
    for &(n, c) in &[(1usize, 1usize), (37, 75), (5, 128), (131, 769)] {
        let x = rand_vec(n * c, 1);
        let w: Vec<f32> = rand_vec(c, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
        let (mut out, mut rstd) = (vec![0f32; n * c], vec![0f32; n]);
        let (mut wout, mut wrstd) = (out.clone(), rstd.clone());
        ops::rmsnorm_forward(&SimLauncher, &mut out, &mut rstd, &x, &w, n, c, EPS).unwrap();
        kernels_cpu::rmsnorm::rmsnorm_forward(&mut wout, &mut wrstd, &x, &w, n, c, EPS);
        report(&format!("rmsnorm forward n={n} c={c}"), &out, &wout, 1e-6, 2e-6);
        report(&format!("rmsnorm rstd n={n} c={c}"), &rstd, &wrstd, 0.0, 2e-6);
        let dout = rand_vec(n * c, 3);
        let (mut dx, mut dw) = (rand_vec(n * c, 4), rand_vec(c, 5));
        let (mut wdx, mut wdw) = (dx.clone(), dw.clone());
        ops::rmsnorm_backward(&SimLauncher, &mut dx, &mut dw, &dout, &x, &w, &wrstd, n, c).unwrap();
        kernels_cpu::rmsnorm::rmsnorm_backward(&mut wdx, &mut wdw, &dout, &x, &w, &wrstd, n, c);
        // dx: different summation order of sum(g * x) over C; dw: atomics over row chunks.
        report(&format!("rmsnorm backward dx n={n} c={c}"), &dx, &wdx, 2e-6, 1e-5);
        report(&format!("rmsnorm backward dw n={n} c={c}"), &dw, &wdw, 1e-5, 1e-5);
    }
}

#[test]
fn softmax_cross_entropy_matches_the_fused_cpu_kernel() {
    // The CPU kernel fuses the LM head; with h = logits and an identity head (d = V) its logits
    // are ours exactly and its dh is our dlogits.
    for &(n, v) in &[(37usize, 301usize), (5, 1000)] {
        let logits: Vec<f32> = rand_vec(n * v, 7).iter().map(|x| x * 8.0).collect();
        let targets: Vec<i32> = (0..n).map(|i| if i % 5 == 3 { -100 } else { ((i * 7919 + 13) % v) as i32 }).collect();
        let count = targets.iter().filter(|&&t| t != -100).count();
        let scale = 1.0 / count as f32;
        let (mut loss, mut dl) = (vec![0f32; n], vec![f32::NAN; n * v]);
        ops::softmax_ce_forward_backward(&SimLauncher, &mut loss, &mut dl, &logits, &targets, v, scale).unwrap();
        let mut eye = vec![0f32; v * v];
        for i in 0..v {
            eye[i * v + i] = 1.0;
        }
        let (mut wl, mut wdh, mut wdw) = (vec![0f32; n], vec![0f32; n * v], vec![0f32; v * v]);
        kernels_cpu::cross_entropy::lm_head_ce_forward_backward(
            &mut wl, &mut wdh, &mut wdw, &logits, &eye, &targets, n, v, v, scale, 16,
        );
        report(&format!("cross-entropy loss n={n} v={v}"), &loss, &wl, 1e-5, 1e-5);
        report(&format!("cross-entropy dlogits n={n} v={v}"), &dl, &wdh, 1e-7, 1e-4);
    }
    let mut loss = vec![0f32; 1];
    assert!(ops::softmax_ce_forward_backward(&SimLauncher, &mut loss, &mut [0.0; 3], &[0.0; 3], &[3], 3, 1.0).is_err());
}
