//! Issue 17: the fused kernels with their GEMMs on a bf16 backend (LM-head cross-entropy,
//! distillation KL, attention tiles, MoE expert GEMMs), on every bf16 backend this CPU has
//! (`Bf16Emulated` always, `AmxBf16` where the CPU has AMX, `Avx512Bf16` where it has AVX512-BF16;
//! skipped with a message otherwise).
//!
//! Yardsticks:
//! - Contract: a bf16 GEMM is the f32 GEMM of the operands rounded to bf16. Where a kernel's
//!   output is one GEMM away from its inputs (the CE / KL losses, the first expert GEMM), the bf16
//!   kernel equals the f32 kernel run on pre-rounded inputs, to f32 summation order (1e-5).
//! - Numerics: bf16 keeps 8 significant bits, so rounding to nearest moves an operand by at most
//!   2^-8 = 3.9e-3 of its value (about 1.1e-3 RMS); a product of two rounded operands by at most
//!   2^-7. Summed over k terms of random sign the errors partly cancel, so an output moves by
//!   ~2^-8 of the norm of its terms (measured here: 0.7e-3 .. 4.3e-3). Outputs of one kernel (a
//!   chain of two or three GEMMs) are held to 1e-2 of their norm against the f32 kernel
//!   (norm-wise relative error); they must also differ from it (the precision reached the GEMMs).
//! - AMX vs emulated: the same rounded operands, summed in another f32 order (f32 rounding, 2^-24
//!   per addition): 1e-6 norm-wise where the outputs are one GEMM from the inputs; where an
//!   intermediate is rounded to bf16 again (the logits' gradient, softmax weights), an f32-order
//!   difference can flip that rounding by one bf16 step, rarely: 2e-6 there (measured on the
//!   Xeon: at most 3e-7), three orders below the bf16-vs-f32 gap.

use kernels_cpu::attention::{attention_backward_with, attention_forward_with, AttnDims};
use kernels_cpu::check::{assert_close, rand_vec, rel_norm_err};
use kernels_cpu::cross_entropy::{lm_head_ce_forward_backward_with, lm_head_ce_forward_with, IGNORE_INDEX};
use kernels_cpu::distill::{lm_head_kl_forward_backward_with, DistillDims};
use kernels_cpu::gemm::bf16::round_bf16_slice;
use kernels_cpu::gemm::GemmBackend;
use kernels_cpu::moe::experts::{experts_backward, experts_forward};

/// Norm-wise tolerance of a bf16 kernel against the f32 kernel.
const BF16_TOL: f64 = 1e-2;
/// Tolerance of a native bf16 backend (AMX, AVX512-BF16) against emulated bf16 where outputs are one GEMM from the inputs.
const ORDER_TOL: f64 = 1e-6;
/// ... and where an intermediate is rounded to bf16 again.
const REROUND_TOL: f64 = 2e-6;

/// The bf16 backends this CPU runs.
fn bf16_backends() -> Vec<GemmBackend> {
    let mut out = vec![GemmBackend::Bf16Emulated];
    for be in [GemmBackend::AmxBf16, GemmBackend::Avx512Bf16] {
        if be.is_available() {
            out.push(be);
        } else {
            eprintln!("skipping the {} backend: not available on this CPU", be.name());
        }
    }
    out
}

fn rounded(x: &[f32]) -> Vec<f32> {
    let mut r = x.to_vec();
    round_bf16_slice(&mut r);
    r
}

/// `got` is within `tol` of `want` (norm-wise) but not equal to it.
fn close_but_rounded(got: &[f32], want: &[f32], tol: f64, what: &str) {
    let err = rel_norm_err(got, want);
    eprintln!("{what}: norm-wise error vs f32 {err:.2e}");
    assert!(err <= tol, "{what}: bf16 error {err:.2e} exceeds {tol:.0e}");
    assert!(err > 0.0, "{what}: identical to f32: the bf16 backend did not reach the GEMMs");
}

fn agree(got: &[f32], want: &[f32], tol: f64, what: &str) {
    let err = rel_norm_err(got, want);
    eprintln!("{what}: AMX vs emulated {err:.2e}");
    assert!(err <= tol, "{what}: AMX and emulated bf16 differ by {err:.2e} (> {tol:.0e})");
}

fn targets(n: usize, v: usize) -> Vec<i32> {
    (0..n).map(|i| if i % 7 == 3 { IGNORE_INDEX } else { ((i * 31 + 5) % v) as i32 }).collect()
}

struct Ce {
    losses: Vec<f32>,
    dh: Vec<f32>,
    dw: Vec<f32>,
}

fn ce(gemm: GemmBackend, h: &[f32], w: &[f32], t: &[i32], d: usize, v: usize) -> Ce {
    let n = t.len();
    let (mut losses, mut dh, mut dw) = (vec![0f32; n], vec![0f32; n * d], vec![0f32; v * d]);
    lm_head_ce_forward_backward_with(gemm, &mut losses, &mut dh, &mut dw, h, w, t, n, d, v, 0.05, 24);
    Ce { losses, dh, dw }
}

#[test]
fn lm_head_cross_entropy_rounds_its_gemm_operands() {
    let (n, d, v) = (70, 96, 300);
    let (h, w, t) = (rand_vec(n * d, 1), rand_vec(v * d, 2), targets(n, v));
    let f32_out = ce(GemmBackend::Auto, &h, &w, &t, d, v);
    let mut outs = Vec::new();
    for be in bf16_backends() {
        let out = ce(be, &h, &w, &t, d, v);
        // The losses are one GEMM from h and w: the f32 kernel on rounded inputs.
        let mut want = vec![0f32; n];
        lm_head_ce_forward_with(GemmBackend::Auto, &mut want, &rounded(&h), &rounded(&w), &t, n, d, v, 24);
        assert_close(&out.losses, &want, 1e-5, 1e-5, &format!("{}: losses = f32 on rounded inputs", be.name()));
        let mut fwd_only = vec![0f32; n];
        lm_head_ce_forward_with(be, &mut fwd_only, &h, &w, &t, n, d, v, 24);
        assert_close(&fwd_only, &out.losses, 1e-6, 1e-6, &format!("{}: forward-only losses", be.name()));
        close_but_rounded(&out.losses, &f32_out.losses, BF16_TOL, &format!("{} ce losses", be.name()));
        close_but_rounded(&out.dh, &f32_out.dh, BF16_TOL, &format!("{} ce dh", be.name()));
        close_but_rounded(&out.dw, &f32_out.dw, BF16_TOL, &format!("{} ce dw", be.name()));
        outs.push(out);
    }
    if let [emu, natives @ ..] = &outs[..] {
        for native in natives {
            agree(&native.losses, &emu.losses, ORDER_TOL, "ce losses");
            agree(&native.dh, &emu.dh, REROUND_TOL, "ce dh");
            agree(&native.dw, &emu.dw, REROUND_TOL, "ce dw");
        }
    }
}

#[test]
fn lm_head_distillation_rounds_its_gemm_operands() {
    let dims = DistillDims { n: 40, d: 64, dt: 80, v: 200 };
    let (hs, ws) = (rand_vec(dims.n * dims.d, 3), rand_vec(dims.v * dims.d, 4));
    let (ht, wt) = (rand_vec(dims.n * dims.dt, 5), rand_vec(dims.v * dims.dt, 6));
    let t = targets(dims.n, dims.v);
    let run = |be: GemmBackend, hs: &[f32], ws: &[f32], ht: &[f32], wt: &[f32]| {
        let (mut kl, mut dhs, mut dws) = (vec![0f32; dims.n], vec![0f32; dims.n * dims.d], vec![0f32; dims.v * dims.d]);
        lm_head_kl_forward_backward_with(be, &mut kl, &mut dhs, &mut dws, hs, ws, ht, wt, &t, dims, 2.0, 0.1, 16);
        (kl, dhs, dws)
    };
    let (kl32, dhs32, dws32) = run(GemmBackend::Auto, &hs, &ws, &ht, &wt);
    let mut outs = Vec::new();
    for be in bf16_backends() {
        let (kl, dhs, dws) = run(be, &hs, &ws, &ht, &wt);
        let (want, _, _) = run(GemmBackend::Auto, &rounded(&hs), &rounded(&ws), &rounded(&ht), &rounded(&wt));
        assert_close(&kl, &want, 1e-5, 1e-4, &format!("{}: kl = f32 on rounded inputs", be.name()));
        close_but_rounded(&dhs, &dhs32, BF16_TOL, &format!("{} kl dhs", be.name()));
        close_but_rounded(&dws, &dws32, BF16_TOL, &format!("{} kl dws", be.name()));
        assert!(rel_norm_err(&kl, &kl32) > 0.0, "{}: kl identical to f32", be.name());
        outs.push((kl, dhs, dws));
    }
    if let [emu, natives @ ..] = &outs[..] {
        for native in natives {
            agree(&native.0, &emu.0, ORDER_TOL, "kl");
            agree(&native.1, &emu.1, REROUND_TOL, "kl dhs");
            agree(&native.2, &emu.2, REROUND_TOL, "kl dws");
        }
    }
}

#[test]
fn attention_tiles_round_their_gemm_operands() {
    // Two query tiles and several key tiles per sequence, GQA groups of 2, two documents.
    let dims = AttnDims { b: 2, t: 150, h: 4, kv: 2, dh: 32 };
    let (nq, nk) = (dims.b * dims.t * dims.h * dims.dh, dims.b * dims.t * dims.kv * dims.dh);
    let (q, k, v) = (rand_vec(nq, 7), rand_vec(nk, 8), rand_vec(nk, 9));
    let seg: Vec<u32> = (0..dims.b * dims.t).map(|i| u32::from(i % dims.t >= 100)).collect();
    let dout = rand_vec(nq, 10);
    let run = |be: GemmBackend| {
        let (mut out, mut lse) = (vec![0f32; nq], vec![0f32; dims.b * dims.h * dims.t]);
        attention_forward_with(be, &mut out, &mut lse, &q, &k, &v, Some(&seg), dims);
        let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nk]);
        attention_backward_with(be, &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, Some(&seg), dims);
        [out, lse, dq, dk, dv]
    };
    let want = run(GemmBackend::Auto);
    let names = ["out", "lse", "dq", "dk", "dv"];
    let mut outs = Vec::new();
    for be in bf16_backends() {
        let got = run(be);
        for ((g, w), name) in got.iter().zip(&want).zip(names) {
            close_but_rounded(g, w, BF16_TOL, &format!("{} attention {name}", be.name()));
        }
        outs.push(got);
    }
    if let [emu, natives @ ..] = &outs[..] {
        for native in natives {
            for ((a, e), name) in native.iter().zip(emu).zip(names) {
                agree(a, e, REROUND_TOL, &format!("attention {name}"));
            }
        }
    }
}

#[test]
fn expert_gemms_round_their_operands() {
    // Three experts: one heavy (runs on all threads), one light, one without rows.
    let (d, w) = (48, 40);
    let offsets = [0usize, 90, 90, 120];
    let nk = offsets[3];
    let (xp, experts, dy) = (rand_vec(nk * d, 11), rand_vec(3 * 3 * w * d, 12), rand_vec(nk * d, 13));
    let run = |be: GemmBackend, xp: &[f32], experts: &[f32]| {
        let (mut y, mut hgu, mut a) = (vec![0f32; nk * d], vec![0f32; nk * 2 * w], vec![0f32; nk * w]);
        experts_forward(be, &mut y, &mut hgu, &mut a, xp, experts, &offsets, d, w);
        let (mut dxp, mut dexp) = (vec![0f32; nk * d], vec![0f32; experts.len()]);
        experts_backward(be, &mut dxp, &mut dexp, &dy, xp, &hgu, &a, experts, &offsets, d, w);
        [y, hgu, dxp, dexp]
    };
    let want = run(GemmBackend::Auto, &xp, &experts);
    let names = ["y", "hgu", "dxp", "dexperts"];
    let mut outs = Vec::new();
    for be in bf16_backends() {
        let got = run(be, &xp, &experts);
        // The gate/up pre-activations are one GEMM from the inputs.
        let on_rounded = run(GemmBackend::Auto, &rounded(&xp), &rounded(&experts));
        assert_close(&got[1], &on_rounded[1], 1e-5, 1e-4, &format!("{}: hgu = f32 on rounded inputs", be.name()));
        for ((g, w), name) in got.iter().zip(&want).zip(names) {
            close_but_rounded(g, w, BF16_TOL, &format!("{} experts {name}", be.name()));
        }
        outs.push(got);
    }
    if let [emu, natives @ ..] = &outs[..] {
        for native in natives {
            agree(&native[1], &emu[1], ORDER_TOL, "experts hgu");
            for ((a, e), name) in native.iter().zip(emu).zip(names) {
                agree(a, e, REROUND_TOL, &format!("experts {name}"));
            }
        }
    }
}
