//! The trace directory: `trace.json` (what was traced, by which model) and chunk files
//! `chunk-<i>.bin`, each holding the records of a run of sequences, written atomically and read
//! through a memory map. A chunk that exists is complete, so tracing resumes at the first
//! missing one; a directory traced by another model (or from other data) is refused.
//!
//! Chunk layout (little-endian): `MEDTRACE` (8 bytes), layers u32, experts u32, tokens u64,
//! sequences u64; then one byte per token (1: first token of a document), zero-padded to a
//! multiple of 8; then `tokens x layers` [`LayerRecord`]s (16 bytes each).

use super::LayerRecord;
use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MEDTRACE";
const HEADER: usize = 32;

/// What a trace directory holds (`trace.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceMeta {
    /// Identity of the traced model (a hash of its config and weights files' sizes and headers).
    pub model: String,
    /// Identity of the data (the pack directory's index hash).
    pub data: String,
    /// MoE layers (records per token).
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Bytes of one routed expert's weights in f32 (gate, up, down).
    pub expert_bytes: u64,
    /// Sequences per chunk file.
    pub chunk_seqs: usize,
    /// Sequences traced in all.
    pub seqs: usize,
    /// Width D of the hidden states kept per token and layer (`hidden-<i>.bin`, see
    /// [`super::hidden`]); 0: none kept (the default trace).
    #[serde(default)]
    pub hidden: usize,
}

/// The path of chunk `i`.
pub fn chunk_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("chunk-{i:05}.bin"))
}

/// Opens (or starts) the trace directory `dir` for `meta`: an existing `trace.json` must
/// describe the same model, data and chunking, else the error says what differs.
pub fn open_dir(dir: &Path, meta: &TraceMeta) -> Result<()> {
    let path = dir.join("trace.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let old: TraceMeta = serde_json::from_str(&text)
                .map_err(|e| ModelError::ConfigJson { path: path.clone(), msg: e.to_string() })?;
            let differs = |field: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| ModelError::ConfigField {
                path: path.clone(),
                field: field.into(),
                msg: format!("the directory was traced with {a:?}, this run has {b:?}: use a new --out"),
            };
            if old.model != meta.model {
                return Err(differs("model", &old.model, &meta.model));
            }
            if old.data != meta.data {
                return Err(differs("data", &old.data, &meta.data));
            }
            if (old.layers, old.experts, old.chunk_seqs, old.seqs)
                != (meta.layers, meta.experts, meta.chunk_seqs, meta.seqs)
            {
                let a = (old.layers, old.experts, old.chunk_seqs, old.seqs);
                let b = (meta.layers, meta.experts, meta.chunk_seqs, meta.seqs);
                return Err(differs("layers, experts, chunk_seqs, seqs", &a, &b));
            }
            if old.hidden != meta.hidden {
                return Err(differs("hidden (kept hidden-state width, 0: none; --hidden)", &old.hidden, &meta.hidden));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
            let text = serde_json::to_string_pretty(meta).map_err(|e| ModelError::Invalid(e.to_string()))?;
            Ok(atomicio::write_file(&path, text.as_bytes())?)
        }
        Err(e) => Err(ModelError::io(&path, e)),
    }
}

/// Writes chunk `i` atomically: `doc_start[t]` marks the first token of each document,
/// `records` holds `layers` records per token.
pub fn write_chunk(
    dir: &Path,
    i: usize,
    layers: usize,
    experts: usize,
    seqs: usize,
    doc_start: &[bool],
    records: &[LayerRecord],
) -> Result<()> {
    let tokens = doc_start.len();
    assert_eq!(records.len(), tokens * layers, "write_chunk: records are not tokens x layers");
    let flags = tokens.div_ceil(8) * 8;
    let mut bytes = Vec::with_capacity(HEADER + flags + records.len() * 16);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(layers as u32).to_le_bytes());
    bytes.extend_from_slice(&(experts as u32).to_le_bytes());
    bytes.extend_from_slice(&(tokens as u64).to_le_bytes());
    bytes.extend_from_slice(&(seqs as u64).to_le_bytes());
    bytes.extend(doc_start.iter().map(|&s| s as u8));
    bytes.resize(HEADER + flags, 0);
    bytes.extend_from_slice(bytemuck::cast_slice(records));
    Ok(atomicio::write_file(&chunk_path(dir, i), &bytes)?)
}

/// One chunk, memory-mapped.
pub struct Chunk {
    map: memmap2::Mmap,
    /// MoE layers per token.
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Tokens in the chunk.
    pub tokens: usize,
    /// Sequences in the chunk.
    pub seqs: usize,
}

/// Maps a chunk file written once by the trace (`kind` names it in errors), refusing a file
/// shorter than its `header` or without its `magic`.
pub(crate) fn map_chunk(path: &Path, magic: &[u8; 8], header: usize, kind: &str) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: chunk files are written once, atomically, and never modified in place.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::io(path, e))?;
    if map.len() < header || &map[..8] != magic {
        let msg = format!("not a medmoe {kind} (bad magic or shorter than its header)");
        return Err(ModelError::Trace { path: path.to_path_buf(), msg });
    }
    Ok(map)
}

impl Chunk {
    /// Maps chunk file `path`, checking its header and size against `layers` and `experts`.
    pub fn open(path: &Path, layers: usize, experts: usize) -> Result<Self> {
        let map = map_chunk(path, MAGIC, HEADER, "trace chunk")?;
        let bad = |msg: String| ModelError::Trace { path: path.to_path_buf(), msg };
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().expect("4 bytes")) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().expect("8 bytes"));
        let (l, e, tokens, seqs) = (u32_at(8), u32_at(12), u64_at(16), u64_at(24));
        if (l, e) != (layers, experts) {
            return Err(bad(format!("{l} layers x {e} experts, the trace has {layers} x {experts}")));
        }
        let want = (tokens as u128).div_ceil(8) * 8 + HEADER as u128 + tokens as u128 * layers as u128 * 16;
        if map.len() as u128 != want {
            return Err(bad(format!("{} bytes, {tokens} tokens need {want}: truncated or damaged", map.len())));
        }
        Ok(Chunk { map, layers, experts, tokens: tokens as usize, seqs: seqs as usize })
    }

    /// Whether token `t` starts a document.
    pub fn doc_start(&self, t: usize) -> bool {
        self.map[HEADER + t] != 0
    }

    /// The records of every token (`layers` per token).
    pub fn records(&self) -> &[LayerRecord] {
        let at = HEADER + self.tokens.div_ceil(8) * 8;
        bytemuck::cast_slice(&self.map[at..])
    }
}
