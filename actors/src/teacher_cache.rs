//! Phase p0's teacher logit cache in the pipeline (`distill.teacher_cache`): the sequences the
//! phase's batch stream will draw (a pure function of the cursor), their teacher top-k logits and
//! log-sum-exp computed once into `<stage>/teacher-cache` (reused when intact and built for the
//! same teacher, pack, tokenizer, k and tau), or a cache given by `dir` checked against the run.
//! The trainer then reads the cache by sequence number and never runs the teacher.

use crate::batches::{BatchStream, LoaderCursor};
use crate::error::{EngineError, Result};
use crate::eval::token_batch_of;
use crate::manifest::sha256_hex;
use crate::phase::{DistillConfig, PhaseConfig, TeacherCacheConfig};
use data::pack::{batch_of, PackedDataset};
use model::logit_cache::{teacher_topk, write_cache, CacheMeta, LogitCache, FORMAT};
use model::{Qwen3, Qwen3Config};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// A cache ready for the trainer, and what it took.
pub struct PreparedCache {
    /// The opened cache.
    pub cache: Arc<LogitCache>,
    /// Seconds spent building it in this process (0 when reused).
    pub build_seconds: f64,
    /// Sequences it holds.
    pub sequences: usize,
    /// Size of its logits file.
    pub bytes: u64,
}

/// Every sequence number the first `total_micro` micro-batches of `stream` draw, ascending.
pub fn drawn_sequences(stream: &BatchStream, total_micro: u64) -> Result<Vec<u64>> {
    let mut cursor = LoaderCursor::default();
    let mut seen = BTreeSet::new();
    for _ in 0..total_micro {
        let (b, next) = stream.next(&cursor)?;
        seen.extend(b.sequences);
        cursor = next;
    }
    Ok(seen.into_iter().collect())
}

/// The cache of distillation phase `cfg` over the run's train pack `pack_dir` with the teacher
/// in `teacher_dir` (identity `teacher_id`), built into `work/teacher-cache` or taken from
/// `c.dir`.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    cfg: &PhaseConfig,
    d: &DistillConfig,
    c: &TeacherCacheConfig,
    pack_dir: &Path,
    teacher_dir: &Path,
    teacher_id: String,
    stream: &BatchStream,
    total_micro: u64,
    work: &Path,
) -> Result<PreparedCache> {
    let ds = PackedDataset::open(pack_dir)?;
    let pack_json = pack_dir.join("pack.json");
    let pack = sha256_hex(&std::fs::read(&pack_json).map_err(EngineError::io(&pack_json))?);
    let vocab = Qwen3Config::from_file(&teacher_dir.join("config.json"))?.vocab_size;
    let needed = drawn_sequences(stream, total_micro)?;
    let want = CacheMeta {
        format: FORMAT.into(),
        teacher: teacher_id,
        pack,
        tokenizer_sha256: ds.manifest.tokenizer_sha256.clone(),
        vocab,
        k: c.k,
        tau: d.tau,
        seq_len: cfg.seq_len,
        sequences: needed.len(),
    };
    let usable = |dir: &Path| -> Result<LogitCache> {
        let cache = LogitCache::open(dir)?;
        cache.check(&want)?;
        let have = cache.sequences();
        if let Some(g) = needed.iter().find(|g| have.binary_search(g).is_err()) {
            return Err(EngineError::config(
                &cfg.phase,
                format!(
                    "field `distill.teacher_cache.dir`: {} holds {} sequences but not sequence {g}, which this phase draws",
                    dir.display(),
                    have.len()
                ),
            ));
        }
        Ok(cache)
    };
    let done = |cache: LogitCache, dir: &Path, build_seconds: f64| {
        let bytes = std::fs::metadata(dir.join("logits.bin")).map(|m| m.len()).unwrap_or(0);
        let sequences = cache.meta.sequences;
        PreparedCache { cache: Arc::new(cache), build_seconds, sequences, bytes }
    };
    if let Some(dir) = &c.dir {
        return Ok(done(usable(dir)?, dir, 0.0));
    }
    let dir = work.join("teacher-cache");
    if dir.exists() {
        if let Ok(cache) = usable(&dir) {
            return Ok(done(cache, &dir, 0.0));
        }
        std::fs::remove_dir_all(&dir).map_err(EngineError::io(&dir))?;
    }
    let started = std::time::Instant::now();
    let teacher = Qwen3::load(teacher_dir)?;
    write_cache(&dir, &want, &needed, cfg.micro_batch, |chunk| {
        let (batch, _) = token_batch_of(batch_of(&ds, chunk));
        teacher_topk(&teacher, &batch, c.k, d.tau)
    })?;
    Ok(done(LogitCache::open(&dir)?, &dir, started.elapsed().as_secs_f64()))
}
