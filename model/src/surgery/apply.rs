//! Builds the MoE model from a dense one and a neuron plan per layer.

use super::plan::{normalised_rows, plan_layer, FillStrategy, LayerPlan, Slot, SplitStrategy, Widths};
use crate::error::{ModelError, Result};
use crate::init::normal;
use crate::moe_spec::MoeSpec;
use crate::qwen3::Qwen3;
use autograd::DType;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;

/// How router weights start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterInit {
    /// All zeros: uniform routing until trained.
    Zeros,
    /// Each expert's row is the gate half of its neurons' centroid (normalised gate/up space).
    Centroids,
    /// normal(0, 0.02).
    SmallRandom,
}

/// Choices of a conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SurgeryOptions {
    /// How routed experts are formed from the non-shared neurons.
    pub split: SplitStrategy,
    /// How slots beyond the available neurons are filled.
    pub fill: FillStrategy,
    /// Router initialisation.
    pub router_init: RouterInit,
    /// Seed of every random choice.
    pub seed: u64,
}

/// Checks that the widths of `spec` fit a dense FFN of width `f`.
pub fn check_widths(spec: &MoeSpec, f: usize) -> Result<()> {
    if spec.shared_width >= f {
        return Err(ModelError::Invalid(format!(
            "shared width {} must be smaller than the dense FFN width {f} (routed experts need neurons)",
            spec.shared_width
        )));
    }
    if spec.num_experts > f - spec.shared_width {
        return Err(ModelError::Invalid(format!(
            "{} routed experts cannot be built from the {} neurons left after the shared expert",
            spec.num_experts,
            f - spec.shared_width
        )));
    }
    Ok(())
}

/// Mean and standard deviation of a weight matrix (Drop-Upcycling re-init statistics).
fn stats(values: &[f32]) -> (f32, f32) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, var.sqrt() as f32)
}

/// Plans every layer of `dense` from `importance [L][F]`.
pub fn plan_model(
    dense: &Qwen3,
    importance: &[Vec<f32>],
    spec: &MoeSpec,
    opts: &SurgeryOptions,
) -> Result<Vec<LayerPlan>> {
    let c = &dense.config;
    let (f, d) = (c.intermediate_size, c.hidden_size);
    check_widths(spec, f)?;
    if importance.len() != c.num_hidden_layers || importance.iter().any(|l| l.len() != f) {
        return Err(ModelError::Invalid(format!(
            "importance has shape [{}, {}], the model needs [{}, {f}]",
            importance.len(),
            importance.first().map_or(0, |l| l.len()),
            c.num_hidden_layers
        )));
    }
    let flat = dense.params.flat();
    (0..c.num_hidden_layers)
        .map(|i| {
            let gate = &flat[range(dense, &format!("model.layers.{i}.mlp.gate_proj.weight"))?];
            let up = &flat[range(dense, &format!("model.layers.{i}.mlp.up_proj.weight"))?];
            Ok(plan_one_layer(gate, up, &importance[i], f, d, spec, opts, i))
        })
        .collect()
}

/// Plans layer `layer` from its dense `gate [F, D]` and `up [F, D]` and `importance [F]`:
/// the per-layer step of [`plan_model`] (features = normalised `[gate_row, up_row]`, seed
/// `opts.seed + layer`). The caller has checked the widths ([`check_widths`]) and shapes.
#[allow(clippy::too_many_arguments)]
pub fn plan_one_layer(
    gate: &[f32],
    up: &[f32],
    importance: &[f32],
    f: usize,
    d: usize,
    spec: &MoeSpec,
    opts: &SurgeryOptions,
    layer: usize,
) -> LayerPlan {
    let w = Widths { dense: f, shared: spec.shared_width, experts: spec.num_experts, expert: spec.expert_width };
    let mut feats = Vec::with_capacity(f * 2 * d);
    for r in 0..f {
        feats.extend_from_slice(&gate[r * d..(r + 1) * d]);
        feats.extend_from_slice(&up[r * d..(r + 1) * d]);
    }
    let feats = normalised_rows(&feats, 2 * d);
    plan_layer(importance, &feats, 2 * d, w, opts.split, opts.fill, opts.seed.wrapping_add(layer as u64))
}

fn range(m: &Qwen3, name: &str) -> Result<std::ops::Range<usize>> {
    let e = m.params.entry(name).map_err(|_| ModelError::Invalid(format!("dense model has no `{name}`")))?;
    Ok(e.offset..e.offset + e.numel())
}

/// Converts `dense` into the MoE model of `spec` following `plans` (one per layer).
pub fn convert(dense: &Qwen3, plans: &[LayerPlan], spec: &MoeSpec, opts: &SurgeryOptions) -> Result<Qwen3> {
    if dense.moe.is_some() {
        return Err(ModelError::Invalid("surgery needs a dense model; this one is already MoE".into()));
    }
    let c = &dense.config;
    let (f, d) = (c.intermediate_size, c.hidden_size);
    let flat = dense.params.flat();
    let mut rng = surgery_rng(opts);
    let mut tensors: HashMap<String, Vec<f32>> = HashMap::new();
    for (i, plan) in plans.iter().enumerate() {
        let p = format!("model.layers.{i}.mlp");
        let gate = &flat[range(dense, &format!("{p}.gate_proj.weight"))?];
        let up = &flat[range(dense, &format!("{p}.up_proj.weight"))?];
        let down = &flat[range(dense, &format!("{p}.down_proj.weight"))?];
        tensors.extend(convert_layer(gate, up, down, f, d, plan, spec, opts, i, &mut rng));
    }
    let mut missing = None;
    let moe = Qwen3::from_init(c.clone(), Some(spec.clone()), DType::F32, |name, numel| {
        if let Some(v) = tensors.remove(name) {
            return v;
        }
        match dense.params.entry(name) {
            Ok(e) => flat[e.offset..e.offset + e.numel()].to_vec(),
            Err(_) => {
                missing.get_or_insert_with(|| name.to_string());
                vec![0.0; numel]
            }
        }
    });
    if let Some(name) = missing {
        return Err(ModelError::Invalid(format!("surgery produced no tensor `{name}`")));
    }
    Ok(moe)
}

/// The random stream of a conversion: [`convert_layer`] draws from it layer after layer, in order.
pub fn surgery_rng(opts: &SurgeryOptions) -> StdRng {
    StdRng::seed_from_u64(opts.seed ^ 0x5EED)
}

/// The MoE FFN tensors `(name, values)` of layer `layer` from its dense `gate [F, D]`, `up [F, D]`,
/// `down [D, F]` and its plan: the per-layer step of [`convert`]. `rng` must be the
/// [`surgery_rng`] stream after layers `0..layer` (Drop-Upcycling re-init and random routers draw from it).
#[allow(clippy::too_many_arguments)]
pub fn convert_layer(
    gate: &[f32],
    up: &[f32],
    down: &[f32],
    f: usize,
    d: usize,
    plan: &LayerPlan,
    spec: &MoeSpec,
    opts: &SurgeryOptions,
    layer: usize,
    rng: &mut StdRng,
) -> Vec<(String, Vec<f32>)> {
    let p = format!("model.layers.{layer}.mlp");
    let (gs, us, ds) = (stats(gate), stats(up), stats(down));
    // Rows of gate/up and columns of down for a list of slots.
    let build = |slots: &[Slot], rng: &mut StdRng| {
        let w = slots.len();
        let (mut g, mut u, mut dn) = (Vec::with_capacity(w * d), Vec::with_capacity(w * d), vec![0f32; d * w]);
        for (j, s) in slots.iter().enumerate() {
            match *s {
                Slot::Neuron(n) => {
                    g.extend_from_slice(&gate[n * d..(n + 1) * d]);
                    u.extend_from_slice(&up[n * d..(n + 1) * d]);
                    for r in 0..d {
                        dn[r * w + j] = down[r * f + n];
                    }
                }
                Slot::Reinit => {
                    g.extend(normal(d, gs.1, rng).iter().map(|x| x + gs.0));
                    u.extend(normal(d, us.1, rng).iter().map(|x| x + us.0));
                    for (r, x) in normal(d, ds.1, rng).iter().enumerate() {
                        dn[r * w + j] = x + ds.0;
                    }
                }
            }
        }
        (g, u, dn)
    };
    let mut tensors = Vec::with_capacity(3 * (plan.experts.len() + 1) + 1);
    let shared: Vec<Slot> = plan.shared.iter().map(|&n| Slot::Neuron(n)).collect();
    if !shared.is_empty() {
        let (g, u, dn) = build(&shared, rng);
        tensors.push((format!("{p}.shared_experts.gate_proj.weight"), g));
        tensors.push((format!("{p}.shared_experts.up_proj.weight"), u));
        tensors.push((format!("{p}.shared_experts.down_proj.weight"), dn));
    }
    for (e, slots) in plan.experts.iter().enumerate() {
        let (g, u, dn) = build(slots, rng);
        tensors.push((format!("{p}.experts.{e}.gate_proj.weight"), g));
        tensors.push((format!("{p}.experts.{e}.up_proj.weight"), u));
        tensors.push((format!("{p}.experts.{e}.down_proj.weight"), dn));
    }
    let router: Vec<f32> = match opts.router_init {
        RouterInit::Zeros => vec![0.0; spec.num_experts * d],
        RouterInit::SmallRandom => normal(spec.num_experts * d, 0.02, rng),
        RouterInit::Centroids => plan.centroids.iter().flat_map(|cen| cen[..d].iter().copied()).collect(),
    };
    tensors.push((format!("{p}.gate.weight"), router));
    tensors
}
