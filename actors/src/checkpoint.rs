//! Training checkpoints: `step-<N>/` with `config.json` + `model.safetensors` (a loadable
//! model), `optimizer.safetensors` (AdamW moments) and `trainer.json` (step, data cursor,
//! AutoClip window, breaker state). A checkpoint is written into a temporary directory, every
//! file fsynced, then renamed into place ([`atomicio::StagingDir`]), so a directory named
//! `step-<N>` is always complete; the last K are kept. `checksums.json`, written last, holds
//! the size and SHA-256 of every other file ([`crate::verify::hash_file`]: whole files, or
//! samples of files above 256 MiB), checked when the checkpoint is read, so a damaged
//! checkpoint is refused (and the run falls back to an older one) instead of resumed.

use crate::error::{EngineError, Result};
use atomicio::StagingDir;
use model::Qwen3;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// AdamW moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Trainer state JSON.
pub const TRAINER_FILE: &str = "trainer.json";
/// Sizes and hashes of the other files.
pub const CHECKSUMS_FILE: &str = "checksums.json";
/// The files `checksums.json` covers.
const CHECKED_FILES: [&str; 4] = ["config.json", MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE];

/// Everything a checkpoint holds, detached from the trainer so another thread can write it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Optimiser step the checkpoint was taken after.
    pub step: u64,
    /// config.json text.
    pub config_json: String,
    /// Model tensors (name, shape, f32 values), parameters and router biases.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// AdamW first and second moments (flat) and its step counter.
    pub adam_m: Vec<f32>,
    /// Second moments.
    pub adam_v: Vec<f32>,
    /// AdamW steps taken.
    pub adam_step: u64,
    /// Trainer state (serialised JSON).
    pub trainer_json: String,
    /// Further files of the checkpoint (name -> bytes; QAT parameters and moments, P4's EMA and
    /// driver state), covered by `checksums.json` like the others.
    pub extra: Vec<(String, Vec<u8>)>,
}

impl Snapshot {
    /// A snapshot of `model`, the AdamW state and the trainer's JSON state.
    pub fn take(model: &Qwen3, opt: &autograd::optim::AdamW, step: u64, trainer_json: String) -> Self {
        let mut snap = Self::take_tensors(model, step, trainer_json);
        (snap.adam_m, snap.adam_v, snap.adam_step) = (opt.m.clone(), opt.v.clone(), opt.step);
        snap
    }

    /// Like [`Snapshot::take`], but moves the AdamW moments out of `opt` (left empty): for the
    /// last checkpoint of a phase, after which the optimiser is not used again.
    pub fn take_moving_moments(
        model: &Qwen3,
        opt: &mut autograd::optim::AdamW,
        step: u64,
        trainer_json: String,
    ) -> Self {
        let mut snap = Self::take_tensors(model, step, trainer_json);
        snap.adam_m = std::mem::take(&mut opt.m);
        snap.adam_v = std::mem::take(&mut opt.v);
        snap.adam_step = opt.step;
        snap
    }

    /// The model tensors and trainer state, with empty moments.
    fn take_tensors(model: &Qwen3, step: u64, trainer_json: String) -> Self {
        let flat = model.params.flat();
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = model
            .params
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone(), flat[e.offset..e.offset + e.numel()].to_vec()))
            .collect();
        for (i, b) in model.router_bias.iter().enumerate() {
            tensors.push((model::qwen3::router_bias_name(i), vec![b.len()], b.clone()));
        }
        Snapshot {
            step,
            config_json: model.config_json(),
            tensors,
            adam_m: Vec::new(),
            adam_v: Vec::new(),
            adam_step: 0,
            trainer_json,
            extra: Vec::new(),
        }
    }
}

/// Writes files with an optional byte budget: a test hook that behaves like a full disk
/// (ENOSPC) once the budget is spent, leaving a partial file behind as a real full disk would.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskBudget {
    /// Bytes that may still be written (None: unlimited).
    pub remaining: Option<u64>,
}

impl DiskBudget {
    fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut f = File::create(path).map_err(EngineError::io(path))?;
        let allowed = self.remaining.map_or(bytes.len(), |r| (r as usize).min(bytes.len()));
        f.write_all(&bytes[..allowed]).map_err(EngineError::io(path))?;
        if let Some(r) = &mut self.remaining {
            *r -= allowed as u64;
        }
        if allowed < bytes.len() {
            return Err(EngineError::Io { path: path.to_path_buf(), cause: std::io::Error::from_raw_os_error(28) });
        }
        f.sync_all().map_err(EngineError::io(path))
    }
}

/// Writes `bytes` to `path` atomically: [`atomicio::write_file`] with this crate's error. Kept for
/// `moe-cli run` (cli/src/cmd/run.rs), which names it; new code calls `atomicio::write_file`.
pub fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(atomicio::write_file(path, bytes)?)
}

/// Name of the checkpoint directory of `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Safetensors bytes of f32 `tensors` (`path` names errors).
pub(crate) fn serialize(tensors: &[(&str, &[usize], &[f32])], path: &Path) -> Result<Vec<u8>> {
    serialize_with(tensors, None, path)
}

/// [`serialize`] plus, when given, one I64 scalar tensor `(name, value)` (counters stay exact).
pub(crate) fn serialize_with(
    tensors: &[(&str, &[usize], &[f32])],
    int: Option<(&str, &[u8])>,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut views = tensors
        .iter()
        .map(|(name, shape, values)| {
            TensorView::new(Dtype::F32, shape.to_vec(), bytemuck::cast_slice(values)).map(|v| (name.to_string(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Checkpoint { path: path.to_path_buf(), msg: e.to_string() })?;
    if let Some((name, le_bytes)) = int {
        let view = TensorView::new(Dtype::I64, vec![1], le_bytes)
            .map_err(|e| EngineError::Checkpoint { path: path.to_path_buf(), msg: e.to_string() })?;
        views.push((name.to_string(), view));
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize(views, &Some(meta))
        .map_err(|e| EngineError::Checkpoint { path: path.to_path_buf(), msg: e.to_string() })
}

/// Writes `snap` as `dir/step-<N>` (atomically) and removes all but the newest `keep_last`
/// complete checkpoints. On error nothing named `step-<N>` appears and older checkpoints are
/// untouched. Returns the new checkpoint's path.
pub fn write_checkpoint(dir: &Path, snap: &Snapshot, keep_last: usize, budget: &mut DiskBudget) -> Result<PathBuf> {
    let target = dir.join(step_dir_name(snap.step));
    // A rollback re-runs steps: a checkpoint of the same step is replaced. It is renamed aside
    // (`.step-<N>.old-<pid>`, atomic) before the new one is renamed in, so a kill between the two
    // renames leaves it restorable by `remove_stale_temps`, never half deleted under its real name.
    let staging = StagingDir::replacing(&target)?;
    let tmp = staging.path();
    let model: Vec<(&str, &[usize], &[f32])> =
        snap.tensors.iter().map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice())).collect();
    budget.write(&tmp.join("config.json"), snap.config_json.as_bytes())?;
    budget.write(&tmp.join(MODEL_FILE), &serialize(&model, tmp)?)?;
    let n = snap.adam_m.len();
    // The AdamW step as an exact integer (an f32 loses steps past 2^24).
    let step = (snap.adam_step as i64).to_le_bytes();
    let shape = [n];
    let opt: Vec<(&str, &[usize], &[f32])> =
        vec![("m", &shape[..], &snap.adam_m[..]), ("v", &shape[..], &snap.adam_v[..])];
    budget.write(&tmp.join(OPTIMIZER_FILE), &serialize_with(&opt, Some(("step", &step[..])), tmp)?)?;
    budget.write(&tmp.join(TRAINER_FILE), snap.trainer_json.as_bytes())?;
    for (name, bytes) in &snap.extra {
        budget.write(&tmp.join(name), bytes)?;
    }
    let mut sums = std::collections::BTreeMap::new();
    for name in CHECKED_FILES.iter().copied().chain(snap.extra.iter().map(|(n, _)| n.as_str())) {
        sums.insert(name.to_string(), crate::verify::hash_file(&tmp.join(name))?);
    }
    let text = serde_json::to_string_pretty(&sums)
        .map_err(|e| EngineError::Checkpoint { path: tmp.join(CHECKSUMS_FILE), msg: e.to_string() })?;
    budget.write(&tmp.join(CHECKSUMS_FILE), text.as_bytes())?;
    staging.commit()?;
    let all = list_checkpoints(dir)?;
    for (_, old) in all.iter().rev().skip(keep_last.max(1)) {
        remove_checkpoint(old);
    }
    Ok(target)
}

/// Deletes a checkpoint directory without ever leaving a partial `step-<N>` behind: it is
/// renamed to a hidden temporary name first (atomic), then deleted. A kill during the
/// deletion leaves only a hidden directory that `remove_stale_temps` clears.
fn remove_checkpoint(path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let doomed = path.with_file_name(format!(".{name}.del-{}", std::process::id()));
    if fs::rename(path, &doomed).is_ok() {
        let _ = fs::remove_dir_all(&doomed);
    }
}

/// Complete checkpoints in `dir`, oldest first (temporary directories are ignored).
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(EngineError::Io { path: dir.to_path_buf(), cause: e }),
    };
    for e in entries {
        let e = e.map_err(EngineError::io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            if e.path().join(TRAINER_FILE).is_file() {
                out.push((step, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Clears what an interrupted writer left: temporary and half-deleted directories are removed;
/// a checkpoint renamed aside for replacement (`.step-<N>.old-*`) whose replacement never
/// arrived is put back under its name.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix('.').filter(|r| r.starts_with("step-")) else { continue };
        if let Some((step_name, _)) = rest.split_once(".old-") {
            let original = dir.join(step_name);
            if !original.exists() && e.path().join(TRAINER_FILE).is_file() && fs::rename(e.path(), &original).is_ok() {
                continue;
            }
        }
        let _ = fs::remove_dir_all(e.path());
    }
}

/// A checkpoint read back.
pub struct Loaded {
    /// The checkpoint directory.
    pub path: PathBuf,
    /// The model (f32 parameters).
    pub model: Qwen3,
    /// AdamW moments and step.
    pub adam_m: Vec<f32>,
    /// Second moments.
    pub adam_v: Vec<f32>,
    /// AdamW steps taken.
    pub adam_step: u64,
    /// trainer.json text.
    pub trainer_json: String,
}

/// Reads checkpoint directory `path`, after checking its files against `checksums.json`
/// (checkpoints written before it existed are read unchecked).
pub fn read_checkpoint(path: &Path) -> Result<Loaded> {
    verify_checksums(path)?;
    let model = Qwen3::load(path)?;
    let opt_path = path.join(OPTIMIZER_FILE);
    let ck = model::safetensors_io::SafetensorsReader::open(&opt_path)?;
    let (m, v) = (ck.read_f32("m")?, ck.read_f32("v")?);
    // I64 since issue 11; older checkpoints stored it as f32.
    let step: Vec<u64> = match ck.read_i64("step") {
        Ok(s) => s.iter().map(|&x| x.max(0) as u64).collect(),
        Err(_) => ck.read_f32("step")?.iter().map(|&x| x as u64).collect(),
    };
    if m.len() != model.params.numel() || v.len() != m.len() || step.len() != 1 {
        return Err(EngineError::Checkpoint {
            path: opt_path,
            msg: format!("moments of {} / {} elements for a model of {}", m.len(), v.len(), model.params.numel()),
        });
    }
    let trainer_json = fs::read_to_string(path.join(TRAINER_FILE)).map_err(EngineError::io(path.join(TRAINER_FILE)))?;
    check_step_matches_name(path, &trainer_json)?;
    Ok(Loaded { path: path.to_path_buf(), model, adam_m: m, adam_v: v, adam_step: step[0], trainer_json })
}

/// Every file listed in `checksums.json` has its recorded size and hash.
fn verify_checksums(path: &Path) -> Result<()> {
    let sums_path = path.join(CHECKSUMS_FILE);
    let text = match fs::read_to_string(&sums_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(EngineError::io(&sums_path)(e)),
    };
    let bad = |msg: String| EngineError::Checkpoint { path: path.to_path_buf(), msg };
    let sums: std::collections::BTreeMap<String, crate::verify::FileHash> =
        serde_json::from_str(&text).map_err(|e| bad(format!("{CHECKSUMS_FILE}: unreadable: {e}")))?;
    match crate::verify::first_damage(path, &sums) {
        Some(damage) => Err(bad(format!("damaged: {damage}"))),
        None => Ok(()),
    }
}

/// The `step` of trainer.json must be the one the directory is named after (`step-<N>`).
fn check_step_matches_name(path: &Path, trainer_json: &str) -> Result<()> {
    let named = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step-")?.parse::<u64>().ok());
    let bad = |msg: String| EngineError::Checkpoint { path: path.to_path_buf(), msg };
    let v: serde_json::Value = serde_json::from_str(trainer_json)
        .map_err(|e| bad(format!("{TRAINER_FILE}: unreadable trainer state: {e}")))?;
    let step = v.get("step").and_then(serde_json::Value::as_u64);
    match (named, step) {
        (_, None) => Err(bad(format!("{TRAINER_FILE}: no integer `step`"))),
        (Some(n), Some(s)) if n != s => Err(bad(format!("{TRAINER_FILE} says step {s} but the directory is step {n}"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
