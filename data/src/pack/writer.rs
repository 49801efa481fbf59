//! Packing documents into fixed-length sequences and shards.
//!
//! Documents are grouped by (domain, source, license) in input order, so every shard has one
//! domain, source and license. Within a group each document's tokens plus one separator are
//! appended to a running sequence; a document that does not fit is split and continues in the
//! next sequence (positions restart there). The last sequence of a group is padded.

use super::format::*;
use crate::corpus::Document;
use crate::error::{DataError, Result};
use crate::fsutil::{sha256_hex, write_json_atomic};
use crate::tokenizer::Tokenizer;
use atomicio::StagingDir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Packing settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PackConfig {
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Largest shard in tokens (rounded down to whole sequences, at least one).
    pub shard_tokens: usize,
    /// Documents tokenised per parallel batch.
    pub batch_docs: usize,
}

impl Default for PackConfig {
    fn default() -> Self {
        PackConfig { seq_len: 2048, shard_tokens: 1 << 24, batch_docs: 4096 }
    }
}

/// Sequences and index of the shard being filled.
struct ShardBuilder {
    tokens: Vec<u32>,
    seq_offsets: Vec<u64>,
    segments: Vec<Segment>,
    real: u64,
    documents: u64,
}

impl ShardBuilder {
    fn new() -> Self {
        ShardBuilder { tokens: Vec::new(), seq_offsets: vec![0], segments: Vec::new(), real: 0, documents: 0 }
    }
}

/// Writes shards of one group as they fill.
struct Packer<'a> {
    dir: &'a Path,
    seq_len: usize,
    seqs_per_shard: usize,
    pad_id: u32,
    tokenizer_sha256: String,
    key: (String, String, String),
    shard: ShardBuilder,
    /// Tokens of the open sequence (not yet in `shard.tokens`).
    cur: Vec<u32>,
    cur_segments: Vec<Segment>,
    metas: &'a mut Vec<ShardMeta>,
}

impl Packer<'_> {
    fn push_doc(&mut self, doc: u64, tokens: &[u32], sep: u32) -> Result<()> {
        let total = tokens.len() + 1;
        self.shard.documents += 1;
        let mut off = 0usize;
        while off < total {
            let room = self.seq_len - self.cur.len();
            let take = room.min(total - off);
            let start = self.cur.len() as u32;
            let end = off + take;
            self.cur.extend_from_slice(&tokens[off..end.min(tokens.len())]);
            if end == total {
                self.cur.push(sep);
            }
            let mut flags = 0;
            if off > 0 {
                flags |= FLAG_CONTINUED;
            }
            if end < total {
                flags |= FLAG_CONTINUES;
            }
            self.cur_segments.push(Segment { start, len: take as u32, doc, doc_offset: off as u32, flags });
            off = end;
            if self.cur.len() == self.seq_len {
                self.close_sequence()?;
            }
        }
        Ok(())
    }

    fn close_sequence(&mut self) -> Result<()> {
        let real = self.cur.len();
        self.cur.resize(self.seq_len, self.pad_id);
        self.shard.tokens.append(&mut self.cur);
        self.shard.real += real as u64;
        self.shard.segments.append(&mut self.cur_segments);
        self.shard.seq_offsets.push(self.shard.segments.len() as u64);
        if self.shard.seq_offsets.len() - 1 == self.seqs_per_shard {
            self.flush()?;
        }
        Ok(())
    }

    /// Closes the open sequence (padded) and writes the shard.
    fn finish(&mut self) -> Result<()> {
        if !self.cur.is_empty() {
            self.close_sequence()?;
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        let s = std::mem::replace(&mut self.shard, ShardBuilder::new());
        let n_seq = s.seq_offsets.len() as u64 - 1;
        if n_seq == 0 {
            return Ok(());
        }
        let name = format!("shard-{:05}", self.metas.len());
        let bytes: Vec<u8> = s.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let index = encode_index(self.seq_len as u32, &s.seq_offsets, &s.segments);
        let meta = ShardMeta {
            format: "medmoe-pack-shard".into(),
            version: 1,
            tokens_file: format!("{name}.bin"),
            index_file: format!("{name}.idx"),
            domain: self.key.0.clone(),
            source: self.key.1.clone(),
            license: self.key.2.clone(),
            seq_len: self.seq_len as u32,
            sequences: n_seq,
            tokens: s.real,
            padding: n_seq * self.seq_len as u64 - s.real,
            segments: s.segments.len() as u64,
            documents: s.documents,
            tokens_sha256: sha256_hex(&bytes),
            index_sha256: sha256_hex(&index),
            tokenizer_sha256: self.tokenizer_sha256.clone(),
        };
        atomicio::write_file(&self.dir.join(&meta.tokens_file), &bytes)?;
        atomicio::write_file(&self.dir.join(&meta.index_file), &index)?;
        write_json_atomic(&self.dir.join(format!("{name}.json")), &meta)?;
        self.metas.push(meta);
        Ok(())
    }
}

/// Tokenises and packs `docs` into the directory `out` (must not exist or be empty).
/// `progress(documents_done)` is called after each tokenised batch.
pub fn pack_documents(
    docs: &[Document],
    tokenizer: &Tokenizer,
    config: &PackConfig,
    out: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<PackManifest> {
    if config.seq_len < 2 || config.seq_len > (1 << 24) {
        return Err(DataError::config("seq_len", format!("{} (expected 2 to 16777216)", config.seq_len)));
    }
    if docs.is_empty() {
        return Err(DataError::config("corpus", "no documents to pack"));
    }
    let sep = tokenizer.separator_id()?;
    let staging = StagingDir::new(out)?;
    let mut groups: BTreeMap<(String, String, String), Vec<usize>> = BTreeMap::new();
    for (i, d) in docs.iter().enumerate() {
        groups.entry((d.domain.clone(), d.source.clone(), d.license.clone())).or_default().push(i);
    }
    let mut metas = Vec::new();
    let mut done = 0;
    let batch = config.batch_docs.max(1);
    for (key, members) in groups {
        let mut packer = Packer {
            dir: staging.path(),
            seq_len: config.seq_len,
            seqs_per_shard: (config.shard_tokens / config.seq_len).max(1),
            pad_id: sep,
            tokenizer_sha256: tokenizer.sha256().to_string(),
            key,
            shard: ShardBuilder::new(),
            cur: Vec::with_capacity(config.seq_len),
            cur_segments: Vec::new(),
            metas: &mut metas,
        };
        for chunk in members.chunks(batch) {
            let texts: Vec<&str> = chunk.iter().map(|&i| docs[i].text.as_str()).collect();
            let encoded = tokenizer.encode_batch(&texts)?;
            for (&i, ids) in chunk.iter().zip(&encoded) {
                packer.push_doc(i as u64, ids, sep)?;
            }
            done += chunk.len();
            progress(done);
        }
        packer.finish()?;
    }
    let mut domains: BTreeMap<String, DomainTotals> = BTreeMap::new();
    for m in &metas {
        let t = domains.entry(m.domain.clone()).or_default();
        t.sequences += m.sequences;
        t.tokens += m.tokens;
        t.padding += m.padding;
        t.documents += m.documents;
    }
    let manifest = PackManifest {
        format: "medmoe-pack".into(),
        version: 1,
        seq_len: config.seq_len as u32,
        separator_id: sep,
        pad_id: sep,
        vocab_size: tokenizer.vocab_size() as u32,
        tokenizer_sha256: tokenizer.sha256().to_string(),
        shards: metas.iter().map(|m| m.tokens_file.trim_end_matches(".bin").to_string()).collect(),
        domains,
    };
    write_json_atomic(&staging.path().join("pack.json"), &manifest)?;
    staging.commit()?;
    Ok(manifest)
}
