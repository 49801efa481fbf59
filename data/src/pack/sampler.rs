//! Batches for the trainer: seeded per-epoch shuffling, a resumable cursor and domain weights.
//!
//! Draw `k` (0, 1, 2, ...) picks a pool, then the next sequence of that pool's current epoch
//! permutation. With [`Mix::Natural`] there is one pool of all sequences (every sequence once per
//! epoch). With [`Mix::Weighted`] each domain is a pool with its own epochs, and the pool of draw
//! `k` is chosen by a counter-based hash of (seed, k) against the weights, so the cursor is just
//! counters. The permutation of (pool, epoch) is a ChaCha8 shuffle seeded from (seed, pool, epoch).
//! Rank `r` of `W` data-parallel ranks takes the draws with `k % W == r`.

use super::format::Segment;
use super::reader::PackedDataset;
use crate::error::{DataError, Result};
use crate::rng::{label_hash, mix64, unit_f64};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How to mix domains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// Every sequence once per epoch, domains in their natural proportion.
    Natural,
    /// Domain tag -> weight (normalised; domains not listed are never drawn).
    Weighted(BTreeMap<String, f64>),
}

/// Sampler settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// Shuffling seed.
    pub seed: u64,
    /// Sequences per batch (per rank).
    pub batch_size: usize,
    /// Domain mixing.
    pub mix: Mix,
    /// This rank.
    pub rank: usize,
    /// Number of data-parallel ranks.
    pub world_size: usize,
}

/// Position of one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCursor {
    /// Epoch of this pool.
    pub epoch: u64,
    /// Next index in the epoch's permutation.
    pub pos: u64,
}

/// The resumable state (store it in a checkpoint; JSON via serde).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Fingerprint of the config and pack the state belongs to.
    pub fingerprint: String,
    /// Draws made so far (all ranks).
    pub draws: u64,
    /// Cursor per pool (`*` for the natural mix).
    pub pools: BTreeMap<String, PoolCursor>,
}

/// A batch `[B, T]` ready for the model (positions and segment ids per token, shifted targets).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedBatch {
    /// Rows.
    pub b: usize,
    /// Tokens per row.
    pub t: usize,
    /// Token ids `[B*T]`.
    pub ids: Vec<u32>,
    /// Position within the document piece `[B*T]` (restarts at 0 for each segment).
    pub pos: Vec<u32>,
    /// Segment id `[B*T]`, unique within the batch; padding is its own segment per row.
    pub seg: Vec<u32>,
    /// Next token within the same segment, `-100` at a segment's last token and on padding `[B*T]`.
    pub targets: Vec<i32>,
    /// Domain of each row `[B]`.
    pub domains: Vec<String>,
    /// Global sequence number of each row `[B]`.
    pub sequences: Vec<u64>,
}

struct Pool {
    name: String,
    members: Vec<u64>,
    weight: f64,
}

/// Draws batches from a [`PackedDataset`].
pub struct Sampler<'a> {
    ds: &'a PackedDataset,
    config: SamplerConfig,
    pools: Vec<Pool>,
    state: SamplerState,
    perm_cache: BTreeMap<(usize, u64), Vec<u64>>,
}

impl<'a> Sampler<'a> {
    /// A sampler at the start.
    pub fn new(ds: &'a PackedDataset, config: SamplerConfig) -> Result<Self> {
        if config.batch_size == 0 || config.world_size == 0 || config.rank >= config.world_size {
            return Err(DataError::config(
                "sampler",
                format!("batch_size {} rank {} world_size {}", config.batch_size, config.rank, config.world_size),
            ));
        }
        let by_domain = ds.sequences_by_domain();
        let pools = match &config.mix {
            Mix::Natural => vec![Pool { name: "*".into(), members: (0..ds.len()).collect(), weight: 1.0 }],
            Mix::Weighted(w) => {
                let total: f64 = w.values().sum();
                let mut pools = Vec::new();
                for (domain, &weight) in w {
                    if !(weight.is_finite() && weight >= 0.0) {
                        return Err(DataError::config("domain weights", format!("`{domain}` has weight {weight}")));
                    }
                    let members = by_domain.get(domain).cloned().ok_or_else(|| {
                        DataError::config(
                            "domain weights",
                            format!(
                                "the pack has no domain `{domain}` (it has {:?})",
                                by_domain.keys().collect::<Vec<_>>()
                            ),
                        )
                    })?;
                    if weight > 0.0 {
                        pools.push(Pool { name: domain.clone(), members, weight: weight / total });
                    }
                }
                pools
            }
        };
        if pools.is_empty() || pools.iter().any(|p| p.members.is_empty()) {
            return Err(DataError::config("sampler", "nothing to sample (no sequences, or all weights are zero)"));
        }
        let state = SamplerState {
            fingerprint: fingerprint(ds, &config),
            draws: 0,
            pools: pools.iter().map(|p| (p.name.clone(), PoolCursor::default())).collect(),
        };
        Ok(Sampler { ds, config, pools, state, perm_cache: BTreeMap::new() })
    }

    /// A sampler continuing from `state` (which must come from the same pack and config).
    pub fn resume(ds: &'a PackedDataset, config: SamplerConfig, state: SamplerState) -> Result<Self> {
        let mut s = Self::new(ds, config)?;
        if state.fingerprint != s.state.fingerprint {
            return Err(DataError::config(
                "sampler state",
                format!("belongs to another pack or config ({} vs {})", state.fingerprint, s.state.fingerprint),
            ));
        }
        if state.pools.keys().ne(s.state.pools.keys()) {
            return Err(DataError::config("sampler state", "its pools differ from the config's domains"));
        }
        s.state = state;
        Ok(s)
    }

    /// The state to save; [`Sampler::resume`] with it continues exactly here.
    pub fn state(&self) -> &SamplerState {
        &self.state
    }

    fn pool_of_draw(&self, k: u64) -> usize {
        if self.pools.len() == 1 {
            return 0;
        }
        let u = unit_f64(self.config.seed, k);
        let mut acc = 0.0;
        for (i, p) in self.pools.iter().enumerate() {
            acc += p.weight;
            if u < acc {
                return i;
            }
        }
        self.pools.len() - 1
    }

    fn permutation(&mut self, pool: usize, epoch: u64) -> &[u64] {
        let seed = self.config.seed;
        let p = &self.pools[pool];
        self.perm_cache.retain(|(q, e), _| *q != pool || *e == epoch);
        self.perm_cache.entry((pool, epoch)).or_insert_with(|| {
            let mut v = p.members.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(mix64(seed ^ mix64(label_hash(&p.name) ^ mix64(epoch))));
            v.shuffle(&mut rng);
            v
        })
    }

    /// One draw (for every rank; returns the sequence).
    fn draw(&mut self) -> u64 {
        let k = self.state.draws;
        self.state.draws += 1;
        let pool = self.pool_of_draw(k);
        let name = self.pools[pool].name.clone();
        let n = self.pools[pool].members.len() as u64;
        let cur = self.state.pools.get(&name).cloned().unwrap_or_default();
        let seq = self.permutation(pool, cur.epoch)[cur.pos as usize];
        let next = if cur.pos + 1 == n {
            PoolCursor { epoch: cur.epoch + 1, pos: 0 }
        } else {
            PoolCursor { epoch: cur.epoch, pos: cur.pos + 1 }
        };
        self.state.pools.insert(name, next);
        seq
    }

    /// The next sequence numbers of this rank (`batch_size` of them).
    pub fn next_sequences(&mut self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.config.batch_size);
        while out.len() < self.config.batch_size {
            for r in 0..self.config.world_size {
                let s = self.draw();
                if r == self.config.rank {
                    out.push(s);
                }
            }
        }
        out
    }

    /// The next batch of this rank.
    pub fn next_batch(&mut self) -> PackedBatch {
        let seqs = self.next_sequences();
        batch_of(self.ds, &seqs)
    }

    /// Epoch of a pool (`*` for the natural mix).
    pub fn epoch(&self, pool: &str) -> Option<u64> {
        self.state.pools.get(pool).map(|c| c.epoch)
    }
}

fn fingerprint(ds: &PackedDataset, c: &SamplerConfig) -> String {
    let desc = serde_json::json!({
        "tokenizer": ds.manifest.tokenizer_sha256,
        "sequences": ds.len(),
        "seq_len": ds.manifest.seq_len,
        "shards": ds.manifest.shards,
        "seed": c.seed,
        "mix": c.mix,
        "rank": c.rank,
        "world_size": c.world_size,
    });
    crate::fsutil::sha256_hex(desc.to_string().as_bytes())[..16].to_string()
}

/// Builds the model inputs of the given sequences.
pub fn batch_of(ds: &PackedDataset, seqs: &[u64]) -> PackedBatch {
    let t = ds.manifest.seq_len as usize;
    let mut b = PackedBatch {
        b: seqs.len(),
        t,
        ids: Vec::with_capacity(seqs.len() * t),
        pos: vec![0; seqs.len() * t],
        seg: vec![0; seqs.len() * t],
        targets: vec![-100; seqs.len() * t],
        domains: Vec::with_capacity(seqs.len()),
        sequences: seqs.to_vec(),
    };
    let mut next_seg = 0u32;
    for (row, &g) in seqs.iter().enumerate() {
        let s = ds.sequence(g);
        let base = row * t;
        b.ids.extend_from_slice(s.tokens);
        b.domains.push(s.domain.to_string());
        let mut fill = |start: usize, end: usize, seg: u32, real: bool| {
            for j in start..end {
                b.pos[base + j] = (j - start) as u32;
                b.seg[base + j] = seg;
                if real && j + 1 < end {
                    b.targets[base + j] = s.tokens[j + 1] as i32;
                }
            }
        };
        let mut end = 0usize;
        for Segment { start, len, .. } in s.segments {
            fill(*start as usize, (*start + *len) as usize, next_seg, true);
            next_seg += 1;
            end = (*start + *len) as usize;
        }
        if end < t {
            fill(end, t, next_seg, false);
            next_seg += 1;
        }
    }
    b
}
