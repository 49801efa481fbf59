//! Opt-in wall-clock profile of a training step by op: where does the step go?
//!
//! [`start`] switches it on for the whole process, [`take`] returns what was collected and
//! switches it off. While on, every op recorded on a tape is charged:
//! - forward: the time since the previous op was recorded (or since the tape was made), which
//!   is the op's own kernel time plus the little glue between two ops;
//! - backward: the time its backward closure ran.
//!
//! Other stages (the optimiser, gradient flattening) are charged through [`stage`]. Ops are
//! named after the function that recorded them (`linear`, `attention`, ...). Ops that do their
//! backward inside the forward (the fused LM head + cross-entropy) show it as forward time.
//! When off, the cost is one relaxed atomic load per op.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<Option<State>> = Mutex::new(None);

#[derive(Default)]
struct State {
    last_mark: Option<Instant>,
    ops: HashMap<&'static str, OpTimes>,
}

/// Time charged to one op (or stage) name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpTimes {
    /// Op or stage name.
    pub op: &'static str,
    /// Seconds of forward (or stage) time.
    pub forward_s: f64,
    /// Seconds of backward time.
    pub backward_s: f64,
    /// Times the op was recorded (forward) or the stage ran.
    pub calls: usize,
}

fn with_state(f: impl FnOnce(&mut State)) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(state) = guard.as_mut() {
        f(state);
    }
}

fn entry<'a>(state: &'a mut State, op: &'static str) -> &'a mut OpTimes {
    state.ops.entry(op).or_insert_with(|| OpTimes { op, ..OpTimes::default() })
}

/// Starts (or restarts, dropping what was collected) the profile.
pub fn start() {
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(State::default());
    ON.store(true, Ordering::Relaxed);
}

/// Stops the profile and returns its ops, most expensive (forward + backward) first.
pub fn take() -> Vec<OpTimes> {
    ON.store(false, Ordering::Relaxed);
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut ops: Vec<OpTimes> = state.map(|s| s.ops.into_values().collect()).unwrap_or_default();
    ops.sort_by(|a, b| (b.forward_s + b.backward_s).total_cmp(&(a.forward_s + a.backward_s)).then(a.op.cmp(b.op)));
    ops
}

/// Whether the profile is on.
pub fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Restarts the forward clock (a new tape: nothing before it belongs to its first op).
pub(crate) fn restart_clock() {
    with_state(|s| s.last_mark = Some(Instant::now()));
}

/// Charges the time since the previous mark to `op`'s forward.
pub(crate) fn forward_recorded(op: &'static str) {
    with_state(|s| {
        let now = Instant::now();
        let since = s.last_mark.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        s.last_mark = Some(now);
        let e = entry(s, op);
        e.forward_s += since;
        e.calls += 1;
    });
}

/// Charges `secs` to `op`'s backward.
pub(crate) fn backward_ran(op: &'static str, secs: f64) {
    with_state(|s| entry(s, op).backward_s += secs);
}

/// Runs `f` and, when the profile is on, charges its time to the stage `name`.
pub fn stage<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !is_on() {
        return f();
    }
    let t0 = Instant::now();
    let out = f();
    let secs = t0.elapsed().as_secs_f64();
    with_state(|s| {
        let e = entry(s, name);
        e.forward_s += secs;
        e.calls += 1;
        // The stage's time is not part of the next op's forward.
        s.last_mark = Some(Instant::now());
    });
    out
}

/// The op name of a backward closure: the function that made it
/// (`autograd::ops::linear::linear::{{closure}}` -> `linear`).
pub(crate) fn op_name_of<F>(f: &F) -> &'static str {
    let full = std::any::type_name_of_val(f);
    let path = full.split("::{{closure}}").next().unwrap_or(full);
    path.rsplit("::").next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_names_are_their_functions() {
        fn make() -> impl Fn() {
            || ()
        }
        assert_eq!(op_name_of(&make()), "make");
    }
}
