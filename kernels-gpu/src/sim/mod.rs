//! The CPU SIMT simulator: runs a kernel written against [`crate::simt::Simt`] on host threads.
//!
//! - One OS thread per simulated thread of a block; the blocks of the grid run one after another
//!   on the same OS threads (so a launch spawns `block` threads once).
//! - [`Simt::sync_threads`](crate::simt::Simt::sync_threads) is a real barrier; warp collectives
//!   (shuffle, vote, MMA, `ldmatrix`) meet in a per-warp exchange where the last lane to arrive
//!   computes every lane's result.
//! - Misuse is an error, never a hang or a panic escaping to the caller:
//!   - a thread returns while others wait at a barrier, reaches a barrier after some thread returned,
//!     or two threads wait at barriers of different call sites: [`SimError::BarrierDivergence`];
//!   - lanes of one warp reach different collectives (or call sites), or a lane returns while the
//!     others wait in a collective: [`SimError::WarpDivergence`];
//!   - every live thread of the block waits and none can be released, or a thread waits longer than
//!     [`LaunchOptions::timeout`]: [`SimError::Deadlock`];
//!   - a panic in the kernel body (e.g. an index out of bounds): [`SimError::KernelPanic`].
//!     On error the other threads are unwound at their next collective or barrier.
//!
//! Not modelled: spin loops on memory never reach a collective, so a kernel spinning on a flag
//! that never changes hangs the simulator as it hangs a GPU (none of our kernels spin).
//!
//! Shared memory starts every block filled with `0xFF` bytes (f32 NaN), so reading a slot nobody
//! wrote shows up in the results. `cp.async` copies land at `cp_async_wait_all`, not before.

mod block;
mod ctx;

use crate::simt::Dim3;
use block::BlockShared;
pub use ctx::SimCtx;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Why a simulated launch failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// Bad grid / block / shared-memory configuration, or bad host-helper arguments.
    #[error("invalid launch: {0}")]
    InvalidLaunch(String),
    /// Threads of a block disagree about a block barrier.
    #[error("barrier divergence in block {block:?}: {detail}")]
    BarrierDivergence {
        /// Block index.
        block: Dim3,
        /// What happened, with call sites.
        detail: String,
    },
    /// Lanes of a warp disagree about a warp collective.
    #[error("warp divergence in block {block:?}, warp {warp}: {detail}")]
    WarpDivergence {
        /// Block index.
        block: Dim3,
        /// Warp index within the block.
        warp: u32,
        /// What happened, with call sites.
        detail: String,
    },
    /// No thread of the block can make progress (or one waited past the timeout).
    #[error("deadlock in block {block:?}: {detail}")]
    Deadlock {
        /// Block index.
        block: Dim3,
        /// Where the threads wait.
        detail: String,
    },
    /// The kernel body panicked.
    #[error("kernel panicked in block {block:?}, thread {thread:?}: {message}")]
    KernelPanic {
        /// Block index.
        block: Dim3,
        /// Thread index.
        thread: Dim3,
        /// The panic message.
        message: String,
    },
    /// The host could not start the simulator's threads.
    #[error("could not start simulator threads: {0}")]
    Spawn(String),
}

/// Limits of a simulated launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Longest a thread may wait at a barrier or collective before the launch fails as a deadlock.
    pub timeout: Duration,
    /// Largest dynamic shared memory per block (H100: 227 KiB).
    pub max_dyn_shared: usize,
    /// Stack of each simulated thread.
    pub stack_bytes: usize,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions { timeout: Duration::from_secs(60), max_dyn_shared: 227 * 1024, stack_bytes: 512 * 1024 }
    }
}

/// Largest number of threads per block (as on NVIDIA GPUs).
pub const MAX_BLOCK_THREADS: u64 = 1024;

/// Runs `kernel` on every thread of `grid` x `block` with `dyn_shared_bytes` of dynamic shared
/// memory per block, with the default [`LaunchOptions`].
pub fn launch<F>(grid: Dim3, block: Dim3, dyn_shared_bytes: usize, kernel: F) -> Result<(), SimError>
where
    F: Fn(&SimCtx) + Sync,
{
    launch_with(LaunchOptions::default(), grid, block, dyn_shared_bytes, kernel)
}

/// [`launch`] with explicit options.
pub fn launch_with<F>(
    opts: LaunchOptions,
    grid: Dim3,
    block: Dim3,
    dyn_shared_bytes: usize,
    kernel: F,
) -> Result<(), SimError>
where
    F: Fn(&SimCtx) + Sync,
{
    let threads = block.volume();
    if grid.volume() == 0 || threads == 0 {
        return Err(SimError::InvalidLaunch(format!("empty grid {grid:?} or block {block:?}")));
    }
    if threads > MAX_BLOCK_THREADS {
        return Err(SimError::InvalidLaunch(format!("{threads} threads per block > {MAX_BLOCK_THREADS}")));
    }
    if block.z > 64 || grid.y > 65535 || grid.z > 65535 {
        return Err(SimError::InvalidLaunch(format!("grid {grid:?} / block {block:?} out of range")));
    }
    if dyn_shared_bytes > opts.max_dyn_shared {
        return Err(SimError::InvalidLaunch(format!(
            "{dyn_shared_bytes} bytes of dynamic shared memory > {}",
            opts.max_dyn_shared
        )));
    }
    let shared = BlockShared::new(grid, block, dyn_shared_bytes, opts.timeout);
    let nblocks = grid.volume();
    std::thread::scope(|scope| {
        for linear in 0..threads as u32 {
            let tid = Dim3::new(linear % block.x, (linear / block.x) % block.y, linear / (block.x * block.y));
            let (shared, kernel) = (&shared, &kernel);
            let spawned = std::thread::Builder::new()
                .stack_size(opts.stack_bytes)
                .spawn_scoped(scope, move || thread_main(shared, kernel, tid, linear, nblocks));
            if let Err(e) = spawned {
                shared.fail(SimError::Spawn(e.to_string()));
                break;
            }
        }
    });
    shared.take_error().map_or(Ok(()), Err)
}

/// Marker payload of the unwinds that stop threads after another thread failed.
struct Abort;

/// Unwinds the calling simulated thread (the launch has already failed).
fn abort() -> ! {
    std::panic::resume_unwind(Box::new(Abort))
}

/// One simulated thread: runs its slot of every block of the grid.
fn thread_main<F: Fn(&SimCtx) + Sync>(sh: &BlockShared, kernel: &F, tid: Dim3, linear: u32, nblocks: u64) {
    for b in 0..nblocks {
        let block_idx = sh.block_index(b);
        let ctx = SimCtx::new(sh, tid, linear, block_idx);
        match catch_unwind(AssertUnwindSafe(|| kernel(&ctx))) {
            Ok(()) => {}
            Err(payload) if payload.is::<Abort>() => return,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                sh.fail(SimError::KernelPanic { block: block_idx, thread: tid, message });
                return;
            }
        }
        if !sh.finish_block(linear, b) {
            return;
        }
    }
}
