//! Sparse upcycling, the second conversion mode beside neuron partition ([`super::apply`]):
//! every routed expert is a copy of the dense FFN (all `F` neurons), optionally beside a shared
//! expert that is one more copy. Drop-Upcycling (Nakamura et al., ICLR 2025) then re-initialises
//! a fraction `drop` of each routed expert's neurons (rows of gate/up, columns of down) from a
//! normal distribution with the dense matrix's mean and standard deviation, a different random
//! set per expert, so the experts can diverge.
//!
//! Function at init: top-1 routing with `ste` weighting gives the routed expert weight 1, so with
//! no shared expert and `drop = 0` the MoE computes the dense FFN exactly whatever the router
//! picks. With a shared copy, both copies' `down_proj` are halved (exact in floating point), so
//! shared + routed again sum to the dense FFN. The router starts random (normal, std 0.02).

use super::apply::stats;
use crate::error::{ModelError, Result};
use crate::init::normal;
use crate::moe_spec::MoeSpec;
use crate::qwen3::Qwen3;
use autograd::DType;
use kernels_cpu::moe::RouterWeighting;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::HashMap;

/// How to upcycle.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpcycleOptions {
    /// Routed experts.
    pub experts: usize,
    /// A shared expert (one more copy of the dense FFN) beside the routed ones.
    pub shared: bool,
    /// Fraction of each routed expert's neurons re-initialised (Drop-Upcycling), in `[0, 1]`.
    pub drop: f32,
    /// Seed of the router init and of the dropped neurons.
    pub seed: u64,
}

/// What an upcycling did (written beside the model as `upcycle.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpcycleRecord {
    /// The options.
    pub options: UpcycleOptions,
    /// Neurons re-initialised per routed expert (`round(drop * F)`).
    pub dropped_per_expert: usize,
    /// Per layer, per expert: the re-initialised neuron indices (sorted).
    pub dropped: Vec<Vec<Vec<u32>>>,
}

/// The sparse-upcycled MoE of `dense` and the record of what was dropped.
pub fn upcycle(dense: &Qwen3, opts: &UpcycleOptions) -> Result<(Qwen3, UpcycleRecord)> {
    if dense.moe.is_some() {
        return Err(ModelError::Invalid("upcycling needs a dense model; this one is already MoE".into()));
    }
    if opts.experts == 0 || opts.experts > u16::MAX as usize {
        return Err(ModelError::Invalid(format!("--experts {}: must be in 1..=65535", opts.experts)));
    }
    if !(0.0..=1.0).contains(&opts.drop) {
        return Err(ModelError::Invalid(format!("--drop {}: must be in [0, 1]", opts.drop)));
    }
    let c = &dense.config;
    let (f, d) = (c.intermediate_size, c.hidden_size);
    let spec = MoeSpec {
        num_experts: opts.experts,
        expert_width: f,
        shared_width: if opts.shared { f } else { 0 },
        weighting: RouterWeighting::Ste,
    };
    let n_drop = (opts.drop as f64 * f as f64).round() as usize;
    let flat = dense.params.flat();
    let get = |name: &str| -> Result<&[f32]> {
        let e = dense.params.entry(name).map_err(|e| ModelError::Invalid(e.to_string()))?;
        Ok(&flat[e.offset..e.offset + e.numel()])
    };
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x0bc1_c1e5);
    let mut tensors: HashMap<String, Vec<f32>> = HashMap::new();
    let mut dropped = Vec::with_capacity(c.num_hidden_layers);
    let half = |v: &[f32]| v.iter().map(|x| x * 0.5).collect::<Vec<f32>>();
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}.mlp");
        let (gate, up, down) = (
            get(&format!("{p}.gate_proj.weight"))?,
            get(&format!("{p}.up_proj.weight"))?,
            get(&format!("{p}.down_proj.weight"))?,
        );
        let (gs, us, ds) = (stats(gate), stats(up), stats(down));
        let routed_down = if opts.shared { half(down) } else { down.to_vec() };
        if opts.shared {
            tensors.insert(format!("{p}.shared_experts.gate_proj.weight"), gate.to_vec());
            tensors.insert(format!("{p}.shared_experts.up_proj.weight"), up.to_vec());
            tensors.insert(format!("{p}.shared_experts.down_proj.weight"), half(down));
        }
        tensors.insert(format!("{p}.gate.weight"), normal(opts.experts * d, 0.02, &mut rng));
        let mut layer_dropped = Vec::with_capacity(opts.experts);
        for e in 0..opts.experts {
            let (mut g, mut u, mut dn) = (gate.to_vec(), up.to_vec(), routed_down.clone());
            let mut neurons: Vec<u32> = (0..f as u32).collect();
            neurons.shuffle(&mut rng);
            let mut chosen: Vec<u32> = neurons[..n_drop].to_vec();
            chosen.sort_unstable();
            for &j in &chosen {
                let j = j as usize;
                let rows = |(mean, std): (f32, f32), rng: &mut StdRng| -> Vec<f32> {
                    normal(d, std, rng).into_iter().map(|v| v + mean).collect()
                };
                g[j * d..(j + 1) * d].copy_from_slice(&rows(gs, &mut rng));
                u[j * d..(j + 1) * d].copy_from_slice(&rows(us, &mut rng));
                // down is [D, F]: neuron j is column j; a shared copy halves it, so the new
                // column's scale follows the routed down's statistics.
                let col = rows(ds, &mut rng);
                let scale = if opts.shared { 0.5 } else { 1.0 };
                for (r, v) in col.into_iter().enumerate() {
                    dn[r * f + j] = v * scale;
                }
            }
            tensors.insert(format!("{p}.experts.{e}.gate_proj.weight"), g);
            tensors.insert(format!("{p}.experts.{e}.up_proj.weight"), u);
            tensors.insert(format!("{p}.experts.{e}.down_proj.weight"), dn);
            layer_dropped.push(chosen);
        }
        dropped.push(layer_dropped);
    }
    let mut config = c.clone();
    spec.apply_to(&mut config);
    let mut missing = None;
    let moe = Qwen3::from_init(config, Some(spec), DType::F32, |name, numel| {
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
        return Err(ModelError::Invalid(format!("upcycling produced no tensor `{name}`")));
    }
    Ok((moe, UpcycleRecord { options: opts.clone(), dropped_per_expert: n_drop, dropped }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::qwen3_init;

    fn dense() -> Qwen3 {
        let config = crate::presets::embedded("tiny-dense").unwrap().unwrap();
        Qwen3::from_init(config, None, DType::F32, qwen3_init(3, 0.3))
    }

    fn logits(m: &Qwen3, ids: &[u32]) -> Vec<f32> {
        let dec = crate::generate::Decoder::new(m);
        let mut caches = vec![dec.new_cache()];
        let input = crate::generate::StepInput { seq: 0, tokens: ids };
        dec.step(&mut caches, &[input], crate::generate::LogitRows::All).unwrap()
    }

    /// With drop 0 the upcycled MoE computes the dense model's logits (<= 1e-5), with and
    /// without a shared copy, whatever the random router picks.
    #[test]
    fn drop_zero_reproduces_the_dense_model() {
        let d = dense();
        let ids: Vec<u32> = (0..48).map(|i| (i * 97 % 4096) as u32).collect();
        let want = logits(&d, &ids);
        for shared in [false, true] {
            let opts = UpcycleOptions { experts: 4, shared, drop: 0.0, seed: 1 };
            let (moe, rec) = upcycle(&d, &opts).unwrap();
            assert_eq!(rec.dropped_per_expert, 0);
            let got = logits(&moe, &ids);
            let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff <= 1e-5, "shared {shared}: max abs logit diff {diff}");
        }
    }

    /// Drop 0.3: exactly round(0.3 F) neurons per expert differ from the dense FFN, different
    /// sets across experts, reproducible from the seed; bad options are refused.
    #[test]
    fn drop_upcycling_reinitialises_the_recorded_neurons() {
        let d = dense();
        let f = d.config.intermediate_size;
        let opts = UpcycleOptions { experts: 3, shared: false, drop: 0.3, seed: 9 };
        let (moe, rec) = upcycle(&d, &opts).unwrap();
        assert_eq!(rec.dropped_per_expert, (0.3 * f as f64).round() as usize);
        let gate = d.params.get("model.layers.1.mlp.gate_proj.weight").unwrap().to_vec();
        let dd = d.config.hidden_size;
        for e in 0..3 {
            let g = moe.params.get(&format!("model.layers.1.mlp.experts.{e}.gate_proj.weight")).unwrap().to_vec();
            let changed: Vec<u32> =
                (0..f).filter(|&j| g[j * dd..(j + 1) * dd] != gate[j * dd..(j + 1) * dd]).map(|j| j as u32).collect();
            assert_eq!(changed, rec.dropped[1][e], "expert {e}");
        }
        assert_ne!(rec.dropped[1][0], rec.dropped[1][1]);
        assert_eq!(upcycle(&d, &opts).unwrap().1, rec);
        assert_ne!(upcycle(&d, &UpcycleOptions { seed: 10, ..opts.clone() }).unwrap().1.dropped, rec.dropped);
        assert!(upcycle(&d, &UpcycleOptions { drop: 1.5, ..opts.clone() }).is_err());
        assert!(upcycle(&d, &UpcycleOptions { experts: 0, ..opts.clone() }).is_err());
        assert!(upcycle(&moe, &opts).is_err(), "an MoE is not upcycled again");
    }
}
