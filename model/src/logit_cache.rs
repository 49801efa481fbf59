//! The teacher logit cache: per token of a set of packed sequences, the teacher's top-k logits
//! and the log-sum-exp of all its logits at temperature `tau`, precomputed once and read through
//! a memory map, so distillation (p0) needs no teacher forward
//! ([`crate::distill_cached::distill_loss_cached`]).
//!
//! A cache directory holds `cache.json` ([`CacheMeta`]: which teacher, pack, tokenizer, k, tau)
//! and `logits.bin` (little-endian): `MEDLGTC1` (8 bytes), k u32, seq_len u32, sequences u64,
//! 8 reserved bytes; the cached global sequence numbers `[S]` u64, ascending; then per sequence
//! `ids [T, k]` u32, `logits [T, k]` f32, `lse [T]` f32. Written atomically (a directory that
//! exists is complete). A cache is only used for the pack, tokenizer, teacher, k and tau it was
//! built with ([`LogitCache::check`] names the field that differs).

use crate::error::{ModelError, Result};
use crate::qwen3::Qwen3;
use crate::TokenBatch;
use kernels_cpu::distill_topk::topk_row;
use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MEDLGTC1";
const HEADER: usize = 32;
/// The `format` of cache.json.
pub const FORMAT: &str = "medmoe-teacher-cache";
/// Default k (the seed plan's top-20).
pub const DEFAULT_K: usize = 20;

/// What a cache was built from (`cache.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Identity of the teacher (e.g. its stage manifest identity or file hashes).
    pub teacher: String,
    /// Identity of the pack (SHA-256 of its pack.json).
    pub pack: String,
    /// SHA-256 of the tokenizer.json the pack was tokenized with.
    pub tokenizer_sha256: String,
    /// Teacher vocabulary.
    pub vocab: usize,
    /// Cached tokens per position.
    pub k: usize,
    /// Temperature of the stored log-sum-exp.
    pub tau: f32,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences cached.
    pub sequences: usize,
}

/// The teacher side of rows of a batch: `[N, k]` ids and logits, `[N]` log-sum-exps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedRows {
    /// Token ids `[N, k]`.
    pub ids: Vec<u32>,
    /// Raw teacher logits of those tokens `[N, k]`.
    pub logits: Vec<f32>,
    /// `logsumexp(z_t / tau)` `[N]`.
    pub lse: Vec<f32>,
}

/// The teacher's top-`k` logits and log-sum-exp at `tau` of every position of `batch` (an
/// inference forward; the `[B*T, V]` logits of the batch exist while it runs).
pub fn teacher_topk(teacher: &Qwen3, batch: &TokenBatch, k: usize, tau: f32) -> Result<CachedRows> {
    let v = teacher.config.vocab_size;
    if k == 0 || k > v || !(tau > 0.0 && tau.is_finite()) {
        return Err(ModelError::Invalid(format!("teacher cache: k {k} must be in 1..={v}, tau {tau} positive")));
    }
    let logits = teacher.logits(batch)?;
    let rows: Vec<(Vec<u32>, Vec<f32>, f32)> = logits.par_chunks(v).map(|z| topk_row(z, k, tau)).collect();
    let mut out = CachedRows::default();
    for (ids, l, lse) in rows {
        out.ids.extend(ids);
        out.logits.extend(l);
        out.lse.push(lse);
    }
    Ok(out)
}

/// Writes the cache directory `dir` (must not exist) for `meta`: `sequences` (ascending, unique)
/// are computed `batch` at a time by `compute` (their `[len * T]` rows in order) and streamed to
/// `logits.bin`. Nothing is left behind on error.
pub fn write_cache(
    dir: &Path,
    meta: &CacheMeta,
    sequences: &[u64],
    batch: usize,
    mut compute: impl FnMut(&[u64]) -> Result<CachedRows>,
) -> Result<()> {
    if sequences.windows(2).any(|w| w[0] >= w[1]) || sequences.len() != meta.sequences {
        return Err(ModelError::Invalid("teacher cache: sequences must be ascending, unique and counted".into()));
    }
    let (k, t) = (meta.k, meta.seq_len);
    atomicio::write_dir(dir, |tmp| {
        let path = tmp.join("logits.bin");
        let io = |e: std::io::Error| ModelError::io(&path, e);
        atomicio::write_file_with(&path, |w| -> Result<()> {
            w.write_all(MAGIC).map_err(io)?;
            w.write_all(&(k as u32).to_le_bytes()).map_err(io)?;
            w.write_all(&(t as u32).to_le_bytes()).map_err(io)?;
            w.write_all(&(sequences.len() as u64).to_le_bytes()).map_err(io)?;
            w.write_all(&[0u8; 8]).map_err(io)?;
            w.write_all(bytemuck::cast_slice(sequences)).map_err(io)?;
            for chunk in sequences.chunks(batch.max(1)) {
                let rows = compute(chunk)?;
                let n = chunk.len() * t;
                if rows.ids.len() != n * k || rows.logits.len() != n * k || rows.lse.len() != n {
                    return Err(ModelError::Invalid(format!(
                        "teacher cache: {} sequences gave {} lse rows, expected {n}",
                        chunk.len(),
                        rows.lse.len()
                    )));
                }
                for s in 0..chunk.len() {
                    let (a, b) = (s * t * k, (s + 1) * t * k);
                    w.write_all(bytemuck::cast_slice(&rows.ids[a..b])).map_err(io)?;
                    w.write_all(bytemuck::cast_slice(&rows.logits[a..b])).map_err(io)?;
                    w.write_all(bytemuck::cast_slice(&rows.lse[s * t..(s + 1) * t])).map_err(io)?;
                }
            }
            Ok(())
        })?;
        let text = serde_json::to_string_pretty(meta).unwrap_or_default();
        atomicio::write_file(&tmp.join("cache.json"), text.as_bytes())?;
        Ok(())
    })
}

/// A cache directory opened for reading.
pub struct LogitCache {
    /// What it was built from.
    pub meta: CacheMeta,
    dir: PathBuf,
    map: Mmap,
}

impl LogitCache {
    /// Opens and validates `dir` (cache.json and the size and header of logits.bin).
    pub fn open(dir: &Path) -> Result<Self> {
        let json = dir.join("cache.json");
        let text = std::fs::read_to_string(&json).map_err(|e| ModelError::io(&json, e))?;
        let meta: CacheMeta = serde_json::from_str(&text)
            .map_err(|e| ModelError::ConfigJson { path: json.clone(), msg: e.to_string() })?;
        if meta.format != FORMAT {
            return Err(field(&json, "format", format!("`{}` is not a teacher logit cache ({FORMAT})", meta.format)));
        }
        let path = dir.join("logits.bin");
        let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        // SAFETY: the file is only read; a cache is written once, atomically, and never modified.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        let (k, t, s) = (meta.k, meta.seq_len, meta.sequences);
        let want = HEADER + 8 * s + s * t * (8 * k + 4);
        let bad = |msg: String| ModelError::Safetensors { path: path.clone(), msg };
        if map.len() != want || &map[..8] != MAGIC {
            return Err(bad(format!(
                "{} bytes, expected {want} for cache.json's k {k}, T {t}, {s} sequences",
                map.len()
            )));
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().expect("4 bytes"));
        if (u32_at(8) as usize, u32_at(12) as usize) != (k, t) {
            return Err(bad("header disagrees with cache.json (k, seq_len)".into()));
        }
        let cache = LogitCache { meta, dir: dir.to_path_buf(), map };
        if cache.sequences().windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("sequence numbers are not ascending".into()));
        }
        Ok(cache)
    }

    /// The cached global sequence numbers, ascending.
    pub fn sequences(&self) -> &[u64] {
        bytemuck::cast_slice(&self.map[HEADER..HEADER + 8 * self.meta.sequences])
    }

    /// Refuses a cache built for anything but `want`'s teacher, pack, tokenizer, vocabulary, k,
    /// tau and sequence length, naming the field of cache.json that differs.
    pub fn check(&self, want: &CacheMeta) -> Result<()> {
        let json = self.dir.join("cache.json");
        let m = &self.meta;
        let differs = |f: &str, have: String, need: String| {
            Err(field(&json, f, format!("the cache was built with {have}, this run needs {need}")))
        };
        if m.tokenizer_sha256 != want.tokenizer_sha256 {
            return differs("tokenizer_sha256", m.tokenizer_sha256.clone(), want.tokenizer_sha256.clone());
        }
        if m.pack != want.pack {
            return differs("pack", m.pack.clone(), want.pack.clone());
        }
        if m.vocab != want.vocab {
            return differs("vocab", m.vocab.to_string(), want.vocab.to_string());
        }
        if m.seq_len != want.seq_len {
            return differs("seq_len", m.seq_len.to_string(), want.seq_len.to_string());
        }
        if m.teacher != want.teacher {
            return differs("teacher", m.teacher.clone(), want.teacher.clone());
        }
        if m.k != want.k {
            return differs("k", m.k.to_string(), want.k.to_string());
        }
        if m.tau != want.tau {
            return differs("tau", m.tau.to_string(), want.tau.to_string());
        }
        Ok(())
    }

    /// The cached rows of `sequences` (global numbers), in order: `[len * T]` rows.
    pub fn rows(&self, sequences: &[u64]) -> Result<CachedRows> {
        let (k, t, s) = (self.meta.k, self.meta.seq_len, self.meta.sequences);
        let block = t * (8 * k + 4);
        let base = HEADER + 8 * s;
        let all = self.sequences();
        let mut out = CachedRows::default();
        for &g in sequences {
            let i = all.binary_search(&g).map_err(|_| {
                ModelError::Invalid(format!("{}: sequence {g} is not in the teacher cache", self.dir.display()))
            })?;
            let b = &self.map[base + i * block..base + (i + 1) * block];
            let (ids, rest) = b.split_at(4 * t * k);
            let (logits, lse) = rest.split_at(4 * t * k);
            out.ids.extend(ids.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))));
            out.logits.extend(logits.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))));
            out.lse.extend(lse.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))));
        }
        Ok(out)
    }
}

fn field(path: &Path, field: &str, msg: String) -> ModelError {
    ModelError::ConfigField { path: path.to_path_buf(), field: field.into(), msg }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(k: usize, t: usize, s: usize) -> CacheMeta {
        CacheMeta {
            format: FORMAT.into(),
            teacher: "teacher-a".into(),
            pack: "pack-a".into(),
            tokenizer_sha256: "tok-a".into(),
            vocab: 50,
            k,
            tau: 1.0,
            seq_len: t,
            sequences: s,
        }
    }

    /// Row values that identify (sequence, position, slot).
    fn fake(seqs: &[u64], t: usize, k: usize) -> CachedRows {
        let mut r = CachedRows::default();
        for &g in seqs {
            for p in 0..t {
                for j in 0..k {
                    r.ids.push((g as usize * 7 + p * 3 + j) as u32 % 50);
                    r.logits.push(g as f32 + p as f32 / 100.0 + j as f32 / 1e4);
                }
                r.lse.push(-(g as f32) - p as f32);
            }
        }
        r
    }

    #[test]
    fn a_written_cache_reads_back_by_sequence_and_refuses_other_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let (k, t) = (3, 4);
        let seqs = [2u64, 5, 9, 11, 40];
        write_cache(&dir, &meta(k, t, seqs.len()), &seqs, 2, |chunk| Ok(fake(chunk, t, k))).unwrap();
        let c = LogitCache::open(&dir).unwrap();
        assert_eq!(c.sequences(), seqs);
        assert_eq!(c.rows(&[40, 2, 9]).unwrap(), fake(&[40, 2, 9], t, k));
        assert!(c.rows(&[3]).unwrap_err().to_string().contains("sequence 3"));
        c.check(&meta(k, t, seqs.len())).unwrap();
        for (f, edit) in [
            (
                "tokenizer_sha256",
                Box::new(|m: &mut CacheMeta| m.tokenizer_sha256 = "tok-b".into()) as Box<dyn Fn(&mut CacheMeta)>,
            ),
            ("pack", Box::new(|m: &mut CacheMeta| m.pack = "pack-b".into())),
            ("k", Box::new(|m: &mut CacheMeta| m.k = 20)),
        ] {
            let mut other = meta(k, t, seqs.len());
            edit(&mut other);
            let e = c.check(&other).unwrap_err().to_string();
            assert!(e.contains("cache.json") && e.contains(&format!("field `{f}`")), "{e}");
        }
        // A truncated file is refused with its size.
        drop(c);
        let bin = dir.join("logits.bin");
        let bytes = std::fs::read(&bin).unwrap();
        std::fs::write(&bin, &bytes[..bytes.len() - 4]).unwrap();
        assert!(LogitCache::open(&dir).err().unwrap().to_string().contains("expected"));
        // A failed build leaves nothing.
        let other = tmp.path().join("other");
        let e = write_cache(&other, &meta(k, t, 2), &[1, 2], 1, |_| Err(ModelError::Invalid("boom".into())));
        assert!(e.is_err() && !other.exists());
    }
}
