//! Content hashes of a stage's files, checked before a finished stage counts as done, and the
//! differences between two stage keys (to say why a stage runs again).
//!
//! A file up to [`FULL_HASH_LIMIT`] bytes is hashed whole (SHA-256). A bigger one (real-scale
//! models and packs) gets its size plus a SHA-256 of three 1 MiB samples (start, middle, end):
//! that catches truncation, a missing or replaced file and damaged headers (safetensors and pack
//! headers sit at the start) without reading gigabytes on every run; in-range damage in the
//! middle of a big pack shard is caught by the full shard check at the start of every phase
//! (`PackedDataset::verify`).

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Files up to this size are hashed whole.
pub const FULL_HASH_LIMIT: u64 = 256 << 20;
/// Bytes of each sample of a bigger file.
const SAMPLE_BYTES: u64 = 1 << 20;

/// Size and content hash of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the whole file, or of its samples when `sampled`.
    pub sha256: String,
    /// True when the file was bigger than [`FULL_HASH_LIMIT`] and only samples were hashed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sampled: bool,
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and hash of `path` (whole, or samples above [`FULL_HASH_LIMIT`]).
pub fn hash_file(path: &Path) -> Result<FileHash> {
    let mut f = File::open(path).map_err(EngineError::io(path))?;
    let bytes = f.metadata().map_err(EngineError::io(path))?.len();
    let mut h = Sha256::new();
    let sampled = bytes > FULL_HASH_LIMIT;
    if sampled {
        h.update(bytes.to_le_bytes());
        let mut buf = vec![0u8; SAMPLE_BYTES as usize];
        for at in [0, bytes / 2, bytes - SAMPLE_BYTES] {
            (|| {
                f.seek(SeekFrom::Start(at))?;
                f.read_exact(&mut buf)
            })()
            .map_err(EngineError::io(path))?;
            h.update(&buf);
        }
    } else {
        std::io::copy(&mut f, &mut h).map_err(EngineError::io(path))?;
    }
    Ok(FileHash { bytes, sha256: hex(h.finalize()), sampled })
}

/// Hashes every file under `dir/rel` (a file or a directory, recursively) into `out`, keyed by
/// its path relative to `dir` with `/` separators. Hidden names (temporaries) are skipped.
pub fn hash_tree(dir: &Path, rel: &str, out: &mut BTreeMap<String, FileHash>) -> Result<()> {
    let path = dir.join(rel);
    let meta = std::fs::metadata(&path).map_err(EngineError::io(&path))?;
    if !meta.is_dir() {
        out.insert(rel.to_string(), hash_file(&path)?);
        return Ok(());
    }
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .map_err(EngineError::io(&path))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .map_err(EngineError::io(&path))?;
    names.sort();
    for name in names.into_iter().filter(|n| !n.starts_with('.')) {
        hash_tree(dir, &format!("{rel}/{name}"), out)?;
    }
    Ok(())
}

/// The first file under `dir` that differs from `files` (missing, other size, other content),
/// as a sentence naming it; None when all are intact.
pub fn first_damage(dir: &Path, files: &BTreeMap<String, FileHash>) -> Option<String> {
    for (rel, want) in files {
        let path = dir.join(rel);
        let got = match std::fs::metadata(&path) {
            Err(e) => return Some(format!("{}: {e}", path.display())),
            Ok(m) if m.len() != want.bytes => {
                return Some(format!("{}: {} bytes, the manifest says {}", path.display(), m.len(), want.bytes))
            }
            Ok(_) => hash_file(&path),
        };
        match got {
            Err(e) => return Some(e.to_string()),
            Ok(h) if h.sha256 != want.sha256 => {
                return Some(format!("{}: content differs from the manifest (SHA-256)", path.display()))
            }
            Ok(_) => {}
        }
    }
    None
}

/// What differs between two stage keys, one line per changed leaf: `path: old -> new`.
pub fn key_changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", old, new, &mut out);
    out
}

fn short(v: &serde_json::Value) -> String {
    if v.is_null() {
        return "(none)".to_string();
    }
    // Configs hold f32s, which JSON widens (1e-3 -> 0.0010000000474974513): show the f32.
    if let Some(x) = v.as_f64().filter(|_| v.is_f64()) {
        let f = x as f32;
        if f as f64 == x {
            return format!("{f}");
        }
    }
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    if a == b {
        return;
    }
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for k in keys {
            let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            diff(&sub, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
        }
        return;
    }
    let name = if path.is_empty() { "key" } else { path };
    out.push(format!("{name}: {} -> {}", short(a), short(b)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_is_named_and_intact_trees_pass() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("model")).unwrap();
        std::fs::write(dir.path().join("model/a.bin"), b"abcdef").unwrap();
        std::fs::write(dir.path().join("model/.a.bin.tmp-1-0"), b"temporary").unwrap();
        std::fs::write(dir.path().join("summary.json"), b"{}").unwrap();
        let mut files = BTreeMap::new();
        hash_tree(dir.path(), "model", &mut files).unwrap();
        hash_tree(dir.path(), "summary.json", &mut files).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["model/a.bin", "summary.json"]);
        // SHA-256("abcdef"), from `printf abcdef | sha256sum`.
        assert_eq!(files["model/a.bin"].sha256, "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721");
        assert_eq!(first_damage(dir.path(), &files), None);
        std::fs::write(dir.path().join("model/a.bin"), b"abcdeX").unwrap();
        let e = first_damage(dir.path(), &files).unwrap();
        assert!(e.contains("a.bin") && e.contains("SHA-256"), "{e}");
        std::fs::write(dir.path().join("model/a.bin"), b"abc").unwrap();
        let e = first_damage(dir.path(), &files).unwrap();
        assert!(e.contains("3 bytes") && e.contains("says 6"), "{e}");
        std::fs::remove_dir_all(dir.path().join("model")).unwrap();
        assert!(first_damage(dir.path(), &files).unwrap().contains("a.bin"));
    }

    #[test]
    fn key_changes_name_the_changed_fields() {
        let old = serde_json::json!({ "base_model": "tiny-dense", "seed": 0, "phase": { "lr": { "max": 1e-3f32 } } });
        let new = serde_json::json!({ "base_model": "tiny-dense-active", "seed": 0, "phase": { "lr": { "max": 2e-3f32 } }, "x": 1 });
        assert_eq!(
            key_changes(&old, &new),
            ["base_model: \"tiny-dense\" -> \"tiny-dense-active\"", "phase.lr.max: 0.001 -> 0.002", "x: (none) -> 1"]
        );
        assert!(key_changes(&old, &old).is_empty());
    }
}
