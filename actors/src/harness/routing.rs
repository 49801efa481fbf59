//! Router usage per layer and capacity overflow, tallied over dropless evaluation forwards.
//!
//! Evaluation routes dropless (capacity 1.0 in the seed plan's words: no token loses its expert).
//! For every forward of `N` tokens and every layer, the tokens a capacity factor `cf` would have
//! dropped are `sum_e max(0, count_e - ceil(cf * N / E))` (top-1 routing: a token over its
//! expert's capacity is dropped, whichever one it is). The seed plan ships 1.05 or 1.25: 1.25 if
//! capacity 1.0 drops anything, else 1.05 ([`ship_capacity`]).

use kernels_cpu::moe::{capacity, RouterStats};
use serde::{Deserialize, Serialize};

/// Capacity factors whose overflow is reported.
pub const CAPACITY_FACTORS: [f32; 3] = [1.0, 1.05, 1.25];

/// Tokens that capacity factor `cf` would drop in one forward whose top-1 choices per expert
/// are `counts` (N = their sum).
pub fn would_drop(counts: &[usize], cf: f32) -> u64 {
    let n: usize = counts.iter().sum();
    let cap = capacity(Some(cf), n, counts.len().max(1));
    counts.iter().map(|&c| c.saturating_sub(cap) as u64).sum()
}

/// The capacity factor to ship: 1.25 when capacity 1.0 drops tokens, else 1.05.
pub fn ship_capacity(dropped_at_1: u64) -> f32 {
    if dropped_at_1 > 0 {
        1.25
    } else {
        1.05
    }
}

/// One layer's tally.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerRouting {
    /// Tokens whose top-1 choice was each expert `[E]`.
    pub counts: Vec<u64>,
    /// Tokens routed.
    pub tokens: u64,
    /// Tokens each of [`CAPACITY_FACTORS`] would have dropped.
    pub dropped: Vec<u64>,
}

impl LayerRouting {
    /// Share of the tokens each expert received `[E]`.
    pub fn share(&self) -> Vec<f64> {
        self.counts.iter().map(|&c| c as f64 / self.tokens.max(1) as f64).collect()
    }

    /// Entropy of [`LayerRouting::share`] (nats; `ln E` when balanced).
    pub fn load_entropy(&self) -> f64 {
        self.share().iter().filter(|&&p| p > 0.0).map(|&p| -p * p.ln()).sum()
    }
}

/// Router usage of every MoE layer over many forwards.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingTally {
    /// Per MoE layer.
    pub layers: Vec<LayerRouting>,
}

impl RoutingTally {
    /// Adds one forward's router statistics (one entry per MoE layer; none for a dense model).
    pub fn add(&mut self, stats: &[RouterStats]) {
        if self.layers.len() < stats.len() {
            self.layers.resize_with(stats.len(), LayerRouting::default);
        }
        for (l, s) in self.layers.iter_mut().zip(stats) {
            if l.counts.len() < s.counts.len() {
                l.counts.resize(s.counts.len(), 0);
            }
            for (a, &c) in l.counts.iter_mut().zip(&s.counts) {
                *a += c as u64;
            }
            l.tokens += s.counts.iter().sum::<usize>() as u64;
            l.dropped.resize(CAPACITY_FACTORS.len(), 0);
            for (d, &cf) in l.dropped.iter_mut().zip(&CAPACITY_FACTORS) {
                *d += would_drop(&s.counts, cf);
            }
        }
    }

    /// Tokens each capacity factor would drop, all layers together, and the token-layer count.
    pub fn dropped_total(&self) -> (Vec<u64>, u64) {
        let mut d = vec![0u64; CAPACITY_FACTORS.len()];
        for l in &self.layers {
            for (a, b) in d.iter_mut().zip(&l.dropped) {
                *a += b;
            }
        }
        (d, self.layers.iter().map(|l| l.tokens).sum())
    }

    /// [`ship_capacity`] of the tally; None for a dense model.
    pub fn ship(&self) -> Option<f32> {
        (!self.layers.is_empty()).then(|| ship_capacity(self.dropped_total().0[0]))
    }
}
