//! P4's ledger, `p4/ledger.jsonl`: one JSON object per line, in order: the pre-QAT model's
//! evaluation and its PTQ-Q5 reference, every stage start (calibration), every evaluation (raw and
//! EMA, KL to pre-QAT, deltas), every export, the V/O gate's and the regression breaker's
//! decisions with their reasons. A checkpoint records how many lines it covers; a resumed run
//! cuts the ledger back to them, so an interrupted p4 ends with the same ledger as one never
//! interrupted.

use crate::error::{EngineError, Result};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The ledger's file name in the stage directory.
pub const LEDGER_FILE: &str = "ledger.jsonl";

/// An open ledger.
pub struct Ledger {
    path: PathBuf,
    /// Complete lines in the file.
    pub lines: u64,
}

impl Ledger {
    /// Opens `dir/ledger.jsonl`, keeping its first `keep` lines (None: a fresh ledger).
    pub fn open(dir: &Path, keep: Option<u64>) -> Result<Ledger> {
        let path = dir.join(LEDGER_FILE);
        let text = match keep {
            None => String::new(),
            Some(n) => {
                let old = std::fs::read_to_string(&path).unwrap_or_default();
                let kept: Vec<&str> =
                    old.split_inclusive('\n').filter(|l| l.ends_with('\n')).take(n as usize).collect();
                if (kept.len() as u64) < n {
                    return Err(EngineError::Checkpoint {
                        path: path.clone(),
                        msg: format!("the checkpoint covers {n} ledger lines, the ledger holds {}", kept.len()),
                    });
                }
                kept.concat()
            }
        };
        atomicio::write_file(&path, text.as_bytes())?;
        Ok(Ledger { path, lines: keep.unwrap_or(0) })
    }

    /// Appends `entry` (an object; `event` names it) as one line, flushed to disk.
    pub fn append(&mut self, entry: Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(EngineError::io(&self.path))?;
        let mut line = entry.to_string();
        line.push('\n');
        f.write_all(line.as_bytes()).map_err(EngineError::io(&self.path))?;
        f.sync_data().map_err(EngineError::io(&self.path))?;
        self.lines += 1;
        Ok(())
    }

    /// Every entry of the ledger at `path` (unparseable lines are an error naming the line).
    pub fn read(path: &Path) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(path).map_err(EngineError::io(path))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| EngineError::config(path.display().to_string(), format!("line {}: {e}", i + 1)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resumed_ledger_keeps_exactly_the_lines_its_checkpoint_covers() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path(), None).unwrap();
        for i in 0..4 {
            l.append(json!({"event": "eval", "i": i})).unwrap();
        }
        // A kill mid-line leaves a partial last line.
        let path = dir.path().join(LEDGER_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"event\": \"ev");
        std::fs::write(&path, text).unwrap();
        let mut l = Ledger::open(dir.path(), Some(2)).unwrap();
        l.append(json!({"event": "export"})).unwrap();
        let got = Ledger::read(&path).unwrap();
        assert_eq!(
            got,
            vec![json!({"event": "eval", "i": 0}), json!({"event": "eval", "i": 1}), json!({"event": "export"})]
        );
        assert_eq!(l.lines, 3);
        let e = Ledger::open(dir.path(), Some(9)).err().unwrap().to_string();
        assert!(e.contains("9 ledger lines"), "{e}");
        assert_eq!(Ledger::open(dir.path(), None).unwrap().lines, 0);
    }
}
