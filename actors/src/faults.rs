//! Test hooks that inject failures into a phase (all off by default): a failing loader, a full
//! disk, a stop or a SIGKILL at a chosen moment of a step, an injected rollback, an injected QAT
//! regression.

/// Test hooks injecting failures (all off by default).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The DataLoader fails (stops itself) when asked for this micro-batch index, once.
    pub loader_fail_at: Option<u64>,
    /// The checkpointer behaves like a full disk after this many bytes.
    pub disk_budget: Option<u64>,
    /// Stop (as if killed) after this many optimiser steps of this process.
    pub stop_after_steps: Option<u64>,
    /// Inject a dev-PPL rollback action (LR x 0.5) after this optimiser step, once.
    pub rollback_at: Option<u64>,
    /// Kill the process (SIGKILL) at this point of this optimiser step.
    pub kill_at: Option<(KillPoint, u64)>,
    /// P4: percentage points subtracted from every MCQ accuracy of a Q5 evaluation (an injected
    /// QAT regression for the V/O gate and the QAT-regression breaker).
    pub qat_penalty_pp: Option<f64>,
}

/// A moment inside an optimiser step where [`Faults::kill_at`] kills the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillPoint {
    /// The update is done in memory; nothing of the step is logged or saved.
    Step,
    /// The step's breaker actions are logged and their checkpoint is written; its evaluation
    /// and periodic checkpoint are not.
    ActionCheckpoint,
    /// The step's evaluation (and its breaker actions) is logged; the periodic checkpoint is not.
    Eval,
    /// The step's periodic checkpoint is written.
    Checkpoint,
    /// The importance pass saved its partial state after this many batches (the "step").
    Importance,
}

impl KillPoint {
    /// Parses `<point>:<step>`, point one of `step`, `action-checkpoint`, `eval`, `checkpoint`,
    /// `importance` (its "step" counts importance batches).
    pub fn parse(s: &str) -> Option<(KillPoint, u64)> {
        let (point, step) = s.split_once(':')?;
        let point = match point {
            "step" => KillPoint::Step,
            "action-checkpoint" => KillPoint::ActionCheckpoint,
            "eval" => KillPoint::Eval,
            "checkpoint" => KillPoint::Checkpoint,
            "importance" => KillPoint::Importance,
            _ => return None,
        };
        Some((point, step.parse().ok()?))
    }
}

impl Faults {
    pub(crate) fn kill_if(&self, point: KillPoint, step: u64) {
        if self.kill_at == Some((point, step)) {
            // SAFETY: raise only signals the calling process; SIGKILL cannot be caught, so this
            // is the same as `kill -9` from outside: no destructor, flush or unwinding runs.
            unsafe { libc::raise(libc::SIGKILL) };
        }
    }
}
