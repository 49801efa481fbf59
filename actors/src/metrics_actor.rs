//! The Metrics actor of a phase: every step, evaluation, breaker action and checkpoint into
//! metrics.jsonl, TensorBoard and the progress bar, in the order they were sent.

use crate::evaluator::EvalRecord;
use crate::metrics::MetricsSink;
use crate::trainer::{LoggedAction, StepRecord};
use actix::prelude::*;

/// Something to log.
#[derive(Message)]
#[rtype(result = "()")]
pub enum Log {
    /// A finished optimiser step.
    Step(StepRecord, f64),
    /// An evaluation.
    Eval(EvalRecord),
    /// A breaker action.
    Action(LoggedAction),
    /// A checkpoint was written.
    Checkpoint(u64, String),
    /// A free-form event.
    Event(&'static str, u64, serde_json::Value),
}

/// Flushes and reports the first write error, if any.
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct Finish;

/// Answers once every earlier [`Log`] is in the file: the lines of metrics.jsonl, or the first
/// write error.
#[derive(Message)]
#[rtype(result = "std::result::Result<u64, String>")]
pub struct Drain;

/// JSONL + TensorBoard + progress bar.
pub struct Metrics {
    sink: MetricsSink,
    bar: indicatif::ProgressBar,
    error: Option<String>,
}

impl Metrics {
    /// Logs into `sink`, showing progress on `bar`.
    pub fn new(sink: MetricsSink, bar: indicatif::ProgressBar) -> Self {
        Metrics { sink, bar, error: None }
    }
}

impl Actor for Metrics {
    type Context = Context<Self>;
}

impl Metrics {
    fn keep(&mut self, r: std::result::Result<(), crate::metrics::MetricsError>) {
        if let (Err(e), None) = (r, &self.error) {
            self.error = Some(e.to_string());
        }
    }
}

impl Handler<Log> for Metrics {
    type Result = ();

    fn handle(&mut self, m: Log, _: &mut Context<Self>) {
        match m {
            Log::Step(r, tokens_per_s) => {
                self.bar.set_position(r.step);
                self.bar.set_message(format!("loss {:.3} lr {:.2e} {:.0} tok/s", r.loss, r.lr, tokens_per_s));
                let mut fields = vec![
                    ("loss", r.loss as f64),
                    ("ce", r.ce as f64),
                    ("kl", r.kl as f64),
                    ("lb", r.lb as f64),
                    ("z", r.z as f64),
                    ("grad_norm", r.grad_norm as f64),
                    ("clip", r.clip as f64),
                    ("lr", r.lr as f64),
                    ("tokens", r.tokens as f64),
                    ("temperature", r.temperature as f64),
                    ("applied", r.applied as u8 as f64),
                    ("tokens_per_s", tokens_per_s),
                ];
                if r.named != 0.0 {
                    // Named experts (Mode B): the router cross-entropy toward the domain's expert.
                    fields.push(("named", r.named as f64));
                }
                let r = self.sink.train(r.step, crate::metrics::tensorboard::now_wall_time(), &fields);
                self.keep(r);
            }
            Log::Eval(e) => {
                let step = e.step;
                let msg = e.one_line();
                self.bar.println(format!("eval @ {step}: {msg}"));
                let mut v = serde_json::to_value(&e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.remove("step"); // the line's own `step` field says it
                }
                let r = self.sink.record("eval_report", step, v);
                self.keep(r);
                let scalars = e.scalars();
                let fields: Vec<(&str, f64)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                let r = self.sink.scalars("eval", step, crate::metrics::tensorboard::now_wall_time(), &fields);
                self.keep(r);
            }
            Log::Action(a) => {
                self.bar.println(format!("breaker {:?}: {}", a.action.breaker, a.action.reason));
                let r = self.sink.record("breaker", a.action.step, serde_json::to_value(&a).unwrap_or_default());
                self.keep(r);
            }
            Log::Checkpoint(step, path) => {
                let r = self.sink.record("checkpoint", step, serde_json::json!({ "path": path }));
                self.keep(r);
            }
            Log::Event(kind, step, v) => {
                let r = self.sink.record(kind, step, v);
                self.keep(r);
            }
        }
    }
}

impl Handler<Drain> for Metrics {
    type Result = std::result::Result<u64, String>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> std::result::Result<u64, String> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(self.sink.lines()),
        }
    }
}

impl Handler<Finish> for Metrics {
    type Result = Option<String>;

    fn handle(&mut self, _: Finish, _: &mut Context<Self>) -> Option<String> {
        self.bar.finish_and_clear();
        let r = self.sink.flush();
        self.keep(r);
        self.error.take()
    }
}
