//! The fused LM-head distillation KL against kernels-cpu `distill`.

use super::report;
use kernels_cpu::check::rand_vec;
use kernels_cpu::distill::{lm_head_kl_forward, lm_head_kl_forward_backward, DistillDims};
use kernels_gpu::launcher::SimLauncher;
use kernels_gpu::ops::{self, KlShape};

#[test]
fn lm_head_kl_forward_and_backward_match_kernels_cpu() {
    // Chunks that do not divide N, a chunk whose rows are all ignored, D != Dt, tau != 1.
    for &(n, d, dt, v, tau, chunk) in &[(13usize, 24usize, 40usize, 301usize, 2.0f32, 5usize), (6, 8, 8, 1000, 1.0, 16)]
    {
        let hs: Vec<f32> = rand_vec(n * d, 1).iter().map(|x| x * 2.0).collect();
        let ws = rand_vec(v * d, 2);
        let ht: Vec<f32> = rand_vec(n * dt, 3).iter().map(|x| x * 2.0).collect();
        let wt = rand_vec(v * dt, 4);
        let targets: Vec<i32> =
            (0..n).map(|i| if (5..10).contains(&i) || i % 4 == 1 { -100 } else { (i % v) as i32 }).collect();
        let dims = DistillDims { n, d, dt, v };
        let shape = KlShape { n, d, dt, v };
        let scale = 0.25;
        let what = format!("distill n={n} d={d} dt={dt} v={v} tau={tau} chunk={chunk}");

        let (mut kl, mut want) = (vec![f32::NAN; n], vec![0f32; n]);
        ops::lm_head_kl(&SimLauncher, &mut kl, None, &hs, &ws, &ht, &wt, &targets, shape, tau, scale, chunk).unwrap();
        lm_head_kl_forward(&mut want, &hs, &ws, &ht, &wt, &targets, dims, tau, chunk);
        report(&format!("{what}: kl (forward only)"), &kl, &want, 2e-6, 1e-4);

        // Backward accumulates into existing gradients.
        let (mut dh, mut dw) = (rand_vec(n * d, 5), rand_vec(v * d, 6));
        let (mut wdh, mut wdw) = (dh.clone(), dw.clone());
        let mut kl = vec![f32::NAN; n];
        ops::lm_head_kl(
            &SimLauncher,
            &mut kl,
            Some((&mut dh, &mut dw)),
            &hs,
            &ws,
            &ht,
            &wt,
            &targets,
            shape,
            tau,
            scale,
            chunk,
        )
        .unwrap();
        lm_head_kl_forward_backward(
            &mut want, &mut wdh, &mut wdw, &hs, &ws, &ht, &wt, &targets, dims, tau, scale, chunk,
        );
        report(&format!("{what}: kl"), &kl, &want, 2e-6, 1e-4);
        report(&format!("{what}: dhs"), &dh, &wdh, 1e-6, 1e-4);
        report(&format!("{what}: dws"), &dw, &wdw, 1e-6, 1e-4);
        assert!(targets.iter().zip(&kl).all(|(&t, &k)| t != -100 || k == 0.0), "{what}: ignored rows give 0");
    }
    let mut kl = vec![0f32; 1];
    let bad = ops::lm_head_kl(
        &SimLauncher,
        &mut kl,
        None,
        &[0.0; 2],
        &[0.0; 6],
        &[0.0; 2],
        &[0.0; 6],
        &[0],
        KlShape { n: 1, d: 2, dt: 2, v: 3 },
        0.0,
        1.0,
        4,
    );
    assert!(bad.is_err(), "tau 0 is refused");
}
