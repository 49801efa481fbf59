//! Opening a pack: memory-mapped tokens, parsed indexes, every cross-file count checked.

use super::format::*;
use crate::error::{DataError, Result};
use crate::fsutil::{read_json, sha256_file};
use memmap2::Mmap;
use std::path::{Path, PathBuf};

/// One shard: metadata, index and mapped tokens.
pub struct Shard {
    /// Its metadata.
    pub meta: ShardMeta,
    /// Its index.
    pub index: ShardIndex,
    tokens: Mmap,
    tokens_path: PathBuf,
}

impl Shard {
    /// Tokens of sequence `i` (`seq_len` of them).
    pub fn sequence(&self, i: usize) -> &[u32] {
        let t = self.index.seq_len as usize;
        let bytes = &self.tokens[i * t * 4..(i + 1) * t * 4];
        bytemuck::cast_slice(bytes)
    }

    /// Segments of sequence `i`.
    pub fn segments(&self, i: usize) -> &[Segment] {
        let (a, z) = (self.index.seq_offsets[i] as usize, self.index.seq_offsets[i + 1] as usize);
        &self.index.segments[a..z]
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.index.seq_offsets.len() - 1
    }

    /// True if it has no sequence.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An opened pack.
pub struct PackedDataset {
    /// Its directory.
    pub dir: PathBuf,
    /// `pack.json`.
    pub manifest: PackManifest,
    /// The shards, in manifest order.
    pub shards: Vec<Shard>,
    /// First global sequence number of each shard (and the total at the end).
    starts: Vec<u64>,
}

/// One sequence, by reference.
pub struct SequenceRef<'a> {
    /// Tokens (`seq_len`).
    pub tokens: &'a [u32],
    /// Document pieces.
    pub segments: &'a [Segment],
    /// Domain tag.
    pub domain: &'a str,
}

impl PackedDataset {
    /// Opens `dir` and checks that every shard's tokens, index and metadata agree.
    pub fn open(dir: &Path) -> Result<Self> {
        if cfg!(target_endian = "big") {
            return Err(DataError::config("platform", "packs are little-endian; big-endian hosts are not supported"));
        }
        let manifest: PackManifest = read_json(&dir.join("pack.json"))?;
        if manifest.format != "medmoe-pack" || manifest.version != 1 {
            return Err(DataError::file(
                dir.join("pack.json"),
                format!("format {} version {} (expected medmoe-pack 1)", manifest.format, manifest.version),
            ));
        }
        let mut shards = Vec::new();
        let mut starts = vec![0u64];
        for name in &manifest.shards {
            let shard = open_shard(dir, name, &manifest)?;
            starts.push(starts.last().expect("non-empty") + shard.len() as u64);
            shards.push(shard);
        }
        Ok(PackedDataset { dir: dir.to_path_buf(), manifest, shards, starts })
    }

    /// Total sequences.
    pub fn len(&self) -> u64 {
        *self.starts.last().expect("non-empty")
    }

    /// True if there is no sequence.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Global sequence `g` (0..len).
    pub fn sequence(&self, g: u64) -> SequenceRef<'_> {
        let s = self.starts.partition_point(|&x| x <= g) - 1;
        let shard = &self.shards[s];
        let i = (g - self.starts[s]) as usize;
        SequenceRef { tokens: shard.sequence(i), segments: shard.segments(i), domain: &shard.meta.domain }
    }

    /// Global sequence numbers of each domain, in order.
    pub fn sequences_by_domain(&self) -> std::collections::BTreeMap<String, Vec<u64>> {
        let mut m: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for (s, shard) in self.shards.iter().enumerate() {
            m.entry(shard.meta.domain.clone()).or_default().extend(self.starts[s]..self.starts[s + 1]);
        }
        m
    }

    /// Full check: SHA-256 of every file against its metadata and every token id below the
    /// vocabulary size. Reads everything once.
    pub fn verify(&self) -> Result<()> {
        for shard in &self.shards {
            let idx_path = self.dir.join(&shard.meta.index_file);
            let got = sha256_file(&shard.tokens_path)?;
            if got != shard.meta.tokens_sha256 {
                return Err(DataError::pack(&shard.tokens_path, format!("SHA-256 {got} differs from its metadata")));
            }
            let got = sha256_file(&idx_path)?;
            if got != shard.meta.index_sha256 {
                return Err(DataError::pack(&idx_path, format!("SHA-256 {got} differs from its metadata")));
            }
            for i in 0..shard.len() {
                if let Some(p) = shard.sequence(i).iter().position(|&t| t >= self.manifest.vocab_size) {
                    return Err(DataError::pack(
                        &shard.tokens_path,
                        format!(
                            "sequence {i} token {p} is id {} >= vocab size {}",
                            shard.sequence(i)[p],
                            self.manifest.vocab_size
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn open_shard(dir: &Path, name: &str, manifest: &PackManifest) -> Result<Shard> {
    let meta_path = dir.join(format!("{name}.json"));
    let meta: ShardMeta = read_json(&meta_path)?;
    let tokens_path = dir.join(&meta.tokens_file);
    let idx_path = dir.join(&meta.index_file);
    let idx_bytes = std::fs::read(&idx_path).map_err(|e| DataError::io(&idx_path, e))?;
    let index = decode_index(&idx_bytes).map_err(|m| DataError::pack(&idx_path, m))?;
    let n_seq = index.seq_offsets.len() as u64 - 1;
    if index.seq_len != manifest.seq_len || meta.seq_len != manifest.seq_len {
        return Err(DataError::pack(
            &idx_path,
            format!(
                "seq_len {} (index) / {} (metadata), pack.json says {}",
                index.seq_len, meta.seq_len, manifest.seq_len
            ),
        ));
    }
    if n_seq != meta.sequences || index.segments.len() as u64 != meta.segments {
        return Err(DataError::pack(
            &idx_path,
            format!(
                "index has {n_seq} sequences and {} segments, {} says {} and {}",
                index.segments.len(),
                meta_path.display(),
                meta.sequences,
                meta.segments
            ),
        ));
    }
    let file = std::fs::File::open(&tokens_path).map_err(|e| DataError::io(&tokens_path, e))?;
    // SAFETY: the file is opened read-only; packs are immutable once written (atomic rename).
    let tokens = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&tokens_path, e))?;
    let expected = n_seq * manifest.seq_len as u64 * 4;
    if tokens.len() as u64 != expected {
        return Err(DataError::pack(
            &tokens_path,
            format!(
                "has {} bytes but its index says {n_seq} sequences of {} tokens ({expected} bytes)",
                tokens.len(),
                manifest.seq_len
            ),
        ));
    }
    let real: u64 = index.segments.iter().map(|s| s.len as u64).sum();
    if real != meta.tokens || real + meta.padding != expected / 4 {
        return Err(DataError::pack(
            &idx_path,
            format!("segments cover {real} tokens, metadata says {} tokens + {} padding", meta.tokens, meta.padding),
        ));
    }
    Ok(Shard { meta, index, tokens, tokens_path })
}
