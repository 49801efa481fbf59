//! Atomic output: files and whole directories appear complete or not at all.
//!
//! A file is written to a hidden temporary sibling (`.<name>.tmp-<pid>-<n>`), fsynced, renamed over
//! the target, and the directory holding it is fsynced so the rename itself is durable. A directory
//! is built in a hidden temporary sibling, every file in it is fsynced, and it is renamed into place
//! ([`StagingDir`], [`write_dir`]). On any error the temporary file or directory is removed and the
//! target is left as it was.
//!
//! Architecture Invariant: this is the only place in the workspace that implements atomic writes;
//! it depends on nothing in the workspace, so every crate that writes files can use it.
#![deny(missing_docs)]

use std::fs::{self, File};
use std::io::{self, BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An I/O error and the file or directory it is about.
#[derive(Debug, thiserror::Error)]
#[error("{}: {cause}", path.display())]
pub struct Error {
    /// The file or directory the operation was about.
    pub path: PathBuf,
    /// The underlying error (its kind is `AlreadyExists` / `DirectoryNotEmpty` for a refused target).
    /// Shown in the message and deliberately not a `source()`: a report that prints the chain
    /// would print it twice.
    pub cause: io::Error,
}

impl Error {
    /// An error on `path`.
    pub fn new(path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error { path: path.into(), cause }
    }

    fn at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
        move |cause| Error::new(path, cause)
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Buffer size of [`write_file_with`]'s writer.
const BUF_BYTES: usize = 1 << 20;

/// Makes temporary names unique within the process (several writers may target one directory).
static SEQ: AtomicU64 = AtomicU64::new(0);

/// The file name of `path`, or an `InvalidInput` error (`/`, `..`, empty path).
fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::new(path, io::Error::new(ErrorKind::InvalidInput, "not a file path")))
}

/// `dir/.<name>.<tag>-<pid>-<n>` beside `path`.
fn sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    let name = file_name(path)?;
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.{tag}-{}-{n}", std::process::id())))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// fsyncs directory `dir`. File systems that cannot fsync a directory (`EINVAL`, unsupported) are
/// accepted: the files themselves are already durable there.
pub fn sync_dir(dir: &Path) -> Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() == ErrorKind::InvalidInput || e.kind() == ErrorKind::Unsupported => Ok(()),
        r => r.map_err(Error::at(dir)),
    }
}

/// fsyncs every file under `dir` (recursively) and every directory, `dir` last.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(Error::at(dir))? {
        let path = entry.map_err(Error::at(dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path).and_then(|f| f.sync_all()).map_err(Error::at(&path))?;
        }
    }
    sync_dir(dir)
}

/// Writes `bytes` to `path` atomically: temporary sibling, fsync, rename, fsync of the directory.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_with(path, |w| w.write_all(bytes).map_err(Error::at(path)))
}

/// Writes `path` atomically through `fill`, which gets a buffered writer on the temporary file.
/// The temporary file is removed when `fill` or any later step fails; `path` is then untouched.
pub fn write_file_with<E: From<Error>>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let tmp = sibling(path, "tmp")?;
    let result = (|| {
        let file = File::create(&tmp).map_err(Error::at(&tmp))?;
        let mut w = BufWriter::with_capacity(BUF_BYTES, file);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| Error::new(&tmp, e.into_error()))?;
        f.sync_all().map_err(Error::at(&tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(Error::at(path))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(parent_of(path))?;
    Ok(())
}

/// An `AlreadyExists` error when `path` exists (the early check of commands that never overwrite).
pub fn ensure_absent(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => {
            Err(Error::new(path, io::Error::new(ErrorKind::AlreadyExists, "already exists; refusing to overwrite")))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::new(path, e)),
    }
}

/// Builds the new directory `dir` through `fill` (given the temporary directory to write into),
/// then renames it into place. `dir` must not exist; on any error nothing is left behind.
/// Returns what `fill` returned.
pub fn write_dir<T, E: From<Error>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    ensure_absent(dir)?;
    let staging = StagingDir::new(dir)?;
    let value = fill(staging.path())?;
    staging.commit()?;
    Ok(value)
}

/// What a [`StagingDir`] does with an existing target when it commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existing {
    /// Only an empty directory may be there; it is replaced.
    EmptyOnly,
    /// Whatever is there is renamed aside, then deleted after the new directory is in place.
    MoveAside,
}

/// A directory under construction beside its final place (`.<name>.tmp-<pid>-<n>`). Files written
/// into [`StagingDir::path`] become visible under the target name only on [`StagingDir::commit`],
/// all at once; dropping an uncommitted `StagingDir` removes it, so a failed command leaves nothing.
#[derive(Debug)]
pub struct StagingDir {
    tmp: PathBuf,
    target: PathBuf,
    existing: Existing,
    committed: bool,
}

impl StagingDir {
    /// Starts building `target`, which must be missing or an empty directory (checked now, before
    /// any work, and again at commit). Parent directories are created.
    pub fn new(target: &Path) -> Result<Self> {
        check_empty_or_missing(target)?;
        Self::start(target, Existing::EmptyOnly)
    }

    /// Starts building `target`, replacing whatever is there at commit: the old directory is first
    /// renamed aside to `.<name>.old-<pid>` (atomic), the new one renamed in, then the old one
    /// deleted. A kill in between leaves the old directory whole under its hidden name, never half
    /// deleted under the real one ([`StagingDir::aside_name`]).
    pub fn replacing(target: &Path) -> Result<Self> {
        Self::start(target, Existing::MoveAside)
    }

    fn start(target: &Path, existing: Existing) -> Result<Self> {
        let parent = parent_of(target);
        fs::create_dir_all(parent).map_err(Error::at(parent))?;
        let tmp = sibling(target, "tmp")?;
        fs::create_dir(&tmp).map_err(Error::at(&tmp))?;
        Ok(StagingDir { tmp, target: target.to_path_buf(), existing, committed: false })
    }

    /// The hidden name an existing target is moved to while [`StagingDir::replacing`] commits:
    /// `.<name>.old-<pid>`.
    pub fn aside_name(target: &Path) -> Result<PathBuf> {
        let name = file_name(target)?;
        Ok(target.with_file_name(format!(".{name}.old-{}", std::process::id())))
    }

    /// The temporary directory to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// fsyncs everything written, moves the directory into place and fsyncs its parent.
    /// Returns the target path.
    pub fn commit(mut self) -> Result<PathBuf> {
        sync_tree(&self.tmp)?;
        let target = self.target.clone();
        let mut aside = None;
        match self.existing {
            Existing::EmptyOnly => {
                check_empty_or_missing(&target)?;
                if target.exists() {
                    fs::remove_dir(&target).map_err(Error::at(&target))?;
                }
            }
            Existing::MoveAside => {
                if fs::symlink_metadata(&target).is_ok() {
                    let old = Self::aside_name(&target)?;
                    let _ = fs::remove_dir_all(&old);
                    fs::rename(&target, &old).map_err(Error::at(&target))?;
                    aside = Some(old);
                }
            }
        }
        fs::rename(&self.tmp, &target).map_err(Error::at(&target))?;
        self.committed = true;
        sync_dir(parent_of(&target))?;
        if let Some(old) = aside {
            let _ = fs::remove_dir_all(&old);
        }
        Ok(target)
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// A `DirectoryNotEmpty` error when `target` exists and is anything but an empty directory.
fn check_empty_or_missing(target: &Path) -> Result<()> {
    match fs::read_dir(target).map(|mut entries| entries.next().is_none()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::new(target, io::Error::new(ErrorKind::DirectoryNotEmpty, "exists and is not empty"))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if target.exists() => Err(Error::new(
            target,
            io::Error::new(ErrorKind::AlreadyExists, format!("exists and is not a directory ({e})")),
        )),
        Err(e) => Err(Error::new(target, e)),
    }
}

#[cfg(test)]
mod tests;
