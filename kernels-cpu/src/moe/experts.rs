//! Grouped SwiGLU experts: one GEMM pass per expert over its contiguous block of permuted rows.
//!
//! Shapes: `xp`, `y`, `dxp`, `dy` [Nk, D] (rows of expert `i` at `offsets[i]..offsets[i+1]`);
//! `hgu` [Nk, 2W] (each row the gate then the up pre-activations, saved for backward) and
//! `a = silu(hg) * hu` [Nk, W]; `experts`, `dexperts` [E, 3*W*D], per expert `gate_proj` [W, D],
//! `up_proj` [W, D], `down_proj` [D, W]. Gate and up are adjacent, so per expert they are one
//! `[2W, D]` matrix `gu` and one GEMM: `hgu = x · guᵀ`, `y = a · downᵀ`; backward
//! `dgu += dhguᵀ · x`, `dx += dhgu · gu` (4 GEMMs instead of 6).
//!
//! Scheduling: experts run in a rayon loop, each on one thread; an expert holding more than one
//! thread's share of the rows runs first, alone, on all threads, so one dominant expert does not
//! serialise the layer. Every GEMM runs on the caller's [`GemmBackend`] (f32 or bf16 operands).

use crate::buffer::zeroed;
use crate::gemm::{matmul_with, GemmBackend, Trans};
use crate::swiglu::{swiglu_fused_backward, swiglu_fused_forward};
use rayon::prelude::*;

/// `dst (+)= op(a) · op(b)` on the scheduled number of threads.
struct Matmul {
    gemm: GemmBackend,
    threads: usize,
}

impl Matmul {
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        dst: &mut [f32],
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        ta: Trans,
        tb: Trans,
        acc: bool,
    ) {
        matmul_with(self.gemm, self.threads, dst, a, b, m, k, n, ta, tb, acc);
    }
}

/// Splits `buf` [Nk, width] into the per-expert blocks given by `offsets`.
fn blocks_mut<'a>(mut buf: &'a mut [f32], offsets: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(offsets.len() - 1);
    for win in offsets.windows(2) {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut((win[1] - win[0]) * width);
        out.push(head);
        buf = tail;
    }
    out
}

fn block<'a>(buf: &'a [f32], offsets: &[usize], i: usize, width: usize) -> &'a [f32] {
    &buf[offsets[i] * width..offsets[i + 1] * width]
}

/// Runs `job(i, all threads)` for experts too big to share the threads, then `job(i, one
/// thread)` for the others in parallel; experts without rows are skipped.
fn schedule<J: Send>(
    gemm: GemmBackend,
    jobs: Vec<(usize, J)>,
    offsets: &[usize],
    run: impl Fn(usize, J, &Matmul) + Sync,
) {
    let total = offsets[offsets.len() - 1];
    let threads = rayon::current_num_threads();
    let rows = |i: usize| offsets[i + 1] - offsets[i];
    let (heavy, light): (Vec<_>, Vec<_>) =
        jobs.into_iter().filter(|(i, _)| rows(*i) > 0).partition(|(i, _)| threads > 1 && rows(*i) * threads > total);
    for (i, job) in heavy {
        run(i, job, &Matmul { gemm, threads });
    }
    light.into_par_iter().for_each(|(i, job)| run(i, job, &Matmul { gemm, threads: 1 }));
}

/// The weight matrices of one expert: (gate and up fused [2W, D], down [D, W]).
fn split_weights(wts: &[f32], w: usize, d: usize) -> (&[f32], &[f32]) {
    wts.split_at(2 * w * d)
}

/// Forward of every expert on its rows: fills `y` and the saved `hgu`, `a`; GEMMs on `gemm`.
#[allow(clippy::too_many_arguments)]
pub fn experts_forward(
    gemm: GemmBackend,
    y: &mut [f32],
    hgu: &mut [f32],
    a: &mut [f32],
    xp: &[f32],
    experts: &[f32],
    offsets: &[usize],
    d: usize,
    w: usize,
) {
    let nk = offsets[offsets.len() - 1];
    assert!(y.len() == nk * d && xp.len() == nk * d, "experts: y / xp are not [Nk, D]");
    assert!(hgu.len() == nk * 2 * w && a.len() == nk * w, "experts: saved are not [Nk, 2W] / [Nk, W]");
    assert_eq!(experts.len(), (offsets.len() - 1) * 3 * w * d, "experts: weights are not [E, 3*W*D]");
    let jobs: Vec<_> = blocks_mut(y, offsets, d)
        .into_iter()
        .zip(blocks_mut(hgu, offsets, 2 * w).into_iter().zip(blocks_mut(a, offsets, w)))
        .enumerate()
        .collect();
    schedule(gemm, jobs, offsets, |i, (y, (hgu, a)), mm| {
        let n = offsets[i + 1] - offsets[i];
        let x = block(xp, offsets, i, d);
        let (gu, down) = split_weights(&experts[i * 3 * w * d..(i + 1) * 3 * w * d], w, d);
        mm.run(hgu, x, gu, n, d, 2 * w, Trans::No, Trans::Yes, false);
        swiglu_fused_forward(a, hgu, w);
        mm.run(y, a, down, n, w, d, Trans::No, Trans::Yes, false);
    });
}

/// Backward of every expert: accumulates `dxp` [Nk, D] and `dexperts` [E, 3*W*D] from `dy`;
/// GEMMs on `gemm`.
#[allow(clippy::too_many_arguments)]
pub fn experts_backward(
    gemm: GemmBackend,
    dxp: &mut [f32],
    dexperts: &mut [f32],
    dy: &[f32],
    xp: &[f32],
    hgu: &[f32],
    a: &[f32],
    experts: &[f32],
    offsets: &[usize],
    d: usize,
    w: usize,
) {
    let nk = offsets[offsets.len() - 1];
    assert!(dxp.len() == nk * d && dy.len() == nk * d && xp.len() == nk * d, "experts: rows are not [Nk, D]");
    assert!(hgu.len() == nk * 2 * w && a.len() == nk * w, "experts: saved are not [Nk, 2W] / [Nk, W]");
    assert!(dexperts.len() == experts.len(), "experts: dexperts is not [E, 3*W*D]");
    let jobs: Vec<_> =
        blocks_mut(dxp, offsets, d).into_iter().zip(dexperts.chunks_mut(3 * w * d)).enumerate().collect();
    schedule(gemm, jobs, offsets, |i, (dx, dwts), mm| {
        let n = offsets[i + 1] - offsets[i];
        let (x, dy) = (block(xp, offsets, i, d), block(dy, offsets, i, d));
        let (hgu, a) = (block(hgu, offsets, i, 2 * w), block(a, offsets, i, w));
        let (gu, down) = split_weights(&experts[i * 3 * w * d..(i + 1) * 3 * w * d], w, d);
        let (dgu, ddown) = dwts.split_at_mut(2 * w * d);
        let mut da = zeroed(n * w);
        mm.run(&mut da, dy, down, n, d, w, Trans::No, Trans::No, false);
        mm.run(ddown, dy, a, d, n, w, Trans::Yes, Trans::No, true);
        let mut dhgu = zeroed(n * 2 * w);
        swiglu_fused_backward(&mut dhgu, &da, hgu, w);
        mm.run(dgu, &dhgu, x, 2 * w, n, d, Trans::Yes, Trans::No, true);
        mm.run(dx, &dhgu, gu, n, 2 * w, d, Trans::No, Trans::No, true);
    });
}
