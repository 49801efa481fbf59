//! Plumbing of the AVX2 driver: scratch buffers, the task runner (`gemm::tasks`, shared with
//! the other drivers), and the packed operands that tasks share, each block packed once by the
//! first task that needs it.

use super::kernel::{MR, NR};
use super::pack::{pack_a, pack_b};
pub(super) use crate::gemm::tasks::run_tasks;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::LocalKey;

thread_local! {
    /// Packed A block of the tasks this thread runs (when A is not shared).
    pub(super) static A_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Shared packed A of the products this thread drives.
    pub(super) static A_SHARED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed B of the products this thread drives.
    pub(super) static B_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a 64-byte aligned scratch buffer of at least `len` floats: the thread's
/// cached one, or a fresh one when it is already in use further up this thread's stack.
pub(super) fn with_buf<R>(key: &'static LocalKey<RefCell<Vec<f32>>>, len: usize, f: impl FnOnce(*mut f32) -> R) -> R {
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

/// A raw pointer that may cross threads. The driver only shares it with tasks that write
/// disjoint regions (C tiles, packed blocks claimed through [`OnceFlags`]) or only read (the
/// operands, cast to `*mut` just to share this type, and ready packed blocks), and joins all
/// tasks before the pointee is released or reused.
#[derive(Clone, Copy)]
pub(super) struct SharedPtr(pub(super) *mut f32);
// SAFETY: see the type's docs: all cross-thread accesses are disjoint writes or reads ordered
// after the writes (OnceFlags' release/acquire, the join at the end of run_tasks).
unsafe impl Send for SharedPtr {}
// SAFETY: as above.
unsafe impl Sync for SharedPtr {}
impl SharedPtr {
    /// The pointer (a method, so closures capture the wrapper, not the raw field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Fill-once flags: slot `i` is filled by the first thread that asks for it; threads asking
/// while it is being filled wait. The filler is always running (it claimed the slot on its own
/// stack and fills it right away), so waiting cannot deadlock.
pub(super) struct OnceFlags(Vec<AtomicU8>);

const EMPTY: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;
/// The filler panicked: waiters panic too instead of waiting forever.
const POISONED: u8 = 3;

/// Marks a slot poisoned if its fill unwinds.
struct PoisonOnUnwind<'a>(&'a AtomicU8);
impl Drop for PoisonOnUnwind<'_> {
    fn drop(&mut self) {
        self.0.store(POISONED, Ordering::Release);
    }
}

impl OnceFlags {
    pub(super) fn new(slots: usize) -> Self {
        OnceFlags((0..slots).map(|_| AtomicU8::new(EMPTY)).collect())
    }

    /// Makes sure slot `i` is filled: runs `fill` if nobody has claimed it, else waits until
    /// its filler is done. Either way, the fill's writes are visible to the caller afterwards
    /// (release store / acquire load).
    pub(super) fn ensure(&self, i: usize, fill: impl FnOnce()) {
        if self.try_ensure(i, fill) {
            return;
        }
        let st = &self.0[i];
        let mut spins = 0u32;
        loop {
            match st.load(Ordering::Acquire) {
                READY => return,
                POISONED => panic!("matmul: packing panicked on another thread"),
                _ => {}
            }
            spins += 1;
            if spins < 1 << 10 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// [`OnceFlags::ensure`] without the waiting: `false` (and nothing done) when another
    /// thread is filling slot `i` right now.
    pub(super) fn try_ensure(&self, i: usize, fill: impl FnOnce()) -> bool {
        let st = &self.0[i];
        if st.load(Ordering::Acquire) == READY {
            return true;
        }
        match st.compare_exchange(EMPTY, BUSY, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                let guard = PoisonOnUnwind(st);
                fill();
                std::mem::forget(guard);
                st.store(READY, Ordering::Release);
                true
            }
            Err(POISONED) => panic!("matmul: packing panicked on another thread"),
            Err(now) => now == READY,
        }
    }
}

/// Packed B of one column block (`k x ncur`, every k block), packed in groups of
/// [`PACK_PANELS`] micro-panels of one k block. Layout: k block `pb` (rows `pb*kc..`) starts at
/// `buf + pb*kc*npan*NR` and holds `npan` panels of `kcur*NR` floats.
pub(super) struct PackedB {
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
    /// One per (k block, group).
    flags: OnceFlags,
}

/// B micro-panels packed together (one run of reads along each stored row).
pub(super) const PACK_PANELS: usize = 8;

impl PackedB {
    /// Floats `buf` needs for a column block of `ncur` columns.
    pub(super) fn len(k: usize, ncur: usize) -> usize {
        k * ncur.div_ceil(NR) * NR
    }

    /// # Safety
    /// `buf` must be writable for [`PackedB::len`] floats and used by nothing else while this
    /// lives; `src[p*rs + j*cs]` must be readable for `p < k`, `j < ncur`; AVX2 must be
    /// available.
    pub(super) unsafe fn new(
        buf: SharedPtr,
        src: SharedPtr,
        (rs, cs): (usize, usize),
        k: usize,
        kc: usize,
        ncur: usize,
    ) -> Self {
        let npan = ncur.div_ceil(NR);
        let groups = npan.div_ceil(PACK_PANELS);
        PackedB { buf, src, rs, cs, k, kc, ncur, npan, groups, flags: OnceFlags::new(k.div_ceil(kc) * groups) }
    }

    /// Makes group `g` (micro-panels `g*PACK_PANELS..`) of k block `pb` packed, by this thread
    /// if nobody has claimed it; with `wait` false, returns `false` instead of waiting for
    /// another thread that is packing it right now.
    pub(super) fn group(&self, pb: usize, g: usize, wait: bool) -> bool {
        let pc = pb * self.kc;
        let kcur = self.kc.min(self.k - pc);
        let block = self.buf.get().wrapping_add(pc * self.npan * NR);
        let fill = || {
            let q1 = ((g + 1) * PACK_PANELS).min(self.npan);
            // SAFETY: constructor contract (AVX2, readable source rows pc..pc+kcur < k and
            // columns < ncur, buffer of len() floats); this thread claimed the group, so it is
            // the only writer of its panels, and readers wait for the flag.
            unsafe {
                let src = self.src.get().add(pc * self.rs);
                pack_b(src, self.rs, self.cs, self.ncur, kcur, g * PACK_PANELS, q1, block);
            }
        };
        let i = pb * self.groups + g;
        if wait {
            self.flags.ensure(i, fill);
            true
        } else {
            self.flags.try_ensure(i, fill)
        }
    }

    /// Micro-panel `q` (`kcur x NR`) of k block `pb`: only to be read once its group is
    /// packed ([`PackedB::group`] returned `true`).
    pub(super) fn panel(&self, pb: usize, q: usize) -> *const f32 {
        let pc = pb * self.kc;
        let kcur = self.kc.min(self.k - pc);
        self.buf.get().wrapping_add(pc * self.npan * NR + q * kcur * NR)
    }
}

/// Packed A shared by every task of a product (worth it when several column blocks or parts
/// reuse each row block): slot `(ib, pb)` holds row block `ib` (`mc` rows) x k block `pb`,
/// packed as [`pack_a`] lays it out, plus the 8 floats its transposing path may spill.
pub(super) struct PackedA {
    buf: SharedPtr,
    src: SharedPtr,
    rs: usize,
    cs: usize,
    m: usize,
    k: usize,
    mc: usize,
    kc: usize,
    k_blocks: usize,
    slot: usize,
    flags: OnceFlags,
}

impl PackedA {
    /// Floats per slot.
    fn slot_len(mc: usize, kc: usize) -> usize {
        mc.div_ceil(MR) * MR * kc + 8
    }

    /// Floats `buf` needs.
    pub(super) fn len(m: usize, k: usize, mc: usize, kc: usize) -> usize {
        m.div_ceil(mc) * k.div_ceil(kc) * Self::slot_len(mc, kc)
    }

    /// # Safety
    /// `buf` must be writable for [`PackedA::len`] floats and used by nothing else while this
    /// lives; `src[i*rs + p*cs]` must be readable for `i < m`, `p < k`; AVX2 must be available.
    pub(super) unsafe fn new(
        buf: SharedPtr,
        src: SharedPtr,
        (rs, cs): (usize, usize),
        (m, k): (usize, usize),
        mc: usize,
        kc: usize,
    ) -> Self {
        let (m_blocks, k_blocks) = (m.div_ceil(mc), k.div_ceil(kc));
        let slot = Self::slot_len(mc, kc);
        PackedA { buf, src, rs, cs, m, k, mc, kc, k_blocks, slot, flags: OnceFlags::new(m_blocks * k_blocks) }
    }

    /// Row block `ib` x k block `pb`, packed (by this thread if nobody has).
    pub(super) fn block(&self, ib: usize, pb: usize) -> *const f32 {
        let i = ib * self.k_blocks + pb;
        let dst = self.buf.get().wrapping_add(i * self.slot);
        self.flags.ensure(i, || {
            let (ic, pc) = (ib * self.mc, pb * self.kc);
            // SAFETY: constructor contract (AVX2, readable rows ic..ic+mcur < m and k
            // pc..pc+kcur < k, buffer of len() floats so the slot and its 8 spare floats are
            // inside); this thread claimed the slot, so it is the only writer.
            unsafe {
                let src = self.src.get().add(ic * self.rs + pc * self.cs);
                pack_a(src, self.rs, self.cs, self.mc.min(self.m - ic), self.kc.min(self.k - pc), dst);
            }
        });
        dst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn once_flags_fill_once_defer_while_busy_and_poison() {
        let flags = OnceFlags::new(2);
        let fills = AtomicUsize::new(0);
        flags.ensure(0, || {
            fills.fetch_add(1, Ordering::Relaxed);
            // Another thread asking while slot 0 is being filled is told to come back later.
            std::thread::scope(|s| {
                let other = s.spawn(|| flags.try_ensure(0, || panic!("slot filled twice")));
                assert!(!other.join().expect("try_ensure thread"));
            });
        });
        flags.ensure(0, || panic!("slot filled twice"));
        assert!(flags.try_ensure(0, || panic!("slot filled twice")));
        assert_eq!(fills.load(Ordering::Relaxed), 1);
        // A fill that panics poisons its slot: later askers panic instead of waiting forever.
        let first = std::panic::catch_unwind(|| flags.ensure(1, || panic!("pack failed")));
        assert!(first.is_err());
        let later = std::panic::catch_unwind(|| flags.ensure(1, || {}));
        assert!(later.is_err());
    }
}
