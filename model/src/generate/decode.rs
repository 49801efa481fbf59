//! The inference forward with a key/value cache: the new tokens of several sequences in one
//! pass, each attending to its own cache (prefill: a whole prompt; decode: one token per
//! sequence).
//!
//! Every op except attention and the projections of small steps is the one the training forward
//! uses (`autograd::ops` on an inference tape, so the same kernels and the same MoE routing);
//! rows of different sequences are stacked, which changes nothing per row: RMSNorm, RoPE, the
//! GEMMs, the dot products and the dropless eval routing are all row-wise. Attention runs per
//! sequence against the cache ([`super::attend::cached_attention`]); the attention, dense / shared
//! FFN and LM-head projections of steps of at most [`GEMV_ROWS`] rows (decoding) are dot products
//! ([`kernels_cpu::gemv`]) instead of GEMMs that would pack the whole weight every token.

use super::attend::{cached_attention, Heads};
use super::kv_cache::KvCache;
use crate::error::{ModelError, Result};
use crate::qwen3::{ag, swiglu_ffn, Bound, FfnTensors, ForwardOptions, Qwen3};
use autograd::{ops, Tape, Tensor};
use std::sync::Arc;

/// Steps of at most this many rows project with dot products ([`kernels_cpu::gemv`]), more
/// with the training forward's GEMM.
pub const GEMV_ROWS: usize = 8;

/// `x [n, K] · wᵀ` (`w [M, K]`, HF layout). Decode steps (a few rows) take one dot product per
/// output: the GEMM would pack the whole weight for every token (a third of a decode step).
fn project(tape: &Tape, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, k, m) = (x.shape()[0], x.last_dim(), w.shape()[0]);
    if n > GEMV_ROWS || w.shape().len() != 2 || w.shape()[1] != k {
        return ops::linear(tape, x, w).map_err(ag);
    }
    Ok(Tensor::from_vec(kernels_cpu::gemv::matvec_rows(&x.f32s(), &w.f32s(), n, k, m), &[n, m]))
}

/// The SwiGLU FFN of the training forward ([`swiglu_ffn`]) with [`project`]'s projections.
fn ffn(tape: &Tape, x: &Tensor, gate_up: &Tensor, down: &Tensor) -> Result<Tensor> {
    if x.shape()[0] > GEMV_ROWS {
        return swiglu_ffn(tape, x, gate_up, down);
    }
    let gu = project(tape, x, gate_up)?;
    let m = ops::swiglu_fused(tape, &gu).map_err(ag)?;
    project(tape, &m, down)
}

/// Which rows of a step get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// The last new token of each input (what sampling needs).
    Last,
    /// Every new token (tests: compare with the full forward).
    All,
}

/// New tokens of one sequence in a step.
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    /// Index of the sequence's cache.
    pub seq: usize,
    /// Its new tokens (at positions `cache.len()..`).
    pub tokens: &'a [u32],
}

/// What a traced step shows of one decoder layer (rows: the stacked new tokens).
#[derive(Clone, Copy, Debug)]
pub struct LayerTrace<'a> {
    /// Layer index.
    pub layer: usize,
    /// The residual stream entering the layer `[rows, D]` (the previous layer's output).
    pub input: &'a [f32],
    /// The residual stream after the layer's attention, before its FFN pre-norm `[rows, D]`.
    pub mid: &'a [f32],
    /// The expert each row was routed to (MoE layers; `u32::MAX` never occurs: eval routing is
    /// dropless).
    pub experts: Option<&'a [u32]>,
}

/// A model bound once on an inference tape, ready for cached forward steps.
pub struct Decoder<'m> {
    model: &'m Qwen3,
    tape: Tape,
    bound: Bound,
    opts: ForwardOptions,
}

impl<'m> Decoder<'m> {
    /// Binds `model` for inference: CPU, evaluation routing (dropless, temperature 1, no noise).
    pub fn new(model: &'m Qwen3) -> Self {
        let tape = Tape::inference();
        let bound = model.bind(&tape);
        Decoder { model, tape, bound, opts: ForwardOptions::eval() }
    }

    /// An empty cache for one sequence of this model.
    pub fn new_cache(&self) -> KvCache {
        let c = &self.model.config;
        KvCache::new(c.num_hidden_layers, c.num_key_value_heads * c.head_dim)
    }

    /// The model's context: positions must stay below it.
    pub fn context(&self) -> usize {
        self.model.config.max_position_embeddings
    }

    /// Runs `inputs` (distinct sequences) through the model, appends their keys and values to
    /// `caches[input.seq]`, and returns logits `[rows, V]` for `rows` (inputs in order).
    pub fn step(&self, caches: &mut [KvCache], inputs: &[StepInput<'_>], rows: LogitRows) -> Result<Vec<f32>> {
        self.step_traced(caches, inputs, rows, &mut |_| {})
    }

    /// [`Decoder::step`], showing `observe` every layer's residual streams and routing
    /// (routing traces for expert prefetch prediction).
    pub fn step_traced(
        &self,
        caches: &mut [KvCache],
        inputs: &[StepInput<'_>],
        rows: LogitRows,
        observe: &mut dyn FnMut(LayerTrace<'_>),
    ) -> Result<Vec<f32>> {
        let m = self.model;
        let c = &m.config;
        let (h, kv, dh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size);
        let eps = c.rms_norm_eps as f32;
        self.check(caches, inputs)?;
        // Row ranges and positions of the stacked new tokens.
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut spans = Vec::with_capacity(inputs.len());
        for inp in inputs {
            let past = caches[inp.seq].len();
            spans.push((ids.len(), inp.tokens.len(), past));
            ids.extend_from_slice(inp.tokens);
            pos.extend((past..past + inp.tokens.len()).map(|p| p as u32));
        }
        let n = ids.len();
        let pos: Arc<[u32]> = pos.into();
        let tape = &self.tape;
        let moe_cfg = m.moe_config(&self.opts);
        let heads = Heads { h, kv, dh };
        let mut x = ops::embedding(tape, &ids, &self.bound.embed).map_err(ag)?;
        for (li, l) in self.bound.layers.iter().enumerate() {
            let input = x.clone();
            let n1 = ops::rmsnorm(tape, &x, &l.input_norm, eps).map_err(ag)?;
            let qkv = project(tape, &n1, &l.qkv)?;
            let q = ops::slice_cols(tape, &qkv, 0, h * dh).map_err(ag)?.reshape(&[n * h, dh]);
            let k = ops::slice_cols(tape, &qkv, h * dh, kv * dh).map_err(ag)?.reshape(&[n * kv, dh]);
            let v = ops::slice_cols(tape, &qkv, (h + kv) * dh, kv * dh).map_err(ag)?;
            let q = ops::rmsnorm(tape, &q, &l.q_norm, eps).map_err(ag)?.reshape(&[n, h * dh]);
            let k = ops::rmsnorm(tape, &k, &l.k_norm, eps).map_err(ag)?.reshape(&[n, kv * dh]);
            let q = ops::rope(tape, &q, &pos, m.rope_table(), h).map_err(ag)?.to_vec();
            let k = ops::rope(tape, &k, &pos, m.rope_table(), kv).map_err(ag)?.to_vec();
            let v = v.to_vec();
            let mut att = vec![0f32; n * h * dh];
            for (inp, &(r0, len, past)) in inputs.iter().zip(&spans) {
                let cache = &mut caches[inp.seq];
                cache.append(li, &k[r0 * kv * dh..][..len * kv * dh], &v[r0 * kv * dh..][..len * kv * dh]);
                let out = &mut att[r0 * h * dh..][..len * h * dh];
                let qs = &q[r0 * h * dh..][..len * h * dh];
                cached_attention(out, qs, cache.keys(li), cache.values(li), past, heads);
            }
            let a = project(tape, &Tensor::from_vec(att, &[n, h * dh]), &l.o)?;
            x = ops::add(tape, &x, &a).map_err(ag)?;
            let n2 = ops::rmsnorm(tape, &x, &l.post_norm, eps).map_err(ag)?;
            let mut chosen = None;
            let f = match (&l.ffn, &moe_cfg) {
                (FfnTensors::Dense { gate_up, down }, _) => ffn(tape, &n2, gate_up, down)?,
                (FfnTensors::Moe { shared, router, experts }, Some(cfg)) => {
                    let bias = m.router_bias.get(li).map(Vec::as_slice);
                    let moe = ops::moe_routed(tape, &n2, router, experts, bias, cfg, 0, false).map_err(ag)?;
                    chosen = Some(moe.expert_of_token);
                    let routed = moe.out;
                    match shared {
                        Some((gu, down)) => ops::add(tape, &ffn(tape, &n2, gu, down)?, &routed).map_err(ag)?,
                        None => routed,
                    }
                }
                (FfnTensors::Moe { .. }, None) => unreachable!("MoE tensors are bound only with a MoE spec"),
            };
            observe(LayerTrace { layer: li, input: &input.f32s(), mid: &x.f32s(), experts: chosen.as_deref() });
            x = ops::add(tape, &x, &f).map_err(ag)?;
        }
        for (inp, &(_, len, _)) in inputs.iter().zip(&spans) {
            caches[inp.seq].commit(len);
        }
        let x = match rows {
            LogitRows::All => x,
            LogitRows::Last => {
                let all = x.f32s();
                let last: Vec<f32> =
                    spans.iter().flat_map(|&(r0, len, _)| all[(r0 + len - 1) * d..][..d].iter().copied()).collect();
                Tensor::from_vec(last, &[spans.len(), d])
            }
        };
        let hidden = ops::rmsnorm(tape, &x, &self.bound.norm, eps).map_err(ag)?;
        Ok(project(tape, &hidden, &self.bound.lm_head)?.to_vec())
    }

    /// Inputs name distinct, existing caches, hold tokens of the vocabulary, and fit the context.
    fn check(&self, caches: &[KvCache], inputs: &[StepInput<'_>]) -> Result<()> {
        let (vocab, context) = (self.model.config.vocab_size, self.context());
        if inputs.is_empty() {
            return Err(ModelError::Invalid("a decode step needs at least one sequence".into()));
        }
        let mut seen = vec![false; caches.len()];
        for inp in inputs {
            if inp.seq >= caches.len() || std::mem::replace(&mut seen[inp.seq], true) {
                return Err(ModelError::Invalid(format!("sequence {} is missing or repeated in a step", inp.seq)));
            }
            if inp.tokens.is_empty() {
                return Err(ModelError::Invalid(format!("sequence {} has no new tokens", inp.seq)));
            }
            if let Some(&t) = inp.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::Invalid(format!("token id {t} is outside the vocabulary of {vocab}")));
            }
            let end = caches[inp.seq].len() + inp.tokens.len();
            if end > context {
                return Err(ModelError::Invalid(format!(
                    "sequence {} would reach {end} tokens; the model's context (max_position_embeddings) is {context}",
                    inp.seq
                )));
            }
        }
        Ok(())
    }
}
