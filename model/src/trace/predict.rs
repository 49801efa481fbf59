//! Predictors of the expert a token uses in layer `l`, from what is known before layer `l`
//! runs, and their accuracy on held-out traces (module docs of [`super`]).

use super::prefetch::Predict;
use super::{file::Chunk, LayerRecord, NO_EXPERT};
use serde::Serialize;

/// A next-expert predictor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Predictor {
    /// Layer `l`'s router on layer `l-1`'s post-attention residual (no training).
    GateMid,
    /// Layer `l`'s router on layer `l`'s input, i.e. layer `l-1`'s output (no training).
    GateInput,
    /// The expert the previous token of the document used in layer `l` (its runner-up second;
    /// a document's first token falls back to the most frequent experts).
    PrevToken,
    /// The two experts used most often in layer `l` on the training traces.
    MostFrequent,
    /// Trained on the training traces: the experts most often used in layer `l` after a given
    /// combination of what is known before layer `l` runs, backing off from the most specific
    /// combination seen in training to coarser ones ([`CONTEXTS`]); the gate's guesses where
    /// none was seen.
    Trained,
}

impl Predictor {
    /// Every predictor, in report order.
    pub const ALL: [Predictor; 5] =
        [Predictor::GateMid, Predictor::GateInput, Predictor::PrevToken, Predictor::MostFrequent, Predictor::Trained];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Predictor::GateMid => "gate_mid",
            Predictor::GateInput => "gate_input",
            Predictor::PrevToken => "prev_token",
            Predictor::MostFrequent => "most_frequent",
            Predictor::Trained => "trained",
        }
    }
}

/// One feature of a token's context for layer `l`.
#[derive(Clone, Copy)]
enum Feature {
    /// Layer `l-1`'s expert.
    PrevLayer,
    /// Layer `l-1`'s runner-up.
    PrevLayerRunnerUp,
    /// [`Predictor::GateInput`]'s first and second guess.
    GateInput0,
    GateInput1,
    /// [`Predictor::GateMid`]'s first guess.
    GateMid0,
    /// The previous token's expert in layer `l` (none at a document's start).
    PrevToken,
}

/// The contexts the trained predictor counts, most specific first; it predicts from the first
/// one seen in training. On the main job's p1 MoE (held-out traces): the last one alone gives
/// 86.8% top-1, the four with backing off 89.0% (tools: an offline analysis of the same traces).
const CONTEXTS: [&[Feature]; 4] = {
    use Feature::*;
    [
        &[PrevLayer, PrevLayerRunnerUp, GateInput0, GateInput1, GateMid0, PrevToken],
        &[PrevLayer, PrevLayerRunnerUp, GateInput0, GateInput1, PrevToken],
        &[PrevLayer, PrevLayerRunnerUp, GateInput0, GateInput1, GateMid0],
        &[PrevLayer, PrevLayerRunnerUp, GateInput0, GateInput1],
    ]
};

/// The features of one context (unused slots zero).
type Key = [u16; 6];
/// Per layer, per context key: use counts of each expert.
type Table = std::collections::HashMap<Key, Vec<u32>>;

/// What the predictors learn from the training traces.
pub struct Fitted {
    layers: usize,
    /// Best two experts per layer by use count.
    frequent: Vec<[u16; 2]>,
    /// Per layer, one table per entry of [`CONTEXTS`].
    tables: Vec<[Table; CONTEXTS.len()]>,
}

/// The tokens of some chunks, in order: `(doc_start, records of every layer)`.
pub fn tokens<'a>(chunks: &'a [&'a Chunk]) -> impl Iterator<Item = (bool, &'a [LayerRecord])> + Clone + 'a {
    chunks.iter().flat_map(|c| {
        let recs = c.records();
        (0..c.tokens).map(move |t| (c.doc_start(t), &recs[t * c.layers..][..c.layers]))
    })
}

/// The best two of `counts` (ties: lower index first); [`NO_EXPERT`] where nothing was counted.
fn best2(counts: &[u32]) -> [u16; 2] {
    let mut b = [NO_EXPERT; 2];
    for (j, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if b[0] == NO_EXPERT || c > counts[b[0] as usize] {
            b = [j as u16, b[0]];
        } else if b[1] == NO_EXPERT || c > counts[b[1] as usize] {
            b[1] = j as u16;
        }
    }
    b
}

impl Fitted {
    /// Fits the counting predictors on `train` (tokens of the training chunks, in order, with
    /// whether each starts a document).
    pub fn fit<'a>(train: impl Iterator<Item = (bool, &'a [LayerRecord])>, layers: usize, experts: usize) -> Self {
        let e = experts;
        let mut freq = vec![vec![0u32; e]; layers];
        let mut tables: Vec<[Table; CONTEXTS.len()]> = (0..layers).map(|_| Default::default()).collect();
        let mut prev: Option<&[LayerRecord]> = None;
        for (start, recs) in train {
            let before = if start { None } else { prev };
            for (l, r) in recs.iter().enumerate() {
                freq[l][r.expert as usize] += 1;
                for (c, table) in tables[l].iter_mut().enumerate() {
                    if let Some(key) = Self::key(c, l, recs, before) {
                        table.entry(key).or_insert_with(|| vec![0u32; e])[r.expert as usize] += 1;
                    }
                }
            }
            prev = Some(recs);
        }
        Fitted { layers, frequent: freq.iter().map(|c| best2(c)).collect(), tables }
    }

    /// The key of context `c` ([`CONTEXTS`]) for layer `l` of a token whose document's previous
    /// token had records `prev` (None in layer 0 or without the gate's guesses).
    fn key(c: usize, l: usize, recs: &[LayerRecord], prev: Option<&[LayerRecord]>) -> Option<Key> {
        let g = recs.get(l)?.from_input;
        if l == 0 || g.contains(&NO_EXPERT) {
            return None;
        }
        let p = recs[l - 1];
        let value = |f: &Feature| match f {
            Feature::PrevLayer => p.expert,
            Feature::PrevLayerRunnerUp => p.runner_up,
            Feature::GateInput0 => g[0],
            Feature::GateInput1 => g[1],
            Feature::GateMid0 => recs[l].from_mid[0],
            Feature::PrevToken => prev.map_or(NO_EXPERT, |pr| pr[l].expert),
        };
        let mut key = [0u16; 6];
        for (k, f) in key.iter_mut().zip(CONTEXTS[c]) {
            *k = value(f);
        }
        Some(key)
    }

    /// The trained predictor's use counts of each expert `[E]` in layer `l` (>= 1) after the
    /// most specific context of this token seen in training (None: none was).
    pub fn counts(&self, l: usize, recs: &[LayerRecord], prev: Option<&[LayerRecord]>) -> Option<&[u32]> {
        (0..CONTEXTS.len())
            .find_map(|c| Self::key(c, l, recs, prev).and_then(|k| self.tables[l][c].get(&k)))
            .map(Vec::as_slice)
    }

    /// What `p` predicts for layer `l` (>= 1) of the token with records `recs`, whose
    /// document's previous token (if any) had records `prev`.
    pub fn predict(&self, p: Predictor, l: usize, recs: &[LayerRecord], prev: Option<&[LayerRecord]>) -> [u16; 2] {
        match p {
            Predictor::GateMid => recs[l].from_mid,
            Predictor::GateInput => recs[l].from_input,
            Predictor::PrevToken => prev.map_or(self.frequent[l], |pr| [pr[l].expert, pr[l].runner_up]),
            Predictor::MostFrequent => self.frequent[l],
            Predictor::Trained => {
                let Some(counts) = self.counts(l, recs, prev) else { return recs[l].from_input };
                let guess = best2(counts);
                match guess {
                    [NO_EXPERT, _] => recs[l].from_input,
                    [g, NO_EXPERT] => {
                        [g, if recs[l].from_input[0] == g { recs[l].from_input[1] } else { recs[l].from_input[0] }]
                    }
                    g => g,
                }
            }
        }
    }
}

/// Top-1 / top-2 hits of one predictor in one layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Hits {
    /// Tokens scored.
    pub tokens: u64,
    /// The first guess was the expert used.
    pub top1: u64,
    /// One of the two guesses was.
    pub top2: u64,
}

impl Hits {
    /// Top-1 accuracy.
    pub fn top1_rate(&self) -> f64 {
        self.top1 as f64 / self.tokens.max(1) as f64
    }
    /// Top-2 accuracy.
    pub fn top2_rate(&self) -> f64 {
        self.top2 as f64 / self.tokens.max(1) as f64
    }
}

/// Accuracy of every predictor, per layer `1..layers` (`[predictor][layer - 1]`), on the
/// held-out tokens.
pub fn accuracy<'a>(
    fitted: &Fitted,
    held_out: impl Iterator<Item = (bool, &'a [LayerRecord])> + Clone,
) -> Vec<Vec<Hits>> {
    Predictor::ALL
        .iter()
        .map(|&p| accuracy_of(fitted.layers, held_out.clone(), &|_, l, recs, prev| fitted.predict(p, l, recs, prev)))
        .collect()
}

/// Accuracy of one predictor per layer `1..layers` on the held-out tokens; `predict` is asked
/// with each token's position in `held_out` ([`Predict`]).
pub fn accuracy_of<'a>(
    layers: usize,
    held_out: impl Iterator<Item = (bool, &'a [LayerRecord])>,
    predict: &Predict,
) -> Vec<Hits> {
    let mut hits = vec![Hits::default(); layers.saturating_sub(1)];
    let mut prev: Option<&[LayerRecord]> = None;
    for (t, (start, recs)) in held_out.enumerate() {
        let before = if start { None } else { prev };
        for l in 1..layers {
            let guess = predict(t, l, recs, before);
            let h = &mut hits[l - 1];
            h.tokens += 1;
            h.top1 += (guess[0] == recs[l].expert) as u64;
            h.top2 += guess.contains(&recs[l].expert) as u64;
        }
        prev = Some(recs);
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(expert: u16, input: u16) -> LayerRecord {
        LayerRecord { expert, runner_up: (expert + 1) % 4, prob: 0.5, from_mid: [input, 3], from_input: [input, 2] }
    }

    /// Hand-made traces: the gate is right on layer 1 half the time, layer 1's expert always
    /// equals layer 0's, so the trained table learns it; expected counts worked out by hand.
    #[test]
    fn predictors_score_as_counted_by_hand() {
        let train: Vec<Vec<LayerRecord>> = (0..8).map(|i| vec![rec(i % 4, NO_EXPERT), rec(i % 4, i % 2)]).collect();
        let fitted = Fitted::fit(train.iter().map(|r| (false, r.as_slice())), 2, 4);
        let held: Vec<Vec<LayerRecord>> = vec![vec![rec(2, NO_EXPERT), rec(2, 0)], vec![rec(1, NO_EXPERT), rec(1, 1)]];
        let starts = [true, false];
        let hits = accuracy(&fitted, held.iter().zip(starts).map(|(r, s)| (s, r.as_slice())));
        let get = |p: Predictor| hits[Predictor::ALL.iter().position(|&q| q == p).unwrap()][0];
        // Gate on the input: guesses 0 then 1 for experts 2 then 1: one top-1 hit; top-2 adds
        // nothing (second guess 2 for the first token: a top-2 hit).
        assert_eq!(get(Predictor::GateInput), Hits { tokens: 2, top1: 1, top2: 2 });
        // Trained: no full context was seen (the previous tokens differ), but (prev 2 / runner-up
        // 3, gates 0, 2, mid 0) was, with expert 2; (1 / 2, 1, 2, mid 1) with expert 1.
        assert_eq!(get(Predictor::Trained), Hits { tokens: 2, top1: 2, top2: 2 });
        // Previous token: the first token starts its document (most frequent: experts 0, 1 with
        // two uses each -> [0, 1], a miss for expert 2), the second sees expert 2 / runner-up 3:
        // a miss for expert 1.
        assert_eq!(get(Predictor::PrevToken), Hits { tokens: 2, top1: 0, top2: 0 });
        assert_eq!(get(Predictor::MostFrequent), Hits { tokens: 2, top1: 0, top2: 1 });
    }
}
