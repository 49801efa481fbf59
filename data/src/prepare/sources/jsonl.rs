//! JSONL source files: one JSON object per line; `text_fields`, `id_field` and `url_field` are
//! dotted paths into it (`meta.abstract`).

use super::{default_id, BadKind, FileReport, RawDoc};
use crate::error::{DataError, Result};
use crate::prepare::config::SourceConfig;
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;

/// The value at a dotted path.
fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.as_object()?.get(k))
}

/// A string value, or an integer written out (ids).
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The document of one parsed line, or why there is none.
pub(super) fn doc_of(
    v: &Value,
    s: &SourceConfig,
    default: impl FnOnce() -> String,
) -> std::result::Result<RawDoc, BadKind> {
    if !v.is_object() {
        return Err(BadKind::InvalidJson);
    }
    let parts: Vec<&str> = s.text_fields.iter().filter_map(|f| field(v, f)?.as_str()).collect();
    if parts.is_empty() {
        return Err(BadKind::MissingText);
    }
    let id = s.id_field.as_deref().and_then(|f| scalar_string(field(v, f)?)).unwrap_or_else(default);
    let url = s.url_field.as_deref().and_then(|f| field(v, f)?.as_str().map(str::to_string));
    Ok(RawDoc { id, text: parts.join("\n\n"), url })
}

/// Streams `path`.
pub(super) fn read_file(
    s: &SourceConfig,
    path: &Path,
    report: &mut FileReport,
    on_doc: &mut dyn FnMut(RawDoc) -> Result<()>,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let (mut line_no, mut consumed) = (0u64, 0u64);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        consumed += n as u64;
        if line_no.is_multiple_of(4096) {
            on_bytes(consumed);
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            report.records += 1;
            report.count_bad(BadKind::InvalidUtf8, || format!("line {line_no}"), &s.text_fields);
            continue;
        };
        if line.trim().is_empty() {
            report.blank_lines += 1;
            continue;
        }
        report.records += 1;
        let doc = serde_json::from_str::<Value>(line)
            .map_err(|_| BadKind::InvalidJson)
            .and_then(|v| doc_of(&v, s, || default_id(&s.name, path, line_no)));
        match doc {
            Ok(d) => on_doc(d)?,
            Err(kind) => report.count_bad(kind, || format!("line {line_no}"), &s.text_fields),
        }
    }
}
