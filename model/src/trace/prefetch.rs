//! Expert prefetching simulated on held-out traces: each MoE layer keeps a cache of `k`
//! experts; a token's expert in layer `l` is a hit if the cache holds it when the layer runs.
//! Policies:
//! - `lru`: experts are loaded on demand (a miss), least recently used evicted;
//! - `predicted`: before each token the cache holds only the predictor's best `min(k, 2)`
//!   guesses (loaded if absent), and a miss loads the expert for this token only;
//! - `lru+predicted`: the LRU cache, with the predictor's first guess loaded (as most recently
//!   used) before the layer runs.
//!
//! Loads count every expert copied into the cache (prefetches and misses); bytes per token =
//! loads x the expert's size. Layer 0 is not simulated (no earlier layer to predict from).

use super::LayerRecord;
use serde::Serialize;

/// A caching policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Demand loading, LRU eviction.
    Lru,
    /// The predictor's guesses only.
    Predicted,
    /// LRU plus a prefetch of the first guess.
    LruPredicted,
}

impl Policy {
    /// Every policy, in report order.
    pub const ALL: [Policy; 3] = [Policy::Lru, Policy::Predicted, Policy::LruPredicted];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Predicted => "predicted",
            Policy::LruPredicted => "lru+predicted",
        }
    }
}

/// Outcome of one simulation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// (token, layer) uses simulated.
    pub uses: u64,
    /// Uses found in the cache.
    pub hits: u64,
    /// Experts copied into caches.
    pub loads: u64,
    /// Tokens simulated.
    pub tokens: u64,
}

impl Outcome {
    /// Hit rate.
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / self.uses.max(1) as f64
    }
    /// Expert loads per token (all layers).
    pub fn loads_per_token(&self) -> f64 {
        self.loads as f64 / self.tokens.max(1) as f64
    }
}

/// An LRU set of at most `k` experts (most recent last).
struct Lru {
    k: usize,
    order: Vec<u16>,
}

impl Lru {
    /// Touches `e`; returns whether it had to be loaded.
    fn touch(&mut self, e: u16) -> bool {
        if let Some(i) = self.order.iter().position(|&x| x == e) {
            self.order.remove(i);
            self.order.push(e);
            false
        } else {
            if self.order.len() == self.k {
                self.order.remove(0);
            }
            self.order.push(e);
            true
        }
    }
}

/// What a predictor is asked: the token's position in the held-out stream, the layer, the
/// token's records, and the records of the previous token of its document (None at a
/// document's start).
pub type Predict<'p> = dyn Fn(usize, usize, &[LayerRecord], Option<&[LayerRecord]>) -> [u16; 2] + 'p;

/// Simulates `policy` with `k` experts per layer over `tokens` (held-out, in order, with whether
/// each starts a document), with `predict` giving the predictor's two guesses for a layer.
pub fn simulate<'a>(
    policy: Policy,
    k: usize,
    layers: usize,
    tokens: impl Iterator<Item = (bool, &'a [LayerRecord])>,
    predict: &Predict,
) -> Outcome {
    assert!(k > 0, "simulate: a cache holds at least one expert");
    let mut caches: Vec<Lru> = (0..layers).map(|_| Lru { k, order: Vec::new() }).collect();
    let mut out = Outcome::default();
    let mut prev: Option<&[LayerRecord]> = None;
    for (t, (start, recs)) in tokens.enumerate() {
        let before = if start { None } else { prev };
        prev = Some(recs);
        out.tokens += 1;
        for l in 1..layers {
            let need = recs[l].expert;
            let cache = &mut caches[l];
            out.uses += 1;
            match policy {
                Policy::Lru => {
                    let loaded = cache.touch(need);
                    out.hits += !loaded as u64;
                    out.loads += loaded as u64;
                }
                Policy::Predicted => {
                    let guesses = predict(t, l, recs, before);
                    let want: Vec<u16> =
                        guesses.iter().copied().filter(|&g| g != super::NO_EXPERT).take(k.min(2)).collect();
                    out.loads += want.iter().filter(|g| !cache.order.contains(g)).count() as u64;
                    cache.order = want;
                    if cache.order.contains(&need) {
                        out.hits += 1;
                    } else {
                        out.loads += 1;
                    }
                }
                Policy::LruPredicted => {
                    let g = predict(t, l, recs, before)[0];
                    if g != super::NO_EXPERT {
                        out.loads += cache.touch(g) as u64;
                    }
                    let loaded = cache.touch(need);
                    out.hits += !loaded as u64;
                    out.loads += loaded as u64;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(e1: u16, guess: u16) -> Vec<LayerRecord> {
        let r = |expert, g| LayerRecord { expert, runner_up: 0, prob: 1.0, from_mid: [g, g], from_input: [g, 9] };
        vec![r(0, super::super::NO_EXPERT), r(e1, guess)]
    }

    /// Layer 1 uses experts 1, 2, 1, 3 with guesses 1, 2, 2, 3; counts worked out by hand.
    #[test]
    fn policies_count_hits_and_loads_by_hand() {
        let toks = [token(1, 1), token(2, 2), token(1, 2), token(3, 3)];
        let run = |p: Policy, k: usize| {
            let guess = |_: usize, l: usize, r: &[LayerRecord], _: Option<&[LayerRecord]>| r[l].from_input;
            simulate(p, k, 2, toks.iter().map(|t| (false, t.as_slice())), &guess)
        };
        // LRU k=1: every use differs from the previous one: 4 misses.
        assert_eq!(run(Policy::Lru, 1), Outcome { uses: 4, hits: 0, loads: 4, tokens: 4 });
        // LRU k=2: 1 (miss), 2 (miss), 1 (hit), 3 (miss).
        assert_eq!(run(Policy::Lru, 2), Outcome { uses: 4, hits: 1, loads: 3, tokens: 4 });
        // Predicted k=1: guesses 1, 2, 2, 3 loaded (2 is kept from token 2: 3 loads); token 3
        // misses (+1 load).
        assert_eq!(run(Policy::Predicted, 1), Outcome { uses: 4, hits: 3, loads: 4, tokens: 4 });
        // LRU+predicted k=1: prefetch 1 (load), hit; prefetch 2 (load), hit; prefetch 2 (held),
        // need 1 (miss, load); prefetch 3 (load), hit.
        assert_eq!(run(Policy::LruPredicted, 1), Outcome { uses: 4, hits: 3, loads: 4, tokens: 4 });
    }
}
