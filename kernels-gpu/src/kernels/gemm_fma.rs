//! Grouped GEMM on the FMA pipes in f32 ([`GroupedGemm`] of f32): 32x32 output tiles, K in steps
//! of 16 through shared memory, each of the 64 threads computing a 4x4 patch.

use super::gemm::GroupedGemm;
use crate::simt::{Gmem, Simt, Smem};

/// Tile rows.
pub const BM: usize = 32;
/// Tile columns.
pub const BN: usize = 32;
/// K step.
pub const BK: usize = 16;
/// Threads per block.
pub const THREADS: u32 = 64;
/// Dynamic shared bytes: `As [BK][BM]` and `Bs [BK][BN]` f32.
pub const SHARED_BYTES: usize = (BK * BM + BK * BN) * 4;

/// Loads one `BK x 32` panel of a strided operand into shared memory `[BK][32]` (zero outside).
/// `rows` / `cols` are the operand's extents; the panel covers rows `r0..r0+32` (along M or N) and
/// contraction indices `k0..k0+BK`. `k_is_row` says whether K indexes the operand's rows (B) or
/// columns (A).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn load_panel<C: Simt>(
    ctx: &C,
    s: Smem<f32>,
    p: Gmem<f32>,
    rs: usize,
    cs: usize,
    mn0: usize,
    mn_len: usize,
    k0: usize,
    k_len: usize,
    k_is_row: bool,
) {
    let t = ctx.thread_linear() as usize;
    // Walk the panel with the operand's contiguous index fastest, for coalescing.
    let k_fast = if k_is_row { rs == 1 } else { cs == 1 };
    let mut idx = t;
    while idx < BK * 32 {
        let (kk, mm) = if k_fast { (idx % BK, idx / BK) } else { (idx / 32, idx % 32) };
        let (kg, mg) = (k0 + kk, mn0 + mm);
        let v = if kg < k_len && mg < mn_len {
            let (r, c) = if k_is_row { (kg, mg) } else { (mg, kg) };
            p.read(r * rs + c * cs)
        } else {
            0.0
        };
        s.write(kk * 32 + mm, v);
        idx += THREADS as usize;
    }
}

/// `C_g (+)= A_g · B_g` for group `g = blockIdx.z`, output tile `(blockIdx.y, blockIdx.x)`.
///
/// Launch: grid `(ceil(N / 32), ceil(max_g M_g / 32), G)`, block `(64, 1, 1)`, dynamic shared
/// [`SHARED_BYTES`] (4 KiB). Blocks past their group's extent return at once (uniformly).
pub fn grouped_gemm_fma<C: Simt>(ctx: &C, p: GroupedGemm<f32>) {
    let g = ctx.block_idx().z as usize;
    // SAFETY: the host passes offsets with G+1 entries and operands matching the dims; every
    // global access below is guarded by the group's extents.
    unsafe {
        let (m, n, k) = p.dims(g);
        let (m0, n0) = (ctx.block_idx().y as usize * BM, ctx.block_idx().x as usize * BN);
        if m0 >= m || n0 >= n {
            return;
        }
        let (a, b, c) = (p.a.group_base(p.offsets, g), p.b.group_base(p.offsets, g), p.c.group_base(p.offsets, g));
        let sh: Smem<f32> = ctx.dyn_shared();
        let (sa, sb) = (sh, sh.add(BK * BM));
        let t = ctx.thread_linear() as usize;
        let (tx, ty) = (t % 8, t / 8);
        let mut acc = [[0f32; 4]; 4];
        let mut k0 = 0;
        while k0 < k {
            load_panel(ctx, sa, a, p.a.rs, p.a.cs, m0, m, k0, k, false);
            load_panel(ctx, sb, b, p.b.rs, p.b.cs, n0, n, k0, k, true);
            ctx.sync_threads();
            for kk in 0..BK {
                let mut av = [0f32; 4];
                let mut bv = [0f32; 4];
                for i in 0..4 {
                    av[i] = sa.read(kk * BM + ty + 8 * i);
                    bv[i] = sb.read(kk * BN + tx + 8 * i);
                }
                for i in 0..4 {
                    for j in 0..4 {
                        acc[i][j] = C::fma(av[i], bv[j], acc[i][j]);
                    }
                }
            }
            ctx.sync_threads();
            k0 += BK;
        }
        for (i, row) in acc.iter().enumerate() {
            let r = m0 + ty + 8 * i;
            for (j, &v) in row.iter().enumerate() {
                let col = n0 + tx + 8 * j;
                if r < m && col < n {
                    let at = r * p.c.rs + col * p.c.cs;
                    let old = if p.accumulate { c.read(at) } else { 0.0 };
                    c.write(at, old + v);
                }
            }
        }
    }
}
