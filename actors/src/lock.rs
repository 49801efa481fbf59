//! The run-directory lock: one `moe-cli run` per run directory at a time.
//!
//! `<run>/run.lock` holds an advisory exclusive lock (`flock`, [`std::fs::File::try_lock`]) for as
//! long as the run lives, and the holder's pid, host and start time as JSON. The kernel drops the
//! lock when the holder dies however it dies, so a lock left by a killed run is never in the way:
//! it is taken over, with a warning naming the dead holder (the file still holds its pid, since
//! a clean exit empties it). A second run while the first lives is refused with a message naming
//! the holder.

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// Who holds (or last held) a run directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// Seconds since the Unix epoch when the lock was taken.
    pub since: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on host {} (since unix time {})", self.pid, self.host, self.since)
    }
}

/// The held lock; dropping it empties the file and releases the lock.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    /// A previous holder that died without releasing (its lock was taken over).
    pub stale: Option<Holder>,
}

/// This machine's host name (Linux: /proc; elsewhere `unknown`).
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

impl RunLock {
    /// Takes the lock of run directory `root` (which must exist), or fails naming the holder.
    pub fn acquire(root: &Path) -> Result<RunLock> {
        let path = root.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(EngineError::io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let who = read_holder(&mut file).map_or("another process".to_string(), |h| h.to_string());
                return Err(EngineError::Locked { dir: root.to_path_buf(), holder: who });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(EngineError::io(&path)(e)),
        }
        let stale = read_holder(&mut file);
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let me = Holder { pid: std::process::id(), host: host_name(), since };
        let text = serde_json::to_string(&me).unwrap_or_default();
        (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })()
        .map_err(EngineError::io(&path))?;
        Ok(RunLock { file, path, stale })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Empty = released cleanly; the lock itself goes with the file handle.
        let _ = self.file.set_len(0);
        let _ = self.file.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(first.stale, None);
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains(&host_name()), "{e}");
        drop(first);
        // A clean release leaves no stale holder.
        let second = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(second.stale, None);
        drop(second);
        // A holder that died without releasing: its record is still in the file, the lock is not.
        let dead = Holder { pid: 999_999_999, host: "elsewhere".into(), since: 1 };
        std::fs::write(dir.path().join(LOCK_FILE), serde_json::to_string(&dead).unwrap()).unwrap();
        let third = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(third.stale, Some(dead));
    }
}
