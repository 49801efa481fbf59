//! RMSNorm as in Qwen3: `y = x / sqrt(mean(x^2) + eps) * w`, all in f32.
//!
//! Shapes: `x`, `out`, `dx`, `dout` are `[N, C]` (N rows, C channels), `w`, `dw` are `[C]`, and the
//! saved `rstd = 1 / sqrt(mean(x^2) + eps)` is `[N]`. The same kernel serves the per-head q/k norms
//! with `N = rows * heads` and `C = Dh`.
//!
//! Work is split into tasks of whole rows whose size depends only on `C`, so results (including the
//! `dw` reduction) do not depend on the number of threads.
use rayon::prelude::*;

/// Elements per parallel task: enough work to outweigh the hand-off.
const TASK_ELEMS: usize = 1 << 14;

/// Rows per parallel task for rows of `c` elements.
fn rows_per_task(c: usize) -> usize {
    (TASK_ELEMS / c.max(1)).max(1)
}

/// `sum(a[i] * b[i])` in f32 with eight independent accumulators (so the loop vectorizes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(&x, &y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out = x * rstd * w` per row, saving `rstd = 1 / sqrt(mean(x^2) + eps)`.
///
/// `out`, `x`: `[N, C]`; `rstd`: `[N]`; `w`: `[C]`. Follows transformers' order:
/// `rstd = 1 / sqrt(sum / C + eps)`, then `(x * rstd) * w`.
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], n: usize, c: usize, eps: f32) {
    assert!(c > 0, "rmsnorm: c must be positive");
    assert_eq!(out.len(), n * c, "rmsnorm: out must be [N, C]");
    assert_eq!(x.len(), n * c, "rmsnorm: x must be [N, C]");
    assert_eq!(rstd.len(), n, "rmsnorm: rstd must be [N]");
    assert_eq!(w.len(), c, "rmsnorm: w must be [C]");
    let r = rows_per_task(c);
    out.par_chunks_mut(r * c)
        .zip(rstd.par_chunks_mut(r))
        .zip(x.par_chunks(r * c))
        .for_each(|((out, rstd), x)| forward_rows(out, rstd, x, w, c, eps));
}

crate::isa_dispatch!(
    /// [`forward_rows_body`], compiled for the row ISA of the moment (same bits on every ISA:
    /// Rust never contracts `a * b + c`, and the lanes are the same eight sums).
    fn forward_rows(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) => forward_rows_body
);

/// The rows of one task: `out = x * rstd * w`, saving `rstd`.
#[inline(always)]
fn forward_rows_body(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    for ((o, rs), x) in out.chunks_exact_mut(c).zip(rstd.iter_mut()).zip(x.chunks_exact(c)) {
        let s = 1.0 / (dot(x, x) / c as f32 + eps).sqrt();
        *rs = s;
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x * s * w;
        }
    }
}

/// Accumulates the gradients of [`rmsnorm_forward`]: `dx += ..`, `dw += ..`.
///
/// With `s = rstd`, `xhat = x * s` and `g = dout * w`:
/// `dx = s * g - x * s^3 * sum(g * x) / C` and `dw = sum over rows of dout * xhat`.
/// `dw` is reduced through one partial per task, summed in task order.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    assert!(c > 0, "rmsnorm: c must be positive");
    assert_eq!(dx.len(), n * c, "rmsnorm: dx must be [N, C]");
    assert_eq!(dout.len(), n * c, "rmsnorm: dout must be [N, C]");
    assert_eq!(x.len(), n * c, "rmsnorm: x must be [N, C]");
    assert_eq!(w.len(), c, "rmsnorm: w must be [C]");
    assert_eq!(dw.len(), c, "rmsnorm: dw must be [C]");
    assert_eq!(rstd.len(), n, "rmsnorm: rstd must be [N]");
    if n == 0 {
        return;
    }
    let r = rows_per_task(c);
    let tasks = n.div_ceil(r);
    // partial[t, C]: task t's contribution to dw.
    let mut partial = vec![0f32; tasks * c];
    dx.par_chunks_mut(r * c)
        .zip(partial.par_chunks_mut(c))
        .zip(dout.par_chunks(r * c))
        .zip(x.par_chunks(r * c))
        .zip(rstd.par_chunks(r))
        .for_each(|((((dx, dwp), dout), x), rstd)| backward_rows(dx, dwp, dout, x, w, rstd, c));
    let (first, rest) = partial.split_at_mut(c);
    for p in rest.chunks_exact(c) {
        for (a, &b) in first.iter_mut().zip(p) {
            *a += b;
        }
    }
    for (d, &p) in dw.iter_mut().zip(first.iter()) {
        *d += p;
    }
}

crate::isa_dispatch!(
    /// [`backward_rows_body`], compiled for the row ISA of the moment (same bits, as the forward).
    fn backward_rows(
        dx: &mut [f32],
        dwp: &mut [f32],
        dout: &[f32],
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        c: usize,
    ) => backward_rows_body
);

/// The rows of one backward task: `dx +=` per row, this task's `dw` partial `dwp +=`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_rows_body(dx: &mut [f32], dwp: &mut [f32], dout: &[f32], x: &[f32], w: &[f32], rstd: &[f32], c: usize) {
    let rows = dx.chunks_exact_mut(c).zip(dout.chunks_exact(c)).zip(x.chunks_exact(c));
    for (((dx, dout), x), &s) in rows.zip(rstd) {
        // sum(g * x) with g = dout * w, and dw += dout * x * s.
        let mut acc = [0f32; 8];
        let mut tail = 0f32;
        let (dc, xc, wc) = (dout.chunks_exact(8), x.chunks_exact(8), w.chunks_exact(8));
        for (((&d, &xv), &wv), p) in
            dc.remainder().iter().zip(xc.remainder()).zip(wc.remainder()).zip(dwp[c - c % 8..].iter_mut())
        {
            tail += d * wv * xv;
            *p += d * (xv * s);
        }
        for (((d, xv), wv), p) in dc.zip(xc).zip(wc).zip(dwp.chunks_exact_mut(8)) {
            for k in 0..8 {
                acc[k] += d[k] * wv[k] * xv[k];
                p[k] += d[k] * (xv[k] * s);
            }
        }
        let sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
        let k = s * s * s * sum / c as f32;
        for (((dx, &d), &xv), &wv) in dx.iter_mut().zip(dout).zip(x).zip(w) {
            *dx += s * (d * wv) - k * xv;
        }
    }
}

/// Reference forward in f64: `x / sqrt(mean(x^2) + eps) * w` for `x: [N, C]`, `w: [C]`.
pub fn rmsnorm_naive(x: &[f64], w: &[f64], n: usize, c: usize, eps: f64) -> Vec<f64> {
    assert_eq!(x.len(), n * c, "rmsnorm_naive: x must be [N, C]");
    assert_eq!(w.len(), c, "rmsnorm_naive: w must be [C]");
    let mut out = vec![0f64; n * c];
    for i in 0..n {
        let row = &x[i * c..(i + 1) * c];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / c as f64;
        let s = 1.0 / (ms + eps).sqrt();
        for j in 0..c {
            out[i * c + j] = row[j] * s * w[j];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, assert_grad_matches_fd, dot64, finite_diff, max_errors, rand_vec, to_f64};

    const EPS: f32 = 1e-6;

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// The dispatched (AVX2 where available) and portable row loops give identical bits.
    #[test]
    fn row_loops_match_portable_build_bitwise() {
        for (n, c) in [(5, 37), (3, 256), (4, 8)] {
            let x = rand_vec(n * c, 1);
            let w = rand_vec(c, 2);
            let (mut o1, mut o2, mut r1, mut r2) = (vec![0f32; n * c], vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
            forward_rows(&mut o1, &mut r1, &x, &w, c, 1e-6);
            forward_rows_body(&mut o2, &mut r2, &x, &w, c, 1e-6);
            assert_eq!((&o1, &r1), (&o2, &r2), "forward c={c}");
            let dout = rand_vec(n * c, 3);
            let (mut d1, mut d2) = (rand_vec(n * c, 4), rand_vec(n * c, 4));
            let (mut p1, mut p2) = (rand_vec(c, 5), rand_vec(c, 5));
            backward_rows(&mut d1, &mut p1, &dout, &x, &w, &r1, c);
            backward_rows_body(&mut d2, &mut p2, &dout, &x, &w, &r1, c);
            assert_eq!((&d1, &p1), (&d2, &p2), "backward c={c}");
        }
    }

    #[test]
    fn forward_matches_naive_on_awkward_sizes() {
        for &(n, c) in &[(1, 1), (37, 75), (1031, 75), (5, 128), (300, 769)] {
            let x = rand_vec(n * c, 1);
            let w: Vec<f32> = rand_vec(c, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
            let mut out = vec![0.0; n * c];
            let mut rstd = vec![0.0; n];
            rmsnorm_forward(&mut out, &mut rstd, &x, &w, n, c, EPS);
            let want = f32s(&rmsnorm_naive(&to_f64(&x), &to_f64(&w), n, c, EPS as f64));
            let (abs, rel) = max_errors(&out, &want);
            eprintln!("rmsnorm forward n={n} c={c}: max abs {abs:.2e} max rel {rel:.2e}");
            assert_close(&out, &want, 2e-6, 2e-6, &format!("rmsnorm forward n={n} c={c}"));
            let want_rstd: Vec<f32> = (0..n)
                .map(|i| {
                    let ms = x[i * c..(i + 1) * c].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
                    (1.0 / (ms + EPS as f64).sqrt()) as f32
                })
                .collect();
            assert_close(&rstd, &want_rstd, 0.0, 2e-6, "rmsnorm rstd");
        }
    }

    /// Analytic (dx, dw) for `loss = sum(out * r)` from fresh zero buffers.
    fn grads(x: &[f32], w: &[f32], r: &[f32], n: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0.0; n * c];
        let mut rstd = vec![0.0; n];
        rmsnorm_forward(&mut out, &mut rstd, x, w, n, c, EPS);
        let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
        rmsnorm_backward(&mut dx, &mut dw, r, x, w, &rstd, n, c);
        (dx, dw)
    }

    #[test]
    fn backward_matches_finite_differences() {
        // (c = 1 is left out: dx is then ~eps-sized, all cancellation.)
        for &(n, c) in &[(1, 2), (3, 5), (2, 11)] {
            let x = rand_vec(n * c, 3);
            let w: Vec<f32> = rand_vec(c, 4).iter().map(|v| 1.0 + 0.5 * v).collect();
            let r = rand_vec(n * c, 5);
            let (dx, dw) = grads(&x, &w, &r, n, c);
            let (x64, w64) = (to_f64(&x), to_f64(&w));
            let eps = EPS as f64;
            let fd_x = finite_diff(|xv| dot64(&rmsnorm_naive(xv, &w64, n, c, eps), &r), &x64, 1e-5);
            let fd_w = finite_diff(|wv| dot64(&rmsnorm_naive(&x64, wv, n, c, eps), &r), &w64, 1e-5);
            eprintln!(
                "rmsnorm backward n={n} c={c}: dx rel err {:.2e}, dw rel err {:.2e}",
                crate::check::rel_norm_err(&dx, &f32s(&fd_x)),
                crate::check::rel_norm_err(&dw, &f32s(&fd_w))
            );
            assert_grad_matches_fd(&dx, &fd_x, 1e-4, &format!("rmsnorm dx n={n} c={c}"));
            assert_grad_matches_fd(&dw, &fd_w, 1e-4, &format!("rmsnorm dw n={n} c={c}"));
        }
    }

    #[test]
    fn backward_on_many_rows_matches_finite_differences_of_dw() {
        // Many tasks, so the dw partials are reduced across several of them.
        let (n, c) = (1031, 37);
        let x = rand_vec(n * c, 6);
        let w: Vec<f32> = rand_vec(c, 7).iter().map(|v| 1.0 + 0.5 * v).collect();
        let r = rand_vec(n * c, 8);
        let (_, dw) = grads(&x, &w, &r, n, c);
        let x64 = to_f64(&x);
        let fd_w = finite_diff(|wv| dot64(&rmsnorm_naive(&x64, wv, n, c, EPS as f64), &r), &to_f64(&w), 1e-5);
        assert_grad_matches_fd(&dw, &fd_w, 1e-4, "rmsnorm dw, many rows");
    }

    #[test]
    fn backward_accumulates() {
        let (n, c) = (37, 75);
        let x = rand_vec(n * c, 9);
        let w = rand_vec(c, 10);
        let r = rand_vec(n * c, 11);
        let (gx, gw) = grads(&x, &w, &r, n, c);
        let mut out = vec![0.0; n * c];
        let mut rstd = vec![0.0; n];
        rmsnorm_forward(&mut out, &mut rstd, &x, &w, n, c, EPS);
        let (ix, iw) = (rand_vec(n * c, 12), rand_vec(c, 13));
        let (mut dx, mut dw) = (ix.clone(), iw.clone());
        rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rstd, n, c);
        rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rstd, n, c);
        let want_x: Vec<f32> = ix.iter().zip(&gx).map(|(a, g)| a + 2.0 * g).collect();
        let want_w: Vec<f32> = iw.iter().zip(&gw).map(|(a, g)| a + 2.0 * g).collect();
        assert_close(&dx, &want_x, 1e-5, 1e-5, "rmsnorm dx accumulates");
        assert_close(&dw, &want_w, 1e-4, 1e-5, "rmsnorm dw accumulates");
    }

    #[test]
    fn backward_is_identical_across_thread_counts() {
        let (n, c) = (1031, 75);
        let x = rand_vec(n * c, 14);
        let w = rand_vec(c, 15);
        let r = rand_vec(n * c, 16);
        let run = |k: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(k).build().unwrap();
            pool.install(|| grads(&x, &w, &r, n, c))
        };
        let one = run(1);
        assert_eq!(one, run(3));
    }
}
