//! The phase's stream of micro-batches as a pure function of a cursor: micro-batch `k` and
//! the cursor after it follow from the cursor before it. The DataLoader actor prefetches with
//! it, and a restarted loader continues from the trainer's cursor, so no batch is lost or
//! repeated.

use crate::error::{EngineError, Result};
use crate::phase::{LongRows, MixConfig};
use crate::preference_data::PreferencePair;
use data::pack::{Mix, PackedBatch, PackedDataset, Sampler, SamplerConfig, SamplerState};
use data::rng::unit_f64;
use data::sft::SftRow;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the stream is: micro-batches delivered so far and the sampler states behind them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoaderCursor {
    /// Micro-batches delivered.
    pub index: u64,
    /// State of the mixed sampler (None before its first batch).
    pub mixed: Option<SamplerState>,
    /// State of each domain's sampler of the domain-biased part.
    pub biased: BTreeMap<String, SamplerState>,
}

/// The phase's batch stream.
#[derive(Clone)]
pub struct BatchStream {
    source: Source,
    weights: BTreeMap<String, f64>,
    micro_batch: usize,
    seed: u64,
    /// Micro-batches (from the start) drawn one domain at a time.
    biased_until: u64,
}

/// Where the rows come from.
#[derive(Clone)]
enum Source {
    /// The run's packed train set, drawn by domain.
    Pack(Arc<PackedDataset>),
    /// Packed SFT conversations (phase p2).
    Sft(Arc<SftRows>),
    /// Preference pairs (phase p3): `micro_batch / 2` pairs a micro-batch.
    Pairs(Arc<Vec<PreferencePair>>),
    /// Other phases' streams one after another: (first micro-batch, stream), in order
    /// (`baseline-small` on the micro-batches of base + p0 + p1).
    Chain(Arc<Vec<(u64, BatchStream)>>),
}

/// The rows of an SFT stream: rows of the phase's length, and the long rows with their share of
/// the micro-batches and their rows per micro-batch.
struct SftRows {
    rows: Vec<SftRow>,
    long: Option<(Vec<SftRow>, LongRows, usize)>,
}

/// Items `k*per .. (k+1)*per` of the endless sequence that visits `0..n` once per epoch, each
/// epoch in its own seeded order.
fn epoch_slots(n: usize, per: usize, k: u64, seed: u64) -> Vec<usize> {
    let mut order: Option<(u64, Vec<usize>)> = None;
    (0..per as u64)
        .map(|i| {
            let j = k * per as u64 + i;
            let epoch = j / n as u64;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let mut perm: Vec<usize> = (0..n).collect();
                perm.shuffle(&mut data::rng::sub_rng(seed ^ epoch.wrapping_mul(0x9E37_79B9), "epoch-order"));
                order = Some((epoch, perm));
            }
            order.as_ref().expect("set above").1[(j % n as u64) as usize]
        })
        .collect()
}

/// A micro-batch of pairs: the chosen rows, then the rejected rows in the same order (the
/// layout `model::preference` expects); `sequences` holds each row's pair index.
fn pairs_batch(pairs: &[PreferencePair], picked: &[usize]) -> PackedBatch {
    let t = pairs[0].chosen.len();
    let rows: Vec<(&[u32], &[i32])> = picked
        .iter()
        .map(|&i| (pairs[i].chosen.as_slice(), pairs[i].chosen_targets.as_slice()))
        .chain(picked.iter().map(|&i| (pairs[i].rejected.as_slice(), pairs[i].rejected_targets.as_slice())))
        .collect();
    PackedBatch {
        b: rows.len(),
        t,
        ids: rows.iter().flat_map(|r| r.0.iter().copied()).collect(),
        pos: (0..rows.len() * t).map(|j| (j % t) as u32).collect(),
        seg: (0..rows.len() * t).map(|j| (j / t) as u32).collect(),
        targets: rows.iter().flat_map(|r| r.1.iter().copied()).collect(),
        domains: vec!["preference".to_string(); rows.len()],
        sequences: picked.iter().chain(picked).map(|&i| i as u64).collect(),
    }
}

/// Token-position segments of different rows never share an id (rows hold at most `T + 1`).
fn sft_batch(rows: &[&SftRow]) -> PackedBatch {
    let t = rows.first().map_or(0, |r| r.ids.len());
    let mut b = PackedBatch {
        b: rows.len(),
        t,
        ids: Vec::with_capacity(rows.len() * t),
        pos: Vec::with_capacity(rows.len() * t),
        seg: Vec::with_capacity(rows.len() * t),
        targets: Vec::with_capacity(rows.len() * t),
        domains: vec!["sft".to_string(); rows.len()],
        sequences: Vec::new(),
    };
    for (i, r) in rows.iter().enumerate() {
        b.ids.extend_from_slice(&r.ids);
        b.pos.extend_from_slice(&r.pos);
        b.seg.extend(r.seg.iter().map(|&s| s + (i * (t + 1)) as u32));
        b.targets.extend_from_slice(&r.targets);
    }
    b
}

impl BatchStream {
    /// The stream of a phase with `total_micro` micro-batches.
    pub fn new(
        ds: Arc<PackedDataset>,
        mix: &MixConfig,
        micro_batch: usize,
        seed: u64,
        total_micro: u64,
    ) -> Result<Self> {
        let domains = ds.sequences_by_domain();
        let weights: BTreeMap<String, f64> =
            mix.weights.iter().filter(|(_, &w)| w > 0.0).map(|(d, &w)| (d.clone(), w)).collect();
        for d in weights.keys() {
            if !domains.contains_key(d) {
                return Err(EngineError::config(
                    "mix.weights",
                    format!("domain `{d}` is not in the pack (it has {:?})", domains.keys().collect::<Vec<_>>()),
                ));
            }
        }
        if weights.is_empty() {
            return Err(EngineError::config("mix.weights", "all weights are zero"));
        }
        let biased_until = (mix.biased_frac.clamp(0.0, 1.0) * total_micro as f64).round() as u64;
        Ok(BatchStream { source: Source::Pack(ds), weights, micro_batch, seed, biased_until })
    }

    /// The stream of an SFT phase: `rows` (packed conversations) in a seeded order, reshuffled
    /// every epoch; micro-batch `k` holds the rows `k*B .. (k+1)*B` of that endless sequence.
    pub fn sft(rows: Vec<SftRow>, micro_batch: usize, seed: u64) -> Result<Self> {
        Self::sft_with_long(rows, None, micro_batch, seed)
    }

    /// An SFT stream where micro-batch `k` is made of `per` long rows when `long.is_long(k)`
    /// (each kind in its own seeded order, reshuffled every epoch), else of `micro_batch` rows.
    pub fn sft_with_long(
        rows: Vec<SftRow>,
        long: Option<(Vec<SftRow>, LongRows)>,
        micro_batch: usize,
        seed: u64,
    ) -> Result<Self> {
        if rows.is_empty() || micro_batch == 0 {
            return Err(EngineError::config("sft", "no packed conversation rows to train on"));
        }
        let long = match long {
            Some((long_rows, l)) if l.fraction > 0.0 => {
                let t = rows[0].ids.len();
                let per = l.rows_per_micro(micro_batch, t);
                if long_rows.is_empty() || per == 0 || per * l.seq_len != micro_batch * t {
                    return Err(EngineError::config(
                        "sft.long",
                        format!(
                            "{} long rows of {} tokens cannot fill micro-batches of {micro_batch} x {t} positions",
                            long_rows.len(),
                            l.seq_len
                        ),
                    ));
                }
                Some((long_rows, l, per))
            }
            _ => None,
        };
        let source = Source::Sft(Arc::new(SftRows { rows, long }));
        Ok(BatchStream { source, weights: BTreeMap::new(), micro_batch, seed, biased_until: 0 })
    }

    /// The stream of a preference phase: `micro_batch / 2` pairs a micro-batch, in a seeded
    /// order reshuffled every epoch.
    pub fn pairs(pairs: Arc<Vec<PreferencePair>>, micro_batch: usize, seed: u64) -> Result<Self> {
        if pairs.is_empty() || micro_batch < 2 {
            return Err(EngineError::config("preference", "no preference pairs to train on"));
        }
        Ok(BatchStream { source: Source::Pairs(pairs), weights: BTreeMap::new(), micro_batch, seed, biased_until: 0 })
    }

    /// The streams of `segments` (stream, micro-batches it delivers) one after another: micro-batch
    /// `k` of the chain is micro-batch `k - start` of the segment holding it, drawn exactly as that
    /// segment's own phase draws it (each segment's samplers start fresh at its first micro-batch).
    /// Micro-batches past the end continue the last segment.
    pub fn chain(segments: Vec<(BatchStream, u64)>) -> Result<Self> {
        let first = segments.first().ok_or_else(|| EngineError::config("same_tokens_as", "no phase to follow"))?;
        let micro_batch = first.0.micro_batch;
        let mut start = 0;
        let mut parts = Vec::with_capacity(segments.len());
        for (stream, n) in segments {
            parts.push((start, stream));
            start += n;
        }
        Ok(BatchStream {
            source: Source::Chain(Arc::new(parts)),
            weights: BTreeMap::new(),
            micro_batch,
            seed: 0,
            biased_until: 0,
        })
    }

    /// SFT micro-batch `k`: row slot `j = k*B + i` is position `j % n` of epoch `j / n`'s shuffle,
    /// `k` counting the micro-batches of its kind (long rows are numbered after the others).
    fn sft_next(&self, rows: &SftRows, k: u64) -> PackedBatch {
        let (set, per, k, seed, first) = match &rows.long {
            Some((long_rows, l, per)) if l.is_long(k) => {
                (long_rows, *per, l.long_before(k), self.seed ^ 0x10A6_5EED, rows.rows.len())
            }
            Some((_, l, _)) => (&rows.rows, self.micro_batch, k - l.long_before(k), self.seed, 0),
            None => (&rows.rows, self.micro_batch, k, self.seed, 0),
        };
        let picked = epoch_slots(set.len(), per, k, seed);
        let mut batch = sft_batch(&picked.iter().map(|&i| &set[i]).collect::<Vec<_>>());
        batch.sequences = picked.iter().map(|&i| (first + i) as u64).collect();
        batch
    }

    fn sampler_config(&self, mix: Mix) -> SamplerConfig {
        SamplerConfig { seed: self.seed, batch_size: self.micro_batch, mix, rank: 0, world_size: 1 }
    }

    /// Domain of biased micro-batch `k`, drawn with the mix weights.
    fn biased_domain(&self, k: u64) -> &str {
        let total: f64 = self.weights.values().sum();
        let u = unit_f64(self.seed ^ 0xB1A5_ED00, k) * total;
        let mut acc = 0.0;
        for (d, w) in &self.weights {
            acc += w;
            if u < acc {
                return d;
            }
        }
        self.weights.keys().last().map(String::as_str).unwrap_or("")
    }

    /// True when micro-batch `k` is domain-biased.
    pub fn is_biased(&self, k: u64) -> bool {
        k < self.biased_until
    }

    /// Micro-batch `cursor.index` and the cursor after it.
    pub fn next(&self, cursor: &LoaderCursor) -> Result<(PackedBatch, LoaderCursor)> {
        let mut next = cursor.clone();
        next.index += 1;
        let ds = match &self.source {
            Source::Sft(rows) => return Ok((self.sft_next(rows, cursor.index), next)),
            Source::Pairs(pairs) => {
                let picked = epoch_slots(pairs.len(), self.micro_batch / 2, cursor.index, self.seed);
                return Ok((pairs_batch(pairs, &picked), next));
            }
            Source::Chain(parts) => {
                let at = parts.iter().rposition(|(start, _)| *start <= cursor.index).unwrap_or(0);
                let (start, stream) = &parts[at];
                let local = if cursor.index == *start {
                    LoaderCursor::default()
                } else {
                    LoaderCursor { index: cursor.index - start, ..cursor.clone() }
                };
                let (batch, after) = stream.next(&local)?;
                return Ok((batch, LoaderCursor { index: cursor.index + 1, ..after }));
            }
            Source::Pack(ds) => ds,
        };
        let batch = if self.is_biased(cursor.index) {
            let d = self.biased_domain(cursor.index).to_string();
            let config = self.sampler_config(Mix::Weighted([(d.clone(), 1.0)].into()));
            let mut s = match cursor.biased.get(&d) {
                Some(st) => Sampler::resume(ds, config, st.clone())?,
                None => Sampler::new(ds, config)?,
            };
            let b = s.next_batch();
            next.biased.insert(d, s.state().clone());
            b
        } else {
            let config = self.sampler_config(Mix::Weighted(self.weights.clone()));
            let mut s = match &cursor.mixed {
                Some(st) => Sampler::resume(ds, config, st.clone())?,
                None => Sampler::new(ds, config)?,
            };
            let b = s.next_batch();
            next.mixed = Some(s.state().clone());
            b
        };
        Ok((batch, next))
    }
}
