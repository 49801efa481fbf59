//! bf16 GEMM on packed bf16 tiles: `C[m,n] (+)= bf16(op(A))[m,k] · bf16(op(B))[k,n]` with f32
//! accumulation, run by one of two microkernels ([`Microkernel`]): Intel AMX tiles (`kernel`,
//! `tdpbf16ps`) or AVX512-BF16 zmm registers (`dpbf16`, `vdpbf16ps`) on CPUs without AMX.
//!
//! Contract: every f32 operand element is rounded to the nearest bf16 (ties to even, like
//! torch; [`super::bf16`]) while it is packed; products of bf16 values are exact in f32 and are
//! summed in f32 by `tdpbf16ps` (which flushes subnormal inputs and outputs to zero). So the
//! result equals the f64 product of the bf16-rounded operands up to f32 summation rounding.
//! Each element is summed from zero over all of k (in fixed 32-wide steps, in k order) and only
//! then stored or added to `dst`; the k blocking depends on k alone and every element is
//! computed by one task, so results are bitwise independent of the thread count and partition.
//!
//! Layouts (`pack`): op(A) in 16-row strips and op(B) in 16-column panels of bf16 tiles (B in
//! the pair-interleaved layout `tdpbf16ps` wants), zero-padded to multiples of 32 rows/columns
//! and 32 k.
//!
//! Driver: at these sizes AMX computes faster than memory delivers the f32 operands, so the
//! schedule minimises memory traffic. The operand with more elements ("owned": A when
//! `m >= n`, else B) is split into blocks, one per task; a task packs its block itself into a
//! thread-local buffer (read once from memory, never written back), while the other operand
//! ("shared") is packed whole, once, before the tasks and read by all of them from cache.
//! A task sweeps the shared operand in sub-blocks; for each it keeps the C sub-block in an f32
//! buffer and runs k in blocks of [`K_BLOCK_STEPS`] steps (column pairs outer, so the two B
//! panels of a k block stay in L1 while the row pairs pass) with the 32x32 microkernel
//! (`kernel` or `dpbf16`), then writes its valid rows and columns into dst. Tasks go to up to `threads`
//! rayon jobs.
//!
//! Availability (`cpu`): AVX-512 F/BW/VL (the packing code), CPUID leaf 7 EDX bits 22
//! (AMX-BF16) and 24 (AMX-TILE), the OS enabling tile state in XCR0 (bits 17, 18), and on Linux
//! the XTILEDATA permission, requested once per process with `arch_prctl(ARCH_REQ_XCOMP_PERM)`
//! (the first time [`available`] is asked).

mod cpu;
mod dpbf16;
mod kernel;
mod pack;
#[cfg(test)]
mod tests;

use super::tasks::run_tasks;
use super::{strides, DstPtr, Trans};
use kernel::{kernel_32x32, Tiles};
use pack::{pack_a, pack_b, TILE};
use std::cell::RefCell;

pub(crate) use cpu::available;

/// The microkernel that computes the 32x32 blocks; both read the same packed tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Microkernel {
    /// Intel AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 (`vdpbf16ps` on zmm registers).
    Avx512Bf16,
}

impl Microkernel {
    /// Whether this CPU (and OS) runs the microkernel.
    pub(crate) fn available(self) -> bool {
        match self {
            Microkernel::Amx => available(),
            Microkernel::Avx512Bf16 => dpbf16::available(),
        }
    }
}

/// k steps (of 32) per k block of a task: the two B panels of a block (2 x 8 KiB) stay in L1.
/// 16 and 64 (no k blocking) measured the same within the noise of the shared machine; 8 keeps
/// the most L1 room for the streamed A tiles.
const K_BLOCK_STEPS: usize = 8;
/// Upper bounds on the rows and columns of a task's owned block and of its C sub-blocks
/// (multiples of 32): a 256-column B block (`256 x k` bf16, 1 MiB at k = 2048) and a 128-row
/// A sub-block stay in L2 together with the 128 KiB C buffer.
const ROW_BLOCK: usize = 128;
const COL_BLOCK: usize = 256;
/// Compute tasks aimed for per thread (dynamic balancing on a shared machine).
const TASKS_PER_THREAD: usize = 4;
/// Strips or panels of the shared operand packed per packing job when the source is contiguous
/// along k (tile by tile), and when it is contiguous across strips or panels (then a job reads
/// row segments of 64 x 16 floats, a 4 KiB page, per k row: narrower segments left such a pack
/// at 2.5 GB/s, waiting on memory latency).
const PACK_CHUNK: usize = 8;
const PACK_CHUNK_WIDE: usize = 64;

thread_local! {
    /// The shared packed operand of the products this thread drives.
    static PACKED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// The owned block of the tasks this thread runs.
    static OWNED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// The C block of the tasks this thread runs.
    static C_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rounds `x` up to a multiple of `m`.
fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Block size for `len` (a multiple of 32): at most `max`, shrunk while there are fewer than
/// `want` blocks in total with `other` blocks the other way, but not below 32.
fn block(len: usize, max: usize, other: usize, want: usize) -> usize {
    let mut b = max.min(round_up(len, 32));
    while b > 32 && len.div_ceil(b) * other < want {
        b = round_up(b / 2, 32);
    }
    b
}

/// A raw pointer handed to tasks that write disjoint regions through it (or only read), all
/// joined before the pointee is released.
#[derive(Clone, Copy)]
struct Raw<T>(*mut T);
// SAFETY: see the type's docs: cross-thread accesses are disjoint writes, or reads of data
// written before the fork-join that hands the pointer out.
unsafe impl<T> Send for Raw<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Raw<T> {}
impl<T> Raw<T> {
    /// The pointer (a method, so closures capture the wrapper, not the raw field).
    fn get(self) -> *mut T {
        self.0
    }
}

/// Runs `f` with this thread's cached buffer of at least `len` elements (64-byte aligned), or
/// a fresh one when the cached one is in use further up the stack.
fn with_buf<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(*mut T) -> R,
) -> R {
    fn aligned<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> *mut T {
        let need = len + 64 / size_of::<T>();
        if v.len() < need {
            *v = vec![T::default(); need];
        }
        let p = v.as_mut_ptr();
        // SAFETY: align_offset(64) is below 64 / size_of::<T>() elements, the spare room.
        unsafe { p.add(p.align_offset(64)) }
    }
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(aligned(&mut v, len)),
        Err(_) => f(aligned(&mut Vec::new(), len)),
    })
}

/// `dst[m,n] (+)= bf16(op(a)) · bf16(op(b))` (the module contract) on up to `threads` threads.
///
/// Panics if `kernel` is unavailable or a slice is shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    kernel: Microkernel,
    dst: DstPtr,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
    threads: usize,
) {
    assert!(kernel.available(), "matmul: the {kernel:?} bf16 microkernel is not available on this CPU");
    assert!(dst.len >= m * n, "matmul: dst too short");
    assert!(a.len() >= m * k, "matmul: a too short");
    assert!(b.len() >= k * n, "matmul: b too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.zero(m * n);
        }
        return;
    }
    let threads = if m * n * k >= 1 << 18 { threads.max(1) } else { 1 };
    let own_rows = m >= n;
    let (own_len, own_max) = if own_rows { (m, ROW_BLOCK) } else { (n, COL_BLOCK) };
    let blk = block(own_len, own_max, 1, TASKS_PER_THREAD * threads);
    let ctx = Ctx {
        c: Raw(dst.ptr),
        a: Raw(a.as_ptr() as *mut f32),
        b: Raw(b.as_ptr() as *mut f32),
        a_st: strides(m, k, ta),
        b_st: strides(k, n, tb),
        m,
        k,
        n,
        ks: k.div_ceil(32),
        accumulate,
        own_rows,
        blk,
        kernel,
    };
    // Shared operand: all its strips (panels), padded to 32 rows (columns).
    let shared_tiles = round_up(if own_rows { n } else { m }, 32) / 16;
    with_buf(&PACKED, shared_tiles * ctx.ks * TILE, |buf| {
        let shared = Raw(buf);
        let chunk = ctx.pack_chunk(!own_rows);
        run_tasks(threads, shared_tiles.div_ceil(chunk), &|t| {
            let (t0, t1) = (t * chunk, ((t + 1) * chunk).min(shared_tiles));
            // SAFETY: chunk t writes only its own strips (panels) t0..t1 of the buffer, which
            // holds shared_tiles * ks tiles and is ours until the tasks are joined.
            unsafe { ctx.pack(!own_rows, t0, t1, shared.get().add(t0 * ctx.ks * TILE)) };
        });
        run_tasks(threads, own_len.div_ceil(blk), &|t| ctx.task(t, shared));
    });
}

/// One 32x32 block's microkernel call (see `kernel::kernel_32x32`).
struct KernelArgs {
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    c_in: Option<(*const f32, usize)>,
    c_out: (*mut f32, usize),
}

/// What every task of one product needs (read-only; `c` written in disjoint blocks).
struct Ctx {
    c: Raw<f32>,
    a: Raw<f32>,
    b: Raw<f32>,
    /// Row and column strides of op(a), op(b).
    a_st: (usize, usize),
    b_st: (usize, usize),
    m: usize,
    k: usize,
    n: usize,
    /// k steps of 32.
    ks: usize,
    accumulate: bool,
    /// Tasks own row blocks of A (else column blocks of B).
    own_rows: bool,
    /// Rows (columns) of an owned block.
    blk: usize,
    /// Which microkernel computes the blocks (checked available by `matmul`).
    kernel: Microkernel,
}

impl Ctx {
    /// Strips (`a_side`) or panels packed per packing job: more when the source is contiguous
    /// across them rather than along k, so each k row segment read is a whole 4 KiB page.
    fn pack_chunk(&self, a_side: bool) -> usize {
        let k_contiguous = if a_side { self.a_st.1 == 1 } else { self.b_st.0 == 1 };
        if k_contiguous {
            PACK_CHUNK
        } else {
            PACK_CHUNK_WIDE
        }
    }

    /// Packs strips (`a_side`) or panels `t0..t1` into `dst`.
    ///
    /// # Safety
    /// `dst` must be writable for `(t1 - t0) * ks` tiles and not accessed by anyone else.
    unsafe fn pack(&self, a_side: bool, t0: usize, t1: usize, dst: *mut u16) {
        let (m, k, n) = (self.m, self.k, self.n);
        // SAFETY: op(a) / op(b) are readable for their shapes (lengths asserted by `matmul`);
        // AVX-512 checked by `available`; dst as the caller guarantees.
        unsafe {
            if a_side {
                pack_a(self.a.get(), self.a_st.0, self.a_st.1, m, k, t0, t1, dst);
            } else {
                pack_b(self.b.get(), self.b_st.0, self.b_st.1, k, n, t0, t1, dst);
            }
        }
    }

    /// Task `t`: packs its owned block, then computes its rows (columns) of C against every
    /// sub-block of the shared operand `shared` (packed whole).
    fn task(&self, t: usize, shared: Raw<u16>) {
        let ks = self.ks;
        let (own0, own_len) = (t * self.blk, self.blk.min(if self.own_rows { self.m } else { self.n } - t * self.blk));
        let own_tiles = round_up(own_len, 32) / 16;
        with_buf(&OWNED, own_tiles * ks * TILE, |owned| {
            // SAFETY: the buffer holds own_tiles * ks tiles and is this thread's own; strips
            // (panels) own0/16.. start 16-aligned because blk is a multiple of 32.
            unsafe { self.pack(self.own_rows, own0 / 16, own0 / 16 + own_tiles, owned) };
            let (sub_len, sub_max) = if self.own_rows { (self.n, COL_BLOCK) } else { (self.m, ROW_BLOCK) };
            for sub0 in (0..sub_len).step_by(sub_max) {
                let sub = sub_max.min(sub_len - sub0);
                // SAFETY: the shared buffer holds round_up(sub_len, 32) / 16 strips (panels),
                // packed before this fork-join, so the sub-block's tiles are in it.
                let sub_tiles = unsafe { shared.get().add(sub0 / 16 * ks * TILE) };
                if self.own_rows {
                    self.block_c(own0, own_len, owned, sub0, sub, sub_tiles);
                } else {
                    self.block_c(sub0, sub, sub_tiles, own0, own_len, owned);
                }
            }
        });
    }

    /// C rows `r0..r0+rows` x columns `c0..c0+cols` from the packed A strips at `a_tiles`
    /// (first row r0) and B panels at `b_tiles` (first column c0). Partial sums live in an f32
    /// buffer between k blocks; 32x32 blocks that lie wholly inside C are stored straight into
    /// dst after their last k block when not accumulating (one pass over C less), the rest is
    /// copied (or added) from the buffer.
    fn block_c(&self, r0: usize, rows: usize, a_tiles: *const u16, c0: usize, cols: usize, b_tiles: *const u16) {
        let (ks, n) = (self.ks, self.n);
        let (rp, cp) = (round_up(rows, 32), round_up(cols, 32));
        // Rows and columns of the blocks stored straight into dst.
        let (full_r, full_c) = if self.accumulate { (0, 0) } else { (rows / 32 * 32, cols / 32 * 32) };
        let dst = self.c.get().wrapping_add(r0 * n + c0);
        with_buf(&C_BUF, rp * cp, |cbuf| {
            let sweep = |kern: &dyn Fn(KernelArgs)| {
                for s0 in (0..ks).step_by(K_BLOCK_STEPS) {
                    let steps = K_BLOCK_STEPS.min(ks - s0);
                    let last = s0 + steps == ks;
                    let tile = |base: *const u16, idx: usize| base.wrapping_add((idx * ks + s0) * TILE);
                    for j in (0..cp).step_by(32) {
                        for i in (0..rp).step_by(32) {
                            let (st, q) = (i / 16, j / 16);
                            let buf = cbuf.wrapping_add(i * cp + j);
                            let c_in = (s0 > 0).then_some((buf as *const f32, cp * 4));
                            let c_out = if last && i < full_r && j < full_c {
                                (dst.wrapping_add(i * n + j), n * 4)
                            } else {
                                (buf, cp * 4)
                            };
                            let (a0, a1) = (tile(a_tiles, st), tile(a_tiles, st + 1));
                            kern(KernelArgs {
                                a0,
                                a1,
                                b0: tile(b_tiles, q),
                                b1: tile(b_tiles, q + 1),
                                steps,
                                c_in,
                                c_out,
                            });
                        }
                    }
                }
            };
            // SAFETY (both arms): the microkernel is available (asserted by `matmul`); a_tiles
            // holds rp / 16 > st + 1 strips and b_tiles cp / 16 > q + 1 panels of ks tiles
            // (padded to 32), so tiles s0..s0+steps of each are readable; the 32x32 block at
            // (i, j) lies in cbuf (rp x cp floats, this thread's, row stride cp * 4 bytes) and,
            // when i + 32 <= rows and j + 32 <= cols, in this task's rows r0.. and columns c0..
            // of dst (m x n, row stride n * 4 bytes), which no other task touches.
            match self.kernel {
                Microkernel::Amx => {
                    let tiles = unsafe { Tiles::configure() };
                    sweep(&|x: KernelArgs| unsafe {
                        kernel_32x32(&tiles, x.a0, x.a1, x.b0, x.b1, x.steps, x.c_in, x.c_out)
                    });
                    drop(tiles);
                }
                Microkernel::Avx512Bf16 => sweep(&|x: KernelArgs| unsafe {
                    dpbf16::kernel_32x32(x.a0, x.a1, x.b0, x.b1, x.steps, x.c_in, x.c_out)
                }),
            }
            for i in 0..rows {
                let x0 = if i < full_r { full_c } else { 0 };
                // SAFETY: row r0+i < m and columns c0+x0..c0+cols <= n lie in dst (m x n, length
                // asserted; written, never read, when not accumulating, so it may be
                // uninitialised then); no other task touches them (tasks own disjoint row or
                // column blocks); row i of cbuf holds cp >= cols computed floats.
                unsafe {
                    let d = dst.add(i * n + x0);
                    let s = std::slice::from_raw_parts(cbuf.add(i * cp + x0), cols - x0);
                    if self.accumulate {
                        for (x, &v) in std::slice::from_raw_parts_mut(d, s.len()).iter_mut().zip(s) {
                            *x += v;
                        }
                    } else {
                        std::ptr::copy_nonoverlapping(s.as_ptr(), d, s.len());
                    }
                }
            }
        });
    }
}
