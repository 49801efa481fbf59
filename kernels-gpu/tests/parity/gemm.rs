//! Grouped GEMMs (FMA f32 and bf16 tensor-core MMA) against a naive f64 product, and an expert
//! layer's forward / backward against kernels-cpu `moe::experts`.

use super::report;
use kernels_cpu::check::{rand_vec, rel_norm_err};
use kernels_gpu::kernels::gemm::{GroupedGemm, Operand, TokenAxis, TOKENS};
use kernels_gpu::launcher::SimLauncher;
use kernels_gpu::ops::{self, ExpertsGemm};
use kernels_gpu::simt::{bf16_from_f32, bf16_to_f32, Gmem};

/// Element `(r, c)` of a strided operand of group `g`, in f64.
fn at(v: &[f32], o: &Operand<u8>, offsets: &[u32], g: usize, r: usize, c: usize) -> f64 {
    let base = match o.axis {
        TokenAxis::None => g * o.group_stride,
        TokenAxis::Rows => offsets[g] as usize * o.rs,
        TokenAxis::Cols => offsets[g] as usize * o.cs,
    };
    v[o.offset + base + r * o.rs + c * o.cs] as f64
}

fn shape(o: &Operand<u8>) -> (usize, usize, usize, usize, TokenAxis) {
    (o.rs, o.cs, o.group_stride, o.offset, o.axis)
}

fn with<T: Copy>(ptr: Gmem<T>, s: (usize, usize, usize, usize, TokenAxis)) -> Operand<T> {
    Operand { ptr, rs: s.0, cs: s.1, group_stride: s.2, offset: s.3, axis: s.4 }
}

/// Runs one grouped GEMM layout on both kernels and checks it against f64 (bf16-rounded inputs
/// for the MMA kernel).
#[allow(clippy::too_many_arguments)]
fn check_layout(
    name: &str,
    a_len: usize,
    b_len: usize,
    c_len: usize,
    a: Operand<u8>,
    b: Operand<u8>,
    c: Operand<u8>,
    dims: (usize, usize, usize),
    offsets: &[u32],
) {
    let groups = offsets.len() - 1;
    let (av, bv, c0) = (rand_vec(a_len, 31), rand_vec(b_len, 32), rand_vec(c_len, 33));
    let round = |v: &[f32]| v.iter().map(|&x| bf16_to_f32(bf16_from_f32(x))).collect::<Vec<f32>>();
    for mma in [false, true] {
        let (ar, br) = if mma { (round(&av), round(&bv)) } else { (av.clone(), bv.clone()) };
        let mut want = c0.clone();
        for g in 0..groups {
            let cnt = (offsets[g + 1] - offsets[g]) as usize;
            let pick = |x: usize| if x == TOKENS { cnt } else { x };
            let (m, n, k) = (pick(dims.0), pick(dims.1), pick(dims.2));
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|kk| at(&ar, &a, offsets, g, i, kk) * at(&br, &b, offsets, g, kk, j)).sum();
                    let base = match c.axis {
                        TokenAxis::None => g * c.group_stride,
                        TokenAxis::Rows => offsets[g] as usize * c.rs,
                        TokenAxis::Cols => offsets[g] as usize * c.cs,
                    };
                    let idx = c.offset + base + i * c.rs + j * c.cs;
                    want[idx] = (want[idx] as f64 + s) as f32;
                }
            }
        }
        let mut got = c0.clone();
        let cp = with(Gmem::new(got.as_mut_ptr()), shape(&c));
        let off = Gmem::new(offsets.as_ptr() as *mut u32);
        if mma {
            let (a16, b16) = (ops::to_bf16(&av), ops::to_bf16(&bv));
            let p = GroupedGemm {
                a: with(Gmem::new(a16.as_ptr() as *mut u16), shape(&a)),
                b: with(Gmem::new(b16.as_ptr() as *mut u16), shape(&b)),
                c: cp,
                m: dims.0,
                n: dims.1,
                k: dims.2,
                offsets: off,
                accumulate: true,
            };
            // SAFETY: the operands cover the shapes of this case.
            unsafe { ops::grouped_gemm(&SimLauncher, p, Some(offsets), groups) }.unwrap();
        } else {
            let p = GroupedGemm {
                a: with(Gmem::new(av.as_ptr() as *mut f32), shape(&a)),
                b: with(Gmem::new(bv.as_ptr() as *mut f32), shape(&b)),
                c: cp,
                m: dims.0,
                n: dims.1,
                k: dims.2,
                offsets: off,
                accumulate: true,
            };
            // SAFETY: the operands cover the shapes of this case.
            unsafe { ops::grouped_gemm(&SimLauncher, p, Some(offsets), groups) }.unwrap();
        }
        // f32 accumulation of K <= 80 products of O(1) values vs f64.
        report(&format!("grouped gemm {name} {}", if mma { "mma bf16" } else { "fma f32" }), &got, &want, 2e-5, 1e-5);
    }
}

fn opnd(rs: usize, cs: usize, group_stride: usize, axis: TokenAxis) -> Operand<u8> {
    Operand { ptr: Gmem::null(), rs, cs, group_stride, offset: 0, axis }
}

#[test]
fn grouped_gemm_every_layout_matches_f64() {
    // Groups of 37, 0, 70 and 5 tokens; (M, N, K) with M or K = tokens; all four A/B layouts.
    let offsets = [0u32, 37, 37, 107, 112];
    let (nk, g) = (112usize, 4usize);
    let (p, q) = (43usize, 21usize); // non-token dims, awkward on purpose
                                     // C[tok, q] = A[tok, p] · B[p, q]: A K-contiguous (rows = tokens), B K-contiguous ([q][p] per group).
    check_layout(
        "M=tokens A:K-contig B:K-contig",
        nk * p,
        g * q * p,
        nk * q,
        opnd(p, 1, 0, TokenAxis::Rows),
        opnd(1, p, q * p, TokenAxis::None),
        opnd(q, 1, 0, TokenAxis::Rows),
        (TOKENS, q, p),
        &offsets,
    );
    // C[tok, q] = A[tok, p] · B[p, q] with B N-contiguous ([p][q] per group).
    check_layout(
        "M=tokens A:K-contig B:N-contig",
        nk * p,
        g * p * q,
        nk * q,
        opnd(p, 1, 0, TokenAxis::Rows),
        opnd(q, 1, p * q, TokenAxis::None),
        opnd(q, 1, 0, TokenAxis::Rows),
        (TOKENS, q, p),
        &offsets,
    );
    // Weight gradient: C[p, q] per group = A[p, tok] (stored [tok][p], M-contiguous) · B[tok, q] (N-contiguous).
    check_layout(
        "K=tokens A:M-contig B:N-contig",
        nk * p,
        nk * q,
        g * p * q,
        opnd(1, p, 0, TokenAxis::Cols),
        opnd(q, 1, 0, TokenAxis::Rows),
        opnd(q, 1, p * q, TokenAxis::None),
        (p, q, TOKENS),
        &offsets,
    );
    // Aligned sizes (the cp.async path): p = 40, q = 24.
    let (p, q) = (40usize, 24usize);
    check_layout(
        "aligned M=tokens A:K-contig B:K-contig",
        nk * p,
        g * q * p,
        nk * q,
        opnd(p, 1, 0, TokenAxis::Rows),
        opnd(1, p, q * p, TokenAxis::None),
        opnd(q, 1, 0, TokenAxis::Rows),
        (TOKENS, q, p),
        &offsets,
    );
    check_layout(
        "aligned K=tokens A:M-contig B:N-contig",
        nk * p,
        nk * q,
        g * p * q,
        opnd(1, p, 0, TokenAxis::Cols),
        opnd(q, 1, 0, TokenAxis::Rows),
        opnd(q, 1, p * q, TokenAxis::None),
        (p, q, TOKENS),
        &offsets,
    );
}

/// One expert layer forward + backward on `kind` vs kernels-cpu, returning norm-wise relative
/// errors of (y, dxp, dexperts).
fn experts_vs_cpu(kind: ExpertsGemm, d: usize, w: usize, offsets: &[u32]) -> [f64; 3] {
    let e = offsets.len() - 1;
    let nk = offsets[e] as usize;
    let off_us: Vec<usize> = offsets.iter().map(|&o| o as usize).collect();
    let xp = rand_vec(nk * d, 41);
    let experts: Vec<f32> = rand_vec(e * 3 * w * d, 42).iter().map(|v| v * 0.3).collect();
    let (mut y, mut hgu, mut a) = (vec![0f32; nk * d], vec![0f32; nk * 2 * w], vec![0f32; nk * w]);
    ops::experts_forward(&SimLauncher, kind, &mut y, &mut hgu, &mut a, &xp, &experts, offsets, d, w).unwrap();
    let (mut wy, mut whgu, mut wa) = (y.clone(), hgu.clone(), a.clone());
    kernels_cpu::moe::experts::experts_forward(
        kernels_cpu::gemm::GemmBackend::Auto,
        &mut wy,
        &mut whgu,
        &mut wa,
        &xp,
        &experts,
        &off_us,
        d,
        w,
    );
    let dy = rand_vec(nk * d, 43);
    let (mut dxp, mut dexp) = (rand_vec(nk * d, 44), rand_vec(experts.len(), 45));
    let (mut wdxp, mut wdexp) = (dxp.clone(), dexp.clone());
    ops::experts_backward(&SimLauncher, kind, &mut dxp, &mut dexp, &dy, &xp, &hgu, &a, &experts, offsets, d, w)
        .unwrap();
    kernels_cpu::moe::experts::experts_backward(
        kernels_cpu::gemm::GemmBackend::Auto,
        &mut wdxp,
        &mut wdexp,
        &dy,
        &xp,
        &whgu,
        &wa,
        &experts,
        &off_us,
        d,
        w,
    );
    let tag = format!("experts {kind:?} d={d} w={w}");
    if kind == ExpertsGemm::Fma {
        report(&format!("{tag} y"), &y, &wy, 1e-5, 1e-4);
        report(&format!("{tag} dxp"), &dxp, &wdxp, 1e-5, 1e-4);
        report(&format!("{tag} dexperts"), &dexp, &wdexp, 1e-5, 1e-4);
    }
    let errs = [rel_norm_err(&y, &wy), rel_norm_err(&dxp, &wdxp), rel_norm_err(&dexp, &wdexp)];
    eprintln!("{tag}: norm-wise rel err y {:.2e}, dxp {:.2e}, dexperts {:.2e}", errs[0], errs[1], errs[2]);
    errs
}

#[test]
fn expert_layer_forward_and_backward_match_kernels_cpu() {
    let offsets = [0u32, 37, 37, 107, 112];
    for (d, w) in [(43usize, 21usize), (40, 24)] {
        let fma = experts_vs_cpu(ExpertsGemm::Fma, d, w, &offsets);
        assert!(fma.iter().all(|&e| e < 1e-5), "fma experts vs cpu: {fma:?}");
        // bf16 inputs (relative rounding 2^-9 per operand), f32 accumulation.
        let mma = experts_vs_cpu(ExpertsGemm::MmaBf16, d, w, &offsets);
        assert!(mma.iter().all(|&e| e < 1e-2), "mma experts vs cpu: {mma:?}");
    }
}
