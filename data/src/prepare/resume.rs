//! Resume: the work directory beside the output (`.<out>.prepare-work`) holds the finished
//! units' shards and `state.json` (written atomically after each unit). A new run with the same
//! config and inputs continues after the last finished unit, rebuilding the dedup index from the
//! finished shards (each checked against its SHA-256); the output is byte-identical to an
//! uninterrupted run. A different config or changed inputs discard the work directory.

use super::config::Split;
use super::dedup::{Deduper, DocRef};
use super::manifest::{PrepareState, PreparedDoc, VERSION};
use super::process::Pipeline;
use super::sources::Unit;
use crate::error::{DataError, Result};
use crate::fsutil::{read_json, write_json_atomic};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// The state file in the work directory.
pub const STATE: &str = "state.json";

/// The work directory of output `out`.
pub fn work_dir(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| DataError::config("--out", format!("`{}` is not a directory name", out.display())))?;
    Ok(out.with_file_name(format!(".{}.prepare-work", name.to_string_lossy())))
}

fn start(work: &Path, config_sha256: &str) -> Result<PrepareState> {
    if work.exists() {
        std::fs::remove_dir_all(work).map_err(|e| DataError::io(work, e))?;
    }
    for s in Split::ALL {
        let d = work.join(s.name());
        std::fs::create_dir_all(&d).map_err(|e| DataError::io(&d, e))?;
    }
    let state = PrepareState { version: VERSION, config_sha256: config_sha256.to_string(), units: Vec::new() };
    write_json_atomic(&work.join(STATE), &state)?;
    Ok(state)
}

/// The state to continue from, and why earlier work was discarded (if it was).
pub fn load_or_start(work: &Path, config_sha256: &str, units: &[Unit]) -> Result<(PrepareState, Option<String>)> {
    if !work.exists() {
        return Ok((start(work, config_sha256)?, None));
    }
    let why = match read_json::<PrepareState>(&work.join(STATE)) {
        Err(e) => Some(format!("unreadable state ({e})")),
        Ok(s) if s.version != VERSION || s.config_sha256 != config_sha256 => {
            Some("the config changed since the interrupted run".to_string())
        }
        Ok(s) if s.units.len() > units.len() || s.units.iter().zip(units).any(|(r, u)| &r.unit != u) => {
            Some("the input files changed since the interrupted run".to_string())
        }
        Ok(s) => {
            // Temporary shards of the unit that was running are stale.
            for split in Split::ALL {
                let d = work.join(split.name());
                for e in std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))? {
                    let p = e.map_err(|e| DataError::io(&d, e))?.path();
                    if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                        std::fs::remove_file(&p).map_err(|e| DataError::io(&p, e))?;
                    }
                }
            }
            return Ok((s, None));
        }
    };
    let why = why.map(|w| format!("{}: {w}; starting over", work.display()));
    Ok((start(work, config_sha256)?, why))
}

/// Lines read per parallel batch when rebuilding.
const REBUILD_BATCH: usize = 4096;

/// Rebuilds the dedup index from the finished units' shards, checking their SHA-256.
pub fn rebuild(state: &PrepareState, work: &Path, pipeline: &Pipeline, dedup: &mut Deduper) -> Result<()> {
    for (ui, rec) in state.units.iter().enumerate() {
        for shard in &rec.shards {
            let path = work.join(&shard.file);
            let file = std::fs::File::open(&path).map_err(|e| DataError::io(&path, e))?;
            let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
            let mut sha = Sha256::new();
            let (mut buf, mut line_no, mut batch) = (Vec::new(), 0u64, Vec::new());
            let mut insert = |batch: &mut Vec<(u64, String)>| {
                let keys: Vec<(u64, (u128, Vec<u64>))> = std::mem::take(batch)
                    .into_par_iter()
                    .map(|(line, text)| (line, pipeline.dedup_keys(&text, &mut Vec::new(), &mut Vec::new())))
                    .collect();
                for (line, (hash, bands)) in keys {
                    dedup.insert(hash, &bands, DocRef { unit: ui as u32, split: shard.split.index() as u8, line });
                }
            };
            loop {
                buf.clear();
                let n = reader.read_until(b'\n', &mut buf).map_err(|e| DataError::io(&path, e))?;
                if n == 0 {
                    break;
                }
                sha.update(&buf);
                let doc: PreparedDoc = serde_json::from_slice(&buf).map_err(|e| DataError::Line {
                    path: path.clone(),
                    line: line_no as usize + 1,
                    message: format!("damaged shard in the work directory: {e}"),
                })?;
                batch.push((line_no, doc.text));
                line_no += 1;
                if batch.len() >= REBUILD_BATCH {
                    insert(&mut batch);
                }
            }
            insert(&mut batch);
            let got: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if got != shard.sha256 {
                return Err(DataError::file(
                    &path,
                    format!(
                        "SHA-256 {got} differs from the state's {}; delete {} to start over",
                        shard.sha256,
                        work.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}
