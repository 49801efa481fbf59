//! On-disk format of a pack.
//!
//! ```text
//! <pack>/pack.json              PackManifest: seq_len, separator/pad ids, tokenizer hash, shards, per-domain counts
//! <pack>/shard-NNNNN.bin        u32 little-endian tokens [sequences, seq_len]
//! <pack>/shard-NNNNN.idx        the index (below)
//! <pack>/shard-NNNNN.json       ShardMeta: source, domain, license, counts, SHA-256 of .bin and .idx
//! ```
//!
//! Index (little-endian): header `magic "MMPKIDX1", version u32, seq_len u32, sequences u64,
//! segments u64` (32 bytes), then `sequences + 1` u64 offsets into the segment table (sequence `i`
//! owns segments `off[i]..off[i+1]`), then the segments, 24 bytes each:
//! `start u32, len u32, doc u64, doc_offset u32, flags u32`. A segment is one document's piece
//! within one sequence (the piece includes the separator after the document's last token);
//! segments tile the start of their sequence without gaps, the rest of the sequence is padding.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Index file magic.
pub const INDEX_MAGIC: &[u8; 8] = b"MMPKIDX1";
/// Index format version.
pub const INDEX_VERSION: u32 = 1;
/// Bytes of the index header.
pub const INDEX_HEADER_BYTES: usize = 32;
/// Bytes of one segment record.
pub const SEGMENT_BYTES: usize = 24;
/// Segment flag: the document started in an earlier sequence.
pub const FLAG_CONTINUED: u32 = 1;
/// Segment flag: the document goes on in the next sequence.
pub const FLAG_CONTINUES: u32 = 2;

/// One document piece inside a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// First token within the sequence.
    pub start: u32,
    /// Tokens.
    pub len: u32,
    /// Document number within the pack (order of the input).
    pub doc: u64,
    /// Offset of this piece within the document's tokens.
    pub doc_offset: u32,
    /// [`FLAG_CONTINUED`] / [`FLAG_CONTINUES`].
    pub flags: u32,
}

impl Segment {
    /// One past the last token within the sequence.
    pub fn end(&self) -> u32 {
        self.start + self.len
    }
}

/// Serialises an index.
pub fn encode_index(seq_len: u32, seq_offsets: &[u64], segments: &[Segment]) -> Vec<u8> {
    let n_seq = seq_offsets.len() as u64 - 1;
    let mut out = Vec::with_capacity(INDEX_HEADER_BYTES + seq_offsets.len() * 8 + segments.len() * SEGMENT_BYTES);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&seq_len.to_le_bytes());
    out.extend_from_slice(&n_seq.to_le_bytes());
    out.extend_from_slice(&(segments.len() as u64).to_le_bytes());
    for o in seq_offsets {
        out.extend_from_slice(&o.to_le_bytes());
    }
    for s in segments {
        out.extend_from_slice(&s.start.to_le_bytes());
        out.extend_from_slice(&s.len.to_le_bytes());
        out.extend_from_slice(&s.doc.to_le_bytes());
        out.extend_from_slice(&s.doc_offset.to_le_bytes());
        out.extend_from_slice(&s.flags.to_le_bytes());
    }
    out
}

/// A parsed index (checked by the reader).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardIndex {
    /// Tokens per sequence.
    pub seq_len: u32,
    /// `sequences + 1` offsets into `segments`.
    pub seq_offsets: Vec<u64>,
    /// All segments.
    pub segments: Vec<Segment>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses index bytes; checks sizes and the table's internal consistency, not the tokens.
pub fn decode_index(b: &[u8]) -> Result<ShardIndex, String> {
    if b.len() < INDEX_HEADER_BYTES || &b[..8] != INDEX_MAGIC {
        return Err("not a pack index (bad magic)".into());
    }
    let version = u32_at(b, 8);
    if version != INDEX_VERSION {
        return Err(format!("index version {version}, expected {INDEX_VERSION}"));
    }
    let seq_len = u32_at(b, 12);
    let n_seq = u64_at(b, 16);
    let n_seg = u64_at(b, 24);
    let expected = (n_seq as u128 + 1) * 8 + n_seg as u128 * SEGMENT_BYTES as u128 + INDEX_HEADER_BYTES as u128;
    if expected != b.len() as u128 {
        return Err(format!(
            "index header says {n_seq} sequences and {n_seg} segments ({expected} bytes) but the file has {} bytes",
            b.len()
        ));
    }
    let mut at = INDEX_HEADER_BYTES;
    let mut seq_offsets = Vec::with_capacity(n_seq as usize + 1);
    for _ in 0..=n_seq {
        seq_offsets.push(u64_at(b, at));
        at += 8;
    }
    let mut segments = Vec::with_capacity(n_seg as usize);
    for _ in 0..n_seg {
        segments.push(Segment {
            start: u32_at(b, at),
            len: u32_at(b, at + 4),
            doc: u64_at(b, at + 8),
            doc_offset: u32_at(b, at + 16),
            flags: u32_at(b, at + 20),
        });
        at += SEGMENT_BYTES;
    }
    if seq_offsets[0] != 0 || seq_offsets[n_seq as usize] != n_seg {
        return Err(format!(
            "sequence offsets run from {} to {}, expected 0 to {n_seg}",
            seq_offsets[0], seq_offsets[n_seq as usize]
        ));
    }
    for i in 0..n_seq as usize {
        let (a, z) = (seq_offsets[i], seq_offsets[i + 1]);
        if z < a {
            return Err(format!("sequence {i}: segment offsets decrease ({a} > {z})"));
        }
        let mut end = 0u32;
        for s in &segments[a as usize..z as usize] {
            if s.start != end || s.len == 0 || s.end() > seq_len {
                return Err(format!(
                    "sequence {i}: segment at {} with {} tokens does not follow the previous one (ends at {end}) \
                     within {seq_len} tokens",
                    s.start, s.len
                ));
            }
            end = s.end();
        }
    }
    Ok(ShardIndex { seq_len, seq_offsets, segments })
}

/// Per-shard metadata (`shard-NNNNN.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// `medmoe-pack-shard`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// File name of the tokens.
    pub tokens_file: String,
    /// File name of the index.
    pub index_file: String,
    /// Where the documents come from.
    pub source: String,
    /// Domain tag of every document in the shard.
    pub domain: String,
    /// License of the documents (SPDX id).
    pub license: String,
    /// Tokens per sequence.
    pub seq_len: u32,
    /// Sequences.
    pub sequences: u64,
    /// Document tokens (separators included, padding excluded).
    pub tokens: u64,
    /// Padding tokens.
    pub padding: u64,
    /// Segments (document pieces).
    pub segments: u64,
    /// Documents that start in this shard.
    pub documents: u64,
    /// SHA-256 of the tokens file.
    pub tokens_sha256: String,
    /// SHA-256 of the index file.
    pub index_sha256: String,
    /// SHA-256 of the tokenizer.json used.
    pub tokenizer_sha256: String,
}

/// Per-domain totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainTotals {
    /// Sequences.
    pub sequences: u64,
    /// Document tokens.
    pub tokens: u64,
    /// Padding tokens.
    pub padding: u64,
    /// Documents.
    pub documents: u64,
}

/// `pack.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackManifest {
    /// `medmoe-pack`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// Tokens per sequence.
    pub seq_len: u32,
    /// Token appended after every document.
    pub separator_id: u32,
    /// Token filling the end of the last sequence of a shard.
    pub pad_id: u32,
    /// Vocabulary size of the tokenizer (every token id is below it).
    pub vocab_size: u32,
    /// SHA-256 of the tokenizer.json used.
    pub tokenizer_sha256: String,
    /// Shard base names (`shard-00000`), in order.
    pub shards: Vec<String>,
    /// Totals per domain.
    pub domains: BTreeMap<String, DomainTotals>,
}
