//! Shared helpers for the integration tests: locating and reading golden fixtures.
#![deny(missing_docs)]

use model::safetensors_io::Checkpoint;
use std::path::PathBuf;

/// `tests/fixtures/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// Every fixture directory whose name starts with `prefix`, sorted.
pub fn fixtures_with_prefix(prefix: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .collect();
    dirs.sort();
    dirs
}

/// Opens `<dir>/reference.safetensors` and checks its magic and version.
pub fn open_reference(dir: &std::path::Path) -> Checkpoint {
    let ckpt = Checkpoint::open(&dir.join("reference.safetensors")).expect("reference.safetensors opens");
    let meta = ckpt.metadata().expect("fixture has __metadata__");
    assert_eq!(meta.get("format").map(String::as_str), Some("medmoe-fixture"), "fixture magic");
    assert_eq!(meta.get("version").map(String::as_str), Some("1"), "fixture version");
    ckpt
}
