//! Housekeeping of a run directory under its lock: finishing or undoing a stage swap that a
//! kill interrupted, swapping a rebuilt stage in, and clearing what killed writers left.
//!
//! A finished stage that must be rebuilt (changed config, `--force`) is rebuilt beside itself in
//! `<stage>.next/`; when that is complete (its manifest written last) it is swapped in: the old
//! `<stage>/` is renamed aside to `.<stage>.old-<pid>`, `<stage>.next/` renamed to `<stage>/`,
//! then the old one deleted. Every step is a rename, so after a kill at any moment either the old
//! or the new finished stage is found again by [`recover_swaps`].

use crate::error::{EngineError, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Name of the directory a finished stage is rebuilt in (`<stage>.next`).
pub fn next_dir(root: &Path, stage: &str) -> PathBuf {
    root.join(format!("{stage}.next"))
}

fn has_manifest(dir: &Path) -> bool {
    dir.join("manifest.json").is_file()
}

/// Hidden asides of `name` in `dir` (`.<name>.old-*`).
fn asides(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}.old-");
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).map(|e| e.path()).collect()
}

/// Completes or undoes interrupted swaps of `stages` under `root`: a missing `<stage>/` is
/// replaced by a complete `<stage>.next/` or else by a complete aside; leftover asides of a
/// present stage are deleted. Returns one line per repair.
pub fn recover_swaps(root: &Path, stages: &[&str]) -> Result<Vec<String>> {
    let mut said = Vec::new();
    for stage in stages {
        let target = root.join(stage);
        let olds = asides(root, stage);
        if !target.exists() {
            let next = next_dir(root, stage);
            let source = if has_manifest(&next) { Some(next) } else { olds.iter().find(|p| has_manifest(p)).cloned() };
            if let Some(src) = source {
                fs::rename(&src, &target).map_err(EngineError::io(&target))?;
                atomicio::sync_dir(root)?;
                said.push(format!("{}: interrupted swap completed from {}", target.display(), src.display()));
            }
        }
        for old in asides(root, stage) {
            let _ = fs::remove_dir_all(&old);
        }
    }
    Ok(said)
}

/// Swaps the complete stage `work` in as `target` (see the module doc).
pub fn swap_in(work: &Path, target: &Path) -> Result<()> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let aside = target.with_file_name(format!(".{name}.old-{}", std::process::id()));
    let parent = target.parent().unwrap_or(Path::new("."));
    if target.exists() {
        let _ = fs::remove_dir_all(&aside);
        fs::rename(target, &aside).map_err(EngineError::io(target))?;
    }
    fs::rename(work, target).map_err(EngineError::io(target))?;
    atomicio::sync_dir(parent)?;
    let _ = fs::remove_dir_all(&aside);
    Ok(())
}

/// What a killed writer leaves: `atomicio` temporaries (`.<name>.tmp-*`), half-deleted
/// directories (`.<name>.del-*`) and directories moved aside for a replacement
/// (`.<name>.old-*`). An aside whose original is missing is put back; everything else is
/// deleted. Walks all of `root`; returns the paths removed. Call it only under the run's lock.
pub fn clean_stale(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    clean_in(root, &mut removed);
    removed
}

fn clean_in(dir: &Path, removed: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let Some(rest) = name.strip_prefix('.') else {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                clean_in(&path, removed);
            }
            continue;
        };
        if let Some((original, _)) = rest.split_once(".old-") {
            let back = dir.join(original);
            if !back.exists() && fs::rename(&path, &back).is_ok() {
                continue;
            }
        } else if !rest.contains(".tmp-") && !rest.contains(".del-") {
            continue;
        }
        let gone = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        if gone.is_ok() {
            removed.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(dir: &Path, tag: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("manifest.json"), tag).unwrap();
    }

    #[test]
    fn a_swap_killed_at_any_rename_recovers_a_finished_stage() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // Killed after the old one was moved aside: the complete new one is taken.
        stage(&root.join(".p1.old-77"), "old");
        stage(&root.join("p1.next"), "new");
        recover_swaps(root, &["p1"]).unwrap();
        assert_eq!(fs::read_to_string(root.join("p1/manifest.json")).unwrap(), "new");
        assert!(asides(root, "p1").is_empty());
        // Killed after the aside, the new one incomplete: the old one comes back.
        fs::remove_dir_all(root.join("p1")).unwrap();
        stage(&root.join(".p1.old-78"), "old");
        fs::create_dir_all(root.join("p1.next/checkpoints")).unwrap();
        recover_swaps(root, &["p1"]).unwrap();
        assert_eq!(fs::read_to_string(root.join("p1/manifest.json")).unwrap(), "old");
        assert!(root.join("p1.next/checkpoints").is_dir(), "an unfinished rebuild is kept for resuming");
        // A whole swap.
        stage(&root.join("p1.next"), "newer");
        swap_in(&root.join("p1.next"), &root.join("p1")).unwrap();
        assert_eq!(fs::read_to_string(root.join("p1/manifest.json")).unwrap(), "newer");
        assert!(!root.join("p1.next").exists() && asides(root, "p1").is_empty());
    }

    #[test]
    fn stale_temporaries_are_removed_and_orphaned_asides_put_back() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let ck = root.join("p1/checkpoints");
        fs::create_dir_all(ck.join(".step-00000020.tmp-5-0")).unwrap();
        fs::create_dir_all(ck.join(".step-00000010.del-5")).unwrap();
        fs::create_dir_all(ck.join(".step-00000030.old-5")).unwrap();
        fs::create_dir_all(ck.join("step-00000040")).unwrap();
        fs::create_dir_all(ck.join(".step-00000040.old-5")).unwrap();
        fs::write(root.join("p1/.summary.json.tmp-5-1"), "x").unwrap();
        fs::write(root.join("p1/.keep"), "x").unwrap();
        let removed = clean_stale(root);
        assert_eq!(removed.len(), 4, "{removed:?}");
        let mut left: Vec<String> =
            fs::read_dir(&ck).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["step-00000030", "step-00000040"]);
        assert!(root.join("p1/.keep").exists(), "other hidden files are not ours");
    }
}
