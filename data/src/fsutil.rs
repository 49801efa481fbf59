//! Atomic output: files and whole directories appear complete or not at all.
//!
//! A file is written to a temporary sibling, fsynced and renamed over the target. A directory of
//! outputs is built in a temporary sibling directory and renamed into place by [`StagingDir::commit`];
//! dropping an uncommitted [`StagingDir`] removes it, so a failed command leaves nothing behind.

use crate::error::{DataError, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (temp file + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}

/// Serialises `value` as pretty JSON (with a final newline) and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| DataError::file(path, e.to_string()))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads and parses a JSON file; errors name the file, line and column.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| DataError::file(path, format!("line {}: {e}", e.line())))
}

/// `dir/.name.tmp-<pid>`: a temporary sibling of `path`.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// A directory under construction next to its final place; see the module docs.
pub struct StagingDir {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Starts building `target`. Fails if `target` exists and is not an empty directory.
    pub fn new(target: &Path) -> Result<Self> {
        if target.exists() {
            let mut entries = fs::read_dir(target).map_err(|e| DataError::io(target, e))?;
            if entries.next().is_some() {
                return Err(DataError::config("output", format!("{} exists and is not empty", target.display())));
            }
        }
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        }
        let tmp = temp_sibling(target);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        Ok(StagingDir { tmp, target: target.to_path_buf(), committed: false })
    }

    /// The temporary directory to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished directory into place (an empty existing target is replaced).
    pub fn commit(mut self) -> Result<PathBuf> {
        sync_dir(&self.tmp)?;
        if self.target.exists() {
            fs::remove_dir(&self.target).map_err(|e| DataError::io(&self.target, e))?;
        }
        fs::rename(&self.tmp, &self.target).map_err(|e| DataError::io(&self.target, e))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// fsyncs every file directly in `dir` (outputs are flat or one level deep) and the directory.
fn sync_dir(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if path.is_dir() {
            sync_dir(&path)?;
        } else {
            File::open(&path).and_then(|f| f.sync_all()).map_err(|e| DataError::io(&path, e))?;
        }
    }
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| DataError::io(dir, e))
}

/// SHA-256 of a byte slice, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a file's contents, lowercase hex (streamed).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
