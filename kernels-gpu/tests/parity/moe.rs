//! Router and permutation kernels against kernels-cpu `moe`.

use super::report;
use kernels_cpu::check::rand_vec;
use kernels_cpu::moe::{permute as cpu_perm, router as cpu_router, MoeParams, RouterWeighting};
use kernels_gpu::launcher::SimLauncher;
use kernels_gpu::ops;

const NONE: u32 = u32::MAX;

#[test]
fn router_forward_and_backward_match_kernels_cpu() {
    use RouterWeighting::{Prob, Sigmoid, Ste};
    let cases = [
        (300usize, 16usize, 0.7f32, false, Ste, 0.0f32),
        (77, 5, 1.0, true, Prob, 0.0),
        (77, 5, 0.5, true, Ste, 0.3),
        (300, 16, 1.0, false, Sigmoid, 0.0),
        (77, 5, 1.0, true, Sigmoid, 0.3),
    ];
    for &(n, e, temp, with_bias, weighting, noise_std) in &cases {
        let logits: Vec<f32> = rand_vec(n * e, 11).iter().map(|x| x * 3.0).collect();
        let bias: Vec<f32> = rand_vec(e, 12).iter().map(|x| x * 0.05).collect();
        let bias = with_bias.then_some(&bias[..]);
        let params =
            MoeParams { temperature: temp, weighting, router_noise: noise_std, seed: 5, ..MoeParams::default() };
        // The host's noise, as the GPU backend draws it.
        let noise: Vec<f32> =
            (0..n * e).map(|i| noise_std * cpu_router::noise_sample(params.seed, i / e, i % e)).collect();
        let noise = (noise_std > 0.0).then_some(&noise[..]);
        let scoring =
            if weighting == Sigmoid { ops::Scoring::Sigmoid } else { ops::Scoring::Softmax { temperature: temp } };
        let (mut probs, mut choice, mut lse, mut ent) =
            (vec![0f32; n * e], vec![0u32; n], vec![0f32; n], vec![0f32; n]);
        let sums = ops::router_forward(
            &SimLauncher,
            &mut probs,
            &mut choice,
            &mut lse,
            &mut ent,
            &logits,
            noise,
            bias,
            e,
            scoring,
        )
        .unwrap();
        let (mut wp, mut wc, mut wl, mut we) = (vec![0f32; n * e], vec![0u32; n], vec![0f32; n], vec![0f32; n]);
        cpu_router::route_forward(&mut wp, &mut wc, &mut wl, &mut we, &logits, bias, e, &params);
        let tag = format!("router n={n} e={e} {weighting:?} noise {noise_std}");
        report(&format!("{tag} probs"), &probs, &wp, 1e-7, 1e-5);
        report(&format!("{tag} lse"), &lse, &wl, 1e-6, 1e-6);
        report(&format!("{tag} entropy"), &ent, &we, 1e-6, 1e-5);
        assert_eq!(choice, wc, "{tag}: choices");
        let counts = cpu_router::choice_counts(&wc, e);
        assert_eq!(sums.counts.iter().map(|&c| c as usize).collect::<Vec<_>>(), counts, "{tag}: counts");
        let want_lb = cpu_router::lb_loss_forward(&wp, &counts, e, weighting);
        let want_z = cpu_router::z_loss_forward(&wl);
        report(&format!("{tag} lb loss"), &[sums.lb_loss], &[want_lb], 0.0, 1e-5);
        report(&format!("{tag} z loss"), &[sums.z_loss], &[want_z], 0.0, 1e-5);

        // Backward: routed-weight gradient (some tokens dropped), lb and z losses.
        let expert: Vec<u32> = wc.iter().enumerate().map(|(t, &c)| if t % 7 == 2 { NONE } else { c }).collect();
        let dgate = rand_vec(n, 13);
        let (dlb, dz) = (0.3f32, 0.2f32);
        let mut dl = rand_vec(n * e, 14);
        let mut want = dl.clone();
        let cnt32: Vec<u32> = counts.iter().map(|&c| c as u32).collect();
        let gate = Some((&dgate[..], &expert[..]));
        ops::router_backward(&SimLauncher, &mut dl, gate, &wp, &logits, &wl, &cnt32, dlb, dz, e, scoring).unwrap();
        cpu_router::gate_backward(&mut want, &dgate, &wp, &expert, e, &params);
        cpu_router::lb_loss_backward(&mut want, dlb, &wp, &counts, e, &params);
        cpu_router::z_loss_backward(&mut want, dz, &logits, &wl, e);
        report(&format!("{tag} dlogits"), &dl, &want, 1e-6, 1e-5);
    }
}

#[test]
fn sort_gather_and_combine_match_kernels_cpu() {
    for &(n, e, d) in &[(300usize, 6usize, 5usize), (37, 16, 33), (1, 3, 2)] {
        let expert: Vec<u32> = rand_vec(n, 21)
            .iter()
            .map(|v| if *v > 0.8 { NONE } else { ((v + 1.0) / 1.8 * e as f32) as u32 % e as u32 })
            .collect();
        let s = ops::sort_by_expert(&SimLauncher, &expert, e).unwrap();
        let (order, offsets) = cpu_perm::sort_by_expert(&expert, e);
        let tag = format!("permute n={n} e={e} d={d}");
        assert_eq!(s.order, order, "{tag}: order");
        assert_eq!(s.offsets.iter().map(|&o| o as usize).collect::<Vec<_>>(), offsets, "{tag}: offsets");
        assert_eq!(s.inv, cpu_perm::inverse_positions(&order, n), "{tag}: inv");
        let nk = order.len();
        let x = rand_vec(n * d, 22);
        let (mut xp, mut wxp) = (vec![0f32; nk * d], vec![0f32; nk * d]);
        ops::gather_forward(&SimLauncher, &mut xp, &x, &s.order, &s.offsets, d).unwrap();
        cpu_perm::gather_rows_forward(&mut wxp, &x, &order, d);
        assert_eq!(xp, wxp, "{tag}: gather");
        let dxp = rand_vec(nk * d, 23);
        let (mut dx, mut wdx) = (rand_vec(n * d, 24), rand_vec(n * d, 24));
        ops::gather_backward(&SimLauncher, &mut dx, &dxp, &s.inv, d).unwrap();
        cpu_perm::gather_rows_backward(&mut wdx, &dxp, &s.inv, 1, d);
        report(&format!("{tag} gather backward"), &dx, &wdx, 0.0, 0.0);
        let (yp, wts) = (rand_vec(nk * d, 25), rand_vec(nk, 26));
        let (mut out, mut wout) = (vec![f32::NAN; n * d], vec![0f32; n * d]);
        ops::combine_forward(&SimLauncher, &mut out, &yp, Some(&wts), &s.inv, d).unwrap();
        cpu_perm::combine_forward(&mut wout, &yp, &wts, &s.inv, 1, d);
        report(&format!("{tag} combine forward"), &out, &wout, 0.0, 0.0);
        let dout = rand_vec(n * d, 27);
        let (mut dyp, mut dw) = (rand_vec(nk * d, 28), rand_vec(nk, 29));
        let (mut wdyp, mut wdw) = (dyp.clone(), dw.clone());
        ops::combine_backward(&SimLauncher, &mut dyp, Some(&mut dw), &dout, &yp, Some(&wts), &s.order, &s.offsets, d)
            .unwrap();
        cpu_perm::combine_backward(&mut wdyp, &mut wdw, &dout, &yp, &wts, &order, d);
        report(&format!("{tag} combine backward dyp"), &dyp, &wdyp, 1e-7, 1e-6);
        report(&format!("{tag} combine backward dweights"), &dw, &wdw, 1e-6, 1e-5);
    }
}
