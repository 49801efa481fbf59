//! BLIS-style f32 GEMM for x86-64 with AVX2 + FMA.
//!
//! `C[m,n] (+)= A[m,k] · B[k,n]` with any operand strides (so every transpose is just a
//! packing order). Loop nest, outer to inner:
//! 1. `jc`: columns in blocks of `nc`, sized so the packed B of the block, all of k
//!    (`k x nc`, at most [`Blocking::b_max`] floats), stays in L3;
//! 2. tasks: row block (`mc` rows) x part of the column block's micro-panels;
//! 3. `pc`: k in blocks of `kc` (the first one stores or adds per `accumulate`, the later ones
//!    add); the task's `mc x kc` A block is packed into a per-thread buffer (stays in L2), or,
//!    when row blocks are reused by several column blocks or parts, taken from a packed A
//!    shared by all tasks (each block packed once, by the first task that needs it);
//!    single-threaded products with a row-major A (the small tile products of attention)
//!    skip packing and let the microkernel read six rows of A in place;
//! 4. `jr`: `NR`-column micro-panels of the packed B (`kc x NR`, 16 KiB, stays in L1), each
//!    group of 8 packed by the first task that needs it;
//! 5. `ir`: `MR`-row micro-panels of the packed A: one call of the 6x16 microkernel each.
//!
//! Threads: with `threads > 1` the tasks are handed out dynamically to `threads` rayon jobs
//! (one fork-join per column block; a thread the OS delays simply takes fewer tasks); the
//! packed operands are filled cooperatively (fill-once flags, no barrier). `threads == 1`
//! runs everything on the calling thread and never touches rayon.
//!
//! Determinism: `kc` depends only on `k` and the blocking, never on the thread count, and the
//! microkernel sums every element in fixed k order from zero before adding it to C (see
//! [`kernel`]), so results are bitwise the same for every thread count and partition.

mod kernel;
mod pack;
mod shared;

use super::{strides, DstPtr, Trans};
use kernel::{kernel_6x16, packed_rows, unpacked_rows, MR, NR};
use pack::pack_a;
use shared::{run_tasks, with_buf, PackedA, PackedB, SharedPtr, A_BUF, A_SHARED, B_BUF, PACK_PANELS};

/// Cache blocking and threading knobs: upper bounds on the row block (`mc`, A block in L2),
/// the k block (`kc`, micro-panels in L1) and the column block (`nc`). The driver balances the
/// actual blocks below these bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocking {
    pub mc: usize,
    pub kc: usize,
    pub nc: usize,
    /// Upper bound on the packed B of one column block, `k * nc` floats (all k blocks).
    pub b_max: usize,
    /// Largest A (`m * k` floats) packed once and shared by all tasks when it is reused.
    pub a_max: usize,
    /// Products with fewer multiply-adds (`m * k * n`) run on one thread.
    pub par_min: usize,
}

/// Blocking for AMD EPYC Zen 3 (32 KiB L1d, 512 KiB L2 per core, 32 MiB L3): the `kc x NR`
/// B micro-panel (16 KiB) and an `MR x kc` A micro-panel (6 KiB) fit L1, the `mc x kc` A block
/// (144 KiB) L2, and a column block's packed B (4 MiB) and a shared packed A (16 MiB) L3.
/// Nearby values (mc 96..288, kc 192..384, b_max 0.25M..4M) measured within the noise of the
/// shared 2-core machine.
pub(crate) const DEFAULT_BLOCKING: Blocking =
    Blocking { mc: 144, kc: 256, nc: 4096, b_max: 1 << 20, a_max: 1 << 22, par_min: 1 << 20 };

/// Compute tasks aimed for per thread (dynamic balancing on a busy machine).
const TASKS_PER_THREAD: usize = 2;
/// Fewest B micro-panels a compute task covers when row blocks are split by columns.
const MIN_PART_PANELS: usize = 4;

/// Whether this CPU can run the backend.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Rounds `x` up to a multiple of `m`.
fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Splits `len` into equal-ish blocks of at most `max` (a multiple of `unit` except the last),
/// with a number of blocks that is a multiple of `parts` when there are several.
fn balanced_block(len: usize, max: usize, unit: usize, parts: usize) -> usize {
    let mut blocks = len.div_ceil(max.max(unit));
    if blocks > 1 || parts > 1 {
        blocks = round_up(blocks, parts.max(1));
    }
    round_up(len.div_ceil(blocks), unit).min(round_up(len, unit))
}

/// `dst[m,n] (+)= op(a)[m,k] · op(b)[k,n]` (the contract of [`super::matmul`]) on up to
/// `threads` threads with the given blocking.
///
/// Panics if the CPU lacks AVX2/FMA or a slice is shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
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
    blk: Blocking,
) {
    assert!(available(), "matmul: the AVX2 backend needs AVX2 and FMA");
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
    let threads = if m * n * k >= blk.par_min { threads.max(1) } else { 1 };
    let (a_rs, a_cs) = strides(m, k, ta);
    let (b_rs, b_cs) = strides(k, n, tb);
    // kc is a function of k alone (determinism, module docs); a multiple of 8 for the
    // transposing pack paths.
    let kc = balanced_block(k, blk.kc, 8, 1).min(k);
    // All k blocks of a column block are packed at once (at most `b_max` floats).
    let nc = balanced_block(n, blk.nc.min(blk.b_max / k).max(NR), NR, 1);
    let mc = balanced_block(m, blk.mc, MR, threads);
    let m_blocks = m.div_ceil(mc);
    // Tasks: row block x part of the column block's micro-panels; enough of them for dynamic
    // balancing (with few row blocks, several parts).
    let n_split = |npan: usize| {
        if threads == 1 {
            1
        } else {
            (TASKS_PER_THREAD * threads).div_ceil(m_blocks).min(npan / MIN_PART_PANELS).max(1)
        }
    };
    // A row block is reused by every column block and part: pack it once for all of them when
    // there are several and the packed A fits the budget, else per task into a cached buffer.
    // A row-major op(a) of a single-threaded product is read in place by the microkernel (six
    // row streams) instead of packed: for the small tile products inside attention, packing A
    // cost about as much as the product. Row strides of a multiple of 16 KiB would put all rows
    // in the same few cache sets and are packed.
    let unpacked_a = threads == 1 && a_cs == 1 && (a_rs * 4) % (16 << 10) != 0;
    let share_a = !unpacked_a && (n > nc || n_split(nc.div_ceil(NR)) > 1) && m * k <= blk.a_max;
    let a_len = if share_a { PackedA::len(m, k, mc, kc) } else { 0 };
    let ctx = Ctx {
        c: SharedPtr(dst.ptr),
        a: SharedPtr(a.as_ptr() as *mut f32),
        a_rs,
        a_cs,
        m,
        k,
        n,
        mc,
        kc,
        m_blocks,
        accumulate,
        unpacked_a,
    };

    with_buf(&A_SHARED, a_len, |abuf| {
        // SAFETY: the buffer holds PackedA::len floats and is ours for the call; op(a)'s
        // elements are readable (length asserted above); AVX2 checked.
        let packed_a = share_a.then(|| unsafe { PackedA::new(SharedPtr(abuf), ctx.a, (a_rs, a_cs), (m, k), mc, kc) });
        with_buf(&B_BUF, PackedB::len(k, nc), |bbuf| {
            for jc in (0..n).step_by(nc) {
                let ncur = nc.min(n - jc);
                let parts = n_split(ncur.div_ceil(NR));
                // SAFETY: jc < n, so the offset is inside `b`; the buffer holds
                // PackedB::len(k, nc) >= PackedB::len(k, ncur) floats and is ours until the
                // tasks below are joined; columns jc..jc+ncur of op(b) are readable; AVX2
                // checked.
                let packed_b = unsafe {
                    let src = SharedPtr(b.as_ptr().add(jc * b_cs) as *mut f32);
                    PackedB::new(SharedPtr(bbuf), src, (b_rs, b_cs), k, kc, ncur)
                };
                run_tasks(threads, m_blocks * parts, &|t| {
                    ctx.task(t, parts, jc, ncur, packed_a.as_ref(), &packed_b);
                });
            }
        });
    });
}

/// What every task of one product needs (shared read-only; `c` written in disjoint tiles).
struct Ctx {
    c: SharedPtr,
    a: SharedPtr,
    a_rs: usize,
    a_cs: usize,
    m: usize,
    k: usize,
    n: usize,
    mc: usize,
    kc: usize,
    m_blocks: usize,
    accumulate: bool,
    /// op(a) is row-major and read in place (no packing).
    unpacked_a: bool,
}

impl Ctx {
    /// Task `t` of the column block at `jc` (`ncur` columns, split in `parts` panel ranges):
    /// its row block x panel range of C, over all of k.
    fn task(&self, t: usize, parts: usize, jc: usize, ncur: usize, packed_a: Option<&PackedA>, packed_b: &PackedB) {
        let (k, kc) = (self.k, self.kc);
        // Part-major: concurrent tasks mostly work on different row blocks.
        let (part, ib) = (t / self.m_blocks, t % self.m_blocks);
        let ic = ib * self.mc;
        let mcur = self.mc.min(self.m - ic);
        let npan = ncur.div_ceil(NR);
        let (q0, q1) = (part * npan / parts, (part + 1) * npan / parts);
        let body = |abuf: *mut f32| {
            for (pb, pc) in (0..k).step_by(kc).enumerate() {
                let kcur = kc.min(k - pc);
                let ablock = match packed_a {
                    Some(pa) => pa.block(ib, pb),
                    // SAFETY: row ic and k offset pc lie inside `a` (length asserted).
                    None if self.unpacked_a => unsafe { self.a.get().add(ic * self.a_rs + pc) as *const f32 },
                    None => {
                        // SAFETY: AVX2 checked by `matmul`; rows ic..ic+mcur and k pc..pc+kcur
                        // of op(a) are inside `a` (length asserted); abuf holds ceil(mcur/MR)
                        // panels of kc steps + 8 floats and belongs to this thread.
                        unsafe {
                            let src = self.a.get().add(ic * self.a_rs + pc * self.a_cs);
                            pack_a(src, self.a_rs, self.a_cs, mcur, kcur, abuf);
                        }
                        abuf as *const f32
                    }
                };
                let add = self.accumulate || pc > 0;
                let c_tile = |ir: usize, j: usize| self.c.get().wrapping_add((ic + ir) * self.n + jc + j);
                let nr = |j: usize| NR.min(ncur - j);
                let panels = |g: usize| {
                    for q in (g * PACK_PANELS).max(q0)..((g + 1) * PACK_PANELS).min(q1) {
                        let bpanel = packed_b.panel(pb, q);
                        let j = q * NR;
                        for ir in (0..mcur).step_by(MR) {
                            let mr = MR.min(mcur - ir);
                            // SAFETY: AVX2/FMA checked by `matmul`; the A rows (packed: a
                            // micro-panel of kcur steps; unpacked: rows ic+ir..ic+ir+mr of a,
                            // k from pc, kcur steps, inside `a`) and the packed B micro-panel
                            // are readable; the tile, rows ic+ir.. (< m) and columns jc+j..
                            // (< n), lies in dst (m x n, row stride n, length asserted) and no
                            // other task touches it (tasks own disjoint (row block, panel
                            // range) pairs).
                            unsafe {
                                if self.unpacked_a {
                                    let rows = unpacked_rows(ablock.add(ir * self.a_rs), self.a_rs, mr);
                                    kernel_6x16::<1>(kcur, rows, bpanel, c_tile(ir, j), self.n, mr, nr(j), add);
                                } else {
                                    let rows = packed_rows(ablock.add(ir * kcur));
                                    kernel_6x16::<MR>(kcur, rows, bpanel, c_tile(ir, j), self.n, mr, nr(j), add);
                                }
                            }
                        }
                    }
                };
                // B panel groups another thread is packing right now are left for last
                // instead of waited for (tiles are independent within a k block, so the
                // order changes no result).
                let mut deferred = Vec::new();
                for g in q0 / PACK_PANELS..q1.div_ceil(PACK_PANELS) {
                    if packed_b.group(pb, g, false) {
                        panels(g);
                    } else {
                        deferred.push(g);
                    }
                }
                for g in deferred {
                    packed_b.group(pb, g, true);
                    panels(g);
                }
            }
        };
        if packed_a.is_some() || self.unpacked_a {
            body(std::ptr::null_mut());
        } else {
            with_buf(&A_BUF, round_up(mcur, MR) * kc + 8, body);
        }
    }
}
