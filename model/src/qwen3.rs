//! The Qwen3 decoder, dense or with the medmoe MoE FFN: parameter layout (HF names), forward
//! and loss.
//!
//! Per layer: `x += o_proj(attn(rope(q_norm(q_proj(n1))), rope(k_norm(k_proj(n1))), v_proj(n1)))`
//! with `n1 = input_layernorm(x)`, then `x += ffn(n2)` with `n2 = post_attention_layernorm(x)`;
//! finally `norm(x)` and the (tied or untied) LM head. The dense FFN is
//! `down_proj(silu(gate_proj(n2)) * up_proj(n2))`; the MoE FFN is a shared SwiGLU expert plus the
//! top-1 routed expert (names follow HF Dots1: `mlp.gate` router, `mlp.shared_experts`,
//! `mlp.experts.{e}`).

use crate::batch::TokenBatch;
use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::moe_spec::MoeSpec;
use crate::router_training::RouterTraining;
use autograd::ops::{self, MoeConfig, MoePath, RouterStats};
use autograd::{profile, Compute, DType, Device, ParamTable, Precision, Tape, Tensor};
use kernels_cpu::attention::AttnDims;
use kernels_cpu::rope::RopeTable;
use std::sync::Arc;

/// Turns an autograd error (shape or index problems on caller data) into a model error.
pub(crate) fn ag(e: autograd::AutogradError) -> ModelError {
    ModelError::Invalid(e.to_string())
}

/// HF names and shapes of every parameter, in layout order (q/k/v and gate/up adjacent; each
/// routed expert contiguous and the experts of a layer adjacent).
pub fn param_specs(c: &Qwen3Config, moe: Option<&MoeSpec>) -> Vec<(String, Vec<usize>)> {
    let (d, f, dh) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (qd, kvd) = (c.num_attention_heads * dh, c.num_key_value_heads * dh);
    let mut specs = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, d])];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        specs.extend([
            (format!("{p}.input_layernorm.weight"), vec![d]),
            (format!("{p}.self_attn.q_proj.weight"), vec![qd, d]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kvd, d]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kvd, d]),
            (format!("{p}.self_attn.o_proj.weight"), vec![d, qd]),
            (format!("{p}.self_attn.q_norm.weight"), vec![dh]),
            (format!("{p}.self_attn.k_norm.weight"), vec![dh]),
            (format!("{p}.post_attention_layernorm.weight"), vec![d]),
        ]);
        match moe {
            None => specs.extend([
                (format!("{p}.mlp.gate_proj.weight"), vec![f, d]),
                (format!("{p}.mlp.up_proj.weight"), vec![f, d]),
                (format!("{p}.mlp.down_proj.weight"), vec![d, f]),
            ]),
            Some(m) => {
                let (s, w) = (m.shared_width, m.expert_width);
                if s > 0 {
                    specs.extend([
                        (format!("{p}.mlp.shared_experts.gate_proj.weight"), vec![s, d]),
                        (format!("{p}.mlp.shared_experts.up_proj.weight"), vec![s, d]),
                        (format!("{p}.mlp.shared_experts.down_proj.weight"), vec![d, s]),
                    ]);
                }
                specs.push((format!("{p}.mlp.gate.weight"), vec![m.num_experts, d]));
                for e in 0..m.num_experts {
                    specs.extend([
                        (format!("{p}.mlp.experts.{e}.gate_proj.weight"), vec![w, d]),
                        (format!("{p}.mlp.experts.{e}.up_proj.weight"), vec![w, d]),
                        (format!("{p}.mlp.experts.{e}.down_proj.weight"), vec![d, w]),
                    ]);
                }
            }
        }
    }
    specs.push(("model.norm.weight".to_string(), vec![d]));
    if !c.tie_word_embeddings {
        specs.push(("lm_head.weight".to_string(), vec![c.vocab_size, d]));
    }
    specs
}

/// Name of the (non-trained) aux-loss-free balancing bias of layer `i`'s router.
pub fn router_bias_name(i: usize) -> String {
    format!("model.layers.{i}.mlp.gate.e_score_correction_bias")
}

/// How a forward runs: router settings, randomness, MoE path, device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardOptions {
    /// Router settings of this forward (capacity, temperature, loss weights, dropout, noise);
    /// [`RouterTraining::eval`] for evaluation.
    pub router: RouterTraining,
    /// Seed of the randomness of this forward (router noise, expert dropout).
    pub seed: u64,
    /// MoE dispatch implementation.
    pub moe_path: MoePath,
    /// Test-only: every routed expert processes every token with weight 1.
    pub dense_equivalent: bool,
    /// Where the ops run (`Device::Sim`: the GPU kernels in kernels-gpu's simulator) when the
    /// model builds the tape itself ([`Qwen3::gradient`], [`Qwen3::loss_and_grads`],
    /// [`Qwen3::logits_with`]); a caller-made tape carries its own device.
    pub device: Device,
    /// Operand precision of the GEMMs of the tape the model builds itself (as `device`).
    pub precision: Precision,
}

impl ForwardOptions {
    /// Evaluation: deterministic, dropless, temperature 1, fast path, CPU.
    pub fn eval() -> Self {
        ForwardOptions {
            router: RouterTraining::eval(),
            seed: 0,
            moe_path: MoePath::Fast,
            dense_equivalent: false,
            device: Device::Cpu,
            precision: Precision::F32,
        }
    }

    /// Training with `seed` under the router settings `router`.
    pub fn train(seed: u64, router: RouterTraining) -> Self {
        ForwardOptions { router, seed, ..Self::eval() }
    }

    /// The same options with the ops on `device`.
    pub fn on(self, device: Device) -> Self {
        ForwardOptions { device, ..self }
    }

    /// The same options with the GEMMs at `precision`.
    pub fn at(self, precision: Precision) -> Self {
        ForwardOptions { precision, ..self }
    }

    /// Where and at which precision the model's own tapes run.
    pub fn compute(&self) -> Compute {
        Compute { device: self.device, precision: self.precision }
    }
}

/// What one MoE layer's router produced in a forward.
pub struct MoeAux {
    /// Switch load-balance loss `[]`.
    pub lb_loss: Tensor,
    /// Router z-loss `[]`.
    pub z_loss: Tensor,
    /// Routing statistics.
    pub stats: RouterStats,
    /// The router's input `[N, D]` (the FFN's normalised input; logits are `input · routerᵀ`).
    pub input: Tensor,
    /// Chosen expert per token, `u32::MAX` where capacity or expert dropout dropped it `[N]`.
    pub choice: Vec<u32>,
}

/// `down(silu(gate) * up)` with gate/up fused `[2F, D]`.
pub(crate) fn swiglu_ffn(tape: &Tape, x: &Tensor, gate_up: &Tensor, down: &Tensor) -> Result<Tensor> {
    let gu = ops::linear(tape, x, gate_up).map_err(ag)?;
    let m = ops::swiglu_fused(tape, &gu).map_err(ag)?;
    ops::linear(tape, &m, down).map_err(ag)
}

/// Everything a loss evaluation produced.
pub struct LossOutput {
    /// Scalar objective `ce + lb_coef * lb + z_coef * z` (what backward starts from).
    pub loss: Tensor,
    /// Mean cross-entropy.
    pub ce: f32,
    /// Load-balance loss, mean over MoE layers (0 for dense).
    pub lb: f32,
    /// Router z-loss, mean over MoE layers (0 for dense).
    pub z: f32,
    /// Tokens that counted towards the cross-entropy.
    pub count: usize,
    /// Per-row cross-entropy `[B*T]` (0 for ignored rows).
    pub row_losses: Vec<f32>,
    /// Router statistics per MoE layer.
    pub router: Vec<RouterStats>,
    /// The router's input of each MoE layer `[B*T, D]` (for router objectives such as
    /// [`crate::named_experts::named_expert_loss`]).
    pub router_inputs: Vec<Tensor>,
}

/// The FFN tensors of one layer.
pub(crate) enum FfnTensors {
    Dense {
        /// gate_proj, up_proj fused: `[2F, D]`.
        gate_up: Tensor,
        down: Tensor,
    },
    Moe {
        /// Shared gate/up fused `[2S, D]` and down `[D, S]` (None when S = 0).
        shared: Option<(Tensor, Tensor)>,
        /// Router `[E, D]`.
        router: Tensor,
        /// All routed experts `[E, 3*W*D]` (per expert: gate `[W,D]`, up `[W,D]`, down `[D,W]`).
        experts: Tensor,
    },
}

/// Tensors of one decoder layer, bound for one forward.
pub(crate) struct LayerTensors {
    pub(crate) input_norm: Tensor,
    /// q_proj, k_proj, v_proj fused: `[(H + 2 KV) * Dh, D]`.
    pub(crate) qkv: Tensor,
    pub(crate) o: Tensor,
    pub(crate) q_norm: Tensor,
    pub(crate) k_norm: Tensor,
    pub(crate) post_norm: Tensor,
    pub(crate) ffn: FfnTensors,
}

/// Every parameter bound (as tape leaves) for one forward.
pub struct Bound {
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<LayerTensors>,
    pub(crate) norm: Tensor,
    /// LM head `[V, D]` (the embedding when tied).
    pub(crate) lm_head: Tensor,
    /// `(offset, leaf)` pairs for [`ParamTable::flat_grads_at`].
    pub leaves: Vec<(usize, Tensor)>,
}

/// Collects `(offset, leaf)` pairs while binding parameters.
struct Binder<'a> {
    table: &'a ParamTable,
    tape: &'a Tape,
    leaves: Vec<(usize, Tensor)>,
}

impl Binder<'_> {
    /// One parameter, or several consecutive ones fused along rows.
    fn one(&mut self, names: &[&str]) -> Tensor {
        let r = if names.len() == 1 {
            self.table.leaf(self.tape, names[0])
        } else {
            self.table.fused_leaf(self.tape, names)
        };
        self.push(r)
    }

    /// Consecutive parameters as one leaf of `shape`.
    fn block(&mut self, names: &[&str], shape: &[usize]) -> Tensor {
        let r = self.table.block_leaf(self.tape, names, shape);
        self.push(r)
    }

    fn push(&mut self, r: autograd::error::Result<(usize, Tensor)>) -> Tensor {
        let (offset, leaf) = r.expect("param_specs layout");
        self.leaves.push((offset, leaf.clone()));
        leaf
    }
}

/// A Qwen3 model (dense or MoE FFN): config, parameters and RoPE table.
#[derive(Clone, Debug)]
pub struct Qwen3 {
    /// The HF config it was built from.
    pub config: Qwen3Config,
    /// The MoE section (None for a dense model).
    pub moe: Option<MoeSpec>,
    /// Parameters under HF names.
    pub params: ParamTable,
    /// Aux-loss-free balancing bias per MoE layer `[L][E]` (not trained by gradient).
    pub router_bias: Vec<Vec<f32>>,
    /// Storage dtype each tensor had on disk (for saving back bit-identically).
    pub file_dtypes: Vec<(String, crate::safetensors_io::FileDType)>,
    rope: Arc<RopeTable>,
}

impl Qwen3 {
    /// A model from `config` (and `moe`) with parameters filled by `init(name, numel)`.
    pub fn from_init(
        config: Qwen3Config,
        moe: Option<MoeSpec>,
        dtype: DType,
        init: impl FnMut(&str, usize) -> Vec<f32>,
    ) -> Self {
        let params = ParamTable::new(&param_specs(&config, moe.as_ref()), dtype, init);
        let file_dtypes =
            params.entries().iter().map(|e| (e.name.clone(), crate::safetensors_io::FileDType::F32)).collect();
        let rope = Arc::new(RopeTable::new(config.head_dim, config.max_position_embeddings, config.rope_theta));
        let router_bias = match &moe {
            Some(m) => vec![vec![0.0; m.num_experts]; config.num_hidden_layers],
            None => Vec::new(),
        };
        Qwen3 { config, moe, params, router_bias, file_dtypes, rope }
    }

    /// The MoE op settings for a forward under `opts`: the architecture from the spec, the router
    /// behaviour from `opts.router`.
    pub fn moe_config(&self, opts: &ForwardOptions) -> Option<MoeConfig> {
        let r = &opts.router;
        self.moe.as_ref().map(|m| MoeConfig {
            num_experts: m.num_experts,
            expert_width: m.expert_width,
            temperature: r.temperature,
            weighting: m.weighting,
            capacity_factor: r.capacity_factor,
            expert_dropout: r.expert_dropout,
            router_noise: r.noise,
            path: opts.moe_path,
            dense_equivalent: opts.dense_equivalent,
        })
    }

    /// Binds the parameters as leaves of `tape` (plain views on an inference tape); q/k/v and
    /// gate/up are bound as fused blocks so each is one GEMM.
    pub fn bind(&self, tape: &Tape) -> Bound {
        let mut b = Binder { table: &self.params, tape, leaves: Vec::new() };
        let embed = b.one(&["model.embed_tokens.weight"]);
        let layers = (0..self.config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let n = |s: &str| format!("{p}.{s}.weight");
                LayerTensors {
                    input_norm: b.one(&[&n("input_layernorm")]),
                    qkv: b.one(&[&n("self_attn.q_proj"), &n("self_attn.k_proj"), &n("self_attn.v_proj")]),
                    o: b.one(&[&n("self_attn.o_proj")]),
                    q_norm: b.one(&[&n("self_attn.q_norm")]),
                    k_norm: b.one(&[&n("self_attn.k_norm")]),
                    post_norm: b.one(&[&n("post_attention_layernorm")]),
                    ffn: match &self.moe {
                        None => FfnTensors::Dense {
                            gate_up: b.one(&[&n("mlp.gate_proj"), &n("mlp.up_proj")]),
                            down: b.one(&[&n("mlp.down_proj")]),
                        },
                        Some(m) => {
                            let shared = (m.shared_width > 0).then(|| {
                                let gu = b.one(&[&n("mlp.shared_experts.gate_proj"), &n("mlp.shared_experts.up_proj")]);
                                (gu, b.one(&[&n("mlp.shared_experts.down_proj")]))
                            });
                            let router = b.one(&[&n("mlp.gate")]);
                            let names: Vec<String> = (0..m.num_experts)
                                .flat_map(|e| {
                                    ["gate_proj", "up_proj", "down_proj"].map(|k| n(&format!("mlp.experts.{e}.{k}")))
                                })
                                .collect();
                            let names: Vec<&str> = names.iter().map(String::as_str).collect();
                            let per_expert = 3 * m.expert_width * self.config.hidden_size;
                            let experts = b.block(&names, &[m.num_experts, per_expert]);
                            FfnTensors::Moe { shared, router, experts }
                        }
                    },
                }
            })
            .collect();
        let norm = b.one(&["model.norm.weight"]);
        let lm_head = if self.config.tie_word_embeddings { embed.clone() } else { b.one(&["lm_head.weight"]) };
        Bound { embed, layers, norm, lm_head, leaves: b.leaves }
    }

    /// Final normalised hidden states `[B*T, D]` and, per MoE layer, the router outputs.
    pub fn forward_hidden(
        &self,
        tape: &Tape,
        p: &Bound,
        batch: &TokenBatch,
        opts: &ForwardOptions,
    ) -> Result<(Tensor, Vec<MoeAux>)> {
        let c = &self.config;
        let (h, kv, dh) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let n = batch.rows();
        if let Some(&p) = batch.pos.iter().find(|&&p| p as usize >= c.max_position_embeddings) {
            return Err(ModelError::Invalid(format!(
                "position {p} is beyond max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let eps = c.rms_norm_eps as f32;
        let dims = AttnDims { b: batch.b, t: batch.t, h, kv, dh };
        let moe_cfg = self.moe_config(opts);
        let mut aux = Vec::new();
        let mut x = ops::embedding(tape, &batch.ids, &p.embed).map_err(ag)?;
        for (i, l) in p.layers.iter().enumerate() {
            let n1 = ops::rmsnorm(tape, &x, &l.input_norm, eps).map_err(ag)?;
            let qkv = ops::linear(tape, &n1, &l.qkv).map_err(ag)?;
            let q = ops::slice_cols(tape, &qkv, 0, h * dh).map_err(ag)?.reshape(&[n * h, dh]);
            let k = ops::slice_cols(tape, &qkv, h * dh, kv * dh).map_err(ag)?.reshape(&[n * kv, dh]);
            let v = ops::slice_cols(tape, &qkv, (h + kv) * dh, kv * dh).map_err(ag)?;
            let q = ops::rmsnorm(tape, &q, &l.q_norm, eps).map_err(ag)?.reshape(&[n, h * dh]);
            let k = ops::rmsnorm(tape, &k, &l.k_norm, eps).map_err(ag)?.reshape(&[n, kv * dh]);
            let q = ops::rope(tape, &q, &batch.pos, &self.rope, h).map_err(ag)?;
            let k = ops::rope(tape, &k, &batch.pos, &self.rope, kv).map_err(ag)?;
            let a = ops::attention(tape, &q, &k, &v, batch.seg.as_ref(), dims).map_err(ag)?;
            let a = ops::linear(tape, &a, &l.o).map_err(ag)?;
            x = ops::add(tape, &x, &a).map_err(ag)?;
            let n2 = ops::rmsnorm(tape, &x, &l.post_norm, eps).map_err(ag)?;
            let m = match (&l.ffn, &moe_cfg) {
                (FfnTensors::Dense { gate_up, down }, _) => swiglu_ffn(tape, &n2, gate_up, down)?,
                (FfnTensors::Moe { shared, router, experts }, Some(cfg)) => {
                    let bias = self.router_bias.get(i).map(Vec::as_slice);
                    let seed = opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64);
                    // Noise and dropout are on whenever the router settings ask for them (both
                    // are 0 in evaluation).
                    let out = ops::moe_routed(tape, &n2, router, experts, bias, cfg, seed, true).map_err(ag)?;
                    let routed = out.out.clone();
                    aux.push(MoeAux {
                        lb_loss: out.lb_loss,
                        z_loss: out.z_loss,
                        stats: out.stats,
                        input: n2.clone(),
                        choice: out.expert_of_token,
                    });
                    match shared {
                        Some((gu, down)) => ops::add(tape, &swiglu_ffn(tape, &n2, gu, down)?, &routed).map_err(ag)?,
                        None => routed,
                    }
                }
                (FfnTensors::Moe { .. }, None) => unreachable!("MoE tensors are bound only with a MoE spec"),
            };
            x = ops::add(tape, &x, &m).map_err(ag)?;
        }
        Ok((ops::rmsnorm(tape, &x, &p.norm, eps).map_err(ag)?, aux))
    }

    /// Next-token objective: mean cross-entropy (`targets [B*T]` holds the token each position
    /// predicts, `-100` to ignore) plus the MoE router losses weighted by `opts.router`.
    pub fn loss(
        &self,
        tape: &Tape,
        p: &Bound,
        batch: &TokenBatch,
        targets: &[i32],
        opts: &ForwardOptions,
    ) -> Result<LossOutput> {
        let (hidden, aux) = self.forward_hidden(tape, p, batch, opts)?;
        let ce = ops::lm_head_cross_entropy(tape, &hidden, &p.lm_head, targets).map_err(ag)?;
        let ce_value = ce.loss.item();
        let (loss, lb, z) = self.add_router_losses(tape, ce.loss, &aux, &opts.router)?;
        Ok(LossOutput {
            loss,
            ce: ce_value,
            lb,
            z,
            count: ce.count,
            row_losses: ce.row_losses,
            router_inputs: aux.iter().map(|a| a.input.clone()).collect(),
            router: aux.into_iter().map(|a| a.stats).collect(),
        })
    }

    /// `loss + lb_coef * lb + z_coef * z` with the router losses averaged over the MoE layers and
    /// the coefficients of `router` (`loss` unchanged for a dense model); also returns the mean
    /// `lb` and `z` values.
    pub(crate) fn add_router_losses(
        &self,
        tape: &Tape,
        loss: Tensor,
        aux: &[MoeAux],
        router: &RouterTraining,
    ) -> Result<(Tensor, f32, f32)> {
        let (mut loss, mut lb, mut z) = (loss, 0f32, 0f32);
        if self.moe.is_some() && !aux.is_empty() {
            let layers = aux.len() as f32;
            for a in aux {
                lb += a.lb_loss.item() / layers;
                z += a.z_loss.item() / layers;
                loss = ops::add_scaled(tape, &loss, &a.lb_loss, router.lb_coef / layers).map_err(ag)?;
                loss = ops::add_scaled(tape, &loss, &a.z_loss, router.z_coef / layers).map_err(ag)?;
            }
        }
        Ok((loss, lb, z))
    }

    /// The gradient of an objective with respect to every parameter: a recording tape on
    /// `on` (a device, or a [`Compute`] with its GEMM precision), the parameters bound as its leaves, `objective` builds the scalar to
    /// differentiate (plus whatever the caller wants back), backward, and the gradients
    /// flattened in the layout of `self.params` (profile stage `flatten_grads`). Returns the
    /// objective's value, the caller's extra and the flat gradient. Runs on a worker of the
    /// rayon pool (see `kernels_cpu::pool`).
    pub fn gradient<T: Send>(
        &self,
        on: impl Into<Compute>,
        objective: impl FnOnce(&Tape, &Bound) -> Result<(Tensor, T)> + Send,
    ) -> Result<(f32, T, Vec<f32>)> {
        let on = on.into();
        kernels_cpu::pool::on_pool(|| {
            let tape = Tape::new_on(on).map_err(ag)?;
            let bound = self.bind(&tape);
            let (loss, extra) = objective(&tape, &bound)?;
            let value = loss.item();
            let mut grads = tape.backward(&loss);
            let flat = profile::stage("flatten_grads", || self.params.flat_grads_at(&bound.leaves, &mut grads));
            Ok((value, extra, flat))
        })
    }

    /// [`Qwen3::loss`] and its gradient (flat, layout of `self.params`), on `opts.device` at
    /// `opts.precision`.
    pub fn loss_and_grads(
        &self,
        batch: &TokenBatch,
        targets: &[i32],
        opts: &ForwardOptions,
    ) -> Result<(LossOutput, Vec<f32>)> {
        let (_, out, grads) = self.gradient(opts.compute(), |tape, bound| {
            let out = self.loss(tape, bound, batch, targets, opts)?;
            Ok((out.loss.clone(), out))
        })?;
        Ok((out, grads))
    }

    /// Logits `[B*T, V]` (evaluation mode, no tape).
    pub fn logits(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.logits_with(batch, &ForwardOptions::eval())
    }

    /// Logits `[B*T, V]` under `opts` (no tape).
    pub fn logits_with(&self, batch: &TokenBatch, opts: &ForwardOptions) -> Result<Vec<f32>> {
        let tape = Tape::inference_on(opts.compute()).map_err(ag)?;
        let p = self.bind(&tape);
        let (hidden, _) = self.forward_hidden(&tape, &p, batch, opts)?;
        Ok(ops::linear(&tape, &hidden, &p.lm_head).map_err(ag)?.to_vec())
    }

    /// The RoPE table (positions below `max_position_embeddings`).
    pub(crate) fn rope_table(&self) -> &Arc<RopeTable> {
        &self.rope
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_params(&self) -> usize {
        self.params.numel()
    }
}
