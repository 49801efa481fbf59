//! `simt_selftest` (entry `medmoe_simt_selftest`): exercises every method of the GPU context once, so a GPU run can check
//! the PTX mapping of [`Simt`] (fragment layouts, shuffle edge cases, votes, atomics, math) against
//! values computed on the host (`host` GPU tests). The expected results are the `simt` trait docs.
//!
//! Launch: grid 1, block 64 (two full warps), dynamic shared memory 512 bytes.
//! Per thread `t`, `out[t * SELFTEST_WORDS + w]` for the word `w` listed in the body.

use crate::kernels::reduce::block_sum;
use crate::simt::{pack_bf16x2, Gmem, Simt};

/// Words written per thread.
pub const SELFTEST_WORDS: usize = 26;

/// `out`: [64 * 26] u32; `a`: [16 x 16] bf16 row-major; `b`: [8 x 16] bf16 (column n at `b[n * 16 ..]`,
/// i.e. B column-major); `x`: [64] f32 > 0; `acc`: [1] f32 (+= 1 per thread); `cnt`: [1] u32 (+= 1).
///
/// # Safety
/// Launched as above with buffers of the sizes above.
#[inline(always)]
pub unsafe fn simt_selftest<C: Simt>(
    c: &C,
    out: Gmem<u32>,
    a: Gmem<u16>,
    b: Gmem<u16>,
    x: Gmem<f32>,
    acc: Gmem<f32>,
    cnt: Gmem<u32>,
) {
    let t = c.thread_linear();
    let (lane, warp) = (c.lane_id(), c.warp_id());
    let o = out.add(t as usize * SELFTEST_WORDS);
    o.write(0, lane);
    o.write(1, warp);
    o.write(2, c.shfl_idx(t, 31 - lane));
    o.write(3, c.shfl_xor(t, 5));
    o.write(4, c.shfl_down(t, 3));
    o.write(5, c.shfl_up(t, 3));
    o.write(6, c.vote_any(lane == 7) as u32);
    o.write(7, c.vote_all(lane < 31) as u32);
    o.write(8, c.vote_ballot(lane % 3 == 0));
    o.write(9, block_sum(c, t as f32).to_bits());

    // mma with fragments read straight from global memory (layouts in the Simt docs).
    let (g, q) = ((lane >> 2) as usize, (lane % 4) as usize);
    let at = |row: usize, col: usize| pack_bf16x2(a.read(row * 16 + col), a.read(row * 16 + col + 1));
    let fa = [at(g, 2 * q), at(g + 8, 2 * q), at(g, 2 * q + 8), at(g + 8, 2 * q + 8)];
    let bt = |k: usize, n: usize| pack_bf16x2(b.read(n * 16 + k), b.read(n * 16 + k + 1));
    let fb = [bt(2 * q, g), bt(2 * q + 8, g)];
    let d = c.mma_m16n8k16_bf16(fa, fb, [0.0; 4]);
    for (i, v) in d.iter().enumerate() {
        o.write(10 + i, v.to_bits());
    }

    // The same A staged through cp.async and read back with ldmatrix.x4.
    let s = c.dyn_shared::<u16>();
    if t < 32 {
        c.cp_async_16(s.add(t as usize * 8), a.add(t as usize * 8));
    }
    c.cp_async_commit();
    c.cp_async_wait_all();
    c.sync_threads();
    let m = (lane / 8) as usize;
    let row = (lane % 8) as usize + 8 * (m & 1);
    let fa2 = c.ldmatrix_x4(s.add(row * 16 + 8 * (m >> 1)), false);
    let d2 = c.mma_m16n8k16_bf16(fa2, fb, [0.0; 4]);
    for (i, v) in d2.iter().enumerate() {
        o.write(14 + i, v.to_bits());
    }

    let v = x.read(t as usize);
    o.write(18, C::exp(v).to_bits());
    o.write(19, C::ln(v).to_bits());
    o.write(20, C::sqrt(v).to_bits());
    o.write(21, C::rsqrt(v).to_bits());
    o.write(22, C::fma(v, v, 1.0).to_bits());
    o.write(23, c.atomic_add_u32(cnt, 0, 1));
    c.atomic_add_f32(acc, 0, 1.0);
    o.write(24, c.dyn_shared_bytes() as u32);
    o.write(25, c.block_dim().x * 1000 + c.grid_dim().x * 100 + c.block_idx().x);
}
