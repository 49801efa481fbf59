//! The SIMT context trait every kernel is written against, and the memory wrappers it uses.
//!
//! `core` only: this file and `kernels/` are compiled both for the host (run by the simulator in
//! `sim/`) and for `nvptx64-nvidia-cuda` (a zero-sized context whose methods are PTX intrinsics or
//! inline asm). Kernels therefore never call `f32::exp`, `sqrt`, `mul_add`, ... directly: math goes
//! through the associated functions of [`Simt`] (`C::exp(x)`, `C::fma(a, b, c)`), so the GPU context
//! can map them to `ex2.approx` / `sqrt.rn` / `fma.rn` / libdevice.
//!
//! Conventions:
//! - Threads are numbered x-fastest: `linear = x + y * bx + z * bx * by`; lane = `linear % 32`,
//!   warp = `linear / 32` (as on NVIDIA hardware).
//! - Warp collectives (shuffle, vote, MMA, ldmatrix) are called by **every existing lane of the
//!   warp** at the same call site (full-mask `.sync` semantics). The last warp of a block whose size
//!   is not a multiple of 32 is partial; its collectives involve its existing lanes only, and a
//!   shuffle that reads a lane that does not exist is an error in the simulator (undefined on a GPU).
//! - [`Simt::sync_threads`] is `bar.sync 0` and must be reached by all threads of the block.

/// Threads per warp.
pub const WARP: u32 = 32;

/// A 3-D index or extent (thread / block index, block / grid dims).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dim3 {
    /// Fastest-varying component.
    pub x: u32,
    /// Middle component.
    pub y: u32,
    /// Slowest component.
    pub z: u32,
}

impl Dim3 {
    /// `(x, y, z)`.
    pub const fn new(x: u32, y: u32, z: u32) -> Self {
        Dim3 { x, y, z }
    }

    /// `(x, 1, 1)`.
    pub const fn x(x: u32) -> Self {
        Dim3 { x, y: 1, z: 1 }
    }

    /// `x * y * z` (as u64 so it never overflows).
    pub const fn volume(self) -> u64 {
        self.x as u64 * self.y as u64 * self.z as u64
    }
}

/// A pointer into global memory (device memory on the GPU, host memory in the simulator).
///
/// `Copy` and `Send`/`Sync`: it is an address. Every access is `unsafe`: the caller guarantees the
/// index is in bounds of the allocation and that no other thread writes the element concurrently
/// (except through [`Simt::atomic_add_f32`] / [`Simt::atomic_add_u32`]).
#[repr(transparent)]
pub struct Gmem<T> {
    ptr: *mut T,
}

impl<T> Clone for Gmem<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Gmem<T> {}
impl<T> core::fmt::Debug for Gmem<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Gmem({:p})", self.ptr)
    }
}
// SAFETY: a `Gmem` is an address; all accesses through it are `unsafe` and carry the obligation.
unsafe impl<T> Send for Gmem<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Gmem<T> {}

impl<T: Copy> Gmem<T> {
    /// Wraps a raw pointer.
    pub const fn new(ptr: *mut T) -> Self {
        Gmem { ptr }
    }

    /// The null pointer (for optional arguments; never dereference it).
    pub const fn null() -> Self {
        Gmem { ptr: core::ptr::null_mut() }
    }

    /// Whether this is [`Gmem::null`].
    pub fn is_null(self) -> bool {
        self.ptr.is_null()
    }

    /// The raw pointer.
    pub const fn as_ptr(self) -> *mut T {
        self.ptr
    }

    /// The pointer `i` elements further.
    ///
    /// # Safety
    /// The result must stay inside (or one past) the allocation.
    #[inline(always)]
    pub unsafe fn add(self, i: usize) -> Self {
        Gmem { ptr: self.ptr.add(i) }
    }

    /// Reads element `i`.
    ///
    /// # Safety
    /// `i` is in bounds and no thread writes element `i` concurrently.
    #[inline(always)]
    pub unsafe fn read(self, i: usize) -> T {
        self.ptr.add(i).read()
    }

    /// Writes element `i`.
    ///
    /// # Safety
    /// `i` is in bounds and no other thread accesses element `i` concurrently.
    #[inline(always)]
    pub unsafe fn write(self, i: usize, v: T) {
        self.ptr.add(i).write(v)
    }
}

/// A pointer into the block's shared memory (dynamic or static).
///
/// Same contract as [`Gmem`]; threads of a block order their accesses with [`Simt::sync_threads`].
#[repr(transparent)]
pub struct Smem<T> {
    ptr: *mut T,
}

impl<T> Clone for Smem<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Smem<T> {}
impl<T> core::fmt::Debug for Smem<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Smem({:p})", self.ptr)
    }
}
// SAFETY: an address; accesses are `unsafe`.
unsafe impl<T> Send for Smem<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Smem<T> {}

impl<T: Copy> Smem<T> {
    /// Wraps a raw pointer to shared memory.
    pub const fn new(ptr: *mut T) -> Self {
        Smem { ptr }
    }

    /// The raw pointer.
    pub const fn as_ptr(self) -> *mut T {
        self.ptr
    }

    /// The pointer `i` elements further.
    ///
    /// # Safety
    /// The result must stay inside (or one past) the shared allocation.
    #[inline(always)]
    pub unsafe fn add(self, i: usize) -> Self {
        Smem { ptr: self.ptr.add(i) }
    }

    /// Reinterprets the pointer as one to `U` (same address).
    pub const fn cast<U: Copy>(self) -> Smem<U> {
        Smem { ptr: self.ptr as *mut U }
    }

    /// Reads element `i`.
    ///
    /// # Safety
    /// In bounds, and ordered with writers by a barrier.
    #[inline(always)]
    pub unsafe fn read(self, i: usize) -> T {
        self.ptr.add(i).read()
    }

    /// Writes element `i`.
    ///
    /// # Safety
    /// In bounds, and ordered with other accesses by a barrier.
    #[inline(always)]
    pub unsafe fn write(self, i: usize, v: T) {
        self.ptr.add(i).write(v)
    }
}

/// A statically sized shared-memory array, declared by a (zero-sized) marker type:
/// `struct Scratch; impl SharedArray for Scratch { type Elem = f32; const LEN: usize = 32; }`.
/// [`Simt::static_shared`] returns the block's instance (one per marker type per block).
/// The GPU context emits one `.shared .align 16 .b8 NAME[LEN * size_of::<Elem>()]` per marker.
pub trait SharedArray: 'static {
    /// Element type.
    type Elem: Copy + 'static;
    /// Number of elements.
    const LEN: usize;
    /// Symbol name of the array in PTX (unique per marker).
    const NAME: &'static str;
}

/// What a kernel can ask of the machine it runs on: indices, barriers, shared memory, warp
/// collectives, tensor-core MMA with `ldmatrix` / `cp.async` staging, global atomics, and math.
///
/// Implemented by the simulator's per-thread context (`sim::SimCtx`) and, for nvptx64, by a
/// zero-sized context whose `#[inline(always)]` methods are PTX.
pub trait Simt {
    // ---- indices -------------------------------------------------------------------------
    /// `%tid`: this thread's index in its block.
    fn thread_idx(&self) -> Dim3;
    /// `%ctaid`: this block's index in the grid.
    fn block_idx(&self) -> Dim3;
    /// `%ntid`: threads per block.
    fn block_dim(&self) -> Dim3;
    /// `%nctaid`: blocks in the grid.
    fn grid_dim(&self) -> Dim3;

    /// Linear thread index in the block (x fastest).
    #[inline(always)]
    fn thread_linear(&self) -> u32 {
        let (t, b) = (self.thread_idx(), self.block_dim());
        t.x + b.x * (t.y + b.y * t.z)
    }
    /// Threads in the block.
    #[inline(always)]
    fn block_threads(&self) -> u32 {
        let b = self.block_dim();
        b.x * b.y * b.z
    }
    /// `%laneid`: `thread_linear % 32`.
    #[inline(always)]
    fn lane_id(&self) -> u32 {
        self.thread_linear() % WARP
    }
    /// Warp index within the block: `thread_linear / 32`.
    #[inline(always)]
    fn warp_id(&self) -> u32 {
        self.thread_linear() / WARP
    }

    // ---- block barrier and shared memory --------------------------------------------------
    /// `bar.sync 0`: waits until every thread of the block arrives; orders shared and global
    /// memory accesses of the block.
    fn sync_threads(&self);
    /// Base of the dynamic shared memory (`extern __shared__`), 16-byte aligned, of
    /// [`Simt::dyn_shared_bytes`] bytes.
    fn dyn_shared<T: Copy>(&self) -> Smem<T>;
    /// `%dynamic_smem_size`: bytes of dynamic shared memory of this launch.
    fn dyn_shared_bytes(&self) -> usize;
    /// The block's instance of the static shared array `S` (16-byte aligned).
    fn static_shared<S: SharedArray>(&self) -> Smem<S::Elem>;

    // ---- warp shuffles and votes (full-mask .sync semantics) ------------------------------
    /// `shfl.sync.idx.b32`: the value of lane `src_lane % 32`.
    fn shfl_idx(&self, v: u32, src_lane: u32) -> u32;
    /// `shfl.sync.bfly.b32`: the value of lane `lane ^ lane_mask`.
    fn shfl_xor(&self, v: u32, lane_mask: u32) -> u32;
    /// `shfl.sync.down.b32`: the value of lane `lane + delta`, or the own value when that is
    /// past lane 31.
    fn shfl_down(&self, v: u32, delta: u32) -> u32;
    /// `shfl.sync.up.b32`: the value of lane `lane - delta`, or the own value when `lane < delta`.
    fn shfl_up(&self, v: u32, delta: u32) -> u32;
    /// `vote.sync.any.pred`.
    fn vote_any(&self, pred: bool) -> bool;
    /// `vote.sync.all.pred`.
    fn vote_all(&self, pred: bool) -> bool;
    /// `vote.sync.ballot.b32`: bit `i` set when lane `i`'s predicate is true.
    fn vote_ballot(&self, pred: bool) -> u32;

    /// [`Simt::shfl_idx`] of an f32.
    #[inline(always)]
    #[track_caller]
    fn shfl_idx_f32(&self, v: f32, src_lane: u32) -> f32 {
        f32::from_bits(self.shfl_idx(v.to_bits(), src_lane))
    }
    /// [`Simt::shfl_xor`] of an f32.
    #[inline(always)]
    #[track_caller]
    fn shfl_xor_f32(&self, v: f32, lane_mask: u32) -> f32 {
        f32::from_bits(self.shfl_xor(v.to_bits(), lane_mask))
    }
    /// [`Simt::shfl_down`] of an f32.
    #[inline(always)]
    #[track_caller]
    fn shfl_down_f32(&self, v: f32, delta: u32) -> f32 {
        f32::from_bits(self.shfl_down(v.to_bits(), delta))
    }

    // ---- tensor cores ----------------------------------------------------------------------
    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`: `D = A · B + C` for the warp's
    /// 16x16 (A, row-major) by 16x8 (B, column-major) bf16 tiles, f32 accumulators.
    ///
    /// Fragments (PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type"), with
    /// `g = lane >> 2`, `t = lane % 4`; each `u32` packs two bf16, the lower index in the low half:
    /// - `a[r]` holds `A[row][col], A[row][col + 1]` with `row = g + 8 * (r & 1)`,
    ///   `col = 2t + 8 * (r >> 1)`;
    /// - `b[r]` holds `B[k][n], B[k + 1][n]` with `k = 2t + 8r`, `n = g`;
    /// - `c[i]`, `d[i]` are `C[row][col]` with `row = g + 8 * (i >> 1)`, `col = 2t + (i & 1)`.
    fn mma_m16n8k16_bf16(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4];

    /// `ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16`: lane `i` passes the address of row
    /// `i % 8` of 8x8 matrix `i / 8` (8 consecutive b16, 16-byte aligned); register `j` of lane `l`
    /// receives row `l / 4`, columns `2 (l % 4)` and `+1` of matrix `j` (`trans`: of its transpose,
    /// i.e. stored rows `2 (l % 4)` and `+1` at column `l / 4`).
    ///
    /// # Safety
    /// Every lane's address points at 8 readable b16 in shared memory, 16-byte aligned.
    unsafe fn ldmatrix_x4(&self, row: Smem<u16>, trans: bool) -> [u32; 4];
    /// `ldmatrix ... .x2`: as [`Simt::ldmatrix_x4`] with two matrices; lanes 0..16 give the addresses
    /// (the others' addresses are ignored but must still be valid).
    ///
    /// # Safety
    /// As [`Simt::ldmatrix_x4`].
    unsafe fn ldmatrix_x2(&self, row: Smem<u16>, trans: bool) -> [u32; 2];

    /// `cp.async.cg.shared.global [dst], [src], 16`: starts copying 16 bytes from global to shared
    /// memory. The copy lands at the latest at the next [`Simt::cp_async_wait_all`] of this thread.
    ///
    /// # Safety
    /// Both addresses are 16-byte aligned and 16 bytes are in bounds.
    unsafe fn cp_async_16<T: Copy>(&self, dst: Smem<T>, src: Gmem<T>);
    /// `cp.async.commit_group`.
    fn cp_async_commit(&self);
    /// `cp.async.wait_all`: this thread's copies have landed (other threads see them after a barrier).
    fn cp_async_wait_all(&self);

    // ---- global atomics ---------------------------------------------------------------------
    /// `red.global.add.f32` on element `i`.
    ///
    /// # Safety
    /// `i` is in bounds; concurrent plain accesses to the element are not allowed.
    unsafe fn atomic_add_f32(&self, p: Gmem<f32>, i: usize, v: f32);
    /// `atom.global.add.u32` on element `i`; returns the previous value.
    ///
    /// # Safety
    /// As [`Simt::atomic_add_f32`].
    unsafe fn atomic_add_u32(&self, p: Gmem<u32>, i: usize, v: u32) -> u32;

    // ---- math (so the GPU context can pick the instruction) ---------------------------------
    /// `e^x` (GPU: `ex2.approx.ftz` of `x * log2 e`, about 2 ulp).
    fn exp(x: f32) -> f32;
    /// Natural log (GPU: `lg2.approx` * ln 2).
    fn ln(x: f32) -> f32;
    /// IEEE square root, correctly rounded (GPU: `sqrt.rn.f32`).
    fn sqrt(x: f32) -> f32;
    /// `1 / sqrt(x)` (GPU: `rsqrt.approx.f32`; the simulator computes `1 / sqrt(x)` exactly rounded).
    fn rsqrt(x: f32) -> f32;
    /// Fused multiply-add `a * b + c` with one rounding (`fma.rn.f32`).
    fn fma(a: f32, b: f32, c: f32) -> f32;
}

/// Rounds `x` to the nearest integer, ties to even, for `|x| < 2^22` (the quantizer's range);
/// `core`-only (no libm): adds and subtracts `1.5 * 2^23`.
#[inline(always)]
pub fn rint_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN), as `cvt.rn.bf16.f32`.
#[inline(always)]
pub fn bf16_from_f32(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// bf16 bits -> f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Packs two bf16 (`lo` at the lower index) into one `.bf16x2` register.
#[inline(always)]
pub fn pack_bf16x2(lo: u16, hi: u16) -> u32 {
    lo as u32 | ((hi as u32) << 16)
}
