//! The result files of `moe-cli eval`: keys (SHA-256 of what a result depends on), reusing a
//! previous result with the same key, atomic JSON writes.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Lower-case hex SHA-256 of `bytes` (result keys).
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A previous result at `path` with the same key, if any (a damaged file is recomputed).
pub(super) fn resumed<T: for<'de> Deserialize<'de>>(path: &Path, key: &str, key_of: impl Fn(&T) -> &str) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: T = serde_json::from_str(&text).ok()?;
    (key_of(&v) == key).then_some(v)
}

/// Writes `v` as pretty JSON atomically.
pub(super) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v)?;
    bytes.push(b'\n');
    atomicio::write_file(path, &bytes).with_context(|| format!("writing {}", path.display()))
}
