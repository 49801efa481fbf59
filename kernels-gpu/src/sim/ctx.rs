//! The simulator's per-thread context: [`Simt`] implemented on top of the block state.

use super::block::{BlockShared, Payload, WarpOp};
use crate::simt::{Dim3, Gmem, SharedArray, Simt, Smem};
use std::any::TypeId;
use std::cell::RefCell;
use std::panic::Location;
use std::sync::atomic::{AtomicU32, Ordering};

/// One simulated thread's view of the machine (what a kernel receives as `ctx`).
pub struct SimCtx<'a> {
    sh: &'a BlockShared,
    tid: Dim3,
    linear: u32,
    block: Dim3,
    /// `cp.async` copies issued and not yet waited for: (dst, src).
    pending: RefCell<Vec<(usize, usize)>>,
}

impl<'a> SimCtx<'a> {
    pub(crate) fn new(sh: &'a BlockShared, tid: Dim3, linear: u32, block: Dim3) -> Self {
        SimCtx { sh, tid, linear, block, pending: RefCell::new(Vec::new()) }
    }

    #[track_caller]
    fn collective(&self, op: WarpOp, payload: Payload) -> [u32; 4] {
        self.sh.warp_op(self.linear, op, Location::caller(), payload)
    }

    #[track_caller]
    fn shfl(&self, op: WarpOp, v: u32, p: u32) -> u32 {
        self.collective(op, Payload { v, p, ..Payload::default() })[0]
    }
}

impl Simt for SimCtx<'_> {
    fn thread_idx(&self) -> Dim3 {
        self.tid
    }
    fn block_idx(&self) -> Dim3 {
        self.block
    }
    fn block_dim(&self) -> Dim3 {
        self.sh.bdim
    }
    fn grid_dim(&self) -> Dim3 {
        self.sh.grid()
    }
    fn thread_linear(&self) -> u32 {
        self.linear
    }

    #[track_caller]
    fn sync_threads(&self) {
        self.sh.barrier(Location::caller())
    }
    fn dyn_shared<T: Copy>(&self) -> Smem<T> {
        Smem::new(self.sh.dyn_ptr() as *mut T)
    }
    fn dyn_shared_bytes(&self) -> usize {
        self.sh.dyn_bytes
    }
    fn static_shared<S: SharedArray>(&self) -> Smem<S::Elem> {
        let bytes = S::LEN * std::mem::size_of::<S::Elem>();
        Smem::new(self.sh.static_shared(TypeId::of::<S>(), bytes) as *mut S::Elem)
    }

    #[track_caller]
    fn shfl_idx(&self, v: u32, src_lane: u32) -> u32 {
        self.shfl(WarpOp::ShflIdx, v, src_lane)
    }
    #[track_caller]
    fn shfl_xor(&self, v: u32, lane_mask: u32) -> u32 {
        self.shfl(WarpOp::ShflXor, v, lane_mask)
    }
    #[track_caller]
    fn shfl_down(&self, v: u32, delta: u32) -> u32 {
        self.shfl(WarpOp::ShflDown, v, delta)
    }
    #[track_caller]
    fn shfl_up(&self, v: u32, delta: u32) -> u32 {
        self.shfl(WarpOp::ShflUp, v, delta)
    }
    #[track_caller]
    fn vote_any(&self, pred: bool) -> bool {
        self.shfl(WarpOp::Any, pred as u32, 0) != 0
    }
    #[track_caller]
    fn vote_all(&self, pred: bool) -> bool {
        self.shfl(WarpOp::All, pred as u32, 0) != 0
    }
    #[track_caller]
    fn vote_ballot(&self, pred: bool) -> u32 {
        self.shfl(WarpOp::Ballot, pred as u32, 0)
    }

    #[track_caller]
    fn mma_m16n8k16_bf16(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        let mut regs = [0u32; 10];
        regs[..4].copy_from_slice(&a);
        regs[4..6].copy_from_slice(&b);
        for (r, v) in regs[6..].iter_mut().zip(c) {
            *r = v.to_bits();
        }
        self.collective(WarpOp::Mma, Payload { regs, ..Payload::default() }).map(f32::from_bits)
    }

    #[track_caller]
    unsafe fn ldmatrix_x4(&self, row: Smem<u16>, trans: bool) -> [u32; 4] {
        self.collective(WarpOp::Ldsm { x4: true, trans }, Payload { addr: row.as_ptr() as usize, ..Payload::default() })
    }
    #[track_caller]
    unsafe fn ldmatrix_x2(&self, row: Smem<u16>, trans: bool) -> [u32; 2] {
        let r = self.collective(
            WarpOp::Ldsm { x4: false, trans },
            Payload { addr: row.as_ptr() as usize, ..Payload::default() },
        );
        [r[0], r[1]]
    }

    unsafe fn cp_async_16<T: Copy>(&self, dst: Smem<T>, src: Gmem<T>) {
        let (d, s) = (dst.as_ptr() as usize, src.as_ptr() as usize);
        assert!(
            d % 16 == 0 && s % 16 == 0,
            "cp.async of 16 bytes needs 16-byte aligned addresses: dst {d:#x}, src {s:#x}"
        );
        self.pending.borrow_mut().push((d, s));
    }
    fn cp_async_commit(&self) {}
    fn cp_async_wait_all(&self) {
        for (d, s) in self.pending.borrow_mut().drain(..) {
            // SAFETY: the caller of cp_async_16 guaranteed 16 valid bytes at both addresses.
            unsafe { std::ptr::copy_nonoverlapping(s as *const u8, d as *mut u8, 16) };
        }
    }

    unsafe fn atomic_add_f32(&self, p: Gmem<f32>, i: usize, v: f32) {
        // SAFETY: in bounds (caller); f32 and AtomicU32 have the same size and alignment.
        let a = unsafe { &*(p.as_ptr().add(i) as *const AtomicU32) };
        let mut cur = a.load(Ordering::Relaxed);
        loop {
            let new = (f32::from_bits(cur) + v).to_bits();
            match a.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => cur = x,
            }
        }
    }
    unsafe fn atomic_add_u32(&self, p: Gmem<u32>, i: usize, v: u32) -> u32 {
        // SAFETY: in bounds (caller); u32 and AtomicU32 have the same layout.
        let a = unsafe { &*(p.as_ptr().add(i) as *const AtomicU32) };
        a.fetch_add(v, Ordering::AcqRel)
    }

    fn exp(x: f32) -> f32 {
        x.exp()
    }
    fn ln(x: f32) -> f32 {
        x.ln()
    }
    fn sqrt(x: f32) -> f32 {
        x.sqrt()
    }
    fn rsqrt(x: f32) -> f32 {
        1.0 / x.sqrt()
    }
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}
