//! The task runner shared by the GEMM drivers.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `f(0..tasks)`: in order on this thread when `threads <= 1`, else on `threads` rayon
/// jobs (at most) that take tasks from a shared counter, so a thread the OS delays simply
/// takes fewer tasks.
pub(crate) fn run_tasks(threads: usize, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
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
