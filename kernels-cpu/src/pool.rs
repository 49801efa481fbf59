//! Running a whole training step on a worker of the rayon pool.
//!
//! Every op of a step splits its work over the pool. Called from a thread outside the pool,
//! each such split is injected into the pool's queue and the caller sleeps until a woken
//! worker finishes it: a futex wake and wait per op, thousands of times per step, and three
//! threads on the cores instead of two. Called from a worker, the split is a local push that
//! the other workers steal, and the calling worker takes part.

/// Runs `f` on a worker thread of the current rayon pool (on the calling thread when it is
/// one already) and returns its result.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    // `scope` runs its body on a pool worker when called from outside the pool.
    rayon::scope(|_| out = Some(f()));
    out.expect("the scope ran its body")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_worker_and_returns_the_result() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        assert_eq!(rayon::current_thread_index(), None);
        let index = on_pool(rayon::current_thread_index);
        assert!(index.is_some(), "the body ran on a worker of the global pool");
        let nested = pool.install(|| on_pool(|| (rayon::current_thread_index(), 7)));
        assert_eq!(nested.1, 7);
        assert!(nested.0.is_some());
    }
}
