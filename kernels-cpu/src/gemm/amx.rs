//! bf16 GEMM on Intel AMX tiles: `C[m,n] (+)= bf16(op(A))[m,k] · bf16(op(B))[k,n]` with f32
//! accumulation.
//!
//! Contract: every f32 operand element is rounded to the nearest bf16 (ties to even, like
//! torch; [`super::bf16`]) while it is packed; products of bf16 values are exact in f32 and are
//! summed in f32 by `tdpbf16ps` (which flushes subnormal inputs and outputs to zero). So the
//! result equals the f64 product of the bf16-rounded operands up to f32 summation rounding.
//! Each element is summed from zero over all of k (in fixed 32-wide steps, in k order) and only
//! then stored or added to `dst`; the k blocking depends on k alone and every element is
//! computed by one task, so results are bitwise independent of the thread count and partition.
//!
//! Driver: op(B) is packed once, whole, into 16-column panels of bf16 tiles in the pair-
//! interleaved layout `tdpbf16ps` wants; op(A) into 16-row strips of tiles (layouts in `pack`),
//! both zero-padded to multiples of 32 rows/columns and 32 k. Tasks are (row block x column
//! block) of C, handed to up to `threads` rayon jobs; a task keeps its block in an f32 buffer
//! and sweeps k in blocks of [`K_BLOCK_STEPS`] steps (column pair outer, so the two B panels of
//! a k block stay in L1 while the row pairs pass), running the 32x32 microkernel (`kernel`)
//! on each pair of strips x pair of panels, then writes its valid rows and columns into dst.
//!
//! Availability: AVX-512 F/BW/VL (the packing code), CPUID leaf 7 EDX bits 22 (AMX-BF16) and 24
//! (AMX-TILE), the OS enabling tile
//! state in XCR0 (bits 17, 18), and on Linux the XTILEDATA permission, requested once per
//! process with `arch_prctl(ARCH_REQ_XCOMP_PERM)` (the first time [`available`] is asked).

mod kernel;
mod pack;
#[cfg(test)]
mod tests;

use super::tasks::run_tasks;
use super::{strides, DstPtr, Trans};
use kernel::{kernel_32x32, Tiles};
use pack::{pack_a, pack_b, TILE};
use std::cell::RefCell;
use std::sync::OnceLock;

/// k steps (of 32) per k block of a task: the two B panels of a block (2 x 8 KiB) stay in L1.
const K_BLOCK_STEPS: usize = 8;
/// Upper bounds on a task's rows and columns (multiples of 32).
const ROW_BLOCK: usize = 128;
const COL_BLOCK: usize = 256;
/// Compute tasks aimed for per thread (dynamic balancing on a shared machine).
const TASKS_PER_THREAD: usize = 4;
/// Strips or panels packed per packing task when the source is contiguous along k (tile by
/// tile), and when it is contiguous across strips or panels (then a task reads row segments of
/// 64 x 16 floats, a 4 KiB page, per k: narrower segments left the B pack of
/// 512x2048x6144 at 2.5 GB/s, TLB- and prefetch-bound).
const PACK_CHUNK: usize = 8;
const PACK_CHUNK_WIDE: usize = 64;

thread_local! {
    /// Packed A and B of the products this thread drives.
    static PACKED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// The C block of the tasks this thread runs.
    static C_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether this CPU and OS run AMX-BF16 tiles for this process (asks the kernel for the tile
/// data permission the first time).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // The packing routines are compiled for AVX-512 (every AMX CPU has it; checked anyway).
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        avx512 && cpu_has_amx_bf16() && os_enables_tiles() && request_tile_permission()
    })
}

/// CPUID leaf 7, sub-leaf 0, EDX bits 22 (AMX-BF16) and 24 (AMX-TILE).
fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is only read when leaf 0 says it exists.
    #[allow(unused_unsafe)]
    let edx = unsafe {
        if __cpuid(0).eax < 7 {
            return false;
        }
        __cpuid_count(7, 0).edx
    };
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// OSXSAVE (CPUID.1:ECX bit 27) and XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA).
fn os_enables_tiles() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86-64 CPU.
    #[allow(unused_unsafe)]
    let osxsave = unsafe { __cpuid(1).ecx } & (1 << 27) != 0;
    if !osxsave {
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 is valid whenever OSXSAVE is set (checked above); it only
    // writes EAX and EDX.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack, preserves_flags));
    }
    lo & (3 << 17) == 3 << 17
}

/// Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` (process-wide, once).
#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with these arguments only changes the process's
    // permitted xsave features; the syscall instruction clobbers rcx and r11 (declared) and
    // returns in rax.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Other systems: not attempted (the backend reports itself unavailable).
#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
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
/// Panics if AMX is unavailable or a slice is shorter than its shape says.
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
) {
    assert!(available(), "matmul: the AMX-BF16 backend needs AMX-TILE and AMX-BF16");
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
    let (a_rs, a_cs) = strides(m, k, ta);
    let (b_rs, b_cs) = strides(k, n, tb);
    let ks = k.div_ceil(32);
    let (strips, panels) = (round_up(m, 32) / 16, round_up(n, 32) / 16);
    let a_len = strips * ks * TILE;
    let b_len = panels * ks * TILE;
    let (src_a, src_b) = (Raw(a.as_ptr() as *mut f32), Raw(b.as_ptr() as *mut f32));
    let want = TASKS_PER_THREAD * threads;
    let rb = block(m, ROW_BLOCK, n.div_ceil(COL_BLOCK), want);
    let cb = block(n, COL_BLOCK, m.div_ceil(rb), want);
    let (row_blocks, col_blocks) = (m.div_ceil(rb), n.div_ceil(cb));
    let c = Raw(dst.ptr);
    with_buf(&PACKED, a_len + b_len, |buf| {
        let (pa, pb) = (Raw(buf), Raw(buf.wrapping_add(a_len)));
        let a_chunk = if a_cs == 1 { PACK_CHUNK } else { PACK_CHUNK_WIDE };
        let b_chunk = if b_rs == 1 { PACK_CHUNK } else { PACK_CHUNK_WIDE };
        let (a_chunks, b_chunks) = (strips.div_ceil(a_chunk), panels.div_ceil(b_chunk));
        run_tasks(threads, a_chunks + b_chunks, &|t| {
            // SAFETY: op(a) and op(b) are readable for their shapes (lengths asserted); chunk
            // t writes only its own strips (panels) of the packed buffer, which holds a_len +
            // b_len elements and is ours until the tasks are joined.
            unsafe {
                if t < a_chunks {
                    let (t0, t1) = (t * a_chunk, ((t + 1) * a_chunk).min(strips));
                    pack_a(src_a.get(), a_rs, a_cs, m, k, t0, t1, pa.get().add(t0 * ks * TILE));
                } else {
                    let t = t - a_chunks;
                    let (q0, q1) = (t * b_chunk, ((t + 1) * b_chunk).min(panels));
                    pack_b(src_b.get(), b_rs, b_cs, k, n, q0, q1, pb.get().add(q0 * ks * TILE));
                }
            }
        });
        run_tasks(threads, row_blocks * col_blocks, &|t| {
            let (ib, jb) = (t % row_blocks, t / row_blocks);
            let (r0, c0) = (ib * rb, jb * cb);
            let (rows, cols) = (rb.min(m - r0), cb.min(n - c0));
            let (rp, cp) = (round_up(rows, 32), round_up(cols, 32));
            with_buf(&C_BUF, rp * cp, |cbuf| {
                // SAFETY: AMX available (asserted above).
                let tiles = unsafe { Tiles::configure() };
                for s0 in (0..ks).step_by(K_BLOCK_STEPS) {
                    let steps = K_BLOCK_STEPS.min(ks - s0);
                    for j in (0..cp).step_by(32) {
                        let q = (c0 + j) / 16;
                        for i in (0..rp).step_by(32) {
                            let st = (r0 + i) / 16;
                            // SAFETY: AMX checked; strips st, st+1 < strips and panels q, q+1
                            // < panels (rows and columns are padded to 32), so tiles s0..s0+
                            // steps of each lie in the packed buffer, packed before this
                            // fork-join; the 32x32 C block at (i, j) lies in cbuf (rp x cp
                            // floats, this task's own), row stride cp * 4 bytes.
                            unsafe {
                                let tile =
                                    |base: Raw<u16>, idx: usize| base.get().add((idx * ks + s0) * TILE) as *const u16;
                                kernel_32x32(
                                    &tiles,
                                    tile(pa, st),
                                    tile(pa, st + 1),
                                    tile(pb, q),
                                    tile(pb, q + 1),
                                    steps,
                                    cbuf.add(i * cp + j),
                                    cp * 4,
                                    s0 > 0,
                                );
                            }
                        }
                    }
                }
                drop(tiles);
                for i in 0..rows {
                    // SAFETY: row r0+i < m and columns c0..c0+cols <= n lie in dst (m x n, length
                    // asserted; written, never read, when not accumulating, so it may be
                    // uninitialised then); no other task touches them (tasks own disjoint
                    // blocks); row i of cbuf holds cp >= cols computed floats.
                    unsafe {
                        let d = c.get().add((r0 + i) * n + c0);
                        let s = std::slice::from_raw_parts(cbuf.add(i * cp), cols);
                        if accumulate {
                            for (x, &v) in std::slice::from_raw_parts_mut(d, cols).iter_mut().zip(s) {
                                *x += v;
                            }
                        } else {
                            std::ptr::copy_nonoverlapping(s.as_ptr(), d, cols);
                        }
                    }
                }
            });
        });
    });
}
