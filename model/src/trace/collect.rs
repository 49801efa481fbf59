//! Tracing documents through the inference forward (module docs of [`super`]).

use super::{top2, LayerRecord, NO_EXPERT};
use crate::error::{ModelError, Result};
use crate::generate::{Decoder, KvCache, LayerTrace, LogitRows, StepInput};
use crate::qwen3::Qwen3;
use kernels_cpu::gemm::{matmul, Trans};
use kernels_cpu::moe::RouterWeighting;

/// One layer's router as the trace needs it.
struct Router {
    /// Post-attention RMSNorm weight `[D]`.
    norm: Vec<f32>,
    /// Router weight `[E, D]`.
    weight: Vec<f32>,
    /// Aux-loss-free balancing bias `[E]` (zeros when the model has none).
    bias: Vec<f32>,
}

/// A MoE model ready to trace documents.
pub struct Tracer<'m> {
    decoder: Decoder<'m>,
    routers: Vec<Router>,
    experts: usize,
    hidden: usize,
    eps: f32,
    sigmoid: bool,
}

impl<'m> Tracer<'m> {
    /// A tracer of `model`; a dense model is refused (nothing is routed).
    pub fn new(model: &'m Qwen3) -> Result<Self> {
        let spec = model
            .moe
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("routing traces need a MoE model; this one is dense".into()))?;
        let c = &model.config;
        let get =
            |name: String| model.params.get(&name).map(|t| t.to_vec()).map_err(|e| ModelError::Invalid(e.to_string()));
        let mut routers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            routers.push(Router {
                norm: get(format!("model.layers.{l}.post_attention_layernorm.weight"))?,
                weight: get(format!("model.layers.{l}.mlp.gate.weight"))?,
                bias: model.router_bias.get(l).cloned().unwrap_or_else(|| vec![0.0; spec.num_experts]),
            });
        }
        Ok(Tracer {
            decoder: Decoder::new(model),
            routers,
            experts: spec.num_experts,
            hidden: c.hidden_size,
            eps: c.rms_norm_eps as f32,
            sigmoid: spec.weighting == RouterWeighting::Sigmoid,
        })
    }

    /// Layers of every record row.
    pub fn layers(&self) -> usize {
        self.routers.len()
    }

    /// Experts per layer.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Routing scores `[rows, E]` of layer `l` on residual rows `x` `[rows, D]`: the layer's
    /// post-attention norm, router logits, softmax (sigmoid for sigmoid routers).
    fn probs(&self, l: usize, x: &[f32]) -> Vec<f32> {
        let (d, e) = (self.hidden, self.experts);
        let r = &self.routers[l];
        let rows = x.len() / d;
        let mut normed = vec![0f32; x.len()];
        for (o, xr) in normed.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ms + self.eps).sqrt();
            o.iter_mut().zip(xr).zip(&r.norm).for_each(|((o, &v), &w)| *o = v * inv * w);
        }
        let mut p = vec![0f32; rows * e];
        matmul(&mut p, &normed, &r.weight, rows, d, e, Trans::No, Trans::Yes, false);
        for row in p.chunks_exact_mut(e) {
            if self.sigmoid {
                row.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
            } else {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                row.iter_mut().for_each(|v| *v = (*v - m).exp());
                let s: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= s);
            }
        }
        p
    }

    /// Selection scores (`probs + bias`, what the router's choice maximises) of layer `l`.
    fn scores(&self, l: usize, probs: &[f32]) -> Vec<f32> {
        let b = &self.routers[l].bias;
        probs.chunks_exact(self.experts).flat_map(|row| row.iter().zip(b).map(|(p, b)| p + b)).collect()
    }

    /// Hidden size D (the width of the states [`Tracer::trace`] can keep).
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Traces `docs` (each its own context, all in one forward): the records of every token,
    /// documents in order, `layers()` records per token, and in how many (token, layer) pairs
    /// the router recomputed here picks the expert the MoE op chose (a self-check: all of them
    /// but exact ties). With `states`, also every token's input to every MoE layer `[T, L, D]`
    /// (replacing what it held).
    pub fn trace(&self, docs: &[&[u32]], mut states: Option<&mut Vec<f32>>) -> Result<(Vec<LayerRecord>, usize)> {
        let (e, layers, d) = (self.experts, self.layers(), self.hidden);
        let rows: usize = docs.iter().map(|d| d.len()).sum();
        let mut out = vec![LayerRecord::default(); rows * layers];
        if let Some(s) = states.as_deref_mut() {
            s.clear();
            s.resize(rows * layers * d, 0.0);
        }
        let mut caches: Vec<KvCache> = docs.iter().map(|_| self.decoder.new_cache()).collect();
        let inputs: Vec<StepInput<'_>> = docs
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.is_empty())
            .map(|(seq, tokens)| StepInput { seq, tokens })
            .collect();
        if inputs.is_empty() {
            return Ok((out, 0));
        }
        let mut prev_mid: Vec<f32> = Vec::new();
        let mut agree = 0usize;
        let mut observe = |t: LayerTrace<'_>| {
            let l = t.layer;
            let Some(chosen) = t.experts else { return };
            if let Some(s) = states.as_deref_mut() {
                for (r, x) in t.input.chunks_exact(d).enumerate() {
                    s[(r * layers + l) * d..][..d].copy_from_slice(x);
                }
            }
            let probs = self.probs(l, t.mid);
            let scores = self.scores(l, &probs);
            let (from_mid, from_input) = if l == 0 {
                (None, None)
            } else {
                let mid = self.scores(l, &self.probs(l, &prev_mid));
                let inp = self.scores(l, &self.probs(l, t.input));
                (Some(mid), Some(inp))
            };
            for (r, &c) in chosen.iter().enumerate() {
                let sr = &scores[r * e..][..e];
                let pick = |v: &Option<Vec<f32>>| v.as_ref().map_or([NO_EXPERT; 2], |s| top2(&s[r * e..][..e]));
                let best2 = top2(sr);
                agree += (best2[0] as u32 == c) as usize;
                let runner_up = if best2[0] as u32 == c { best2[1] } else { best2[0] };
                out[r * layers + l] = LayerRecord {
                    expert: c as u16,
                    runner_up,
                    prob: probs[r * e + c as usize],
                    from_mid: pick(&from_mid),
                    from_input: pick(&from_input),
                };
            }
            prev_mid = t.mid.to_vec();
        };
        self.decoder.step_traced(&mut caches, &inputs, LogitRows::Last, &mut observe)?;
        Ok((out, agree))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::qwen3_init;
    use autograd::DType;

    fn tiny(preset: &str, moe: bool) -> Qwen3 {
        let config = crate::presets::embedded(preset).unwrap().unwrap();
        let spec = moe.then(|| crate::presets::embedded_moe(preset).unwrap().1);
        Qwen3::from_init(config, spec, DType::F32, qwen3_init(7, 0.3))
    }

    /// On a random tiny MoE: the recomputed router agrees with the op on every token, records
    /// are sane, layer 0 has no cross-layer guess, and documents traced together equal
    /// documents traced alone (each is its own context).
    #[test]
    fn traces_agree_with_the_moe_op_and_documents_are_separate_contexts() {
        let model = tiny("tiny-k1p1-n16", true);
        let tracer = Tracer::new(&model).unwrap();
        let (a, b): (Vec<u32>, Vec<u32>) =
            ((0..40).map(|i| (i * 37 % 4000) as u32).collect(), (0..25).map(|i| (i * 11 + 5) as u32).collect());
        let mut states = Vec::new();
        let (together, agree) = tracer.trace(&[&a, &b], Some(&mut states)).unwrap();
        let layers = tracer.layers();
        assert_eq!(together.len(), (a.len() + b.len()) * layers);
        assert_eq!(agree, together.len(), "the router recomputed for the trace disagrees with the MoE op");
        for (i, r) in together.iter().enumerate() {
            assert!(r.prob > 0.0 && r.prob <= 1.0 && r.runner_up != r.expert && (r.expert as usize) < 16, "{r:?}");
            assert_eq!(i % layers == 0, r.from_mid == [NO_EXPERT; 2] && r.from_input == [NO_EXPERT; 2], "{i}: {r:?}");
        }
        let d = tracer.hidden();
        assert_eq!(states.len(), together.len() * d);
        let mut alone_states = Vec::new();
        let (alone_a, _) = tracer.trace(&[&a], Some(&mut alone_states)).unwrap();
        let (alone_b, _) = tracer.trace(&[&b], None).unwrap();
        let n_a = alone_a.len() * d;
        assert!(states[..n_a].iter().zip(&alone_states).all(|(x, y)| (x - y).abs() < 1e-4), "states differ alone");
        assert!(states.iter().any(|&v| v != 0.0) && states.iter().all(|v| v.is_finite()));
        // The kept states are each layer's input: the gate on them reproduces `from_input`.
        for (i, r) in together.iter().enumerate().filter(|(i, _)| i % layers != 0) {
            let x = &states[i * d..][..d];
            let l = i % layers;
            assert_eq!(top2(&tracer.scores(l, &tracer.probs(l, x))), r.from_input, "{i}");
        }
        let close = |x: &[LayerRecord], y: &[LayerRecord]| {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| {
                    (p.expert, p.runner_up, p.from_mid, p.from_input)
                        == (q.expert, q.runner_up, q.from_mid, q.from_input)
                        && (p.prob - q.prob).abs() < 1e-5
                })
        };
        assert!(close(&together[..a.len() * layers], &alone_a));
        assert!(close(&together[a.len() * layers..], &alone_b));
        assert!(Tracer::new(&tiny("tiny-dense", false)).is_err(), "a dense model has no routing to trace");
    }
}
