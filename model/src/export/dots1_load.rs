//! Reading a Dots1 directory (our export, or any `Dots1ForCausalLM` checkpoint of the same shape)
//! back into the medmoe MoE model, so `Qwen3::load` and `moe-cli logits` accept exports.
//!
//! - Routed experts: per-expert tensors `mlp.experts.{e}.{gate,up,down}_proj.weight` (what we and
//!   `save_pretrained` write) or the fused `mlp.experts.gate_up_proj [E, 2W, D]` /
//!   `mlp.experts.down_proj [E, D, W]` of transformers' in-memory layout.
//! - Shared expert of padded width `P = n_shared_experts * W`: cut back to our width S when the
//!   padding neurons (rows of gate/up, columns of down) are all zero, else kept at P (a wider shared
//!   expert with extra neurons is the same function). S comes from the config's `medmoe` section
//!   when present, else from the trailing all-zero neurons common to every layer.
//! - Router: Dots1 chooses by `sigmoid + e_score_correction_bias`, so a model without our `medmoe`
//!   section, or with a non-zero bias, loads with weighting `sigmoid`; with zero bias our `ste`
//!   (softmax) choice is the same, so a `medmoe` section saying `ste` is kept.
//!
//! Dots1 features we do not implement are refused by name: top-k > 1, `norm_topk_prob: false`,
//! `routed_scaling_factor != 1`, group-limited routing, leading dense layers, sliding windows.

use super::dots1::MEDMOE_KEY;
use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::expected_tensors::config_dtype;
use crate::moe_spec::MoeSpec;
use crate::qwen3::{param_specs, router_bias_name, Qwen3};
use crate::safetensors_io::{FileDType, SafetensorsReader};
use autograd::ops::RouterWeighting;
use autograd::DType;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Dots1 config keys the loaded medmoe config drops (its `moe` section replaces them).
pub(crate) const DOTS1_KEYS: [&str; 16] = [
    "moe_intermediate_size",
    "n_routed_experts",
    "n_shared_experts",
    "num_experts_per_tok",
    "norm_topk_prob",
    "routed_scaling_factor",
    "n_group",
    "topk_group",
    "first_k_dense_replace",
    "scoring_func",
    "topk_method",
    "output_router_logits",
    "sliding_window",
    "max_window_layers",
    "layer_types",
    MEDMOE_KEY,
];

/// Whether the config.json at `path` says `model_type: "dots1"` (false if it cannot be read: the
/// regular loader then reports the problem).
pub(crate) fn is_dots1_config(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v.get("model_type").and_then(Value::as_str) == Some("dots1"))
}

/// The MoE part of a Dots1 config.
struct Dots1Moe {
    /// E.
    experts: usize,
    /// W (`moe_intermediate_size`).
    width: usize,
    /// P = `n_shared_experts * W`.
    padded: usize,
    /// Our `moe` section, when the export carried it.
    hint: Option<MoeSpec>,
}

/// Config field access with errors naming the file and the field.
struct Fields<'a> {
    config: &'a Qwen3Config,
    path: &'a Path,
}

impl Fields<'_> {
    fn bad(&self, field: &str, msg: String) -> ModelError {
        ModelError::ConfigField { path: self.path.to_path_buf(), field: field.into(), msg }
    }

    fn unsupported(&self, field: &str, msg: &str) -> ModelError {
        ModelError::Unsupported(format!("{}: field `{field}`: {msg}", self.path.display()))
    }

    /// A non-negative integer; `default` when absent or null (None: required).
    fn uint(&self, field: &str, default: Option<u64>) -> Result<u64> {
        match self.config.raw.get(field).filter(|v| !v.is_null()) {
            None => default.ok_or_else(|| self.bad(field, "missing required field of a Dots1 config".into())),
            Some(v) => v.as_u64().ok_or_else(|| self.bad(field, format!("expected a non-negative integer, got {v}"))),
        }
    }

    /// `field` must equal `want` (absent or null means `default`), else the feature is unsupported.
    fn require(&self, field: &str, default: Value, want: Value, what: &str) -> Result<()> {
        let got = self.config.raw.get(field).filter(|v| !v.is_null()).cloned().unwrap_or(default);
        let same = match (got.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => got == want,
        };
        if same {
            Ok(())
        } else {
            Err(self.unsupported(field, &format!("{got} is not supported, only {want} ({what})")))
        }
    }

    /// Every layer must be full attention (Dots1: `layer_types`, else `sliding_window` from
    /// `max_window_layers` on, with transformers' defaults 4096 and 62).
    fn check_full_attention(&self) -> Result<()> {
        let l = self.config.num_hidden_layers;
        match self.config.raw.get("layer_types").filter(|v| !v.is_null()) {
            Some(Value::Array(types)) => {
                if types.len() != l {
                    return Err(self.bad("layer_types", format!("has {} entries for {l} layers", types.len())));
                }
                if let Some(t) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
                    return Err(
                        self.unsupported("layer_types", &format!("{t} layers are not supported, only full_attention"))
                    );
                }
                Ok(())
            }
            Some(v) => Err(self.bad("layer_types", format!("expected an array, got {v}"))),
            None => {
                let window = match self.config.raw.get("sliding_window") {
                    None => true,
                    Some(v) => !v.is_null(),
                };
                if window && self.uint("max_window_layers", Some(62))? < l as u64 {
                    return Err(self.unsupported("sliding_window", "sliding-window attention layers are not supported"));
                }
                Ok(())
            }
        }
    }

    fn read_moe(&self) -> Result<Dots1Moe> {
        let experts = self.uint("n_routed_experts", None)? as usize;
        let width = self.uint("moe_intermediate_size", None)? as usize;
        let shared = self.uint("n_shared_experts", None)? as usize;
        for (field, v) in [("n_routed_experts", experts), ("moe_intermediate_size", width)] {
            if v == 0 {
                return Err(self.bad(field, "must be positive".into()));
            }
        }
        self.require("num_experts_per_tok", Value::Null, 1.into(), "top-1 routing")?;
        self.require("norm_topk_prob", false.into(), true.into(), "routed weight 1")?;
        self.require("routed_scaling_factor", 1.0.into(), 1.0.into(), "routed weight 1")?;
        self.require("n_group", 1.into(), 1.into(), "no group-limited routing")?;
        self.require("topk_group", 1.into(), 1.into(), "no group-limited routing")?;
        self.require("first_k_dense_replace", 0.into(), 0.into(), "every layer MoE")?;
        self.check_full_attention()?;
        let padded = shared * width;
        let hint = match self.config.raw.get(MEDMOE_KEY) {
            None => None,
            Some(section) => Some(self.read_hint(section, experts, width, padded)?),
        };
        Ok(Dots1Moe { experts, width, padded, hint })
    }

    /// Our `moe` section stored under [`MEDMOE_KEY`], checked against the Dots1 fields.
    fn read_hint(&self, section: &Value, experts: usize, width: usize, padded: usize) -> Result<MoeSpec> {
        let spec = self.moe_spec(section.clone())?;
        if (spec.num_experts, spec.expert_width) != (experts, width) || spec.shared_width > padded {
            return Err(self.bad(
                MEDMOE_KEY,
                format!(
                    "{} experts x {} with shared {} disagree with n_routed_experts {experts}, \
                     moe_intermediate_size {width} and a padded shared width of {padded}",
                    spec.num_experts, spec.expert_width, spec.shared_width
                ),
            ));
        }
        if spec.weighting == RouterWeighting::Prob {
            return Err(self.bad(
                &format!("{MEDMOE_KEY}.router_weighting"),
                "`prob` cannot describe a Dots1 model (its routed weight is 1)".into(),
            ));
        }
        Ok(spec)
    }

    /// A [`MoeSpec`] from a `moe`-section JSON value (errors name `medmoe.<field>`).
    fn moe_spec(&self, section: Value) -> Result<MoeSpec> {
        let mut tmp = self.config.clone();
        tmp.raw.insert("moe".into(), section);
        let spec = MoeSpec::from_config(&tmp, self.path).map_err(|e| match e {
            ModelError::ConfigField { path, field, msg } => {
                ModelError::ConfigField { path, field: format!("{MEDMOE_KEY}{}", &field["moe".len()..]), msg }
            }
            e => e,
        })?;
        spec.ok_or_else(|| self.bad(MEDMOE_KEY, "not a moe section".into()))
    }
}

/// Where one medmoe parameter comes from in the Dots1 checkpoint.
#[derive(Clone, Debug)]
enum Source {
    /// Elements `start..start + len` of the flattened tensor `name`.
    Slice { name: String, start: usize, len: usize },
    /// The leading `keep` columns of `name` `[rows, cols]`.
    Cols { name: String, keep: usize, cols: usize },
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Slice { name, .. } | Source::Cols { name, .. } => name,
        }
    }
}

/// Shape, dtype and layout checks of the checkpoint against the Dots1 config.
struct Locator<'a> {
    ckpt: &'a SafetensorsReader,
    dir: &'a Path,
    want_dtype: Option<FileDType>,
    /// E, W, D, P.
    e: usize,
    w: usize,
    d: usize,
    p: usize,
}

impl Locator<'_> {
    fn file_of(&self, name: &str) -> PathBuf {
        self.ckpt.path_of(name).map(Path::to_path_buf).unwrap_or_else(|| self.dir.to_path_buf())
    }

    /// Checks that `name` exists with `shape` and a float dtype (the config's, when `weight`).
    fn check(&self, name: &str, shape: &[usize], weight: bool) -> Result<FileDType> {
        let info = self.ckpt.info(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.ckpt.files().first().cloned().unwrap_or_else(|| self.dir.to_path_buf()),
            tensor: name.into(),
        })?;
        let bad = |msg: String| ModelError::Tensor { path: self.file_of(name), tensor: name.into(), msg };
        if info.shape != shape {
            return Err(bad(format!("shape {:?} disagrees with config.json, which implies {shape:?}", info.shape)));
        }
        if !matches!(info.dtype, FileDType::F32 | FileDType::BF16 | FileDType::F16) {
            return Err(bad(format!("dtype {} is not a float type (F32, BF16, F16)", info.dtype)));
        }
        if let Some(w) = self.want_dtype.filter(|&w| weight && w != info.dtype) {
            return Err(bad(format!("dtype {} disagrees with config.json dtype ({})", info.dtype, w)));
        }
        Ok(info.dtype)
    }

    /// The source of medmoe parameter `name` of `shape`, checked.
    fn locate(&self, name: &str, shape: &[usize]) -> Result<(Source, FileDType)> {
        let (d, w, p) = (self.d, self.w, self.p);
        let whole = |n: &str| Source::Slice { name: n.into(), start: 0, len: shape.iter().product() };
        if let Some((_, rest)) = name.split_once(".mlp.shared_experts.") {
            let down = rest.starts_with("down_proj");
            let dims = if down { [d, p] } else { [p, d] };
            let dtype = self.check(name, &dims, true)?;
            let src = if down { Source::Cols { name: name.into(), keep: shape[1], cols: p } } else { whole(name) };
            return Ok((src, dtype));
        }
        if let Some((layer, rest)) = name.split_once(".mlp.experts.") {
            if self.ckpt.info(name).is_none() {
                let (e, kind) = rest.split_once('.').unwrap_or((rest, ""));
                let e: usize = e.parse().unwrap_or(0);
                let fused = |k: &str| format!("{layer}.mlp.experts.{k}");
                let gate_up = fused("gate_up_proj");
                if kind.starts_with("down_proj") && self.ckpt.info(&fused("down_proj")).is_some() {
                    let dtype = self.check(&fused("down_proj"), &[self.e, d, w], true)?;
                    return Ok((Source::Slice { name: fused("down_proj"), start: e * d * w, len: d * w }, dtype));
                }
                if !kind.starts_with("down_proj") && self.ckpt.info(&gate_up).is_some() {
                    let dtype = self.check(&gate_up, &[self.e, 2 * w, d], true)?;
                    let start = e * 2 * w * d + if kind.starts_with("up_proj") { w * d } else { 0 };
                    return Ok((Source::Slice { name: gate_up, start, len: w * d }, dtype));
                }
            }
        }
        Ok((whole(name), self.check(name, shape, true)?))
    }

    /// Trailing all-zero neurons of layer `i`'s padded shared expert.
    fn zero_tail(&self, i: usize) -> Result<usize> {
        let n = |k: &str| format!("model.layers.{i}.mlp.shared_experts.{k}.weight");
        let (gate, up, down) = (
            self.ckpt.read_f32(&n("gate_proj"))?,
            self.ckpt.read_f32(&n("up_proj"))?,
            self.ckpt.read_f32(&n("down_proj"))?,
        );
        let (d, p) = (self.d, self.p);
        let zero = |j: usize| {
            gate[j * d..(j + 1) * d].iter().chain(&up[j * d..(j + 1) * d]).all(|&x| x == 0.0)
                && (0..d).all(|r| down[r * p + j] == 0.0)
        };
        Ok((0..p).rev().take_while(|&j| zero(j)).count())
    }
}

/// Reads tensors through [`Source`]s. A tensor read in parts (a layer's fused expert tensors,
/// a padded shared expert) stays cached while it is among the last two, so each is decoded once.
struct Reader<'a> {
    ckpt: &'a SafetensorsReader,
    cache: Vec<(String, Vec<f32>)>,
}

impl Reader<'_> {
    fn read(&mut self, src: &Source) -> Result<Vec<f32>> {
        let name = src.name();
        let numel = self.ckpt.info(name).map_or(0, |i| i.numel());
        if matches!(src, Source::Slice { start: 0, len, .. } if *len == numel) {
            return self.ckpt.read_f32(name);
        }
        if !self.cache.iter().any(|(n, _)| n == name) {
            if self.cache.len() >= 2 {
                self.cache.remove(0);
            }
            self.cache.push((name.to_string(), self.ckpt.read_f32(name)?));
        }
        let all = &self.cache.iter().find(|(n, _)| n == name).expect("just cached").1;
        Ok(match src {
            Source::Slice { start, len, .. } => all[*start..start + len].to_vec(),
            Source::Cols { keep, cols, .. } => all.chunks(*cols).flat_map(|r| r[..*keep].iter().copied()).collect(),
        })
    }
}

/// Loads the Dots1 directory `dir` as a medmoe MoE model with parameters stored as `storage`.
/// Every tensor's shape and dtype is checked before any is read.
pub(crate) fn load_dots1(dir: &Path, storage: DType) -> Result<Qwen3> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let mut config = Qwen3Config::from_json_accepting(&text, &path, &["dots1"])?;
    let fields = Fields { config: &config, path: &path };
    let moe = fields.read_moe()?;
    let ckpt = SafetensorsReader::open(dir)?;
    let (l, d) = (config.num_hidden_layers, config.hidden_size);
    let loc =
        Locator { ckpt: &ckpt, dir, want_dtype: config_dtype(&config), e: moe.experts, w: moe.width, d, p: moe.padded };
    let base = match &moe.hint {
        Some(h) => h.clone(),
        None => fields.moe_spec(serde_json::json!({
            "num_experts": moe.experts, "expert_width": moe.width, "shared_width": moe.padded,
            "router_weighting": "sigmoid",
        }))?,
    };
    // Check everything (shared expert at its padded width) before reading anything.
    let padded_spec = MoeSpec { shared_width: moe.padded, ..base.clone() };
    for (name, shape) in param_specs(&config, Some(&padded_spec)) {
        loc.locate(&name, &shape)?;
    }
    let bias_names: Vec<String> = (0..l).map(router_bias_name).collect();
    for name in bias_names.iter().filter(|n| ckpt.info(n).is_some()) {
        loc.check(name, &[moe.experts], false)?;
    }
    let router_bias = bias_names
        .iter()
        .map(|n| if ckpt.info(n).is_some() { ckpt.read_f32(n) } else { Ok(vec![0.0; moe.experts]) })
        .collect::<Result<Vec<_>>>()?;
    let mut tail = if moe.padded > 0 { usize::MAX } else { 0 };
    for i in (0..l).filter(|_| moe.padded > 0) {
        tail = tail.min(loc.zero_tail(i)?);
    }
    let unpadded = moe.padded - tail.min(moe.padded);
    let shared_width = match &moe.hint {
        Some(h) if unpadded <= h.shared_width => h.shared_width,
        Some(_) => moe.padded,
        None => unpadded,
    };
    let mut spec = MoeSpec { shared_width, ..base };
    if router_bias.iter().flatten().any(|&b| b != 0.0) {
        spec.weighting = RouterWeighting::Sigmoid;
    }
    let specs = param_specs(&config, Some(&spec));
    let mut sources = HashMap::with_capacity(specs.len());
    let mut file_dtypes = Vec::with_capacity(specs.len());
    for (name, shape) in &specs {
        let (src, dtype) = loc.locate(name, shape)?;
        file_dtypes.push((name.clone(), dtype));
        sources.insert(name.clone(), src);
    }
    for k in DOTS1_KEYS {
        config.raw.remove(k);
    }
    spec.apply_to(&mut config);
    let mut reader = Reader { ckpt: &ckpt, cache: Vec::new() };
    let mut error = None;
    let mut model = Qwen3::from_init(config, Some(spec), storage, |name, numel| {
        match sources.get(name).map(|s| reader.read(s)) {
            Some(Ok(v)) => return v,
            Some(Err(e)) => _ = error.get_or_insert(e),
            None => _ = error.get_or_insert(ModelError::Invalid(format!("no source for `{name}`"))),
        }
        vec![0.0; numel]
    });
    if let Some(e) = error {
        return Err(e);
    }
    model.file_dtypes = file_dtypes;
    model.router_bias = router_bias;
    Ok(model)
}
