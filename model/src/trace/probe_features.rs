//! Next-expert probes on the hidden state: per layer `l >= 1`, a [`super::probe`] classifier of
//! layer `l`'s expert from what is known before layer `l` runs: layer `l`'s input hidden state
//! (RMS-normalised, from `hidden-<i>.bin`), optionally the previous token's input to layer `l`,
//! and optionally the discrete features of the counting predictor as one-hot inputs (layer
//! `l-1`'s expert and runner-up, the gates' guesses, the previous token's expert in layer `l`).
//! Combined with the counting predictor as a product of experts: `log p_probe + log p_counts`
//! (the counts of the most specific context seen in training, add-one smoothed).

use super::hidden::HiddenChunk;
use super::predict::Fitted;
use super::probe::{train, Probe, ProbeConfig};
use super::{file::Chunk, LayerRecord, NO_EXPERT};

/// One traced token with its hidden states.
#[derive(Clone, Copy)]
pub struct Token<'a> {
    /// First token of a document.
    pub start: bool,
    /// Its records, one per layer.
    pub recs: &'a [LayerRecord],
    /// Its hidden-state chunk and position there.
    pub hidden: &'a HiddenChunk,
    /// Position in the chunk.
    pub t: usize,
}

impl Token<'_> {
    /// Input to layer `l` `[D]`.
    fn state(&self, l: usize) -> &[half::f16] {
        self.hidden.row(self.t, l)
    }
}

/// The tokens of record chunks with their hidden chunks, in order.
pub fn tokens_with_hidden<'a>(chunks: &[(&'a Chunk, &'a HiddenChunk)]) -> Vec<Token<'a>> {
    chunks
        .iter()
        .flat_map(|&(c, h)| {
            let recs = c.records();
            (0..c.tokens).map(move |t| Token {
                start: c.doc_start(t),
                recs: &recs[t * c.layers..][..c.layers],
                hidden: h,
                t,
            })
        })
        .collect()
}

/// Which inputs a probe sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Layer `l`'s input hidden state.
    pub hidden: bool,
    /// The previous token's input to layer `l` (zeros at a document's start).
    pub prev_hidden: bool,
    /// One-hot discrete features (6 x E + 1 inputs).
    pub discrete: bool,
}

impl Features {
    /// Inputs I for hidden size `d` and `e` experts.
    pub fn inputs(&self, d: usize, e: usize) -> usize {
        self.hidden as usize * d + self.prev_hidden as usize * d + self.discrete as usize * (6 * e + 1)
    }

    /// Writes the inputs of layer `l` of `tok` (whose document's previous token is `prev`) into
    /// `out` `[I]`.
    pub fn fill(&self, l: usize, e: usize, tok: &Token, prev: Option<&Token>, out: &mut [f32]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        let mut at = 0;
        let put_state = |at: &mut usize, s: Option<&[half::f16]>, out: &mut [f32]| {
            let d = tok.hidden.dim;
            if let Some(s) = s {
                let o = &mut out[*at..*at + d];
                o.iter_mut().zip(s).for_each(|(o, v)| *o = v.to_f32());
                let inv = 1.0 / (o.iter().map(|v| v * v).sum::<f32>() / d as f32 + 1e-6).sqrt();
                o.iter_mut().for_each(|v| *v *= inv);
            }
            *at += d;
        };
        if self.hidden {
            put_state(&mut at, Some(tok.state(l)), out);
        }
        if self.prev_hidden {
            put_state(&mut at, prev.map(|p| p.state(l)), out);
        }
        if self.discrete {
            let (p, r) = (tok.recs[l - 1], tok.recs[l]);
            let prev_expert = prev.map_or(e as u16, |p| p.recs[l].expert);
            let slots = [p.expert, p.runner_up, r.from_input[0], r.from_input[1], r.from_mid[0]];
            for (k, &v) in slots.iter().enumerate() {
                if v != NO_EXPERT && (v as usize) < e {
                    out[at + k * e + v as usize] = 1.0;
                }
            }
            out[at + 5 * e + (prev_expert as usize).min(e)] = 1.0;
        }
    }
}

/// The previous token of `tokens[i]`'s document.
fn prev_of<'t, 'a>(tokens: &'t [Token<'a>], i: usize) -> Option<&'t Token<'a>> {
    (i > 0 && !tokens[i].start).then(|| &tokens[i - 1])
}

/// One probe per layer `1..layers` (index 0 unused).
pub struct Probes {
    /// What the probes see.
    pub features: Features,
    /// Experts E.
    pub experts: usize,
    /// `probes[l]` for `l >= 1`.
    pub probes: Vec<Option<Probe>>,
    /// Training loss per epoch, per layer.
    pub losses: Vec<Vec<f64>>,
}

impl Probes {
    /// Trains one probe per layer `1..layers` on the training tokens.
    pub fn fit(train_tokens: &[Token], layers: usize, experts: usize, features: Features, cfg: &ProbeConfig) -> Self {
        let d = train_tokens.first().map_or(0, |t| t.hidden.dim);
        let inputs = features.inputs(d, experts);
        let mut probes = vec![None];
        let mut losses = vec![Vec::new()];
        for l in 1..layers {
            let labels: Vec<u16> = train_tokens.iter().map(|t| t.recs[l].expert).collect();
            let fill =
                |i: usize, out: &mut [f32]| features.fill(l, experts, &train_tokens[i], prev_of(train_tokens, i), out);
            let (p, loss) = train(inputs, experts, &labels, &fill, cfg);
            probes.push(Some(p));
            losses.push(loss);
        }
        Probes { features, experts, probes, losses }
    }

    /// Log-probabilities `[T, layers, E]` of every token's expert per layer (layer 0: zeros).
    pub fn log_probs(&self, tokens: &[Token], layers: usize) -> Vec<f32> {
        let e = self.experts;
        let mut out = vec![0f32; tokens.len() * layers * e];
        for (l, probe) in self.probes.iter().enumerate() {
            let Some(p) = probe else { continue };
            for (c0, block) in (0..tokens.len()).collect::<Vec<_>>().chunks(4096).enumerate() {
                let mut x = vec![0f32; block.len() * p.inputs];
                for (row, &i) in x.chunks_exact_mut(p.inputs).zip(block) {
                    self.features.fill(l, e, &tokens[i], prev_of(tokens, i), row);
                }
                let logits = p.logits(&x);
                for (j, z) in logits.chunks_exact(e).enumerate() {
                    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let lse = z.iter().map(|v| (v - m).exp()).sum::<f32>().ln() + m;
                    let t = c0 * 4096 + j;
                    out[(t * layers + l) * e..][..e].iter_mut().zip(z).for_each(|(o, &v)| *o = v - lse);
                }
            }
        }
        out
    }
}

/// The best two guesses per token and layer `[T * layers]` from log-probabilities `[T, layers,
/// E]`, with, for `with_counts`, the counting predictor's smoothed log-probabilities added
/// (product of experts). Layer 0: [`NO_EXPERT`].
pub fn guesses(
    log_probs: &[f32],
    tokens: &[Token],
    layers: usize,
    experts: usize,
    with_counts: Option<&Fitted>,
) -> Vec<[u16; 2]> {
    let e = experts;
    let mut out = vec![[NO_EXPERT; 2]; tokens.len() * layers];
    let mut s = vec![0f32; e];
    for (i, tok) in tokens.iter().enumerate() {
        let prev = prev_of(tokens, i).map(|p| p.recs);
        for l in 1..layers {
            s.copy_from_slice(&log_probs[(i * layers + l) * e..][..e]);
            if let Some(f) = with_counts {
                if let Some(c) = f.counts(l, tok.recs, prev) {
                    let n: u32 = c.iter().sum();
                    let ln = ((n + e as u32) as f32).ln();
                    s.iter_mut().zip(c).for_each(|(v, &k)| *v += ((k + 1) as f32).ln() - ln);
                }
            }
            out[i * layers + l] = super::top2(&s);
        }
    }
    out
}
