//! The actix side of a phase: a Supervisor-managed DataLoader (prefetching, restarted without
//! losing or repeating a batch), the Trainer on its own thread, an asynchronous Checkpointer,
//! the Evaluator and Metrics. [`run_phase`] wires them and returns the phase's summary.

use crate::batches::{BatchStream, LoaderCursor};
use crate::checkpoint::{self, DiskBudget, Snapshot};
use crate::error::{EngineError, Result};
use crate::evaluator::{EvalInputs, EvalRecord};
pub use crate::faults::{Faults, KillPoint};
use crate::metrics::{MetricsSink, ResumePoint};
pub use crate::metrics_actor::{Drain, Finish, Log, Metrics};
use crate::trainer::{LoggedAction, Trainer};
use actix::prelude::*;
use data::pack::PackedBatch;
use futures::executor::block_on;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// DataLoader

/// Asks for micro-batch `cursor.index`.
#[derive(Message)]
#[rtype(result = "std::result::Result<(PackedBatch, LoaderCursor), String>")]
pub struct Fetch(pub LoaderCursor);

#[derive(Message)]
#[rtype(result = "()")]
struct Prefetch(LoaderCursor);

/// Prefetches the next micro-batch after each one it serves.
pub struct DataLoader {
    stream: BatchStream,
    ready: Option<(LoaderCursor, PackedBatch, LoaderCursor)>,
    fail_at: Option<u64>,
    restarts: Arc<AtomicU64>,
}

impl Actor for DataLoader {
    type Context = Context<Self>;
}

impl Supervised for DataLoader {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // A restarted loader starts from the cursor of the next request: nothing it prefetched
        // survives, so nothing can be served twice or skipped.
        self.ready = None;
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }
}

impl Handler<Fetch> for DataLoader {
    type Result = std::result::Result<(PackedBatch, LoaderCursor), String>;

    fn handle(&mut self, Fetch(cursor): Fetch, ctx: &mut Context<Self>) -> Self::Result {
        if self.fail_at == Some(cursor.index) && self.restarts.load(Ordering::SeqCst) == 0 {
            ctx.stop();
            return Err(format!("injected DataLoader failure at micro-batch {}", cursor.index));
        }
        let (batch, next) = match self.ready.take() {
            Some((at, b, next)) if at == cursor => (b, next),
            _ => self.stream.next(&cursor).map_err(|e| e.to_string())?,
        };
        ctx.notify(Prefetch(next.clone()));
        Ok((batch, next))
    }
}

impl Handler<Prefetch> for DataLoader {
    type Result = ();

    fn handle(&mut self, Prefetch(cursor): Prefetch, _: &mut Context<Self>) {
        if let Ok((b, next)) = self.stream.next(&cursor) {
            self.ready = Some((cursor, b, next));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpointer

/// Writes a snapshot.
#[derive(Message)]
#[rtype(result = "Result<PathBuf>")]
pub struct Save(pub Snapshot);

/// Writes checkpoints on its own thread.
pub struct Checkpointer {
    dir: PathBuf,
    keep_last: usize,
    budget: DiskBudget,
}

impl Actor for Checkpointer {
    type Context = SyncContext<Self>;
}

impl Handler<Save> for Checkpointer {
    type Result = Result<PathBuf>;

    fn handle(&mut self, Save(snap): Save, _: &mut SyncContext<Self>) -> Result<PathBuf> {
        checkpoint::write_checkpoint(&self.dir, &snap, self.keep_last, &mut self.budget)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluator

/// Evaluates a model snapshot.
#[derive(Message)]
#[rtype(result = "Result<EvalRecord>")]
pub struct Evaluate {
    /// The model.
    pub model: Arc<model::Qwen3>,
    /// Step it was taken at.
    pub step: u64,
    /// Final evaluation (full sizes).
    pub last: bool,
}

/// Runs evaluations on its own thread.
pub struct Evaluator {
    inputs: Arc<EvalInputs>,
}

impl Actor for Evaluator {
    type Context = SyncContext<Self>;
}

impl Handler<Evaluate> for Evaluator {
    type Result = Result<EvalRecord>;

    fn handle(&mut self, m: Evaluate, _: &mut SyncContext<Self>) -> Result<EvalRecord> {
        self.inputs.evaluate(&m.model, m.step, m.last)
    }
}

// ---------------------------------------------------------------------------------------------
// Trainer

/// What the phase produced.
#[derive(Clone, Debug)]
pub struct PhaseOutcome {
    /// The trained model (after the last step).
    pub model: model::Qwen3,
    /// Trainer state at the end.
    pub state: crate::trainer::TrainerState,
    /// Final evaluation.
    pub final_eval: Option<EvalRecord>,
    /// Every evaluation of this process.
    pub evals: Vec<EvalRecord>,
    /// DataLoader restarts seen.
    pub loader_restarts: u64,
    /// Micro-batch sequence numbers in the order trained (this process).
    pub trained_sequences: Vec<u64>,
    /// Newest checkpoint.
    pub last_checkpoint: Option<PathBuf>,
    /// False when the run stopped early (fault injection).
    pub completed: bool,
}

/// Asks the trainer actor to run the phase's training loop to the end.
#[derive(Message)]
#[rtype(result = "Result<PhaseOutcome>")]
struct RunLoop {
    loader: Addr<DataLoader>,
    ckpt: Addr<Checkpointer>,
    eval: Option<Addr<Evaluator>>,
    metrics: Addr<Metrics>,
}

/// Owns the [`Trainer`] on its own thread.
pub struct TrainerActor {
    trainer: Option<Trainer>,
    ckpt_dir: PathBuf,
    faults: Faults,
}

impl Actor for TrainerActor {
    type Context = SyncContext<Self>;
}

/// Asks the loader for a micro-batch; while it is being restarted the request is retried.
fn fetch(
    loader: &Addr<DataLoader>,
    cursor: &LoaderCursor,
    metrics: &Addr<Metrics>,
) -> Result<(PackedBatch, LoaderCursor)> {
    let mut last = String::new();
    for attempt in 0..50 {
        let err = match block_on(loader.send(Fetch(cursor.clone()))) {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        metrics.do_send(Log::Event(
            "loader_retry",
            cursor.index,
            serde_json::json!({ "micro_batch": cursor.index, "attempt": attempt + 1, "error": err }),
        ));
        last = err;
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(EngineError::Actor { actor: "DataLoader", msg: format!("no batch after 50 attempts: {last}") })
}

/// Checkpoint saves of the loop: the one in flight and the newest written.
struct Saves {
    ckpt: Addr<Checkpointer>,
    dir: PathBuf,
    pending: Option<Request<Checkpointer, Save>>,
    /// Newest written checkpoint (a rollback goes back to it; actions name it).
    last: Option<PathBuf>,
}

impl Saves {
    /// Waits for the save in flight.
    fn wait(&mut self) -> Result<()> {
        if let Some(req) = self.pending.take() {
            let path =
                block_on(req).map_err(|e| EngineError::Actor { actor: "Checkpointer", msg: e.to_string() })??;
            self.last = Some(path);
        }
        Ok(())
    }

    /// Where the checkpoint of `step` is written.
    fn path_of(&self, step: u64) -> PathBuf {
        self.dir.join(checkpoint::step_dir_name(step))
    }

    /// Checkpoints the trainer's current state: logs the checkpoint line, waits until every
    /// line logged so far is in metrics.jsonl, records their number in the state (a resumed run
    /// keeps exactly those) and sends the snapshot to the Checkpointer.
    fn start(&mut self, t: &mut Trainer, metrics: &Addr<Metrics>) -> Result<()> {
        self.wait()?;
        let step = t.state.step;
        metrics.do_send(Log::Checkpoint(step, self.path_of(step).display().to_string()));
        let lines = block_on(metrics.send(Drain))
            .map_err(|e| EngineError::Actor { actor: "Metrics", msg: e.to_string() })?
            .map_err(|msg| EngineError::Actor { actor: "Metrics", msg })?;
        t.state.metrics_lines = Some(lines);
        let mut snap = if t.done() && !t.state.finishing {
            // The phase's last checkpoint: nothing trains after it, so the teacher is dropped
            // and the AdamW moments move into the snapshot instead of being copied (at 0.6B
            // scale the copies would push the peak past 24 GB).
            t.teacher = None;
            let state = t.state_json();
            Snapshot::take_moving_moments(&t.model, &mut t.opt, step, state)
        } else {
            Snapshot::take(&t.model, &t.opt, step, t.state_json())
        };
        snap.extra = t.checkpoint_files()?;
        self.pending = Some(self.ckpt.send(Save(snap)));
        Ok(())
    }
}

/// Records breaker actions in the trainer state (naming `checkpoint`) and logs them.
fn record_actions(
    t: &mut Trainer,
    actions: Vec<crate::breakers::BreakerAction>,
    checkpoint: Option<&PathBuf>,
    metrics: &Addr<Metrics>,
) {
    for action in actions {
        let logged = LoggedAction { action, checkpoint: checkpoint.map(|p| p.display().to_string()) };
        t.state.actions.push(logged.clone());
        metrics.do_send(Log::Action(logged));
    }
}

impl TrainerActor {
    /// The fault-injected dev-PPL rollback of step `step`, once per process.
    fn injected_rollback(&self, t: &mut Trainer, injected: &mut bool) -> Option<crate::breakers::BreakerAction> {
        if self.faults.rollback_at != Some(t.state.step) || std::mem::replace(injected, true) {
            return None;
        }
        let lr = t.state.knobs.lr_scale;
        let action = crate::breakers::BreakerAction {
            step: t.state.step,
            breaker: crate::breakers::BreakerKind::DevPpl,
            reason: "injected rollback (fault injection)".into(),
            changes: vec![crate::breakers::KnobChange { knob: crate::breakers::Knob::LrScale, from: lr, to: lr * 0.5 }],
            rollback: true,
        };
        action.apply(&mut t.state.knobs);
        Some(action)
    }
}

impl Handler<RunLoop> for TrainerActor {
    type Result = Result<PhaseOutcome>;

    /// The loop. A step is (1) the update, its log line and its breaker actions, which are
    /// written into the state of the checkpoint taken for them (marked `finishing`), then
    /// (2) its evaluation, the evaluation's actions, a rollback and the periodic checkpoint.
    /// Everything logged before a checkpoint is in metrics.jsonl before the checkpoint exists,
    /// and a run resumed from a `finishing` checkpoint starts at (2): a kill at any moment
    /// resumes to the same metrics, summary and weights as a run never interrupted.
    fn handle(&mut self, m: RunLoop, _: &mut SyncContext<Self>) -> Result<PhaseOutcome> {
        let mut t =
            self.trainer.take().ok_or_else(|| EngineError::Actor { actor: "Trainer", msg: "ran twice".into() })?;
        let accumulation = t.config.accumulation();
        let last = checkpoint::list_checkpoints(&self.ckpt_dir)?.last().map(|(_, p)| p.clone());
        let mut saves = Saves { ckpt: m.ckpt.clone(), dir: self.ckpt_dir.clone(), pending: None, last };
        let mut evals = Vec::new();
        let mut trained_sequences = Vec::new();
        let mut steps_here = 0u64;
        let mut injected = false;
        while !t.done() || t.state.finishing {
            let mut rollback = false;
            if !t.state.finishing {
                if self.faults.stop_after_steps == Some(steps_here) {
                    saves.wait()?;
                    return Ok(PhaseOutcome {
                        model: t.model,
                        state: t.state,
                        final_eval: None,
                        evals,
                        loader_restarts: 0,
                        trained_sequences,
                        last_checkpoint: saves.last,
                        completed: false,
                    });
                }
                let started = Instant::now();
                let mut micro = Vec::with_capacity(accumulation as usize);
                let mut cursor = t.state.cursor.clone();
                for _ in 0..accumulation {
                    let (b, next) = fetch(&m.loader, &cursor, &m.metrics)?;
                    trained_sequences.extend_from_slice(&b.sequences);
                    micro.push(b);
                    cursor = next;
                }
                let (rec, mut actions) = t.step(&micro, cursor)?;
                t.state.finishing = true;
                self.faults.kill_if(KillPoint::Step, t.state.step);
                actions.extend(self.injected_rollback(&mut t, &mut injected));
                steps_here += 1;
                let tps = rec.tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
                m.metrics.do_send(Log::Step(rec, tps));
                if !t.state.router.is_empty() {
                    // The routing share of every step (the report's heatmap over training).
                    let share: Vec<&Vec<f32>> = t.state.router.iter().map(|r| &r.share).collect();
                    m.metrics.do_send(Log::Event("router", t.state.step, serde_json::json!({ "share": share })));
                }
                if !actions.is_empty() {
                    saves.wait()?;
                    rollback = actions.iter().any(|a| a.rollback);
                    if rollback {
                        // Goes back to the newest checkpoint taken before it.
                        let to = saves.last.clone();
                        record_actions(&mut t, actions, to.as_ref(), &m.metrics);
                    } else {
                        // A knob change gets a checkpoint of the state it changed (to roll back
                        // to), and that checkpoint holds the actions.
                        let path = saves.path_of(t.state.step);
                        record_actions(&mut t, actions, Some(&path), &m.metrics);
                        saves.start(&mut t, &m.metrics)?;
                        saves.wait()?;
                        self.faults.kill_if(KillPoint::ActionCheckpoint, t.state.step);
                    }
                }
            }
            let step = t.state.step;
            let eval_due = t.config.eval.every > 0 && step % t.config.eval.every == 0 && !t.done();
            if let (true, Some(ev)) = (eval_due, &m.eval) {
                let rec = block_on(ev.send(Evaluate { model: Arc::new(t.model.clone()), step, last: false }))
                    .map_err(|e| EngineError::Actor { actor: "Evaluator", msg: e.to_string() })??;
                let actions = t.state.breakers.observe_eval(step, rec.medical_ppl(), &t.state.knobs);
                if !actions.is_empty() {
                    saves.wait()?;
                }
                for a in &actions {
                    rollback |= a.rollback;
                    a.apply(&mut t.state.knobs);
                }
                let to = saves.last.clone();
                record_actions(&mut t, actions, to.as_ref(), &m.metrics);
                m.metrics.do_send(Log::Eval(rec.clone()));
                evals.push(rec);
                self.faults.kill_if(KillPoint::Eval, step);
            }
            t.state.finishing = false;
            if rollback {
                saves.wait()?;
                if let Some(path) = saves.last.clone() {
                    // Roll back to the newest complete checkpoint, keeping the breakers' memory
                    // and knobs (so the halved LR stays halved); the step it was taken in is
                    // not finished again.
                    let keep = (t.state.breakers.clone(), t.state.knobs.clone(), t.state.actions.clone());
                    t.restore(checkpoint::read_checkpoint(&path)?)?;
                    (t.state.breakers, t.state.knobs, t.state.actions) = keep;
                    t.state.finishing = false;
                    m.metrics.do_send(Log::Event(
                        "rollback",
                        t.state.step,
                        serde_json::json!({ "to": path.display().to_string() }),
                    ));
                }
            }
            if step % t.config.checkpoint_every == 0 || t.done() {
                saves.start(&mut t, &m.metrics)?;
                if self.faults.kill_at == Some((KillPoint::Checkpoint, step)) {
                    saves.wait()?;
                    self.faults.kill_if(KillPoint::Checkpoint, step);
                }
            }
        }
        saves.wait()?;
        let mut final_eval = None;
        if let Some(ev) = &m.eval {
            let rec = block_on(ev.send(Evaluate { model: Arc::new(t.model.clone()), step: t.state.step, last: true }))
                .map_err(|e| EngineError::Actor { actor: "Evaluator", msg: e.to_string() })??;
            m.metrics.do_send(Log::Eval(rec.clone()));
            final_eval = Some(rec);
        }
        Ok(PhaseOutcome {
            model: t.model,
            state: t.state,
            final_eval,
            evals,
            loader_restarts: 0,
            trained_sequences,
            last_checkpoint: saves.last,
            completed: true,
        })
    }
}

/// Everything a phase needs.
pub struct PhaseRun {
    /// Trainer at its start (or restored from a checkpoint).
    pub trainer: Trainer,
    /// The batch stream.
    pub stream: BatchStream,
    /// Checkpoint directory.
    pub ckpt_dir: PathBuf,
    /// Metrics directory.
    pub metrics_dir: PathBuf,
    /// Evaluation inputs (None: no evaluation).
    pub eval: Option<Arc<EvalInputs>>,
    /// Show a progress bar.
    pub progress: bool,
    /// Fault injection.
    pub faults: Faults,
}

/// Runs a phase under an actix System: the Supervisor (actix's) restarts the DataLoader when it
/// fails; the Trainer, Checkpointer and Evaluator run on their own threads.
pub fn run_phase(run: PhaseRun) -> Result<PhaseOutcome> {
    let PhaseRun { trainer, stream, ckpt_dir, metrics_dir, eval, progress, faults } = run;
    checkpoint::remove_stale_temps(&ckpt_dir);
    let resume = (trainer.state.step > 0)
        .then_some(ResumePoint { step: trainer.state.step, lines: trainer.state.metrics_lines });
    let sink = MetricsSink::create(&metrics_dir, resume)?;
    for warning in sink.repairs() {
        eprintln!("warning: {warning} (repaired to the checkpoint's records)");
    }
    let total = trainer.total_steps();
    let keep_last = trainer.config.keep_last;
    let phase = trainer.config.phase.clone();
    let start_step = trainer.state.step;
    let restarts = Arc::new(AtomicU64::new(0));
    let restarts_seen = restarts.clone();
    let sys = System::new();
    let result = sys.block_on(async move {
        let bar = if progress {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>6} [{bar:30}] {pos}/{len} steps {elapsed} (eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(phase);
            b.set_position(start_step);
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let metrics = Metrics::new(sink, bar).start();
        let r = restarts.clone();
        let fail_at = faults.loader_fail_at;
        let loader = actix::Supervisor::start(move |_| DataLoader { stream, ready: None, fail_at, restarts: r });
        let budget = DiskBudget { remaining: faults.disk_budget };
        let dir = ckpt_dir.clone();
        let ckpt = SyncArbiter::start(1, move || Checkpointer { dir: dir.clone(), keep_last, budget });
        let eval = eval.map(|inputs| SyncArbiter::start(1, move || Evaluator { inputs: inputs.clone() }));
        let cell = std::sync::Mutex::new(Some(trainer));
        let trainer_addr = SyncArbiter::start(1, move || TrainerActor {
            trainer: cell.lock().ok().and_then(|mut c| c.take()),
            ckpt_dir: ckpt_dir.clone(),
            faults: faults.clone(),
        });
        let out = trainer_addr
            .send(RunLoop { loader, ckpt, eval, metrics: metrics.clone() })
            .await
            .map_err(|e| EngineError::Actor { actor: "Trainer", msg: e.to_string() })
            .and_then(|r| r);
        let metrics_error = metrics.send(Finish).await.ok().flatten();
        System::current().stop();
        match (out, metrics_error) {
            (Ok(o), Some(e)) => {
                let _ = o;
                Err(EngineError::Actor { actor: "Metrics", msg: e })
            }
            (o, _) => o,
        }
    });
    let mut outcome = result?;
    outcome.loader_restarts = restarts_seen.load(Ordering::SeqCst);
    Ok(outcome)
}
