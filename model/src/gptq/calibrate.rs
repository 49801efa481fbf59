//! The sequential calibration pass: layer by layer, Hessians from the inputs each quantized linear
//! sees in the partly quantized model, then GPTQ (or RTN) of that linear (see the module doc of
//! [`crate::gptq`]).

use super::{is_quantizable, QuantMethod, QuantizeOptions, QuantizedModel, TensorReport};
use crate::batch::TokenBatch;
use crate::error::{ModelError, Result};
use crate::qwen3::{ag, ForwardOptions, Qwen3};
use autograd::{ops, Tape, Tensor};
use kernels_cpu::attention::AttnDims;
use kernels_cpu::gptq::{gptq_quantize, output_error, rtn_quantize, Hessian, QuantizedMatrix};
use kernels_cpu::rope::RopeTable;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Linears vLLM merges into one kernel (q/k/v; gate/up; all routed experts of a layer): each set
/// must be quantized entirely or not at all.
fn merged_sets(model: &Qwen3) -> Vec<Vec<String>> {
    let mut sets = Vec::new();
    for i in 0..model.config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        sets.push(["q_proj", "k_proj", "v_proj"].map(|k| format!("{p}.self_attn.{k}.weight")).to_vec());
        match &model.moe {
            None => sets.push(["gate_proj", "up_proj"].map(|k| format!("{p}.mlp.{k}.weight")).to_vec()),
            Some(m) => {
                if m.shared_width > 0 {
                    sets.push(["gate_proj", "up_proj"].map(|k| format!("{p}.mlp.shared_experts.{k}.weight")).to_vec());
                }
                sets.push(
                    (0..m.num_experts)
                        .flat_map(|e| {
                            ["gate_proj", "up_proj", "down_proj"].map(|k| format!("{p}.mlp.experts.{e}.{k}.weight"))
                        })
                        .collect(),
                );
            }
        }
    }
    sets
}

/// The quantizable weights `select` picks, checked: something is picked, and merged sets are
/// picked whole.
pub fn selected_weights(model: &Qwen3, select: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
    let names: Vec<String> =
        model.params.entries().iter().map(|e| e.name.clone()).filter(|n| is_quantizable(n) && select(n)).collect();
    if names.is_empty() {
        return Err(ModelError::Invalid("the selection (mask) picks no quantizable weight of this model".into()));
    }
    for set in merged_sets(model) {
        let picked = set.iter().filter(|n| names.contains(n)).count();
        if picked != 0 && picked != set.len() {
            let (yes, no): (Vec<&String>, Vec<&String>) = set.iter().partition(|n| names.contains(n));
            return Err(ModelError::Invalid(format!(
                "the selection picks `{}` but not `{}`: vLLM runs these as one merged kernel, so they must be quantized \
                 together or not at all",
                yes[0], no[0]
            )));
        }
    }
    Ok(names)
}

/// Parameter values of `name`.
fn values(model: &Qwen3, name: &str) -> Result<Vec<f32>> {
    Ok(model.params.get(name).map_err(ag)?.to_vec())
}

/// Several parameters stacked along rows, as one `[rows, cols]` tensor.
fn stacked(model: &Qwen3, names: &[String], cols: usize) -> Result<Tensor> {
    let mut v = Vec::new();
    for n in names {
        v.extend(values(model, n)?);
    }
    let rows = v.len() / cols;
    Ok(Tensor::from_vec(v, &[rows, cols]))
}

/// One linear weight as the sequential pass hands it to a [`LinearQuantizer`].
pub struct LinearWeight<'a> {
    /// Parameter name.
    pub name: &'a str,
    /// Values `[n, k]`.
    pub w: &'a [f32],
    /// Output rows.
    pub n: usize,
    /// Input columns.
    pub k: usize,
    /// The Hessian of its calibration inputs (None when no token reached it).
    pub h: Option<&'a [f64]>,
    /// Calibration tokens in `h`.
    pub tokens: usize,
    /// False for a routed expert below the token threshold (quantize without `h`).
    pub use_hessian: bool,
}

/// What quantizes one linear weight in the sequential pass ([`sequential_pass`]).
pub trait LinearQuantizer {
    /// Whether it uses the Hessian (GPTQ): routed experts with too few tokens are then reported.
    fn uses_hessian(&self) -> bool;

    /// Quantizes `x`. Returns the values that replace its weights in the pass's model (what later
    /// layers see) and the report.
    fn quantize(&mut self, x: LinearWeight) -> Result<(Vec<f32>, TensorReport)>;
}

/// GPTQ / RTN to the integer codes of a GPTQ checkpoint.
struct IntQuantizer<'a> {
    opts: &'a QuantizeOptions,
    tensors: BTreeMap<String, QuantizedMatrix>,
}

impl LinearQuantizer for IntQuantizer<'_> {
    fn uses_hessian(&self) -> bool {
        self.opts.method == QuantMethod::Gptq
    }

    fn quantize(&mut self, x: LinearWeight) -> Result<(Vec<f32>, TensorReport)> {
        let LinearWeight { name, w, n, k, h, tokens, use_hessian } = x;
        let cfg = self.opts.gptq_config();
        let bad = |e: kernels_cpu::gptq::GptqError| ModelError::Invalid(format!("`{name}` [{n}, {k}]: {e}"));
        let rtn = rtn_quantize(w, n, k, &cfg).map_err(bad)?;
        let rtn_error = h.map(|h| output_error(w, &rtn.dequantize(), h, k));
        let (q, method, error, dead) = match h {
            Some(h) if use_hessian && self.uses_hessian() => {
                let (q, stats) = gptq_quantize(w, n, k, h, &cfg).map_err(bad)?;
                let err = output_error(w, &q.dequantize(), h, k);
                (q, QuantMethod::Gptq, Some(err), stats.dead_columns)
            }
            _ => (rtn, QuantMethod::Rtn, rtn_error, 0),
        };
        let values = q.dequantize();
        self.tensors.insert(name.to_string(), q);
        let r = TensorReport { name: name.to_string(), method, tokens, error, rtn_error, dead_columns: dead };
        Ok((values, r))
    }
}

/// The running state of one pass.
struct Pass<'a> {
    model: Qwen3,
    quantizer: &'a mut dyn LinearQuantizer,
    selected: Vec<String>,
    report: Vec<TensorReport>,
    starved: Vec<(usize, usize, usize)>,
    progress: &'a mut dyn FnMut(&TensorReport),
}

impl Pass<'_> {
    fn picked(&self, name: &str) -> bool {
        self.selected.iter().any(|n| n == name)
    }

    /// Quantizes each picked weight of `names` with the Hessian of `x [tokens, K]` (unless
    /// `force_rtn`), and writes the quantized values into the model.
    fn quantize(&mut self, names: &[String], x: &[f32], k: usize, force_rtn: bool) -> Result<()> {
        let names: Vec<&String> = names.iter().filter(|n| self.picked(n)).collect();
        if names.is_empty() {
            return Ok(());
        }
        let mut hessian = Hessian::new(k);
        hessian.add(x).map_err(|e| ModelError::Invalid(format!("{}: {e}", names[0])))?;
        let tokens = hessian.rows();
        let h = (tokens > 0).then(|| hessian.finish());
        for name in names {
            let w = values(&self.model, name)?;
            let n = w.len() / k;
            let x = LinearWeight { name, w: &w, n, k, h: h.as_deref(), tokens, use_hessian: !force_rtn };
            let (q, r) = self.quantizer.quantize(x)?;
            self.model.params.set(name, &q).map_err(ag)?;
            (self.progress)(&r);
            self.report.push(r);
        }
        Ok(())
    }
}

/// Rows `rows` of `x [N, D]`.
fn gather(x: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().copied()).collect()
}

/// `down(silu(gate x) * up x)` input of the down projection: `silu(gate x) * up x [T, W]`.
fn swiglu_hidden(tape: &Tape, x: &Tensor, gate_up: &Tensor) -> Result<Tensor> {
    let gu = ops::linear(tape, x, gate_up).map_err(ag)?;
    ops::swiglu_fused(tape, &gu).map_err(ag)
}

/// Quantizes the weights `select` picks (see [`selected_weights`]) of `model` (f32 storage) with
/// calibration `batch`, layer by layer; `progress` sees each tensor as it is done.
pub fn quantize_model(
    model: &Qwen3,
    batch: &TokenBatch,
    opts: &QuantizeOptions,
    select: &dyn Fn(&str) -> bool,
    progress: &mut dyn FnMut(&TensorReport),
) -> Result<QuantizedModel> {
    let selected = selected_weights(model, select)?;
    let cfg = opts.gptq_config();
    for name in &selected {
        let shape = &model.params.entry(name).map_err(ag)?.shape;
        cfg.check(shape[0], shape[1]).map_err(|e| ModelError::Invalid(format!("`{name}` {shape:?}: {e}")))?;
    }
    let mut q = IntQuantizer { opts, tensors: BTreeMap::new() };
    let out = sequential_pass(model, batch, selected, opts.min_expert_tokens, &mut q, progress)?;
    Ok(QuantizedModel {
        model: out.model,
        tensors: q.tensors,
        report: out.report,
        starved_experts: out.starved_experts,
        options: opts.clone(),
    })
}

/// What [`sequential_pass`] returns.
pub struct PassOutput {
    /// The model with every selected weight replaced by its quantized values.
    pub model: Qwen3,
    /// One entry per quantized tensor, in quantization order.
    pub report: Vec<TensorReport>,
    /// Routed experts below the token threshold (quantized without their Hessian): (layer,
    /// expert, tokens); only when the quantizer uses Hessians.
    pub starved_experts: Vec<(usize, usize, usize)>,
}

/// The sequential calibration pass (module doc of [`crate::gptq`]) over `model` (f32 storage):
/// each weight of `selected` is quantized by `quantizer` with the Hessian of the inputs it sees
/// in the partly quantized model. Routed experts with fewer than `min_expert_tokens` tokens
/// (None: hidden size / 4) are quantized without their Hessian.
pub fn sequential_pass(
    model: &Qwen3,
    batch: &TokenBatch,
    selected: Vec<String>,
    min_expert_tokens: Option<usize>,
    quantizer: &mut dyn LinearQuantizer,
    progress: &mut dyn FnMut(&TensorReport),
) -> Result<PassOutput> {
    if let Some(&bad) = batch.ids.iter().find(|&&id| id as usize >= model.config.vocab_size) {
        return Err(ModelError::Invalid(format!(
            "calibration token id {bad} is outside the model's vocabulary of {}",
            model.config.vocab_size
        )));
    }
    let c = model.config.clone();
    let (h, kv, dh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size);
    let n = batch.rows();
    let eps = c.rms_norm_eps as f32;
    let rope = Arc::new(RopeTable::new(dh, c.max_position_embeddings, c.rope_theta));
    let dims = AttnDims { b: batch.b, t: batch.t, h, kv, dh };
    let moe_cfg = model.moe_config(&ForwardOptions::eval());
    let min_tokens = min_expert_tokens.unwrap_or(d / 4);
    let tape = Tape::inference();
    let mut pass =
        Pass { model: model.clone(), quantizer, selected, report: Vec::new(), starved: Vec::new(), progress };
    let get = |pass: &Pass, name: &str| -> Result<Tensor> { pass.model.params.get(name).map_err(ag) };
    let mut x = ops::embedding(&tape, &batch.ids, &get(&pass, "model.embed_tokens.weight")?).map_err(ag)?;
    for i in 0..c.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        let n1 = ops::rmsnorm(&tape, &x, &get(&pass, &p("input_layernorm"))?, eps).map_err(ag)?;
        let qkv_names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].map(p).to_vec();
        pass.quantize(&qkv_names, &n1.f32s(), d, false)?;
        let qkv = ops::linear(&tape, &n1, &stacked(&pass.model, &qkv_names, d)?).map_err(ag)?;
        let q = ops::slice_cols(&tape, &qkv, 0, h * dh).map_err(ag)?.reshape(&[n * h, dh]);
        let k = ops::slice_cols(&tape, &qkv, h * dh, kv * dh).map_err(ag)?.reshape(&[n * kv, dh]);
        let v = ops::slice_cols(&tape, &qkv, (h + kv) * dh, kv * dh).map_err(ag)?;
        let q = ops::rmsnorm(&tape, &q, &get(&pass, &p("self_attn.q_norm"))?, eps).map_err(ag)?.reshape(&[n, h * dh]);
        let k = ops::rmsnorm(&tape, &k, &get(&pass, &p("self_attn.k_norm"))?, eps).map_err(ag)?.reshape(&[n, kv * dh]);
        let q = ops::rope(&tape, &q, &batch.pos, &rope, h).map_err(ag)?;
        let k = ops::rope(&tape, &k, &batch.pos, &rope, kv).map_err(ag)?;
        let a = ops::attention(&tape, &q, &k, &v, batch.seg.as_ref(), dims).map_err(ag)?;
        let o_name = [p("self_attn.o_proj")];
        pass.quantize(&o_name, &a.f32s(), h * dh, false)?;
        let a = ops::linear(&tape, &a, &get(&pass, &o_name[0])?).map_err(ag)?;
        x = ops::add(&tape, &x, &a).map_err(ag)?;
        let n2 = ops::rmsnorm(&tape, &x, &get(&pass, &p("post_attention_layernorm"))?, eps).map_err(ag)?;
        let m = match (&model.moe, &moe_cfg) {
            (Some(spec), Some(mcfg)) => {
                let mut out = None;
                if spec.shared_width > 0 {
                    let s = |k: &str| p(&format!("mlp.shared_experts.{k}"));
                    out = Some(ffn(&mut pass, &tape, &n2, [s("gate_proj"), s("up_proj"), s("down_proj")], d, false)?);
                }
                // A copy, not a view of the parameters: a live view would make every later
                // `ParamTable::set` copy the whole table.
                let router = Tensor::from_vec(values(&pass.model, &p("mlp.gate"))?, &[spec.num_experts, d]);
                let bias = model.router_bias.get(i).map(Vec::as_slice);
                let block = |pass: &Pass| -> Result<Tensor> {
                    let names: Vec<String> = (0..spec.num_experts)
                        .flat_map(|e| ["gate_proj", "up_proj", "down_proj"].map(|k| p(&format!("mlp.experts.{e}.{k}"))))
                        .collect();
                    Ok(stacked(&pass.model, &names, 3 * spec.expert_width * d)?
                        .reshape(&[spec.num_experts, 3 * spec.expert_width * d]))
                };
                // The routing does not depend on the expert weights: route once, quantize each
                // expert on its tokens, then run the layer with the quantized experts.
                let routed = ops::moe_routed(&tape, &n2, &router, &block(&pass)?, bias, mcfg, 0, false).map_err(ag)?;
                let n2v = n2.f32s();
                for e in 0..spec.num_experts {
                    let rows: Vec<usize> = (0..n).filter(|&t| routed.expert_of_token[t] == e as u32).collect();
                    let xe = Tensor::from_vec(gather(&n2v, d, &rows), &[rows.len(), d]);
                    let starved = rows.len() < min_tokens;
                    let picked = pass.picked(&p(&format!("mlp.experts.{e}.gate_proj")));
                    if starved && picked && pass.quantizer.uses_hessian() {
                        pass.starved.push((i, e, rows.len()));
                    }
                    let s = |k: &str| p(&format!("mlp.experts.{e}.{k}"));
                    ffn(&mut pass, &tape, &xe, [s("gate_proj"), s("up_proj"), s("down_proj")], d, starved)?;
                }
                let out_r = ops::moe_routed(&tape, &n2, &router, &block(&pass)?, bias, mcfg, 0, false).map_err(ag)?;
                match out {
                    Some(shared) => ops::add(&tape, &shared, &out_r.out).map_err(ag)?,
                    None => out_r.out,
                }
            }
            _ => ffn(&mut pass, &tape, &n2, [p("mlp.gate_proj"), p("mlp.up_proj"), p("mlp.down_proj")], d, false)?,
        };
        x = ops::add(&tape, &x, &m).map_err(ag)?;
    }
    Ok(PassOutput { model: pass.model, report: pass.report, starved_experts: pass.starved })
}

/// One SwiGLU FFN (`[gate, up, down]` weight names) on `x [T, D]`: gate/up quantized from `x`,
/// down from the SwiGLU of the quantized gate/up; returns the FFN output with quantized weights.
fn ffn(pass: &mut Pass, tape: &Tape, x: &Tensor, names: [String; 3], d: usize, force_rtn: bool) -> Result<Tensor> {
    let [gate, up, down] = names;
    let gate_up = vec![gate, up];
    if x.shape()[0] == 0 {
        // No token reaches this FFN (an unused expert): round-to-nearest, output empty.
        pass.quantize(&gate_up, &[], d, true)?;
        let width = pass.model.params.entry(&down).map_err(ag)?.shape[1];
        pass.quantize(std::slice::from_ref(&down), &[], width, true)?;
        return Ok(Tensor::from_vec(Vec::new(), &[0, d]));
    }
    pass.quantize(&gate_up, &x.f32s(), d, force_rtn)?;
    let hid = swiglu_hidden(tape, x, &stacked(&pass.model, &gate_up, d)?)?;
    let width = hid.shape()[1];
    pass.quantize(std::slice::from_ref(&down), &hid.f32s(), width, force_rtn)?;
    let w = pass.model.params.get(&down).map_err(ag)?;
    ops::linear(tape, &hid, &w).map_err(ag)
}
