//! [`Ptx`]: the zero-sized GPU context. Every method is `#[inline(always)]` and lowers to one or a few
//! PTX instructions, so a kernel monomorphised with it is plain straight-line PTX.
//!
//! Warp collectives and the barrier go through LLVM's NVVM intrinsics where those exist (LLVM knows
//! they are `convergent` and never moves them across divergent control flow). `mma`, `ldmatrix`,
//! `cp.async`, atomics and the approximate math are `asm!`: the collectives among them keep the
//! default `asm!` side effects so LLVM does not speculate, sink or merge them; pure math is `pure`.

use super::shared;
use crate::simt::{Dim3, Gmem, SharedArray, Simt, Smem};
use core::arch::asm;
use core::arch::nvptx;

/// All 32 lanes (our collectives are full-warp, see `simt`).
const FULL: u32 = 0xFFFF_FFFF;

#[allow(improper_ctypes)]
extern "C" {
    #[link_name = "llvm.nvvm.shfl.sync.idx.i32"]
    fn shfl_sync_idx(mask: u32, v: u32, lane: u32, clamp: u32) -> u32;
    #[link_name = "llvm.nvvm.shfl.sync.bfly.i32"]
    fn shfl_sync_bfly(mask: u32, v: u32, lane_mask: u32, clamp: u32) -> u32;
    #[link_name = "llvm.nvvm.shfl.sync.down.i32"]
    fn shfl_sync_down(mask: u32, v: u32, delta: u32, clamp: u32) -> u32;
    #[link_name = "llvm.nvvm.shfl.sync.up.i32"]
    fn shfl_sync_up(mask: u32, v: u32, delta: u32, clamp: u32) -> u32;
    #[link_name = "llvm.nvvm.vote.any.sync"]
    fn vote_any_sync(mask: u32, pred: bool) -> bool;
    #[link_name = "llvm.nvvm.vote.all.sync"]
    fn vote_all_sync(mask: u32, pred: bool) -> bool;
    #[link_name = "llvm.nvvm.vote.ballot.sync"]
    fn vote_ballot_sync(mask: u32, pred: bool) -> u32;
    #[link_name = "llvm.nvvm.read.ptx.sreg.laneid"]
    fn sreg_laneid() -> u32;
}

/// Alignment carrier for the dynamic shared memory base (the trait promises 16 bytes).
#[repr(C, align(16))]
struct Align16([u8; 16]);

/// The GPU context: zero-sized; the "state" is the hardware's special registers.
#[derive(Clone, Copy)]
pub struct Ptx;

/// Generic address -> `.shared` window address (for `ldmatrix` / `cp.async`).
#[inline(always)]
fn to_shared<T>(p: *mut T) -> u64 {
    let s: u64;
    // SAFETY: pure address arithmetic.
    unsafe { asm!("cvta.to.shared.u64 {s}, {p};", s = out(reg64) s, p = in(reg64) p, options(pure, nomem, nostack)) };
    s
}

/// Generic address -> `.global` window address.
#[inline(always)]
fn to_global<T>(p: *mut T) -> u64 {
    let g: u64;
    // SAFETY: pure address arithmetic.
    unsafe { asm!("cvta.to.global.u64 {g}, {p};", g = out(reg64) g, p = in(reg64) p, options(pure, nomem, nostack)) };
    g
}

impl Simt for Ptx {
    // ---- indices ----------------------------------------------------------------------------
    #[inline(always)]
    fn thread_idx(&self) -> Dim3 {
        // SAFETY: special-register reads.
        unsafe { Dim3::new(nvptx::_thread_idx_x(), nvptx::_thread_idx_y(), nvptx::_thread_idx_z()) }
    }
    #[inline(always)]
    fn block_idx(&self) -> Dim3 {
        // SAFETY: special-register reads.
        unsafe { Dim3::new(nvptx::_block_idx_x(), nvptx::_block_idx_y(), nvptx::_block_idx_z()) }
    }
    #[inline(always)]
    fn block_dim(&self) -> Dim3 {
        // SAFETY: special-register reads.
        unsafe { Dim3::new(nvptx::_block_dim_x(), nvptx::_block_dim_y(), nvptx::_block_dim_z()) }
    }
    #[inline(always)]
    fn grid_dim(&self) -> Dim3 {
        // SAFETY: special-register reads.
        unsafe { Dim3::new(nvptx::_grid_dim_x(), nvptx::_grid_dim_y(), nvptx::_grid_dim_z()) }
    }
    #[inline(always)]
    fn lane_id(&self) -> u32 {
        // SAFETY: special-register read; %laneid == linear thread index % 32.
        unsafe { sreg_laneid() }
    }

    // ---- block barrier and shared memory ----------------------------------------------------
    #[inline(always)]
    fn sync_threads(&self) {
        // SAFETY: bar.sync 0; every thread of the block reaches it (kernel contract).
        unsafe { nvptx::_syncthreads() }
    }
    #[inline(always)]
    fn dyn_shared<T: Copy>(&self) -> Smem<T> {
        Smem::new(core::intrinsics::gpu::gpu_launch_sized_workgroup_mem::<Align16>() as *mut T)
    }
    #[inline(always)]
    fn dyn_shared_bytes(&self) -> usize {
        let n: u32;
        // SAFETY: special-register read.
        unsafe { asm!("mov.u32 {n}, %dynamic_smem_size;", n = out(reg32) n, options(pure, nomem, nostack)) };
        n as usize
    }
    #[inline(always)]
    fn static_shared<S: SharedArray>(&self) -> Smem<S::Elem> {
        let index = const { shared::index_of(S::NAME, S::LEN * core::mem::size_of::<S::Elem>()) };
        Smem::new(shared::ADDRESS[index]() as *mut S::Elem)
    }

    // ---- warp shuffles and votes ------------------------------------------------------------
    #[inline(always)]
    fn shfl_idx(&self, v: u32, src_lane: u32) -> u32 {
        // SAFETY: full-warp collective (kernel contract); clamp 0x1f = whole warp.
        unsafe { shfl_sync_idx(FULL, v, src_lane, 0x1f) }
    }
    #[inline(always)]
    fn shfl_xor(&self, v: u32, lane_mask: u32) -> u32 {
        // SAFETY: as above.
        unsafe { shfl_sync_bfly(FULL, v, lane_mask, 0x1f) }
    }
    #[inline(always)]
    fn shfl_down(&self, v: u32, delta: u32) -> u32 {
        // SAFETY: as above; past lane 31 the own value is returned.
        unsafe { shfl_sync_down(FULL, v, delta, 0x1f) }
    }
    #[inline(always)]
    fn shfl_up(&self, v: u32, delta: u32) -> u32 {
        // SAFETY: as above; clamp 0 = below lane 0 the own value is returned.
        unsafe { shfl_sync_up(FULL, v, delta, 0) }
    }
    #[inline(always)]
    fn vote_any(&self, pred: bool) -> bool {
        // SAFETY: full-warp collective.
        unsafe { vote_any_sync(FULL, pred) }
    }
    #[inline(always)]
    fn vote_all(&self, pred: bool) -> bool {
        // SAFETY: full-warp collective.
        unsafe { vote_all_sync(FULL, pred) }
    }
    #[inline(always)]
    fn vote_ballot(&self, pred: bool) -> u32 {
        // SAFETY: full-warp collective.
        unsafe { vote_ballot_sync(FULL, pred) }
    }

    // ---- tensor cores -----------------------------------------------------------------------
    #[inline(always)]
    fn mma_m16n8k16_bf16(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        let d: [f32; 4];
        let (d0, d1, d2, d3): (f32, f32, f32, f32);
        // SAFETY: register-only warp collective (kernel contract: all lanes call it).
        unsafe {
            asm!(
                "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{d0}, {d1}, {d2}, {d3}}}, \
                 {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{c0}, {c1}, {c2}, {c3}}};",
                d0 = out(reg32) d0, d1 = out(reg32) d1, d2 = out(reg32) d2, d3 = out(reg32) d3,
                a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                b0 = in(reg32) b[0], b1 = in(reg32) b[1],
                c0 = in(reg32) c[0], c1 = in(reg32) c[1], c2 = in(reg32) c[2], c3 = in(reg32) c[3],
                options(nomem, nostack),
            );
        }
        d = [d0, d1, d2, d3];
        d
    }

    #[inline(always)]
    unsafe fn ldmatrix_x4(&self, row: Smem<u16>, trans: bool) -> [u32; 4] {
        let s = to_shared(row.as_ptr());
        let (r0, r1, r2, r3): (u32, u32, u32, u32);
        if trans {
            asm!(
                "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{r0}, {r1}, {r2}, {r3}}}, [{s}];",
                r0 = out(reg32) r0, r1 = out(reg32) r1, r2 = out(reg32) r2, r3 = out(reg32) r3, s = in(reg64) s,
                options(readonly, nostack),
            );
        } else {
            asm!(
                "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{r0}, {r1}, {r2}, {r3}}}, [{s}];",
                r0 = out(reg32) r0, r1 = out(reg32) r1, r2 = out(reg32) r2, r3 = out(reg32) r3, s = in(reg64) s,
                options(readonly, nostack),
            );
        }
        [r0, r1, r2, r3]
    }
    #[inline(always)]
    unsafe fn ldmatrix_x2(&self, row: Smem<u16>, trans: bool) -> [u32; 2] {
        let s = to_shared(row.as_ptr());
        let (r0, r1): (u32, u32);
        if trans {
            asm!(
                "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {{{r0}, {r1}}}, [{s}];",
                r0 = out(reg32) r0, r1 = out(reg32) r1, s = in(reg64) s,
                options(readonly, nostack),
            );
        } else {
            asm!(
                "ldmatrix.sync.aligned.m8n8.x2.shared.b16 {{{r0}, {r1}}}, [{s}];",
                r0 = out(reg32) r0, r1 = out(reg32) r1, s = in(reg64) s,
                options(readonly, nostack),
            );
        }
        [r0, r1]
    }

    #[inline(always)]
    unsafe fn cp_async_16<T: Copy>(&self, dst: Smem<T>, src: Gmem<T>) {
        let (d, s) = (to_shared(dst.as_ptr()), to_global(src.as_ptr()));
        asm!("cp.async.cg.shared.global [{d}], [{s}], 16;", d = in(reg64) d, s = in(reg64) s, options(nostack));
    }
    #[inline(always)]
    fn cp_async_commit(&self) {
        // SAFETY: no operands.
        unsafe { asm!("cp.async.commit_group;", options(nostack)) };
    }
    #[inline(always)]
    fn cp_async_wait_all(&self) {
        // SAFETY: no operands; a memory clobber (default) so loads are not hoisted above it.
        unsafe { asm!("cp.async.wait_all;", options(nostack)) };
    }

    // ---- global atomics ---------------------------------------------------------------------
    #[inline(always)]
    unsafe fn atomic_add_f32(&self, p: Gmem<f32>, i: usize, v: f32) {
        let g = to_global(p.as_ptr().add(i));
        asm!("red.global.add.f32 [{g}], {v};", g = in(reg64) g, v = in(reg32) v, options(nostack));
    }
    #[inline(always)]
    unsafe fn atomic_add_u32(&self, p: Gmem<u32>, i: usize, v: u32) -> u32 {
        let g = to_global(p.as_ptr().add(i));
        let old: u32;
        asm!(
            "atom.global.add.u32 {old}, [{g}], {v};",
            old = out(reg32) old, g = in(reg64) g, v = in(reg32) v,
            options(nostack),
        );
        old
    }

    // ---- math -------------------------------------------------------------------------------
    #[inline(always)]
    fn exp(x: f32) -> f32 {
        let y: f32;
        let t = x * core::f32::consts::LOG2_E;
        // SAFETY: pure arithmetic.
        unsafe {
            asm!("ex2.approx.ftz.f32 {y}, {t};", y = out(reg32) y, t = in(reg32) t, options(pure, nomem, nostack))
        };
        y
    }
    #[inline(always)]
    fn ln(x: f32) -> f32 {
        let y: f32;
        // SAFETY: pure arithmetic.
        unsafe {
            asm!("lg2.approx.ftz.f32 {y}, {x};", y = out(reg32) y, x = in(reg32) x, options(pure, nomem, nostack))
        };
        y * core::f32::consts::LN_2
    }
    #[inline(always)]
    fn sqrt(x: f32) -> f32 {
        let y: f32;
        // SAFETY: pure arithmetic.
        unsafe { asm!("sqrt.rn.f32 {y}, {x};", y = out(reg32) y, x = in(reg32) x, options(pure, nomem, nostack)) };
        y
    }
    #[inline(always)]
    fn rsqrt(x: f32) -> f32 {
        let y: f32;
        // SAFETY: pure arithmetic.
        unsafe { asm!("rsqrt.approx.f32 {y}, {x};", y = out(reg32) y, x = in(reg32) x, options(pure, nomem, nostack)) };
        y
    }
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        // llvm.fma.f32 -> fma.rn.f32, and LLVM may still constant-fold it.
        core::intrinsics::fmaf32(a, b, c)
    }
}
