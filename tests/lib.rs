//! Shared helpers for the integration tests: locating and reading golden fixtures.
#![deny(missing_docs)]

use model::moe_spec::MoeSpec;
use model::safetensors_io::Checkpoint;
use model::TokenBatch;
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

/// The fixture's batch (`input_ids [B,T]`) and next-token targets (`targets [B,T]`).
pub fn reference_batch(dir: &std::path::Path) -> (TokenBatch, Vec<i32>) {
    let r = open_reference(dir);
    let shape = r.info("input_ids").expect("input_ids").shape.clone();
    let ids = r.read_i64("input_ids").unwrap().iter().map(|&x| x as u32).collect();
    let targets = r.read_i64("targets").unwrap().iter().map(|&x| x as i32).collect();
    (TokenBatch::new(ids, shape[0], shape[1]).unwrap(), targets)
}

/// A straight-through (`ste`) MoE spec with E experts of width W and a shared expert of S.
pub fn ste_spec(e: usize, w: usize, s: usize) -> MoeSpec {
    MoeSpec {
        num_experts: e,
        expert_width: w,
        shared_width: s,
        weighting: autograd::ops::RouterWeighting::Ste,
        temperature: 1.0,
        capacity_factor: Some(1.25),
        expert_dropout: 0.0,
        router_noise: 0.0,
        lb_coef: 0.01,
        z_coef: 1e-4,
    }
}
