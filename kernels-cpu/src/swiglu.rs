//! SwiGLU gating: `out = silu(gate) * up` with `silu(g) = g * sigmoid(g)`.
//!
//! Shapes: `gate`, `up`, `out` and their gradients all have the same length (`[N, F]` flat).
//! The sigmoid uses `e = exp(-|g|)` so nothing overflows: finite for any finite `g`. `exp` is an
//! inline polynomial (`fastmath::exp_fast`, about 2 ulp) so the loops vectorize; they are compiled for
//! each ISA and chosen at run time (`fastmath::isa_dispatch!`).
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 13;

/// `(sigmoid(g), silu(g))`, finite for every finite `g`.
#[inline(always)]
fn sigmoid_silu(g: f32) -> (f32, f32) {
    let e = crate::fastmath::exp_fast(-g.abs());
    let r = 1.0 / (1.0 + e);
    let s = if g >= 0.0 { r } else { e * r };
    (s, g * s)
}

#[inline(always)]
fn forward_body(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = sigmoid_silu(g).1 * u;
    }
}

#[inline(always)]
fn backward_body(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    for ((((dg, du), &d), &g), &u) in dgate.iter_mut().zip(dup.iter_mut()).zip(dout).zip(gate).zip(up) {
        let (s, silu) = sigmoid_silu(g);
        // d silu / dg = s * (1 + g * (1 - s))
        let dsilu = s * g.mul_add(1.0 - s, 1.0);
        *dg = (d * u).mul_add(dsilu, *dg);
        *du = d.mul_add(silu, *du);
    }
}

crate::isa_dispatch!(fn forward_chunk(out: &mut [f32], gate: &[f32], up: &[f32]) => forward_body);
crate::isa_dispatch!(
    fn backward_chunk(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) => backward_body
);

/// `out = silu(gate) * up`, elementwise over slices of one length.
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(out.len() == gate.len() && gate.len() == up.len(), "swiglu: length mismatch");
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| forward_chunk(o, g, u));
}

/// Accumulates `dgate += dout * up * silu'(gate)` and `dup += dout * silu(gate)`.
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let len = gate.len();
    assert!(dgate.len() == len && dup.len() == len && dout.len() == len && up.len() == len, "swiglu: length mismatch");
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))))
        .for_each(|((dg, du), (d, (g, u)))| backward_chunk(dg, du, d, g, u));
}

/// Rows per parallel task of the fused-layout variants (about `CHUNK` elements).
fn rows_per_task(f: usize) -> usize {
    (CHUNK / f.max(1)).max(1)
}

/// [`swiglu_forward`] reading gate and up from one fused projection `gu [N, 2F]` (each row is
/// `[gate(F), up(F)]`) into `out [N, F]`: no copies of the two halves.
pub fn swiglu_fused_forward(out: &mut [f32], gu: &[f32], f: usize) {
    assert!(f > 0 && gu.len() == 2 * out.len() && out.len().is_multiple_of(f), "swiglu_fused: shapes");
    let r = rows_per_task(f);
    out.par_chunks_mut(r * f).zip(gu.par_chunks(2 * r * f)).for_each(|(o, g)| {
        for (orow, grow) in o.chunks_mut(f).zip(g.chunks(2 * f)) {
            forward_chunk(orow, &grow[..f], &grow[f..]);
        }
    });
}

/// Backward of [`swiglu_fused_forward`]: accumulates into `dgu [N, 2F]` (gate half, up half).
pub fn swiglu_fused_backward(dgu: &mut [f32], dout: &[f32], gu: &[f32], f: usize) {
    assert!(
        f > 0 && gu.len() == 2 * dout.len() && dgu.len() == gu.len() && dout.len().is_multiple_of(f),
        "swiglu_fused: shapes"
    );
    let r = rows_per_task(f);
    dgu.par_chunks_mut(2 * r * f).zip(dout.par_chunks(r * f).zip(gu.par_chunks(2 * r * f))).for_each(|(dg, (d, g))| {
        for ((dgrow, drow), grow) in dg.chunks_mut(2 * f).zip(d.chunks(f)).zip(g.chunks(2 * f)) {
            let (dgate, dup) = dgrow.split_at_mut(f);
            backward_chunk(dgate, dup, drow, &grow[..f], &grow[f..]);
        }
    });
}

/// Reference forward in f64: `gate / (1 + exp(-gate)) * up`.
pub fn swiglu_naive(gate: &[f64], up: &[f64]) -> Vec<f64> {
    assert_eq!(gate.len(), up.len(), "swiglu_naive: length mismatch");
    gate.iter().zip(up).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_grad_matches_fd, dot64, finite_diff, max_errors, rand_vec, rel_norm_err, to_f64,
    };

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// Gates spread over [-12, 12] plus the extremes.
    fn gates(len: usize, seed: u64) -> Vec<f32> {
        let mut g: Vec<f32> = rand_vec(len, seed).iter().map(|v| 12.0 * v).collect();
        for (slot, v) in g.iter_mut().zip([100.0, -100.0, 0.0, -0.0, 87.5, -87.5, 88.0, -88.0, 30.0, -30.0]) {
            *slot = v;
        }
        g
    }

    #[test]
    fn forward_matches_naive_on_awkward_sizes() {
        for &len in &[1usize, 10, 75, 37 * 75, 1031 * 75] {
            let g = if len >= 10 { gates(len, 1) } else { rand_vec(len, 1) };
            let u = rand_vec(len, 2);
            let mut out = vec![0.0; len];
            swiglu_forward(&mut out, &g, &u);
            let want = f32s(&swiglu_naive(&to_f64(&g), &to_f64(&u)));
            let (abs, rel) = max_errors(&out, &want);
            eprintln!("swiglu forward len={len}: max abs {abs:.2e} max rel {rel:.2e}");
            assert_close(&out, &want, 1e-30, 1e-6, &format!("swiglu forward len={len}"));
        }
    }

    #[test]
    fn extreme_gates_stay_finite() {
        let g = [100.0f32, -100.0, 1e30, -1e30, f32::MAX, -f32::MAX];
        let u = [0.5f32; 6];
        let mut out = [0.0f32; 6];
        swiglu_forward(&mut out, &g, &u);
        assert_eq!(out[0], 50.0);
        assert!(out[1].abs() < 1e-30);
        let (mut dg, mut du) = ([0.0f32; 6], [0.0f32; 6]);
        swiglu_backward(&mut dg, &mut du, &[1.0; 6], &g, &u);
        assert!(out.iter().chain(&dg).chain(&du).all(|v| v.is_finite()), "{out:?} {dg:?} {du:?}");
        assert_eq!((dg[0], du[0]), (0.5, 100.0));
        assert!(dg[1].abs() < 1e-30 && du[1].abs() < 1e-30);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let len = 23;
        let g: Vec<f32> = rand_vec(len, 3).iter().map(|v| 4.0 * v).collect();
        let u = rand_vec(len, 4);
        let r = rand_vec(len, 5);
        let (mut dg, mut du) = (vec![0.0; len], vec![0.0; len]);
        swiglu_backward(&mut dg, &mut du, &r, &g, &u);
        let (g64, u64_) = (to_f64(&g), to_f64(&u));
        let fd_g = finite_diff(|gv| dot64(&swiglu_naive(gv, &u64_), &r), &g64, 1e-5);
        let fd_u = finite_diff(|uv| dot64(&swiglu_naive(&g64, uv), &r), &u64_, 1e-5);
        eprintln!(
            "swiglu backward: dgate rel err {:.2e}, dup rel err {:.2e}",
            rel_norm_err(&dg, &f32s(&fd_g)),
            rel_norm_err(&du, &f32s(&fd_u))
        );
        assert_grad_matches_fd(&dg, &fd_g, 1e-4, "swiglu dgate");
        assert_grad_matches_fd(&du, &fd_u, 1e-4, "swiglu dup");
    }

    #[test]
    fn backward_matches_analytic_f64_on_large_input() {
        let len = 1031 * 75;
        let g = gates(len, 6);
        let u = rand_vec(len, 7);
        let r = rand_vec(len, 8);
        let (mut dg, mut du) = (vec![0.0; len], vec![0.0; len]);
        swiglu_backward(&mut dg, &mut du, &r, &g, &u);
        let (mut wg, mut wu) = (vec![0.0f32; len], vec![0.0f32; len]);
        for i in 0..len {
            let (gv, uv, rv) = (g[i] as f64, u[i] as f64, r[i] as f64);
            let s = 1.0 / (1.0 + (-gv).exp());
            wg[i] = (rv * uv * s * (1.0 + gv * (1.0 - s))) as f32;
            wu[i] = (rv * gv * s) as f32;
        }
        let (ag, rg) = max_errors(&dg, &wg);
        let (au, ru) = max_errors(&du, &wu);
        eprintln!("swiglu backward len={len}: dgate max abs {ag:.2e} rel {rg:.2e}; dup max abs {au:.2e} rel {ru:.2e}");
        assert_close(&dg, &wg, 1e-6, 1e-5, "swiglu dgate vs f64");
        assert_close(&du, &wu, 1e-30, 1e-6, "swiglu dup vs f64");
    }

    #[test]
    fn backward_accumulates() {
        let len = 37 * 75;
        let g = gates(len, 9);
        let u = rand_vec(len, 10);
        let r = rand_vec(len, 11);
        let (mut gg, mut gu) = (vec![0.0; len], vec![0.0; len]);
        swiglu_backward(&mut gg, &mut gu, &r, &g, &u);
        let (ig, iu) = (rand_vec(len, 12), rand_vec(len, 13));
        let (mut dg, mut du) = (ig.clone(), iu.clone());
        swiglu_backward(&mut dg, &mut du, &r, &g, &u);
        swiglu_backward(&mut dg, &mut du, &r, &g, &u);
        let want_g: Vec<f32> = ig.iter().zip(&gg).map(|(a, b)| a + 2.0 * b).collect();
        let want_u: Vec<f32> = iu.iter().zip(&gu).map(|(a, b)| a + 2.0 * b).collect();
        assert_close(&dg, &want_g, 1e-5, 1e-6, "swiglu dgate accumulates");
        assert_close(&du, &want_u, 1e-5, 1e-6, "swiglu dup accumulates");
    }

    #[test]
    fn fused_layout_matches_the_split_halves() {
        let (n, f) = (37, 75);
        let gu = rand_vec(n * 2 * f, 11).iter().map(|x| x * 4.0).collect::<Vec<f32>>();
        let gate: Vec<f32> = gu.chunks(2 * f).flat_map(|r| r[..f].to_vec()).collect();
        let up: Vec<f32> = gu.chunks(2 * f).flat_map(|r| r[f..].to_vec()).collect();
        let (mut a, mut b) = (vec![0f32; n * f], vec![0f32; n * f]);
        swiglu_forward(&mut a, &gate, &up);
        swiglu_fused_forward(&mut b, &gu, f);
        assert_eq!(a, b);
        let dout = rand_vec(n * f, 12);
        let (mut dg, mut du) = (vec![0f32; n * f], vec![0f32; n * f]);
        swiglu_backward(&mut dg, &mut du, &dout, &gate, &up);
        let mut dgu = vec![0f32; n * 2 * f];
        swiglu_fused_backward(&mut dgu, &dout, &gu, f);
        for r in 0..n {
            for c in 0..f {
                assert_eq!(dgu[r * 2 * f + c], dg[r * f + c], "dgate {r},{c}");
                assert_eq!(dgu[r * 2 * f + f + c], du[r * f + c], "dup {r},{c}");
            }
        }
        // Accumulates: a second call doubles it (up to one rounding per element).
        let once = dgu.clone();
        swiglu_fused_backward(&mut dgu, &dout, &gu, f);
        let twice: Vec<f32> = once.iter().map(|x| 2.0 * x).collect();
        assert_close(&dgu, &twice, 1e-6, 1e-6, "fused backward accumulates");
    }
}
