//! Routing traces and next-expert prediction for expert prefetching (an offloading runtime
//! loads the expert a token will use in layer `l` while earlier work runs).
//!
//! - [`collect`]: runs documents through the inference forward ([`crate::generate::Decoder`],
//!   eval routing: dropless, temperature 1) and records, per token and MoE layer, the chosen
//!   expert, its routing probability, the runner-up, and what the *cross-layer gate* predicts
//!   for that layer from earlier hidden states: layer `l`'s post-attention norm and router
//!   applied to layer `l-1`'s post-attention residual (`mid`: known while layer `l-1`'s FFN
//!   runs) and to layer `l`'s input (`input`: layer `l-1`'s output, known before layer `l`'s
//!   attention). No training: the idea of Fate (arXiv 2502.12224).
//! - [`file`]: the trace directory (`trace.json` + memory-mapped chunk files, each written
//!   atomically, so a killed run resumes at the first missing chunk).
//! - [`predict`]: predictors of layer `l`'s expert (cross-layer gate from `mid` / `input`,
//!   previous token same layer, most frequent, and a small trained predictor: counts of the
//!   expert given the previous layer's expert, the gates' guesses and the previous token's
//!   expert, backing off to coarser contexts), top-1 / top-2 accuracy per layer on held-out
//!   traces.
//! - [`hidden`]: optional hidden-state chunk files (`--hidden`): every token's input to every
//!   MoE layer, f16, memory-mapped.
//! - [`probe`], [`probe_features`]: a softmax probe (linear or one hidden layer, plain Adam)
//!   per layer on the hidden state entering layer `l`, optionally with the counting
//!   predictor's discrete features as one-hot inputs and combined with its counts.
//! - [`prefetch`]: a cache of `k` experts per layer under LRU, predictor-driven and combined
//!   policies: hit rate and expert loads (bytes) per token.

pub mod collect;
pub mod file;
pub mod hidden;
pub mod predict;
pub mod prefetch;
pub mod probe;
pub mod probe_features;

/// No expert (a prediction that does not exist: layer 0 has no earlier layer).
pub const NO_EXPERT: u16 = u16::MAX;

/// What the trace holds for one token in one MoE layer (16 bytes, `#[repr(C)]`, stored as is).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerRecord {
    /// The expert the token was routed to.
    pub expert: u16,
    /// The expert with the second-best routing score.
    pub runner_up: u16,
    /// The routing probability of `expert` (softmax of the logits; sigmoid for sigmoid routers).
    pub prob: f32,
    /// Cross-layer gate on the previous layer's post-attention residual: best two experts
    /// ([`NO_EXPERT`] in layer 0).
    pub from_mid: [u16; 2],
    /// Cross-layer gate on this layer's input (the previous layer's output): best two experts
    /// ([`NO_EXPERT`] in layer 0).
    pub from_input: [u16; 2],
}

// SAFETY: `#[repr(C)]` of u16, u16, f32, [u16; 2], [u16; 2]: 16 bytes, alignment 4, no padding;
// every bit pattern is a valid value of each field.
unsafe impl bytemuck::Zeroable for LayerRecord {}
// SAFETY: as above (Copy, 'static, no padding, any bit pattern valid).
unsafe impl bytemuck::Pod for LayerRecord {}

/// The best two experts of `scores` (ties: the lower index first).
pub(crate) fn top2(scores: &[f32]) -> [u16; 2] {
    let (mut b0, mut b1) = (usize::MAX, usize::MAX);
    for (j, &s) in scores.iter().enumerate() {
        if b0 == usize::MAX || s > scores[b0] {
            b1 = b0;
            b0 = j;
        } else if b1 == usize::MAX || s > scores[b1] {
            b1 = j;
        }
    }
    let as_u16 = |j: usize| if j == usize::MAX { NO_EXPERT } else { j as u16 };
    [as_u16(b0), as_u16(b1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top2_orders_and_breaks_ties_low_first() {
        assert_eq!(top2(&[0.1, 0.7, 0.7, 0.2]), [1, 2]);
        assert_eq!(top2(&[3.0, 1.0, 2.0]), [0, 2]);
        assert_eq!(top2(&[5.0]), [0, NO_EXPERT]);
        assert_eq!(std::mem::size_of::<LayerRecord>(), 16);
    }
}
