//! Grouped GEMM on the tensor cores: bf16 operands (`u16` bits), f32 accumulation, with
//! `mma.sync.m16n8k16` ([`GroupedGemm`] of u16, output f32).
//!
//! Block tile 32x32, K step 16, four warps in a 2x2 arrangement, each owning a 16x16 patch
//! (two m16n8 accumulators). Per K step the tiles are staged global -> shared with 16-byte
//! `cp.async` chunks along the operand's contiguous axis (element-wise with zero fill at ragged
//! edges or unaligned addresses), then fed to the MMA with `ldmatrix` (`.trans` when the operand is
//! not K-contiguous). Each operand must be contiguous along one axis (`rs == 1` or `cs == 1`).

use super::gemm::GroupedGemm;
use crate::simt::{Gmem, Simt, Smem};

/// Tile rows.
pub const BM: usize = 32;
/// Tile columns.
pub const BN: usize = 32;
/// K step.
pub const BK: usize = 16;
/// Threads per block (4 warps).
pub const THREADS: u32 = 128;
/// Shared pitch (elements) of a K-contiguous tile `[32][BK + 8]`: 48 bytes, rows stay 16-byte aligned.
const PITCH_K: usize = BK + 8;
/// Shared pitch of an M/N-contiguous tile `[BK][32 + 8]`: 80 bytes.
const PITCH_MN: usize = 32 + 8;
/// Elements of one staged tile region (the larger of the two layouts).
const TILE: usize = 32 * PITCH_K;
/// Dynamic shared bytes: two tile regions of bf16.
pub const SHARED_BYTES: usize = 2 * TILE * 2;

/// Stages the `32 x BK` tile of one operand (rows `mn0..` along M or N, `k0..` along K) into
/// shared memory: `[32][PITCH_K]` when K is contiguous, else `[BK][PITCH_MN]`. Chunk `chunk`
/// (0..64) is 8 consecutive elements along the contiguous axis.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn stage_chunk<C: Simt>(
    ctx: &C,
    s: Smem<u16>,
    p: Gmem<u16>,
    rs: usize,
    cs: usize,
    k_is_row: bool,
    mn0: usize,
    mn_len: usize,
    k0: usize,
    k_len: usize,
    chunk: usize,
) {
    // Strides along K and along M/N.
    let (sk, smn) = if k_is_row { (rs, cs) } else { (cs, rs) };
    let k_contig = sk == 1;
    // (start of the run, fixed index) and the shared destination.
    let (mm, kk, dst) = if k_contig {
        let (mm, kk) = (chunk / 2, (chunk % 2) * 8);
        (mm, kk, s.add(mm * PITCH_K + kk))
    } else {
        let (kk, mm) = (chunk / 4, (chunk % 4) * 8);
        (mm, kk, s.add(kk * PITCH_MN + mm))
    };
    let (mg, kg) = (mn0 + mm, k0 + kk);
    let src = p.add(mg.min(mn_len.saturating_sub(1)) * smn + kg.min(k_len.saturating_sub(1)) * sk);
    let full = if k_contig { mg < mn_len && kg + 8 <= k_len } else { kg < k_len && mg + 8 <= mn_len };
    if full && (src.as_ptr() as usize).is_multiple_of(16) {
        ctx.cp_async_16(dst, src);
    } else {
        for i in 0..8 {
            let (m_i, k_i) = if k_contig { (mg, kg + i) } else { (mg + i, kg) };
            let v = if m_i < mn_len && k_i < k_len { p.read(m_i * smn + k_i * sk) } else { 0 };
            dst.write(i, v);
        }
    }
}

/// `C_g (+)= A_g · B_g` for group `g = blockIdx.z`, output tile `(blockIdx.y, blockIdx.x)`.
///
/// Launch: grid `(ceil(N / 32), ceil(max_g M_g / 32), G)`, block `(128, 1, 1)`, dynamic shared
/// [`SHARED_BYTES`] (3 KiB). Blocks past their group's extent return at once (uniformly).
pub fn grouped_gemm_mma<C: Simt>(ctx: &C, p: GroupedGemm<u16>) {
    let g = ctx.block_idx().z as usize;
    // SAFETY: the host passes offsets with G+1 entries and operands matching the dims; global
    // reads are clamped / guarded to the group's extents, shared indices stay in the two regions.
    unsafe {
        let (m, n, k) = p.dims(g);
        let (m0, n0) = (ctx.block_idx().y as usize * BM, ctx.block_idx().x as usize * BN);
        if m0 >= m || n0 >= n {
            return;
        }
        let (a, b, c) = (p.a.group_base(p.offsets, g), p.b.group_base(p.offsets, g), p.c.group_base(p.offsets, g));
        let sh: Smem<u16> = ctx.dyn_shared();
        let (sa, sb) = (sh, sh.add(TILE));
        let (a_kc, b_kc) = (p.a.cs == 1, p.b.rs == 1);
        let t = ctx.thread_linear() as usize;
        let (l, warp) = (ctx.lane_id() as usize, ctx.warp_id() as usize);
        let (wm, wn) = (warp / 2, warp % 2);
        let (gid, tig) = (l / 4, l % 4);
        let mut acc = [[0f32; 4]; 2];
        let mut k0 = 0;
        while k0 < k {
            if t < 64 {
                stage_chunk(ctx, sa, a, p.a.rs, p.a.cs, false, m0, m, k0, k, t);
            } else {
                stage_chunk(ctx, sb, b, p.b.rs, p.b.cs, true, n0, n, k0, k, t - 64);
            }
            ctx.cp_async_commit();
            ctx.cp_async_wait_all();
            ctx.sync_threads();
            let fa = if a_kc {
                ctx.ldmatrix_x4(sa.add((wm * 16 + l % 8 + ((l / 8) % 2) * 8) * PITCH_K + (l / 16) * 8), false)
            } else {
                ctx.ldmatrix_x4(sa.add((l % 8 + (l / 16) * 8) * PITCH_MN + wm * 16 + ((l / 8) % 2) * 8), true)
            };
            for (j, accj) in acc.iter_mut().enumerate() {
                let nb = wn * 16 + j * 8;
                let fb = if b_kc {
                    ctx.ldmatrix_x2(sb.add((nb + l % 8) * PITCH_K + ((l / 8) % 2) * 8), false)
                } else {
                    ctx.ldmatrix_x2(sb.add((l % 8 + ((l / 8) % 2) * 8) * PITCH_MN + nb), true)
                };
                *accj = ctx.mma_m16n8k16_bf16(fa, fb, *accj);
            }
            ctx.sync_threads();
            k0 += BK;
        }
        for (j, accj) in acc.iter().enumerate() {
            for (i, &v) in accj.iter().enumerate() {
                let r = m0 + wm * 16 + gid + 8 * (i >> 1);
                let col = n0 + wn * 16 + j * 8 + 2 * tig + (i & 1);
                if r < m && col < n {
                    let at = r * p.c.rs + col * p.c.cs;
                    let old = if p.accumulate { c.read(at) } else { 0.0 };
                    c.write(at, old + v);
                }
            }
        }
    }
}
