//! Metrics writers: JSON Lines ([`jsonl`]) and TensorBoard event files ([`tensorboard`], framed by
//! [`tfrecord`]), combined by [`MetricsSink`].
//!
//! A metrics directory holds `metrics.jsonl` (every scalar line plus free-form records such as breaker
//! actions and eval results) and one TensorBoard event file per (re)start of the run, so that
//! `tensorboard --logdir` and `wandb sync --sync-tensorboard` work. Nothing here panics on IO errors:
//! every failure is a [`MetricsError`] naming the file.

pub mod jsonl;
pub mod tensorboard;
pub mod tfrecord;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use jsonl::{JsonlWriter, ResumePoint};
pub use tensorboard::{now_wall_time, EventWriter};

/// File name of the JSON Lines log inside a metrics directory.
pub const JSONL_NAME: &str = "metrics.jsonl";

/// Errors of the metrics writers and readers.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// An IO operation on `path` failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A file's bytes are not what a writer of ours produces (bad crc, truncated record, no step).
    #[error("{}: corrupt at byte {offset}: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record or line.
        offset: usize,
        /// What was wrong.
        what: String,
    },
    /// A complete JSONL line does not parse.
    #[error("{}: line {line}: {cause}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        cause: serde_json::Error,
    },
    /// A value could not be serialised to JSON.
    #[error("{}: cannot encode a line: {cause}", path.display())]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// The serialisation error.
        cause: serde_json::Error,
    },
    /// A record's field reuses one of the keys every line starts with (`step`, `wall_time`, `kind`).
    #[error("{}: field {field:?} is reserved", path.display())]
    ReservedField {
        /// The file being written.
        path: PathBuf,
        /// The offending key.
        field: String,
    },
}

impl From<atomicio::Error> for MetricsError {
    fn from(e: atomicio::Error) -> Self {
        MetricsError::Io { path: e.path, cause: e.cause }
    }
}

impl MetricsError {
    /// An IO error on `path`.
    pub fn io(path: &Path, cause: std::io::Error) -> MetricsError {
        MetricsError::Io { path: path.to_path_buf(), cause }
    }
}

/// JSONL log + TensorBoard event file of one run directory.
#[derive(Debug)]
pub struct MetricsSink {
    dir: PathBuf,
    jsonl: JsonlWriter,
    events: EventWriter,
    repairs: Vec<String>,
}

impl MetricsSink {
    /// Opens the metrics of `dir` (created if missing). `resume = None` starts fresh (an existing
    /// `metrics.jsonl` is truncated); `Some(at)` keeps the JSONL lines of the checkpoint (see
    /// [`JsonlWriter::open_resume`]; what it repaired is in [`MetricsSink::repairs`]) and marks the
    /// new event file so that TensorBoard hides the older files' steps after `at.step`.
    pub fn create(dir: &Path, resume: Option<ResumePoint>) -> Result<MetricsSink, MetricsError> {
        std::fs::create_dir_all(dir).map_err(|e| MetricsError::io(dir, e))?;
        let path = dir.join(JSONL_NAME);
        let (jsonl, repairs) = match resume {
            None => (JsonlWriter::create(&path)?, Vec::new()),
            Some(at) => JsonlWriter::open_resume(&path, at)?,
        };
        let events = EventWriter::create_at(dir, now_wall_time(), resume.map(|r| r.step))?;
        Ok(MetricsSink { dir: dir.to_path_buf(), jsonl, events, repairs })
    }

    /// One warning per repair of a damaged `metrics.jsonl` made when resuming.
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    /// Complete lines of `metrics.jsonl` (a checkpoint records them).
    pub fn lines(&self) -> u64 {
        self.jsonl.lines()
    }

    /// The metrics directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The JSONL file.
    pub fn jsonl_path(&self) -> &Path {
        self.jsonl.path()
    }

    /// Training scalars: one JSONL line of kind `train` and TensorBoard tags `train/<name>`.
    pub fn train(&mut self, step: u64, wall_time: f64, fields: &[(&str, f64)]) -> Result<(), MetricsError> {
        self.scalars("train", step, wall_time, fields)
    }

    /// Scalars of any `kind` (e.g. `eval`): one JSONL line of that kind and TensorBoard tags
    /// `<kind>/<name>`; the event file is flushed so a crash loses nothing already logged.
    pub fn scalars(
        &mut self,
        kind: &str,
        step: u64,
        wall_time: f64,
        fields: &[(&str, f64)],
    ) -> Result<(), MetricsError> {
        let values: Vec<(&str, Value)> = fields.iter().map(|&(k, v)| (k, Value::from(v))).collect();
        self.jsonl.write(kind, step, wall_time, &values)?;
        for &(name, v) in fields {
            self.events.scalar(&format!("{kind}/{name}"), step, wall_time, v)?;
        }
        self.events.flush()
    }

    /// A free-form record (breaker action, eval result, ...) stamped with the current time; JSONL only.
    /// An object's members become the line's fields, anything else goes under `value`.
    pub fn record(&mut self, kind: &str, step: u64, value: Value) -> Result<(), MetricsError> {
        self.record_at(kind, step, now_wall_time(), &value)
    }

    /// [`MetricsSink::record`] with an explicit wall time.
    pub fn record_at(&mut self, kind: &str, step: u64, wall_time: f64, value: &Value) -> Result<(), MetricsError> {
        self.jsonl.write_value(kind, step, wall_time, value)
    }

    /// Pushes everything buffered to the OS.
    pub fn flush(&mut self) -> Result<(), MetricsError> {
        self.events.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::tensorboard::{event_files, read_events, EventWhat};
    use super::*;
    use serde_json::json;

    fn tb_scalars(dir: &Path) -> Vec<(String, i64, f32)> {
        let mut out = Vec::new();
        for f in event_files(dir).unwrap() {
            for ev in read_events(&f).unwrap() {
                if let EventWhat::Summary(values) = ev.what {
                    out.extend(values.into_iter().map(|v| (v.tag, ev.step, v.simple_value.unwrap())));
                }
            }
        }
        out
    }

    #[test]
    fn sink_writes_both_files_and_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p1").join("metrics");
        let mut sink = MetricsSink::create(&dir, None).unwrap();
        for step in 1..=4 {
            sink.train(step, 100.0 + step as f64, &[("loss", 3.0 - step as f64 * 0.5), ("lr", 1e-3)]).unwrap();
        }
        sink.scalars("eval", 4, 104.5, &[("ppl_medical", 12.5)]).unwrap();
        sink.record("breaker", 4, json!({"breaker": "collapse", "reason": "share 0.9"})).unwrap();
        sink.flush().unwrap();
        let lines = jsonl::read_lines(sink.jsonl_path()).unwrap();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], json!({"step": 1, "wall_time": 101.0, "kind": "train", "loss": 2.5, "lr": 1e-3}));
        assert_eq!(lines[4]["kind"], "eval");
        assert_eq!(lines[5]["breaker"], "collapse");
        let tb = tb_scalars(&dir);
        assert_eq!(tb.len(), 9);
        assert_eq!(tb[0], ("train/loss".to_string(), 1, 2.5));
        assert_eq!(tb[8], ("eval/ppl_medical".to_string(), 4, 12.5));
        drop(sink);

        // Resume from step 2: JSONL forgets steps 3..4, a second event file starts with a purge marker.
        let mut sink = MetricsSink::create(&dir, Some(ResumePoint { step: 2, lines: None })).unwrap();
        sink.train(3, 200.0, &[("loss", 0.25)]).unwrap();
        drop(sink);
        let steps: Vec<u64> =
            jsonl::read_lines(&dir.join(JSONL_NAME)).unwrap().iter().map(|v| v["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2, 3]);
        let files = event_files(&dir).unwrap();
        assert_eq!(files.len(), 2);
        let newest = files.iter().map(|f| read_events(f).unwrap()).find(|evs| evs.len() == 3).unwrap();
        assert_eq!((newest[1].step, &newest[1].what), (3, &EventWhat::SessionLog(tensorboard::SESSION_START)));
    }

    #[test]
    fn sink_reports_io_errors_instead_of_panicking() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let err = MetricsSink::create(&blocker.join("metrics"), None).unwrap_err();
        assert!(matches!(err, MetricsError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("file"), "{err}");
    }
}
