//! State shared by the simulated threads of a block: the barrier, the per-warp exchanges, shared
//! memory, and the error of the launch. One mutex guards it all; barrier and warps wait on their
//! own condition variables.

use super::{abort, SimError};
use crate::simt::{bf16_to_f32, Dim3, WARP};
use std::any::TypeId;
use std::panic::Location;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Call site of a barrier or collective.
pub(crate) type Site = &'static Location<'static>;

/// Which warp collective a lane is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WarpOp {
    ShflIdx,
    ShflXor,
    ShflDown,
    ShflUp,
    Any,
    All,
    Ballot,
    Mma,
    Ldsm { x4: bool, trans: bool },
}

/// What a lane brings to a collective.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Payload {
    /// Shuffled value / predicate.
    pub v: u32,
    /// Shuffle parameter (source lane, mask, delta).
    pub p: u32,
    /// MMA registers: a[0..4], b[4..6], c bits[6..10].
    pub regs: [u32; 10],
    /// `ldmatrix` row address.
    pub addr: usize,
}

struct WarpState {
    /// Lanes that exist in this warp.
    lanes: u32,
    arrived: u32,
    gen: u64,
    op: Option<(WarpOp, Site)>,
    inputs: [Payload; 32],
    results: [[u32; 4]; 32],
    exited: u32,
}

struct State {
    block: Dim3,
    exited: u32,
    blocked: u32,
    bar_arrived: u32,
    bar_gen: u64,
    bar_site: Option<Site>,
    warps: Vec<WarpState>,
    error: Option<SimError>,
    end_gen: u64,
    statics: Vec<(TypeId, Box<[u128]>)>,
}

pub(crate) struct BlockShared {
    m: Mutex<State>,
    bar_cv: Condvar,
    warp_cv: Vec<Condvar>,
    end_cv: Condvar,
    nthreads: u32,
    grid: Dim3,
    pub(crate) bdim: Dim3,
    timeout: Duration,
    /// Dynamic shared memory (refilled with 0xFF at every block start).
    dyn_mem: Box<[u128]>,
    pub(crate) dyn_bytes: usize,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BlockShared {
    pub(crate) fn new(grid: Dim3, bdim: Dim3, dyn_bytes: usize, timeout: Duration) -> Self {
        let nthreads = bdim.volume() as u32;
        let nwarps = nthreads.div_ceil(WARP);
        let warps = (0..nwarps)
            .map(|w| WarpState {
                lanes: (nthreads - w * WARP).min(WARP),
                arrived: 0,
                gen: 0,
                op: None,
                inputs: [Payload::default(); 32],
                results: [[0; 4]; 32],
                exited: 0,
            })
            .collect();
        let state = State {
            block: Dim3::new(0, 0, 0),
            exited: 0,
            blocked: 0,
            bar_arrived: 0,
            bar_gen: 0,
            bar_site: None,
            warps,
            error: None,
            end_gen: 0,
            statics: Vec::new(),
        };
        BlockShared {
            m: Mutex::new(state),
            bar_cv: Condvar::new(),
            warp_cv: (0..nwarps).map(|_| Condvar::new()).collect(),
            end_cv: Condvar::new(),
            nthreads,
            grid,
            bdim,
            timeout,
            dyn_mem: vec![u128::MAX; dyn_bytes.div_ceil(16)].into_boxed_slice(),
            dyn_bytes,
        }
    }

    /// Index of the `b`-th block (x fastest).
    pub(crate) fn block_index(&self, b: u64) -> Dim3 {
        let (gx, gy) = (self.grid.x as u64, self.grid.y as u64);
        Dim3::new((b % gx) as u32, ((b / gx) % gy) as u32, (b / (gx * gy)) as u32)
    }

    pub(crate) fn grid(&self) -> Dim3 {
        self.grid
    }

    pub(crate) fn dyn_ptr(&self) -> *mut u8 {
        self.dyn_mem.as_ptr() as *mut u8
    }

    /// Records the first error and wakes every waiter.
    pub(crate) fn fail(&self, err: SimError) {
        let mut st = lock(&self.m);
        self.fail_locked(&mut st, err);
    }

    fn fail_locked(&self, st: &mut State, err: SimError) {
        if st.error.is_none() {
            st.error = Some(err);
        }
        self.bar_cv.notify_all();
        self.end_cv.notify_all();
        for cv in &self.warp_cv {
            cv.notify_all();
        }
    }

    pub(crate) fn take_error(&self) -> Option<SimError> {
        lock(&self.m).error.take()
    }

    /// Where the threads of the block wait (for deadlock reports).
    fn describe(&self, st: &State) -> String {
        let mut s = format!("{} of {} threads returned", st.exited, self.nthreads);
        if st.bar_arrived > 0 {
            s += &format!(
                "; {} at the barrier at {}",
                st.bar_arrived,
                st.bar_site.map_or("?".into(), |l| l.to_string())
            );
        }
        for (w, ws) in st.warps.iter().enumerate() {
            if let (true, Some((op, site))) = (ws.arrived > 0, ws.op) {
                s += &format!("; warp {w}: {} of {} lanes in {op:?} at {site}", ws.arrived, ws.lanes);
            }
        }
        s
    }

    /// Blocks the caller until `done(state)`; the releasing thread decrements `blocked` for it.
    fn wait<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        cv: &Condvar,
        site: Site,
        done: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        st.blocked += 1;
        if st.blocked + st.exited == self.nthreads {
            let detail = format!("every live thread waits and none can be released ({})", self.describe(&st));
            let block = st.block;
            self.fail_locked(&mut st, SimError::Deadlock { block, detail });
        }
        let start = Instant::now();
        loop {
            if st.error.is_some() {
                drop(st);
                abort();
            }
            if done(&st) {
                return st;
            }
            let (g, _) = cv.wait_timeout(st, Duration::from_millis(100)).unwrap_or_else(PoisonError::into_inner);
            st = g;
            if start.elapsed() > self.timeout && !done(&st) && st.error.is_none() {
                let detail = format!("a thread waited more than {:?} at {site} ({})", self.timeout, self.describe(&st));
                let block = st.block;
                self.fail_locked(&mut st, SimError::Deadlock { block, detail });
            }
        }
    }

    fn check_error<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if st.error.is_some() {
            drop(st);
            abort();
        }
        st
    }

    /// `bar.sync 0` for thread `linear`.
    pub(crate) fn barrier(&self, site: Site) {
        let mut st = self.check_error(lock(&self.m));
        let block = st.block;
        if st.exited > 0 {
            let detail = format!("barrier at {site} reached after {} thread(s) returned", st.exited);
            self.fail_locked(&mut st, SimError::BarrierDivergence { block, detail });
            drop(st);
            abort();
        }
        if let Some(other) = st.bar_site.filter(|&o| o != site) {
            let detail = format!("threads wait at barriers of different call sites: {other} and {site}");
            self.fail_locked(&mut st, SimError::BarrierDivergence { block, detail });
            drop(st);
            abort();
        }
        st.bar_site = Some(site);
        st.bar_arrived += 1;
        if st.bar_arrived == self.nthreads {
            st.blocked -= self.nthreads - 1;
            st.bar_arrived = 0;
            st.bar_site = None;
            st.bar_gen += 1;
            self.bar_cv.notify_all();
            return;
        }
        let gen = st.bar_gen;
        drop(self.wait(st, &self.bar_cv, site, |s| s.bar_gen != gen));
    }

    /// A warp collective: returns this lane's result words.
    pub(crate) fn warp_op(&self, linear: u32, op: WarpOp, site: Site, payload: Payload) -> [u32; 4] {
        let (w, lane) = ((linear / WARP) as usize, (linear % WARP) as usize);
        let mut st = self.check_error(lock(&self.m));
        let block = st.block;
        let ws = &mut st.warps[w];
        let mismatch = if ws.exited > 0 {
            Some(format!("lane {lane} reached {op:?} at {site} after {} lane(s) of the warp returned", ws.exited))
        } else {
            ws.op
                .filter(|&(o, s)| o != op || s != site)
                .map(|(o, s)| format!("lane {lane} reached {op:?} at {site} while lanes wait in {o:?} at {s}"))
        };
        if let Some(detail) = mismatch {
            self.fail_locked(&mut st, SimError::WarpDivergence { block, warp: w as u32, detail });
            drop(st);
            abort();
        }
        ws.op = Some((op, site));
        ws.inputs[lane] = payload;
        ws.arrived += 1;
        if ws.arrived == ws.lanes {
            let lanes = ws.lanes;
            let computed = compute(op, &ws.inputs[..lanes as usize], &mut ws.results);
            ws.arrived = 0;
            ws.op = None;
            ws.gen += 1;
            let res = ws.results[lane];
            st.blocked -= lanes - 1;
            if let Err(detail) = computed {
                self.fail_locked(&mut st, SimError::WarpDivergence { block, warp: w as u32, detail });
                drop(st);
                abort();
            }
            self.warp_cv[w].notify_all();
            return res;
        }
        let gen = ws.gen;
        let st = self.wait(st, &self.warp_cv[w], site, |s| s.warps[w].gen != gen);
        st.warps[w].results[lane]
    }

    /// Thread `linear` returned from the kernel for block `b`: checks nobody waits for it, then
    /// waits until every thread of the block has returned (the last one prepares block `b + 1`).
    /// Exit, check and wait happen under one lock hold, so no thread can miss the release.
    /// False if the launch has failed.
    pub(crate) fn finish_block(&self, linear: u32, b: u64) -> bool {
        let w = (linear / WARP) as usize;
        let mut st = lock(&self.m);
        if st.error.is_some() {
            return false;
        }
        st.exited += 1;
        st.warps[w].exited += 1;
        let block = st.block;
        if st.bar_arrived > 0 {
            let detail = format!(
                "thread {linear} returned while {} thread(s) wait at the barrier at {}",
                st.bar_arrived,
                st.bar_site.map_or("?".into(), |l| l.to_string())
            );
            self.fail_locked(&mut st, SimError::BarrierDivergence { block, detail });
            return false;
        }
        if let (true, Some((op, site))) = (st.warps[w].arrived > 0, st.warps[w].op) {
            let detail = format!("lane {} returned while lanes wait in {op:?} at {site}", linear % WARP);
            self.fail_locked(&mut st, SimError::WarpDivergence { block, warp: w as u32, detail });
            return false;
        }
        if st.blocked > 0 && st.blocked + st.exited == self.nthreads {
            let detail = format!("every live thread waits and none can be released ({})", self.describe(&st));
            self.fail_locked(&mut st, SimError::Deadlock { block, detail });
            return false;
        }
        if st.exited == self.nthreads {
            st.exited = 0;
            st.blocked = 0;
            for ws in st.warps.iter_mut() {
                ws.exited = 0;
            }
            st.statics.clear();
            st.block = self.block_index(b + 1);
            // SAFETY: every thread has finished the block, nobody holds a pointer into it.
            unsafe { std::ptr::write_bytes(self.dyn_ptr(), 0xFF, self.dyn_mem.len() * 16) };
            st.end_gen += 1;
            self.end_cv.notify_all();
            return true;
        }
        let gen = st.end_gen;
        while st.end_gen == gen {
            if st.error.is_some() {
                return false;
            }
            st = self.end_cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.error.is_none()
    }

    /// The block's instance of a static shared array (`bytes` long), created on first use.
    pub(crate) fn static_shared(&self, id: TypeId, bytes: usize) -> *mut u8 {
        let mut st = self.check_error(lock(&self.m));
        if let Some((_, mem)) = st.statics.iter().find(|(t, _)| *t == id) {
            return mem.as_ptr() as *mut u8;
        }
        let mem = vec![u128::MAX; bytes.div_ceil(16).max(1)].into_boxed_slice();
        let p = mem.as_ptr() as *mut u8;
        st.statics.push((id, mem));
        p
    }
}

/// Computes every lane's result of a completed collective.
fn compute(op: WarpOp, inp: &[Payload], out: &mut [[u32; 4]; 32]) -> Result<(), String> {
    let lanes = inp.len();
    let read = |src: usize, l: usize| -> Result<u32, String> {
        if src < lanes {
            Ok(inp[src].v)
        } else {
            Err(format!("lane {l} shuffles from lane {src}, which does not exist in this partial warp of {lanes}"))
        }
    };
    match op {
        WarpOp::ShflIdx | WarpOp::ShflXor | WarpOp::ShflDown | WarpOp::ShflUp => {
            for (l, x) in inp.iter().enumerate() {
                let p = x.p as usize;
                let v = match op {
                    WarpOp::ShflIdx => read(p % 32, l)?,
                    WarpOp::ShflXor => read(l ^ (p & 31), l)?,
                    WarpOp::ShflDown if l + p > 31 => x.v,
                    WarpOp::ShflDown => read(l + p, l)?,
                    _ if l < p => x.v,
                    _ => read(l - p, l)?,
                };
                out[l][0] = v;
            }
        }
        WarpOp::Any | WarpOp::All | WarpOp::Ballot => {
            let ballot = inp.iter().enumerate().fold(0u32, |b, (l, x)| b | (((x.v != 0) as u32) << l));
            let v = match op {
                WarpOp::Any => (ballot != 0) as u32,
                WarpOp::All => (ballot.count_ones() as usize == lanes) as u32,
                _ => ballot,
            };
            for o in out.iter_mut().take(lanes) {
                o[0] = v;
            }
        }
        WarpOp::Mma => {
            if lanes != 32 {
                return Err(format!("mma needs a full warp, this one has {lanes} lanes"));
            }
            mma(inp, out);
        }
        WarpOp::Ldsm { x4, trans } => {
            if lanes != 32 {
                return Err(format!("ldmatrix needs a full warp, this one has {lanes} lanes"));
            }
            let nmat = if x4 { 4 } else { 2 };
            for (l, x) in inp.iter().enumerate().take(nmat * 8) {
                if x.addr % 16 != 0 {
                    return Err(format!("ldmatrix row address of lane {l} is not 16-byte aligned: {:#x}", x.addr));
                }
            }
            // rows[m][r][c]: element (r, c) of matrix m.
            let mut rows = [[[0u16; 8]; 8]; 4];
            for (m, mat) in rows.iter_mut().enumerate().take(nmat) {
                for (r, row) in mat.iter_mut().enumerate() {
                    let p = inp[m * 8 + r].addr as *const u16;
                    for (c, slot) in row.iter_mut().enumerate() {
                        // SAFETY: the caller of ldmatrix guarantees 8 readable b16 at each address.
                        *slot = unsafe { p.add(c).read() };
                    }
                }
            }
            for (l, o) in out.iter_mut().enumerate() {
                let (g, t) = (l / 4, l % 4);
                for (m, mat) in rows.iter().enumerate().take(nmat) {
                    let (lo, hi) =
                        if trans { (mat[2 * t][g], mat[2 * t + 1][g]) } else { (mat[g][2 * t], mat[g][2 * t + 1]) };
                    o[m] = lo as u32 | ((hi as u32) << 16);
                }
            }
        }
    }
    Ok(())
}

/// `D = A · B + C` of m16n8k16 with the PTX fragment layouts (see `Simt::mma_m16n8k16_bf16`).
/// Products of bf16 are exact in f32; the sum runs in k order with f32 FMAs starting from C.
fn mma(inp: &[Payload], out: &mut [[u32; 4]; 32]) {
    let (mut a, mut b, mut c) = ([[0f32; 16]; 16], [[0f32; 8]; 16], [[0f32; 8]; 16]);
    let half = |w: u32, hi: bool| bf16_to_f32(if hi { (w >> 16) as u16 } else { w as u16 });
    for (l, x) in inp.iter().enumerate() {
        let (g, t) = (l / 4, l % 4);
        for r in 0..4 {
            let (row, col) = (g + 8 * (r & 1), 2 * t + 8 * (r >> 1));
            a[row][col] = half(x.regs[r], false);
            a[row][col + 1] = half(x.regs[r], true);
        }
        for r in 0..2 {
            let k = 2 * t + 8 * r;
            b[k][g] = half(x.regs[4 + r], false);
            b[k + 1][g] = half(x.regs[4 + r], true);
        }
        for i in 0..4 {
            c[g + 8 * (i >> 1)][2 * t + (i & 1)] = f32::from_bits(x.regs[6 + i]);
        }
    }
    for (l, o) in out.iter_mut().enumerate() {
        let (g, t) = (l / 4, l % 4);
        for (i, slot) in o.iter_mut().enumerate() {
            let (row, col) = (g + 8 * (i >> 1), 2 * t + (i & 1));
            let mut acc = c[row][col];
            for k in 0..16 {
                acc = a[row][k].mul_add(b[k][col], acc);
            }
            *slot = acc.to_bits();
        }
    }
}
