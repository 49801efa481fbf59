//! Shared helpers for the integration tests: locating and reading golden fixtures.
#![deny(missing_docs)]

use actors::phase::PhaseConfig;
use model::moe_spec::MoeSpec;
use model::safetensors_io::SafetensorsReader;
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
pub fn open_reference(dir: &std::path::Path) -> SafetensorsReader {
    let ckpt = SafetensorsReader::open(&dir.join("reference.safetensors")).expect("reference.safetensors opens");
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
    MoeSpec { num_experts: e, expert_width: w, shared_width: s, weighting: autograd::ops::RouterWeighting::Ste }
}

/// `batch` and its `targets` as the packed micro-batch the trainer consumes (one document per
/// row, positions `0..T`).
pub fn packed(batch: &TokenBatch, targets: &[i32]) -> data::pack::PackedBatch {
    let (b, t) = (batch.b, batch.t);
    data::pack::PackedBatch {
        b,
        t,
        ids: batch.ids.clone(),
        pos: (0..b * t).map(|j| (j % t) as u32).collect(),
        seg: (0..b * t).map(|j| (j / t) as u32).collect(),
        targets: targets.to_vec(),
        domains: vec!["fixture".into(); b],
        sequences: (0..b as u64).collect(),
    }
}

/// A next-token phase (`base`) for the product training step on `b` x `t` micro-batches, one per
/// optimiser step, `steps` steps, with a constant learning rate `lr` (no warmup), AdamW betas and
/// decay as given, AutoClip at the 100th percentile (never clips) and the breakers off: the
/// plain loop `forward, backward, AdamW` that references like torch.optim.AdamW run.
pub fn plain_phase(b: usize, t: usize, steps: usize, lr: f32, betas: [f32; 2], weight_decay: f32) -> PhaseConfig {
    let mut c = PhaseConfig::embedded("base", "seed-plan").expect("embedded base phase");
    (c.micro_batch, c.seq_len, c.tokens_per_step, c.tokens) = (b, t, (b * t) as u64, (b * t * steps) as u64);
    c.lr = actors::phase::LrConfig { max: lr, min: lr, warmup_frac: 0.0 };
    (c.betas, c.weight_decay) = (betas, weight_decay);
    c.autoclip = actors::phase::AutoClipConfig { percentile: 100.0, window: 1 };
    c.breakers.enabled = false;
    c
}
