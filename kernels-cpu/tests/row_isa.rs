//! Issue 17: the row kernels (softmax / cross-entropy, distillation, RMSNorm, attention tile rows,
//! SwiGLU, AdamW, the global gradient norm) forced onto every instruction set this CPU has
//! (`fastmath::RowIsa`: portable, AVX2 + FMA, AVX-512; skipped with a message where missing).
//! On each ISA the forwards match their naive f64 references, and every output and gradient is
//! bit for bit the portable build's: the bodies are the same operations in the same order on
//! every ISA, so the gradients, tested against finite differences on the default ISA in the unit
//! tests, hold on all of them.
//!
//! One test function: forcing the ISA is process-wide, so the cases run one after the other.

use kernels_cpu::adamw::{adamw_naive, adamw_step, global_norm, AdamWConfig};
use kernels_cpu::attention::{attention_backward, attention_forward, attention_naive, AttnDims};
use kernels_cpu::check::{assert_close, rand_vec};
use kernels_cpu::cross_entropy::{cross_entropy_naive, lm_head_ce_forward_backward, lm_head_naive, IGNORE_INDEX};
use kernels_cpu::distill::{kl_naive, lm_head_kl_forward_backward, DistillDims};
use kernels_cpu::fastmath::{force_row_isa, row_isa, RowIsa};
use kernels_cpu::rmsnorm::{rmsnorm_backward, rmsnorm_forward, rmsnorm_naive};
use kernels_cpu::swiglu::{swiglu_backward, swiglu_forward, swiglu_naive};

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

fn targets(n: usize, v: usize) -> Vec<i32> {
    (0..n).map(|i| if i % 7 == 3 { IGNORE_INDEX } else { ((i * 31 + 5) % v) as i32 }).collect()
}

/// Every kernel once on the current ISA: named outputs, each forward checked against its naive
/// reference on the way. Sizes are not multiples of 8 or 16 so every vector tail runs.
fn run_all() -> Vec<(&'static str, Vec<f32>)> {
    let isa = row_isa().name();
    let mut out = Vec::new();

    // SwiGLU.
    let len = 1000 + 13;
    let (gate, up, dout) = (rand_vec(len, 1), rand_vec(len, 2), rand_vec(len, 3));
    let mut y = vec![0f32; len];
    swiglu_forward(&mut y, &gate, &up);
    assert_close(&y, &f32s(&swiglu_naive(&f64s(&gate), &f64s(&up))), 1e-6, 1e-5, &format!("{isa} swiglu"));
    let (mut dg, mut du) = (vec![0f32; len], vec![0f32; len]);
    swiglu_backward(&mut dg, &mut du, &dout, &gate, &up);
    out.extend([("swiglu y", y), ("swiglu dgate", dg), ("swiglu dup", du)]);

    // RMSNorm.
    let (n, c) = (9, 77);
    let (x, w, dy) = (rand_vec(n * c, 4), rand_vec(c, 5), rand_vec(n * c, 6));
    let (mut y, mut rstd) = (vec![0f32; n * c], vec![0f32; n]);
    rmsnorm_forward(&mut y, &mut rstd, &x, &w, n, c, 1e-6);
    let want = rmsnorm_naive(&f64s(&x), &f64s(&w), n, c, 1e-6);
    assert_close(&y, &f32s(&want), 1e-5, 1e-5, &format!("{isa} rmsnorm"));
    let (mut dx, mut dw) = (vec![0f32; n * c], vec![0f32; c]);
    rmsnorm_backward(&mut dx, &mut dw, &dy, &x, &w, &rstd, n, c);
    out.extend([("rmsnorm y", y), ("rmsnorm dx", dx), ("rmsnorm dw", dw)]);

    // LM head + cross-entropy (the softmax rows).
    let (n, d, v) = (21, 40, 203);
    let (h, wv, t) = (rand_vec(n * d, 7), rand_vec(v * d, 8), targets(n, v));
    let (mut losses, mut dh, mut dwv) = (vec![0f32; n], vec![0f32; n * d], vec![0f32; v * d]);
    lm_head_ce_forward_backward(&mut losses, &mut dh, &mut dwv, &h, &wv, &t, n, d, v, 0.5, 8);
    let logits = lm_head_naive(&f64s(&h), &f64s(&wv), n, d, v);
    assert_close(&losses, &f32s(&cross_entropy_naive(&logits, &t, v)), 1e-5, 1e-5, &format!("{isa} ce"));
    out.extend([("ce losses", losses), ("ce dh", dh), ("ce dw", dwv)]);

    // Distillation KL at tau 2 (the teacher pass rows).
    let dims = DistillDims { n: 12, d: 24, dt: 32, v: 150 };
    let (hs, ws) = (rand_vec(dims.n * dims.d, 9), rand_vec(dims.v * dims.d, 10));
    let (ht, wt) = (rand_vec(dims.n * dims.dt, 11), rand_vec(dims.v * dims.dt, 12));
    let t = targets(dims.n, dims.v);
    let (mut kl, mut dhs, mut dws) = (vec![0f32; dims.n], vec![0f32; dims.n * dims.d], vec![0f32; dims.v * dims.d]);
    lm_head_kl_forward_backward(&mut kl, &mut dhs, &mut dws, &hs, &ws, &ht, &wt, &t, dims, 2.0, 0.25, 5);
    let zs = lm_head_naive(&f64s(&hs), &f64s(&ws), dims.n, dims.d, dims.v);
    let zt = lm_head_naive(&f64s(&ht), &f64s(&wt), dims.n, dims.dt, dims.v);
    assert_close(&kl, &f32s(&kl_naive(&zs, &zt, &t, dims.v, 2.0)), 1e-5, 1e-4, &format!("{isa} kl"));
    out.extend([("kl", kl), ("kl dhs", dhs), ("kl dws", dws)]);

    // Attention: tiles with causal and document masks, GQA.
    let dims = AttnDims { b: 2, t: 70, h: 4, kv: 2, dh: 16 };
    let (nq, nk) = (dims.b * dims.t * dims.h * dims.dh, dims.b * dims.t * dims.kv * dims.dh);
    let (q, k, vv) = (rand_vec(nq, 13), rand_vec(nk, 14), rand_vec(nk, 15));
    let seg: Vec<u32> = (0..dims.b * dims.t).map(|i| u32::from(i % dims.t >= 40)).collect();
    let (mut o, mut lse) = (vec![0f32; nq], vec![0f32; dims.b * dims.h * dims.t]);
    attention_forward(&mut o, &mut lse, &q, &k, &vv, Some(&seg), dims);
    let want = attention_naive(&f64s(&q), &f64s(&k), &f64s(&vv), Some(&seg), dims);
    assert_close(&o, &f32s(&want), 1e-5, 1e-4, &format!("{isa} attention"));
    let dout = rand_vec(nq, 16);
    let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nk]);
    attention_backward(&mut dq, &mut dk, &mut dv, &dout, &o, &lse, &q, &k, &vv, Some(&seg), dims);
    out.extend([("attention out", o), ("attention lse", lse), ("attention dq", dq), ("attention dk", dk)]);
    out.push(("attention dv", dv));

    // AdamW (three steps) and the global norm.
    let cfg = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let len = 3000 + 5;
    let (mut p, mut m, mut s) = (rand_vec(len, 17), vec![0f32; len], vec![0f32; len]);
    let (mut p64, mut m64, mut s64) = (f64s(&p), vec![0f64; len], vec![0f64; len]);
    for step in 1..=3 {
        let g = rand_vec(len, 100 + step);
        adamw_step(&mut p, &g, &mut m, &mut s, &cfg, step);
        adamw_naive(&mut p64, &f64s(&g), &mut m64, &mut s64, &cfg, step);
    }
    assert_close(&p, &f32s(&p64), 1e-6, 1e-5, &format!("{isa} adamw"));
    let g = rand_vec(100_003, 18);
    let norm = global_norm(&g);
    let want = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    assert!(((norm as f64) - want).abs() <= 1e-6 * want, "{isa} global_norm {norm} vs {want}");
    out.extend([("adamw param", p), ("adamw m", m), ("adamw v", s), ("global norm", vec![norm])]);
    out
}

#[test]
fn row_kernels_give_the_same_bits_on_every_isa_and_match_naive() {
    let detected = RowIsa::detected();
    eprintln!("row ISA detected on this CPU: {}", detected.name());
    assert!(detected.is_available() && RowIsa::Portable.is_available());
    assert!(force_row_isa(RowIsa::ALL[2]).is_ok() == RowIsa::ALL[2].is_available());
    let mut reference: Option<Vec<(&'static str, Vec<f32>)>> = None;
    for isa in RowIsa::ALL {
        if !isa.is_available() {
            eprintln!("skipping row ISA {}: not available on this CPU", isa.name());
            continue;
        }
        force_row_isa(isa).expect("available");
        assert_eq!(row_isa(), isa);
        let got = run_all();
        match &reference {
            None => reference = Some(got),
            Some(want) => {
                for ((name, g), (_, w)) in got.iter().zip(want) {
                    let same = g.len() == w.len() && g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{name}: {} differs from the portable build", isa.name());
                }
                eprintln!("row ISA {}: {} outputs bit-identical to portable", isa.name(), got.len());
            }
        }
    }
    force_row_isa(detected).expect("detected is available");
}
