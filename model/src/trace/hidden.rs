//! Hidden-state chunk files of a trace directory (`moe-cli trace --hidden`): beside each
//! `chunk-<i>.bin`, `hidden-<i>.bin` holds every token's residual stream entering each MoE layer
//! (layer `l`'s input = layer `l-1`'s output; layer 0's is the embedding) in f16, for probes
//! trained on the hidden state ([`super::probe`]). Written atomically before its chunk file, so
//! a chunk that exists has its hidden states too and a killed run resumes at the first missing
//! chunk.
//!
//! Layout (little-endian): `MEDHIDDN` (8 bytes), layers u32, D u32, tokens u64, 8 zero bytes;
//! then `tokens x layers x D` f16 values (token-major: `[T, L, D]`).

use crate::error::{ModelError, Result};
use half::f16;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MEDHIDDN";
const HEADER: usize = 32;

/// The path of hidden-state chunk `i`.
pub fn hidden_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("hidden-{i:05}.bin"))
}

/// Writes hidden-state chunk `i` atomically: `states` `[T, L, D]` in f32, stored as f16.
pub fn write_hidden(dir: &Path, i: usize, layers: usize, dim: usize, states: &[f32]) -> Result<()> {
    let per_token = layers * dim;
    assert!(
        per_token > 0 && states.len().is_multiple_of(per_token),
        "write_hidden: states are not [T, {layers}, {dim}]"
    );
    let tokens = states.len() / per_token;
    let mut bytes = Vec::with_capacity(HEADER + states.len() * 2);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(layers as u32).to_le_bytes());
    bytes.extend_from_slice(&(dim as u32).to_le_bytes());
    bytes.extend_from_slice(&(tokens as u64).to_le_bytes());
    bytes.resize(HEADER, 0);
    for &v in states {
        bytes.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    }
    Ok(atomicio::write_file(&hidden_path(dir, i), &bytes)?)
}

/// One hidden-state chunk, memory-mapped.
pub struct HiddenChunk {
    map: memmap2::Mmap,
    /// MoE layers per token.
    pub layers: usize,
    /// Hidden size D.
    pub dim: usize,
    /// Tokens in the chunk.
    pub tokens: usize,
}

impl HiddenChunk {
    /// Maps `path`, checking its header and size against `layers`, `dim` and the `tokens` of
    /// the matching record chunk.
    pub fn open(path: &Path, layers: usize, dim: usize, tokens: usize) -> Result<Self> {
        let map = super::file::map_chunk(path, MAGIC, HEADER, "hidden-state chunk")?;
        let bad = |msg: String| ModelError::Trace { path: path.to_path_buf(), msg };
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().expect("4 bytes")) as usize;
        let t = u64::from_le_bytes(map[16..24].try_into().expect("8 bytes"));
        let (l, d) = (u32_at(8), u32_at(12));
        if (l, d, t) != (layers, dim, tokens as u64) {
            return Err(bad(format!(
                "{l} layers x D {d} x {t} tokens, the trace chunk has {layers} x {dim} x {tokens}"
            )));
        }
        let want = HEADER as u128 + t as u128 * l as u128 * d as u128 * 2;
        if map.len() as u128 != want {
            return Err(bad(format!("{} bytes, {t} tokens need {want}: truncated or damaged", map.len())));
        }
        Ok(HiddenChunk { map, layers, dim, tokens })
    }

    /// Token `t`'s input to layer `l` `[D]`.
    pub fn row(&self, t: usize, l: usize) -> &[f16] {
        let at = HEADER + (t * self.layers + l) * self.dim * 2;
        bytemuck::cast_slice(&self.map[at..at + self.dim * 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip through f16 (values exact in f16 come back exactly), and damaged or
    /// mismatched files are refused with the path in the error.
    #[test]
    fn hidden_chunks_round_trip_and_refuse_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (layers, dim, tokens) = (3, 5, 7);
        let states: Vec<f32> = (0..tokens * layers * dim).map(|i| (i as f32 - 50.0) * 0.25).collect();
        write_hidden(dir.path(), 2, layers, dim, &states).unwrap();
        let path = hidden_path(dir.path(), 2);
        let h = HiddenChunk::open(&path, layers, dim, tokens).unwrap();
        for t in 0..tokens {
            for l in 0..layers {
                let got: Vec<f32> = h.row(t, l).iter().map(|v| v.to_f32()).collect();
                assert_eq!(got, states[(t * layers + l) * dim..][..dim]);
            }
        }
        let err = HiddenChunk::open(&path, layers, dim, tokens + 1).err().expect("token count differs");
        assert!(err.to_string().contains("hidden-00002.bin"), "{err}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let err = HiddenChunk::open(&path, layers, dim, tokens).err().expect("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
