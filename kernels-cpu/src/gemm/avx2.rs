//! BLIS-style f32 GEMM for x86-64 with AVX2 + FMA.
//!
//! Loop nest (outer to inner), for `C[m,n] (+)= A[m,k] · B[k,n]` with any operand strides:
//! 1. `jc`: columns in blocks of `nc` (B block `kc x nc` packed once, shared read-only by all
//!    threads: lives in L2/L3);
//! 2. `pc`: k in blocks of `kc` (the first block stores or adds per `accumulate`, the later ones
//!    add);
//! 3. `ic`: rows in blocks of `mc`, one task each (a task packs its `mc x kc` A block into a
//!    per-thread buffer that stays in L2);
//! 4. `jr`: `NR`-column micro-panels of the packed B (`kc x NR`, stays in L1);
//! 5. `ir`: `MR`-row micro-panels of the packed A, each one call of the 6x16 microkernel.
//!
//! Threads: with `threads > 1` the row blocks (and, when there are fewer row blocks than
//! threads, ranges of B micro-panels too) are tasks handed out dynamically to `threads` rayon
//! jobs; B is packed in parallel beforehand. `threads == 1` runs everything on the calling
//! thread and never touches rayon.
//!
//! Determinism: `kc` depends only on `k` and the blocking, never on the thread count, and the
//! microkernel sums every element in fixed k order (see [`kernel`]), so the result is bitwise
//! the same for every thread count and every `mc`/`nc`.

mod kernel;
mod pack;

use super::{strides, Trans};
use kernel::{kernel_6x16, MR, NR};
use pack::{pack_a, pack_b};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::thread::LocalKey;

/// Cache blocking: upper bounds on the row block (`mc`, A block in L2), the k block (`kc`,
/// micro-panels in L1) and the column block (`nc`, B block in L2/L3). The driver balances the
/// actual blocks below these bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocking {
    pub mc: usize,
    pub kc: usize,
    pub nc: usize,
    /// Upper bound on the packed B of one column block, `k * nc` floats (all k blocks).
    pub b_max: usize,
}

/// Blocking measured on AMD EPYC (Zen 3: 32 KiB L1d, 512 KiB L2 per core, 32 MiB L3).
pub(crate) const DEFAULT_BLOCKING: Blocking = Blocking { mc: 144, kc: 256, nc: 4096, b_max: 1 << 20 };

/// Products with fewer multiply-adds than this run on one thread.
const PAR_MIN_FLOPS: usize = 1 << 20;
/// B micro-panels per packing task.
const PACK_PANELS: usize = 8;
/// Compute tasks aimed for per thread (dynamic balancing on a busy machine).
const TASKS_PER_THREAD: usize = 4;
/// Fewest B micro-panels a compute task covers when row blocks are split by columns.
const MIN_PART_PANELS: usize = 4;

/// Whether this CPU can run the backend.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

thread_local! {
    /// Packed A block of the tasks this thread runs.
    static A_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed B block of the products this thread drives.
    static B_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a 64-byte aligned scratch buffer of at least `len` floats: the thread's
/// cached one, or a fresh one when it is already in use further up this thread's stack.
fn with_buf<R>(key: &'static LocalKey<RefCell<Vec<f32>>>, len: usize, f: impl FnOnce(*mut f32) -> R) -> R {
    fn aligned(v: &mut Vec<f32>, len: usize) -> *mut f32 {
        let need = len + 64 / size_of::<f32>();
        if v.len() < need {
            *v = vec![0.0; need];
        }
        let p = v.as_mut_ptr();
        // SAFETY: align_offset(64) of an f32 pointer is at most 15 elements, and the vector has
        // 16 spare elements beyond `len`.
        unsafe { p.add(p.align_offset(64)) }
    }
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(aligned(&mut v, len)),
        Err(_) => f(aligned(&mut Vec::new(), len)),
    })
}

/// A raw pointer that may cross threads: every user writes a disjoint part or only reads
/// (the operands are cast to `*mut` only to share this type; they are never written).
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
// SAFETY: the driver only hands these to tasks that touch disjoint regions (C tiles, B panels)
// or read (packed B), and joins all tasks before the pointee is released or reused.
unsafe impl Send for SharedPtr {}
// SAFETY: as above.
unsafe impl Sync for SharedPtr {}
impl SharedPtr {
    /// The pointer (a method, so closures capture the wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f(0..tasks)`: in order on this thread when `threads <= 1`, else on `threads` rayon
/// jobs (at most) that take tasks from a shared counter.
fn run_tasks(threads: usize, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if threads <= 1 || tasks <= 1 {
        (0..tasks).for_each(f);
        return;
    }
    let next = AtomicUsize::new(0);
    let work = || loop {
        let t = next.fetch_add(1, Ordering::Relaxed);
        if t >= tasks {
            break;
        }
        f(t);
    };
    rayon::scope(|s| {
        for _ in 1..threads.min(tasks) {
            s.spawn(|_| work());
        }
        work();
    });
}

/// The packed B of one column block (`k x ncur`, all k blocks), packed lazily: groups of
/// [`PACK_PANELS`] micro-panels of one k block are packed by the first task that needs them,
/// other tasks needing the group meanwhile wait for it. Layout: k block `pb` (rows `pb*kc..`)
/// starts at `buf + pb*kc*npan*NR` and holds `npan` panels of `kcur*NR` floats.
struct LazyB {
    buf: SharedPtr,
    /// Element (0, 0) of the column block in `b`.
    src: SharedPtr,
    rs: usize,
    cs: usize,
    k: usize,
    kc: usize,
    ncur: usize,
    npan: usize,
    groups: usize,
    /// Per (k block, group): EMPTY, BUSY (being packed) or READY.
    state: Vec<AtomicU8>,
}

const EMPTY: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

impl LazyB {
    /// `buf` must hold `k * ceil(ncur/NR) * NR` floats and `src[p*rs + j*cs]` be readable
    /// for `p < k`, `j < ncur` (checked by the caller, `matmul`).
    fn new(buf: SharedPtr, src: SharedPtr, rs: usize, cs: usize, k: usize, kc: usize, ncur: usize) -> Self {
        let npan = ncur.div_ceil(NR);
        let groups = npan.div_ceil(PACK_PANELS);
        let state = (0..k.div_ceil(kc) * groups).map(|_| AtomicU8::new(EMPTY)).collect();
        LazyB { buf, src, rs, cs, k, kc, ncur, npan, groups, state }
    }

    /// Micro-panel `q` of k block `pb`, packed (by this thread if nobody has yet).
    fn panel(&self, pb: usize, q: usize) -> *const f32 {
        let (pc, g) = (pb * self.kc, q / PACK_PANELS);
        let kcur = self.kc.min(self.k - pc);
        let block = self.buf.get().wrapping_add(pc * self.npan * NR);
        let st = &self.state[pb * self.groups + g];
        if st.load(Ordering::Acquire) != READY {
            if st.compare_exchange(EMPTY, BUSY, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                let q1 = ((g + 1) * PACK_PANELS).min(self.npan);
                // SAFETY: AVX2 checked by `matmul`; rows pc..pc+kcur < k and columns < ncur
                // are readable (constructor contract); the group's panels lie inside `buf`
                // and only this thread writes them (it won the EMPTY -> BUSY exchange); readers
                // wait for READY.
                unsafe {
                    let src = self.src.get().add(pc * self.rs);
                    pack_b(src, self.rs, self.cs, self.ncur, kcur, g * PACK_PANELS, q1, block);
                }
                st.store(READY, Ordering::Release);
            } else {
                let mut spins = 0u32;
                while st.load(Ordering::Acquire) != READY {
                    spins += 1;
                    if spins < 1 << 10 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        block.wrapping_add(q * kcur * NR)
    }
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
    dst: &mut [f32],
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
    assert!(dst.len() >= m * n, "matmul: dst too short");
    assert!(a.len() >= m * k, "matmul: a too short");
    assert!(b.len() >= k * n, "matmul: b too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let threads = if m * n * k >= PAR_MIN_FLOPS { threads.max(1) } else { 1 };
    let (a_rs, a_cs) = strides(m, k, ta);
    let (b_rs, b_cs) = strides(k, n, tb);
    // kc is a function of k alone (determinism, module docs); a multiple of 8 for the
    // transposing pack paths.
    let kc = balanced_block(k, blk.kc, 8, 1).min(k);
    // All k blocks of a column block are packed at once (at most `b_max` floats).
    let nc = balanced_block(n, blk.nc.min(blk.b_max / k).max(NR), NR, 1);
    let mc = balanced_block(m, blk.mc, MR, threads);
    let m_blocks = m.div_ceil(mc);
    let c = SharedPtr(dst.as_mut_ptr());
    let a_ptr = SharedPtr(a.as_ptr() as *mut f32);
    let b_ptr = SharedPtr(b.as_ptr() as *mut f32);

    with_buf(&B_BUF, k * round_up(nc, NR), |bbuf| {
        let bbuf = SharedPtr(bbuf);
        for jc in (0..n).step_by(nc) {
            let ncur = nc.min(n - jc);
            let npan = ncur.div_ceil(NR);
            // SAFETY: jc < n, so the offset is inside `b`.
            let bsrc = SharedPtr(unsafe { b_ptr.get().add(jc * b_cs) });
            let packed = LazyB::new(bbuf, bsrc, b_rs, b_cs, k, kc, ncur);
            // Enough tasks for dynamic balancing: with few row blocks, tasks also split the B
            // micro-panels (each part repacks its A block).
            let n_split = if threads == 1 {
                1
            } else {
                (TASKS_PER_THREAD * threads).div_ceil(m_blocks).min(npan / MIN_PART_PANELS).max(1)
            };
            run_tasks(threads, m_blocks * n_split, &|t| {
                let (ib, part) = (t / n_split, t % n_split);
                let ic = ib * mc;
                let mcur = mc.min(m - ic);
                let (q0, q1) = (part * npan / n_split, (part + 1) * npan / n_split);
                with_buf(&A_BUF, round_up(mcur, MR) * kc + 8, |abuf| {
                    for pc in (0..k).step_by(kc) {
                        let kcur = kc.min(k - pc);
                        let add = accumulate || pc > 0;
                        // SAFETY: AVX2 checked; rows ic..ic+mcur and k pc..pc+kcur of op(a) are
                        // inside `a`; abuf holds ceil(mcur/MR) panels of kc steps + 8 floats.
                        unsafe {
                            let asrc = a_ptr.get().add(ic * a_rs + pc * a_cs);
                            pack_a(asrc, a_rs, a_cs, mcur, kcur, abuf);
                        }
                        let pb = pc / kc;
                        for q in q0..q1 {
                            let bpanel = packed.panel(pb, q);
                            let j = q * NR;
                            let nr = NR.min(ncur - j);
                            for ir in (0..mcur).step_by(MR) {
                                let mr = MR.min(mcur - ir);
                                // SAFETY: AVX2/FMA checked; the A and B micro-panels are packed
                                // (kcur steps each; B made ready by `panel`); the tile rows
                                // ic+ir..+mr and columns jc+j..+nr lie in dst (m x n, row stride
                                // n) and no other task touches them (tasks own disjoint row
                                // blocks or disjoint panel ranges).
                                unsafe {
                                    kernel_6x16(
                                        kcur,
                                        abuf.add(ir * kcur),
                                        bpanel,
                                        c.get().add((ic + ir) * n + jc + j),
                                        n,
                                        mr,
                                        nr,
                                        add,
                                    );
                                }
                            }
                        }
                    }
                });
            });
        }
    });
}

/// TEMP: kernel-only timing.
pub fn bench_kernel_only(mc: usize, kc: usize, nc: usize, iters: usize) -> f64 {
    let a = vec![0.5f32; round_up(mc, MR) * kc + 64];
    let b = vec![0.25f32; round_up(nc, NR) * kc + 64];
    let mut c = vec![0f32; mc * nc];
    let t0 = std::time::Instant::now();
    for _ in 0..iters {
        for q in 0..nc / NR {
            for ir in (0..mc).step_by(MR) {
                unsafe {
                    kernel_6x16(
                        kc,
                        a.as_ptr().add(ir * kc),
                        b.as_ptr().add(q * kc * NR),
                        c.as_mut_ptr().add(ir * nc + q * NR),
                        nc,
                        MR,
                        NR,
                        false,
                    );
                }
            }
        }
    }
    let s = t0.elapsed().as_secs_f64();
    2.0 * (mc * kc * nc * iters) as f64 / s / 1e9
}

/// TEMP: blocking from env GEMM_BLK=mc,kc,nc.
pub(crate) fn tmp_blocking() -> Blocking {
    static B: std::sync::OnceLock<Blocking> = std::sync::OnceLock::new();
    *B.get_or_init(|| match std::env::var("GEMM_BLK") {
        Ok(v) => {
            let x: Vec<usize> = v.split(',').map(|t| t.parse().unwrap()).collect();
            Blocking { mc: x[0], kc: x[1], nc: x[2], b_max: x[3] }
        }
        Err(_) => DEFAULT_BLOCKING,
    })
}
