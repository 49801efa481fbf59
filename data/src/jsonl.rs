//! JSON Lines: one record per line, every error with file and line number.
//!
//! Blank lines are skipped; any other line that is not UTF-8 or not the expected record is an
//! error (never a silently shorter dataset).

use crate::error::{DataError, Result};
use std::io::BufRead;
use std::path::Path;

/// Calls `f(line_number, line)` for each non-blank line (1-based numbers), checking UTF-8.
pub fn for_each_line(path: &Path, mut f: impl FnMut(usize, &str) -> Result<()>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        let line = std::str::from_utf8(&buf).map_err(|e| DataError::Line {
            path: path.to_path_buf(),
            line: line_no,
            message: format!("not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1),
        })?;
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        f(line_no, line)?;
    }
}

/// Serialises records as JSONL (one compact JSON object per line).
pub fn to_jsonl<T: serde::Serialize>(records: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r).expect("serialising plain records to memory cannot fail");
        out.push(b'\n');
    }
    out
}
