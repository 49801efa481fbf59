//! Plain-text directory sources: each `.txt` file is one document, its id the path relative to
//! the source directory.

use super::{BadKind, FileReport, RawDoc};
use crate::error::{DataError, Result};
use crate::prepare::config::SourceConfig;
use std::path::PathBuf;

/// Reads `files` of source `s` (a directory).
pub(super) fn read_files(
    s: &SourceConfig,
    files: &[PathBuf],
    report: &mut FileReport,
    on_doc: &mut dyn FnMut(RawDoc) -> Result<()>,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut done = 0u64;
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| DataError::io(f, e))?;
        done += bytes.len() as u64;
        report.records += 1;
        let rel = f.strip_prefix(&s.path).unwrap_or(f).to_string_lossy().into_owned();
        match String::from_utf8(bytes) {
            Ok(text) => on_doc(RawDoc { id: format!("{}:{rel}", s.name), text, url: None })?,
            Err(_) => report.count_bad(BadKind::InvalidUtf8, || rel.clone(), &s.text_fields),
        }
        on_bytes(done);
    }
    Ok(())
}
