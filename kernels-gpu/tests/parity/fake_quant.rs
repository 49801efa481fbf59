//! Fake quantizer with learnable clip: against a naive f64 reference written here (kernels-cpu
//! has none yet), and its LSQ gradients against finite differences where those are meaningful.

use super::report;
use kernels_cpu::check::{finite_diff, rand_vec};
use kernels_gpu::launcher::SimLauncher;
use kernels_gpu::ops;

fn qmax(bits: u32) -> f64 {
    ((1u32 << (bits - 1)) - 1) as f64
}

/// f64 reference: `(y, dw, dclip)` for upstream `dy` (fresh zero gradients).
fn naive(w: &[f32], clip: &[f32], dy: &[f32], group: usize, bits: u32, scale: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let q = qmax(bits);
    let (mut y, mut dw, mut dclip) = (vec![0f64; w.len()], vec![0f64; w.len()], vec![0f64; clip.len()]);
    for i in 0..w.len() {
        let (x, a, d) = (w[i] as f64, clip[i / group] as f64, dy[i] as f64);
        let s = a / q;
        let v = x.clamp(-a, a) / s;
        y[i] = v.round_ties_even() * s;
        if x.abs() < a {
            dw[i] = d;
            dclip[i / group] += scale * d * (v.round_ties_even() - v) / q;
        } else {
            dclip[i / group] += scale * d * x.signum();
        }
    }
    (y, dw, dclip)
}

/// Weights with some beyond the clip, moved away from rounding ties (so f32 and f64 agree on
/// every rounding), and per-group clips of 0.7 * max |w|.
fn data(len: usize, group: usize, bits: u32, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut w = rand_vec(len, seed);
    let clip: Vec<f32> = w.chunks(group).map(|g| 0.7 * g.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3)).collect();
    let q = qmax(bits);
    for (i, x) in w.iter_mut().enumerate() {
        let s = clip[i / group] as f64 / q;
        let v = *x as f64 / s;
        if (v - v.floor() - 0.5).abs() < 1e-3 {
            *x = ((v.floor() + 0.25) * s) as f32;
        }
    }
    (w, clip)
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn fake_quant_matches_the_f64_reference_at_8_6_5_4_bits() {
    let (len, group) = (1000usize, 64usize); // last group has 40 elements
    for bits in [8u32, 6, 5, 4] {
        let (w, clip) = data(len, group, bits, 50 + bits as u64);
        let dy = rand_vec(len, 60 + bits as u64);
        let scale = 1.0 / ((group as f64) * qmax(bits)).sqrt();
        let (ry, rdw, rdc) = naive(&w, &clip, &dy, group, bits, scale);
        let mut y = vec![f32::NAN; len];
        ops::fake_quant_forward(&SimLauncher, &mut y, &w, &clip, group, bits).unwrap();
        report(&format!("fake quant {bits}-bit y"), &y, &f32s(&ry), 1e-7, 1e-6);
        let levels: std::collections::BTreeSet<i64> = y
            .iter()
            .enumerate()
            .map(|(i, &v)| (v as f64 / (clip[i / group] as f64 / qmax(bits))).round() as i64)
            .collect();
        assert!(levels.len() as f64 <= 2.0 * qmax(bits) + 1.0, "{bits}-bit: {} levels", levels.len());
        let (mut dw, mut dc) = (vec![0f32; len], vec![0f32; clip.len()]);
        ops::fake_quant_backward(&SimLauncher, &mut dw, &mut dc, &dy, &w, &clip, group, bits, scale as f32).unwrap();
        report(&format!("fake quant {bits}-bit dw"), &dw, &f32s(&rdw), 0.0, 0.0);
        report(&format!("fake quant {bits}-bit dclip"), &dc, &f32s(&rdc), 1e-6, 1e-5);
    }
    assert!(ops::fake_quant_forward(&SimLauncher, &mut [0.0; 4], &[0.0; 4], &[1.0; 1], 2, 8).is_err());
}

#[test]
fn lsq_gradients_match_finite_differences_where_meaningful() {
    let bits = 4u32;
    let q = qmax(bits);
    let group = 16usize;
    // (a) Every element clipped: y = sign(w) * a, so dL/da = sum dy * sign(w) exactly.
    let w: Vec<f32> = rand_vec(group, 70).iter().map(|v| v.signum() * (1.5 + v.abs())).collect();
    let clip = [1.0f32];
    let dy = rand_vec(group, 71);
    let (mut dw, mut dc) = (vec![0f32; group], vec![0f32; 1]);
    ops::fake_quant_backward(&SimLauncher, &mut dw, &mut dc, &dy, &w, &clip, group, bits, 1.0).unwrap();
    let loss = |a: &[f64]| -> f64 {
        w.iter()
            .zip(&dy)
            .map(|(&x, &d)| {
                let s = a[0] / q;
                d as f64 * ((x as f64).clamp(-a[0], a[0]) / s).round_ties_even() * s
            })
            .sum()
    };
    let fd = finite_diff(loss, &[1.0], 1e-6);
    eprintln!("fake quant clipped dclip: kernel {:.6e}, finite differences {:.6e}", dc[0], fd[0]);
    assert!((dc[0] as f64 - fd[0]).abs() <= 1e-5 * fd[0].abs().max(1.0), "clipped dclip {} vs fd {}", dc[0], fd[0]);
    assert!(dw.iter().all(|&g| g == 0.0), "clipped elements pass no gradient to w");
    // (b) Inside the range LSQ differentiates the surrogate y = s * (v + r) with the rounding
    // residual r = rint(v) - v held fixed, i.e. y = w + a * r / qmax: finite differences of that
    // surrogate (in w and a) must equal the kernel's dw and dclip.
    let (w, clip) = data(group, group, bits, 72);
    let inside: Vec<f32> = w.iter().map(|&x| x.clamp(-0.69 * clip[0], 0.69 * clip[0])).collect();
    let dy = rand_vec(group, 73);
    let (mut dw, mut dc) = (vec![0f32; group], vec![0f32; 1]);
    ops::fake_quant_backward(&SimLauncher, &mut dw, &mut dc, &dy, &inside, &clip, group, bits, 1.0).unwrap();
    let a0 = clip[0] as f64;
    let r: Vec<f64> = inside
        .iter()
        .map(|&x| {
            let v = x as f64 / (a0 / q);
            v.round_ties_even() - v
        })
        .collect();
    let surrogate = |wv: &[f64], a: f64| -> f64 {
        wv.iter().zip(&r).zip(&dy).map(|((&x, &ri), &d)| d as f64 * (x + a * ri / q)).sum()
    };
    let w64: Vec<f64> = inside.iter().map(|&x| x as f64).collect();
    let fd_a = finite_diff(|a| surrogate(&w64, a[0]), &[a0], 1e-6)[0];
    let fd_w = finite_diff(|wv| surrogate(wv, a0), &w64, 1e-6);
    eprintln!("fake quant inside dclip: kernel {:.6e}, finite differences {:.6e}", dc[0], fd_a);
    // f32 sum of 16 terms of size <= 0.5 / qmax: 1e-6 absolute.
    assert!((dc[0] as f64 - fd_a).abs() <= 1e-6 + 1e-5 * fd_a.abs(), "inside dclip {} vs fd {fd_a}", dc[0]);
    report("fake quant inside dw vs finite differences", &dw, &f32s(&fd_w), 1e-6, 1e-6);
}
