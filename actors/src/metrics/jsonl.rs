//! JSON Lines metrics: one object per line, `{"step":..,"wall_time":..,"kind":..,...fields}`.
//!
//! Each line is formatted in memory and appended with one `write` to a file opened in append mode,
//! so a crash leaves at most a truncated last line, which [`JsonlWriter::open_resume`] drops.
//! Non-finite numbers are written as `null` (JSON has no NaN). A resumed run keeps exactly the
//! lines its checkpoint counted ([`ResumePoint`]); damage (a garbage line, a cut line) is repaired
//! with a warning instead of stopping the run.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::MetricsError;

/// Keys every line starts with; fields may not reuse them.
pub const RESERVED_KEYS: [&str; 3] = ["step", "wall_time", "kind"];

/// Appends metric lines to one `.jsonl` file.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    file: File,
    /// Complete lines in the file.
    lines: u64,
}

/// Where a resumed log continues: the checkpoint's step and, when it recorded it, how many
/// complete lines the log had when the checkpoint was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// Optimiser step of the checkpoint.
    pub step: u64,
    /// Lines of the log at the checkpoint (None: keep the lines with `step <= self.step`).
    pub lines: Option<u64>,
}

/// What [`JsonlWriter::open_resume`] kept and what it had to repair.
#[derive(Debug, Default)]
struct Kept {
    bytes: Vec<u8>,
    lines: u64,
    warnings: Vec<String>,
}

fn open_append(path: &Path, truncate: bool) -> Result<File, MetricsError> {
    let mut opts = OpenOptions::new();
    if truncate {
        opts.write(true).create(true).truncate(true);
    } else {
        opts.append(true).create(true);
    }
    opts.open(path).map_err(|e| MetricsError::io(path, e))
}

impl JsonlWriter {
    /// Starts a fresh file at `path` (an existing file is truncated: a run that starts from step 0
    /// has no earlier lines worth keeping).
    pub fn create(path: &Path) -> Result<JsonlWriter, MetricsError> {
        Ok(JsonlWriter { path: path.to_path_buf(), file: open_append(path, true)?, lines: 0 })
    }

    /// Reopens `path` for a run resumed at `at`, then appends. Kept are the first `at.lines`
    /// lines (the log as the checkpoint saw it), or, for a checkpoint that did not count them,
    /// the lines with `step <= at.step`. A line that is not a JSON object with an integer `step`
    /// (garbage, a cut line) is dropped; so is a truncated last line. The kept lines replace
    /// `path` atomically ([`atomicio::write_file`]), so a crash leaves either the old or the new
    /// file. A missing file is created (and warned about when the checkpoint counted lines).
    /// Returns the writer and a warning per repair.
    pub fn open_resume(path: &Path, at: ResumePoint) -> Result<(JsonlWriter, Vec<String>), MetricsError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut warnings = Vec::new();
                if let Some(n) = at.lines.filter(|&n| n > 0) {
                    warnings.push(format!("{}: missing; the {n} lines of the checkpoint are lost", path.display()));
                }
                return Ok((JsonlWriter::create(path)?, warnings));
            }
            Err(e) => return Err(MetricsError::io(path, e)),
        };
        let kept = keep_until(path, &bytes, at);
        if kept.bytes.len() != bytes.len() {
            atomicio::write_file(path, &kept.bytes)?;
        }
        let writer = JsonlWriter { path: path.to_path_buf(), file: open_append(path, false)?, lines: kept.lines };
        Ok((writer, kept.warnings))
    }

    /// Complete lines in the file (kept on resume plus written since).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `{"step","wall_time","kind"}` followed by `fields` in order.
    pub fn write(
        &mut self,
        kind: &str,
        step: u64,
        wall_time: f64,
        fields: &[(&str, Value)],
    ) -> Result<(), MetricsError> {
        self.write_line(kind, step, wall_time, fields.iter().map(|(k, v)| (*k, v)))
    }

    /// Appends a line whose fields are the members of `value` if it is an object, else `{"value": value}`.
    pub fn write_value(&mut self, kind: &str, step: u64, wall_time: f64, value: &Value) -> Result<(), MetricsError> {
        match value {
            Value::Object(map) => self.write_line(kind, step, wall_time, map.iter().map(|(k, v)| (k.as_str(), v))),
            other => self.write_line(kind, step, wall_time, std::iter::once(("value", other))),
        }
    }

    fn write_line<'a>(
        &mut self,
        kind: &str,
        step: u64,
        wall_time: f64,
        fields: impl Iterator<Item = (&'a str, &'a Value)>,
    ) -> Result<(), MetricsError> {
        let enc = |e| MetricsError::Encode { path: self.path.clone(), cause: e };
        let mut line = format!("{{\"step\":{step},\"wall_time\":");
        line += &serde_json::to_string(&wall_time).map_err(enc)?;
        line += ",\"kind\":";
        line += &serde_json::to_string(kind).map_err(enc)?;
        for (k, v) in fields {
            if RESERVED_KEYS.contains(&k) {
                return Err(MetricsError::ReservedField { path: self.path.clone(), field: k.to_string() });
            }
            line.push(',');
            line += &serde_json::to_string(k).map_err(enc)?;
            line.push(':');
            line += &serde_json::to_string(v).map_err(enc)?;
        }
        line += "}\n";
        self.file.write_all(line.as_bytes()).map_err(|e| MetricsError::io(&self.path, e))?;
        self.file.flush().map_err(|e| MetricsError::io(&self.path, e))?;
        self.lines += 1;
        Ok(())
    }
}

/// The step of one complete line, or why it is not a metrics record.
fn line_step(line: &[u8]) -> Result<u64, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    v.get("step").and_then(Value::as_u64).ok_or_else(|| "no integer \"step\"".to_string())
}

/// The lines of `bytes` a run resumed at `at` keeps, in order, newline-terminated.
fn keep_until(path: &Path, bytes: &[u8], at: ResumePoint) -> Kept {
    let mut kept = Kept { bytes: Vec::with_capacity(bytes.len()), ..Kept::default() };
    let mut seen = 0u64; // complete lines looked at, damaged ones included
    let mut offset = 0usize;
    for (i, chunk) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let start = offset;
        offset += chunk.len();
        if at.lines.is_some_and(|n| seen >= n) {
            break; // written after the checkpoint
        }
        let Some(line) = chunk.strip_suffix(b"\n") else {
            // The cut tail of a crash: expected only past the checkpoint's lines.
            if at.lines.is_some() {
                kept.warnings.push(format!("{}: line {} is cut off at byte {start}; dropped", path.display(), i + 1));
            }
            break;
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        seen += 1;
        match line_step(line) {
            Ok(step) if at.lines.is_some() || step <= at.step => {
                kept.bytes.extend_from_slice(chunk);
                kept.lines += 1;
            }
            Ok(_) => {}
            Err(why) => kept.warnings.push(format!(
                "{}: line {} (byte {start}) is not a metrics record: {why}; dropped",
                path.display(),
                i + 1
            )),
        }
    }
    if let Some(n) = at.lines.filter(|&n| seen < n) {
        kept.warnings.push(format!(
            "{}: holds {seen} of the {n} lines of the checkpoint at step {}; the rest are lost",
            path.display(),
            at.step
        ));
    }
    kept
}

/// Reads every complete line of a metrics file as JSON (a truncated last line is skipped).
pub fn read_lines(path: &Path) -> Result<Vec<Value>, MetricsError> {
    let bytes = std::fs::read(path).map_err(|e| MetricsError::io(path, e))?;
    let mut out = Vec::new();
    for (i, chunk) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let Some(line) = chunk.strip_suffix(b"\n") else { break };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(serde_json::from_slice(line).map_err(|e| MetricsError::Json {
            path: path.to_path_buf(),
            line: i + 1,
            cause: e,
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_start_with_step_wall_time_kind_and_keep_field_order() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.jsonl");
        let mut w = JsonlWriter::create(&path).unwrap();
        w.write("train", 3, 1.5, &[("loss", json!(2.5)), ("lr", json!(f64::NAN)), ("a", json!("x"))]).unwrap();
        w.write_value("eval", 4, 2.0, &json!({"ppl": 9.0})).unwrap();
        w.write_value("breaker", 5, 2.5, &json!([1, 2])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"step":3,"wall_time":1.5,"kind":"train","loss":2.5,"lr":null,"a":"x"}"#);
        assert_eq!(lines[1], r#"{"step":4,"wall_time":2.0,"kind":"eval","ppl":9.0}"#);
        assert_eq!(lines[2], r#"{"step":5,"wall_time":2.5,"kind":"breaker","value":[1,2]}"#);
        assert_eq!(read_lines(&path).unwrap().len(), 3);
        let err = w.write("train", 6, 3.0, &[("step", json!(1))]).unwrap_err();
        assert!(matches!(err, MetricsError::ReservedField { ref field, .. } if field == "step"), "{err}");
    }

    fn steps_of(path: &Path) -> Vec<u64> {
        read_lines(path).unwrap().iter().map(|v| v["step"].as_u64().unwrap()).collect()
    }

    const fn by_step(step: u64) -> ResumePoint {
        ResumePoint { step, lines: None }
    }

    #[test]
    fn open_resume_keeps_steps_up_to_resume_and_drops_a_truncated_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.jsonl");
        let mut w = JsonlWriter::create(&path).unwrap();
        for step in 0..6 {
            w.write("train", step, step as f64, &[("loss", json!(1.0))]).unwrap();
        }
        assert_eq!(w.lines(), 6);
        drop(w);
        // A crash mid-line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"step":6,"wall_ti"#).unwrap();
        drop(f);
        let (mut w, warnings) = JsonlWriter::open_resume(&path, by_step(3)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(w.lines(), 4);
        w.write("train", 4, 10.0, &[("loss", json!(0.5))]).unwrap();
        assert_eq!(steps_of(&path), vec![0, 1, 2, 3, 4]);
        assert_eq!(read_lines(&path).unwrap()[4]["wall_time"], json!(10.0));
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["m.jsonl"], "no temporary file is left");
        // Resuming past the end keeps everything; a missing file is created.
        drop(w);
        JsonlWriter::open_resume(&path, by_step(100)).unwrap();
        assert_eq!(read_lines(&path).unwrap().len(), 5);
        JsonlWriter::open_resume(&tmp.path().join("new.jsonl"), by_step(3)).unwrap();
        assert!(tmp.path().join("new.jsonl").exists());
    }

    #[test]
    fn open_resume_keeps_exactly_the_lines_the_checkpoint_counted() {
        // After a rollback, steps repeat: the file order, not the step, says what came before.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.jsonl");
        let mut w = JsonlWriter::create(&path).unwrap();
        for step in [1, 2, 3, 4, 2, 3, 4, 5] {
            w.write("train", step, 0.0, &[]).unwrap();
        }
        drop(w);
        let (w, warnings) = JsonlWriter::open_resume(&path, ResumePoint { step: 3, lines: Some(6) }).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((w.lines(), steps_of(&path)), (6, vec![1, 2, 3, 4, 2, 3]));
    }

    #[test]
    fn open_resume_repairs_garbage_and_cut_lines_with_a_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.jsonl");
        // Garbage inside the checkpoint's lines, a line without a step, a cut line, trailing junk.
        std::fs::write(&path, "{\"step\":1}\n\u{1}garbage\n{\"kind\":\"x\"}\n{\"step\":2}\n{\"step\":3,\"wa").unwrap();
        let (w, warnings) = JsonlWriter::open_resume(&path, ResumePoint { step: 3, lines: Some(5) }).unwrap();
        assert_eq!((w.lines(), steps_of(&path)), (2, vec![1, 2]));
        let text = warnings.join("\n");
        assert_eq!(warnings.len(), 4, "{text}");
        assert!(text.contains("m.jsonl: line 2 (byte 11) is not a metrics record: not JSON"), "{text}");
        assert!(text.contains("line 3 (byte 20) is not a metrics record: no integer \"step\""), "{text}");
        assert!(text.contains("line 5 is cut off"), "{text}");
        assert!(text.contains("holds 4 of the 5 lines of the checkpoint at step 3"), "{text}");
        // Without a line count (older checkpoints) garbage is dropped the same way.
        std::fs::write(&path, "{\"step\":0}\nnot json\n{\"step\":2}\n{\"step\":9}\n").unwrap();
        let (_, warnings) = JsonlWriter::open_resume(&path, by_step(5)).unwrap();
        assert_eq!(steps_of(&path), vec![0, 2]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        // A missing log of a checkpoint that counted lines is recreated with a warning.
        let (_, warnings) =
            JsonlWriter::open_resume(&tmp.path().join("gone.jsonl"), ResumePoint { step: 3, lines: Some(4) }).unwrap();
        assert!(warnings[0].contains("gone.jsonl: missing"), "{warnings:?}");
    }

    #[test]
    fn io_errors_are_typed_and_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("missing_dir").join("m.jsonl");
        let err = JsonlWriter::create(&path).unwrap_err();
        assert!(matches!(err, MetricsError::Io { .. }));
        assert!(err.to_string().contains("missing_dir"), "{err}");
    }
}
