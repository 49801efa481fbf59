//! JSON Lines metrics: one object per line, `{"step":..,"wall_time":..,"kind":..,...fields}`.
//!
//! Each line is formatted in memory and appended with one `write` to a file opened in append mode,
//! so a crash leaves at most a truncated last line, which [`JsonlWriter::open_resume`] drops.
//! Non-finite numbers are written as `null` (JSON has no NaN).

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
        Ok(JsonlWriter { path: path.to_path_buf(), file: open_append(path, true)? })
    }

    /// Reopens `path` for a run resumed from `resume_step`: keeps the lines with `step <= resume_step`
    /// (dropping a truncated last line), then appends. The kept lines replace `path` atomically
    /// ([`atomicio::write_file`]), so a crash leaves either the old or the new file. A missing
    /// file is created. A complete line that is not a JSON object with an integer `step` is an error.
    pub fn open_resume(path: &Path, resume_step: u64) -> Result<JsonlWriter, MetricsError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return JsonlWriter::create(path),
            Err(e) => return Err(MetricsError::io(path, e)),
        };
        let kept = keep_until(path, &bytes, resume_step)?;
        if kept.len() != bytes.len() {
            atomicio::write_file(path, &kept)?;
        }
        Ok(JsonlWriter { path: path.to_path_buf(), file: open_append(path, false)? })
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
        let enc = |e| MetricsError::Encode { path: self.path.clone(), source: e };
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
        self.file.flush().map_err(|e| MetricsError::io(&self.path, e))
    }
}

/// The step of one complete line, validated.
fn line_step(path: &Path, offset: usize, number: usize, line: &[u8]) -> Result<u64, MetricsError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| MetricsError::Json {
        path: path.to_path_buf(),
        line: number,
        source: e,
    })?;
    v.get("step").and_then(Value::as_u64).ok_or_else(|| MetricsError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what: format!("line {number} has no integer \"step\""),
    })
}

/// The complete lines of `bytes` with `step <= resume_step`, in order, newline-terminated.
fn keep_until(path: &Path, bytes: &[u8], resume_step: u64) -> Result<Vec<u8>, MetricsError> {
    let mut kept = Vec::with_capacity(bytes.len());
    let mut offset = 0usize;
    for (i, chunk) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let start = offset;
        offset += chunk.len();
        let Some(line) = chunk.strip_suffix(b"\n") else { break }; // truncated tail of a crash
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line_step(path, start, i + 1, line)? <= resume_step {
            kept.extend_from_slice(chunk);
        }
    }
    Ok(kept)
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
            source: e,
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

    #[test]
    fn open_resume_keeps_steps_up_to_resume_and_drops_a_truncated_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.jsonl");
        let mut w = JsonlWriter::create(&path).unwrap();
        for step in 0..6 {
            w.write("train", step, step as f64, &[("loss", json!(1.0))]).unwrap();
        }
        drop(w);
        // A crash mid-line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"step":6,"wall_ti"#).unwrap();
        drop(f);
        let mut w = JsonlWriter::open_resume(&path, 3).unwrap();
        w.write("train", 4, 10.0, &[("loss", json!(0.5))]).unwrap();
        let steps: Vec<u64> = read_lines(&path).unwrap().iter().map(|v| v["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![0, 1, 2, 3, 4]);
        assert_eq!(read_lines(&path).unwrap()[4]["wall_time"], json!(10.0));
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["m.jsonl"], "no temporary file is left");
        // Resuming past the end keeps everything; a missing file is created.
        drop(w);
        JsonlWriter::open_resume(&path, 100).unwrap();
        assert_eq!(read_lines(&path).unwrap().len(), 5);
        JsonlWriter::open_resume(&tmp.path().join("new.jsonl"), 3).unwrap();
        assert!(tmp.path().join("new.jsonl").exists());
    }

    #[test]
    fn open_resume_rejects_a_corrupt_complete_line_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.jsonl");
        std::fs::write(&path, "{\"step\":0}\nnot json\n{\"step\":2}\n").unwrap();
        let err = JsonlWriter::open_resume(&path, 5).unwrap_err();
        assert!(matches!(err, MetricsError::Json { line: 2, .. }), "{err:?}");
        assert!(err.to_string().contains("m.jsonl"), "{err}");
        std::fs::write(&path, "{\"step\":0}\n{\"kind\":\"x\"}\n").unwrap();
        let err = JsonlWriter::open_resume(&path, 5).unwrap_err();
        assert!(matches!(err, MetricsError::Corrupt { offset: 11, .. }), "{err:?}");
        // The file is untouched by a failed resume.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":0}\n{\"kind\":\"x\"}\n");
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
