//! Builds the MoE model from a dense one and a neuron plan per layer.
//!
//! Router initialisation never lets two experts tie exactly. Top-1 routing breaks an exact tie by
//! whatever order its runtime happens to use (our argmax takes the first expert, transformers'
//! `topk` another), so a tie would make an export compute something else than we do: an all-zero
//! router, for instance, ties every expert for every token, and a Dots1 export of it differed from
//! our logits by 0.37. Hence there is no `zeros` init: [`RouterInit::NearUniform`] is its tie-free
//! replacement, and any two bit-identical router rows (e.g. centroids of duplicate or all-zero
//! neurons) are told apart by a near-uniform perturbation ([`break_exact_ties`]).

use super::plan::{normalised_rows, plan_layer, FillStrategy, LayerPlan, Slot, SplitStrategy, Widths};
use crate::error::{ModelError, Result};
use crate::init::normal;
use crate::moe_spec::MoeSpec;
use crate::qwen3::Qwen3;
use autograd::DType;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;

/// How router weights `[E, D]` start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterInit {
    /// Near-uniform routing: normal(0, [`near_uniform_std`]`(D)`) = 0.01 / sqrt(D), so router
    /// logits have a std of about 0.01 x the RMS of the normalised hidden state (routing
    /// probabilities within a few percent of 1/E) while no two experts tie (the seeded replacement of an
    /// all-zero router, whose ties runtimes break differently).
    NearUniform,
    /// Each expert's row is the gate half of its neurons' centroid (normalised gate/up space):
    /// a token goes to the expert whose neurons its gate activations favour, so the converted
    /// model routes meaningfully before any training. The default.
    Centroids,
    /// normal(0, 0.02).
    SmallRandom,
}

impl RouterInit {
    /// Every init, in the order of the CLI's `--router-init` values.
    pub const ALL: [RouterInit; 3] = [RouterInit::NearUniform, RouterInit::Centroids, RouterInit::SmallRandom];

    /// The name the CLI and run configs use (`near-uniform`, `centroids`, `random`).
    pub fn name(self) -> &'static str {
        match self {
            RouterInit::NearUniform => "near-uniform",
            RouterInit::Centroids => "centroids",
            RouterInit::SmallRandom => "random",
        }
    }

    /// The init called `name` ([`RouterInit::name`]); `zeros`, which was removed, gets an error saying why.
    pub fn from_name(name: &str) -> Result<Self> {
        if let Some(init) = Self::ALL.into_iter().find(|i| i.name() == name) {
            return Ok(init);
        }
        let known = Self::ALL.map(Self::name).join(", ");
        Err(ModelError::Invalid(if name == "zeros" {
            format!(
                "router init `zeros` was removed: an all-zero router ties every expert, runtimes break the tie \
                 differently and an export would not compute what we compute; use `near-uniform` (or {known})"
            )
        } else {
            format!("unknown router init `{name}` (known: {known})")
        }))
    }
}

/// Std of [`RouterInit::NearUniform`] for hidden size `d`: 0.01 / sqrt(d).
pub fn near_uniform_std(d: usize) -> f32 {
    0.01 / (d.max(1) as f32).sqrt()
}

/// Adds a near-uniform perturbation (drawn from `rng`) to every row of `router [E, D]` that is
/// bit-identical to an earlier row, so no two experts tie for every token. Rows that are already
/// distinct are left alone and nothing is drawn, so random inits keep their exact values.
pub fn break_exact_ties(router: &mut [f32], d: usize, rng: &mut StdRng) {
    let rows = router.len() / d.max(1);
    for e in 1..rows {
        let row = |r: usize| &router[r * d..(r + 1) * d];
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        if (0..e).any(|o| same(row(o), row(e))) {
            let noise = normal(d, near_uniform_std(d), rng);
            router[e * d..(e + 1) * d].iter_mut().zip(noise).for_each(|(w, n)| *w += n);
        }
    }
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
pub(crate) fn stats(values: &[f32]) -> (f32, f32) {
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
    let mut router: Vec<f32> = match opts.router_init {
        RouterInit::NearUniform => normal(spec.num_experts * d, near_uniform_std(d), rng),
        RouterInit::SmallRandom => normal(spec.num_experts * d, 0.02, rng),
        RouterInit::Centroids => plan.centroids.iter().flat_map(|cen| cen[..d].iter().copied()).collect(),
    };
    break_exact_ties(&mut router, d, rng);
    tensors.push((format!("{p}.gate.weight"), router));
    tensors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distinct_rows(router: &[f32], d: usize) -> bool {
        let rows: Vec<&[f32]> = router.chunks(d).collect();
        (0..rows.len()).all(|a| (0..a).all(|b| rows[a] != rows[b]))
    }

    #[test]
    fn identical_router_rows_are_told_apart_and_distinct_ones_left_alone() {
        let d = 16;
        let mut rng = StdRng::seed_from_u64(3);
        // Centroids of all-zero (or duplicate) neurons: every expert the same row.
        let mut router = vec![0f32; 5 * d];
        break_exact_ties(&mut router, d, &mut rng);
        assert!(distinct_rows(&router, d), "{router:?}");
        assert!(router[..d].iter().all(|&w| w == 0.0), "the first of equal rows is kept");
        let std = near_uniform_std(d);
        assert!(router.iter().all(|w| w.abs() < 6.0 * std), "perturbation stays near-uniform");

        let before = normal(4 * d, 0.02, &mut StdRng::seed_from_u64(5));
        let mut after = before.clone();
        let mut a = StdRng::seed_from_u64(9);
        break_exact_ties(&mut after, d, &mut a);
        assert_eq!(after, before);
        assert_eq!(normal(1, 1.0, &mut a), normal(1, 1.0, &mut StdRng::seed_from_u64(9)), "nothing drawn");
    }

    #[test]
    fn router_init_names_round_trip_and_zeros_says_why_it_is_gone() {
        for init in RouterInit::ALL {
            assert_eq!(RouterInit::from_name(init.name()).unwrap(), init);
        }
        let e = RouterInit::from_name("zeros").unwrap_err().to_string();
        assert!(e.contains("removed") && e.contains("near-uniform"), "{e}");
        let e = RouterInit::from_name("ones").unwrap_err().to_string();
        assert!(e.contains("near-uniform, centroids, random"), "{e}");
    }

    #[test]
    fn near_uniform_routing_is_within_a_few_percent_of_uniform() {
        // Hidden states of unit RMS (what the RMSNorm before the router gives with unit weights).
        let (e, d) = (16, 256);
        let router = normal(e * d, near_uniform_std(d), &mut StdRng::seed_from_u64(1));
        let xs = normal(64 * d, 1.0, &mut StdRng::seed_from_u64(2));
        let mut worst = 0f32;
        for x in xs.chunks(d) {
            let logits: Vec<f32> = router.chunks(d).map(|w| w.iter().zip(x).map(|(a, b)| a * b).sum()).collect();
            let max = logits.iter().cloned().fold(f32::MIN, f32::max);
            let z: f32 = logits.iter().map(|l| (l - max).exp()).sum();
            for l in &logits {
                worst = worst.max(((l - max).exp() / z * e as f32 - 1.0).abs());
            }
            let mut sorted = logits.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            assert!(sorted[0] > sorted[1], "a tie: {logits:?}");
        }
        assert!(worst < 0.05, "probabilities deviate from 1/E by {worst:.3} (relative)");
    }
}
