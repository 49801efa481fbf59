//! File helpers of the data crate: JSON in and out, SHA-256 of files and bytes.
//!
//! Every output is written atomically through the workspace's one helper, [`atomicio`]
//! (`atomicio::write_file` for a file, `atomicio::StagingDir` for a whole output directory).

use crate::error::{DataError, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

impl From<atomicio::Error> for DataError {
    fn from(e: atomicio::Error) -> Self {
        DataError::Io { path: e.path, cause: e.cause }
    }
}

/// Serialises `value` as pretty JSON (with a final newline) and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| DataError::file(path, e.to_string()))?;
    bytes.push(b'\n');
    Ok(atomicio::write_file(path, &bytes)?)
}

/// Reads and parses a JSON file; errors name the file, line and column.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| DataError::file(path, format!("line {}: {e}", e.line())))
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
