//! The learnable quantization parameters of a QAT model: per fake-quantized HF tensor its format,
//! layout, steps and (asymmetric formats) mins. Saved beside the weights of a checkpoint as
//! `qat.json` (formats, layouts, group, the mask rules they came from) and `qat.safetensors`
//! (`<tensor>.qat_step`, `<tensor>.qat_min`, f32 `[rows, row_len / group]`), so the exporter writes
//! the trained codes directly and a resumed run can check it trains the same mask.

use super::plan::QatPlan;
use crate::error::{ModelError, Result};
use crate::gguf::mask::{Mask, Rule};
use crate::qwen3::Qwen3;
use crate::safetensors_io::{FileDType, SafetensorsReader, TensorToWrite};
use kernels_cpu::fake_quant::{encode_rows, fake_quant_forward, init_mse, FakeQuantDims};
use kernels_cpu::quant::BlockType;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// File of the layouts.
pub const QAT_JSON: &str = "qat.json";
/// File of the steps and mins.
pub const QAT_SAFETENSORS: &str = "qat.safetensors";
const FORMAT: &str = "medmoe-qat";
const VERSION: u64 = 1;

/// The parameters of one fake-quantized tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct QatTensor {
    /// Format and layout.
    pub dims: FakeQuantDims,
    /// GGUF row length of the stored rows (zero padding beyond `dims.row_len`).
    pub stored_row_len: usize,
    /// Steps `[rows, row_len / group]`.
    pub step: Vec<f32>,
    /// Mins `[rows, row_len / group]` (empty for the symmetric formats).
    pub min: Vec<f32>,
}

impl QatTensor {
    /// The fake-quantized weights of `w` (`rows * row_len` values).
    pub fn fake_quantize(&self, w: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; w.len()];
        fake_quant_forward(&mut out, w, &self.step, &self.min, self.dims);
        out
    }

    /// Encodes row `row` (`w`: its `row_len` values) as one stored GGUF row into `out`
    /// (`dims.ty.row_bytes(stored_row_len)` bytes).
    pub fn encode_row(&self, row: usize, w: &[f32], out: &mut [u8]) -> Result<()> {
        let gpr = self.dims.groups_per_row();
        let one = FakeQuantDims { rows: 1, ..self.dims };
        let step = self.step.get(row * gpr..(row + 1) * gpr).ok_or_else(|| {
            ModelError::Invalid(format!("QAT row {row} is outside a tensor of {} rows", self.dims.rows))
        })?;
        let min = if self.dims.has_min() { &self.min[row * gpr..(row + 1) * gpr] } else { &self.min[..0] };
        encode_rows(out, w, step, min, one, self.stored_row_len).map_err(|e| ModelError::Invalid(e.to_string()))
    }
}

/// All QAT parameters of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct QatState {
    /// Values per learnable step.
    pub group: usize,
    /// The mask rules the plan came from (a resumed run must train the same).
    pub rules: Vec<Rule>,
    /// Tensors by HF name.
    pub tensors: BTreeMap<String, QatTensor>,
}

impl QatState {
    /// Parameters for every tensor of `plan`, initialised from `model`'s weights: min-max, refined
    /// per group by the clip ratios in `mse_ratios` (`&[1.0]`: plain min-max).
    pub fn init(plan: &QatPlan, mask: &Mask, model: &Qwen3, mse_ratios: &[f32]) -> Result<QatState> {
        let mut tensors = BTreeMap::new();
        let mut group = 0;
        for (name, p) in plan {
            let w = model.params.get(name).map_err(|e| ModelError::Invalid(e.to_string()))?.to_vec();
            if w.len() != p.dims.rows * p.dims.row_len {
                return Err(ModelError::Invalid(format!(
                    "QAT plan: `{name}` has {} values, the plan expects {} x {}",
                    w.len(),
                    p.dims.rows,
                    p.dims.row_len
                )));
            }
            let mut step = vec![0f32; p.dims.params_len()];
            let mut min = vec![0f32; p.dims.min_len()];
            init_mse(&mut step, &mut min, &w, p.dims, mse_ratios);
            group = p.dims.group;
            tensors.insert(name.clone(), QatTensor { dims: p.dims, stored_row_len: p.stored_row_len, step, min });
        }
        Ok(QatState { group, rules: mask.rules.clone(), tensors })
    }

    /// Replaces every fake-quantized weight of `model` by its fake-quantized value (the model a QAT
    /// export equals). The model must store f32 (bf16 storage would round the values).
    pub fn apply(&self, model: &mut Qwen3) -> Result<()> {
        for (name, t) in &self.tensors {
            let w = model.params.get(name).map_err(|e| ModelError::Invalid(e.to_string()))?.to_vec();
            let q = t.fake_quantize(&w);
            model.params.set(name, &q).map_err(|e| ModelError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// An error unless `mask` has the rules this state was trained with.
    pub fn check_mask(&self, mask: &Mask) -> Result<()> {
        if mask.rules == self.rules {
            return Ok(());
        }
        let show = |r: &[Rule]| r.iter().map(|r| format!("{} -> {}", r.pattern, r.ty)).collect::<Vec<_>>().join(", ");
        Err(ModelError::ConfigJson {
            path: mask.path.clone(),
            msg: format!(
                "the checkpoint was trained with the mask [{}], this mask is [{}]: a QAT run resumes with the mask it \
                 started with (start a new run to change it)",
                show(&self.rules),
                show(&mask.rules)
            ),
        })
    }

    /// Writes `qat.json` and `qat.safetensors` into the existing directory `dir` (each atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        let mut layout = serde_json::Map::new();
        for (name, t) in &self.tensors {
            let shape = vec![t.dims.rows, t.dims.groups_per_row()];
            tensors.push(TensorToWrite::from_f32(format!("{name}.qat_step"), FileDType::F32, shape.clone(), &t.step)?);
            if t.dims.has_min() {
                tensors.push(TensorToWrite::from_f32(format!("{name}.qat_min"), FileDType::F32, shape, &t.min)?);
            }
            layout.insert(
                name.clone(),
                json!({"type": t.dims.ty.name(), "rows": t.dims.rows, "row_len": t.dims.row_len,
                       "stored_row_len": t.stored_row_len}),
            );
        }
        let rules: Vec<Value> = self.rules.iter().map(|r| json!({"pattern": r.pattern, "type": r.ty.name()})).collect();
        let doc = json!({"format": FORMAT, "version": VERSION, "group": self.group, "mask": rules, "tensors": layout});
        crate::safetensors_io::write_safetensors(&dir.join(QAT_SAFETENSORS), &tensors, None)?;
        let text = serde_json::to_string_pretty(&doc).map_err(|e| ModelError::Invalid(e.to_string()))?;
        atomicio::write_file(&dir.join(QAT_JSON), text.as_bytes())?;
        Ok(())
    }

    /// The QAT state saved in `dir`, or None when `dir` has no `qat.json`. Every field, length
    /// and value is checked (non-finite steps or mins are refused, naming the tensor and group).
    pub fn load(dir: &Path) -> Result<Option<QatState>> {
        let path = dir.join(QAT_JSON);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::ConfigJson { path: path.clone(), msg: e.to_string() })?;
        let field = |f: &str, msg: String| ModelError::ConfigField { path: path.clone(), field: f.to_string(), msg };
        if doc.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(field("format", format!("expected \"{FORMAT}\"")));
        }
        if doc.get("version").and_then(Value::as_u64) != Some(VERSION) {
            return Err(field("version", format!("expected {VERSION}")));
        }
        let group = doc.get("group").and_then(Value::as_u64).ok_or_else(|| field("group", "missing".into()))? as usize;
        let mask_text = doc.get("mask").map(Value::to_string).ok_or_else(|| field("mask", "missing".into()))?;
        let rules = Mask::from_json(&mask_text, &path)?.rules;
        let layout = doc.get("tensors").and_then(Value::as_object).ok_or_else(|| field("tensors", "missing".into()))?;
        let st_path = dir.join(QAT_SAFETENSORS);
        let reader = SafetensorsReader::open(&st_path)?;
        let mut tensors = BTreeMap::new();
        for (name, v) in layout {
            let f = |k: &str| format!("tensors.{name}.{k}");
            let num = |k: &str| {
                v.get(k).and_then(Value::as_u64).map(|x| x as usize).ok_or_else(|| field(&f(k), "missing".into()))
            };
            let ty_name = v.get("type").and_then(Value::as_str).ok_or_else(|| field(&f("type"), "missing".into()))?;
            let ty =
                BlockType::from_name(ty_name).ok_or_else(|| field(&f("type"), format!("unknown type `{ty_name}`")))?;
            let dims = FakeQuantDims { ty, rows: num("rows")?, row_len: num("row_len")?, group };
            dims.check().map_err(|e| field(&f("type"), e.to_string()))?;
            let stored_row_len = num("stored_row_len")?;
            if ty.row_bytes(stored_row_len).is_err() || stored_row_len < dims.row_len {
                return Err(field(
                    &f("stored_row_len"),
                    format!("{stored_row_len} cannot store rows of {}", dims.row_len),
                ));
            }
            let read = |suffix: &str, want: usize| -> Result<Vec<f32>> {
                let tn = format!("{name}.{suffix}");
                let x = reader.read_f32(&tn)?;
                if x.len() != want {
                    return Err(ModelError::Tensor {
                        path: st_path.clone(),
                        tensor: tn,
                        msg: format!("{} values, the layout needs {want}", x.len()),
                    });
                }
                if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                    return Err(ModelError::Tensor {
                        path: st_path.clone(),
                        tensor: tn,
                        msg: format!(
                            "value {} (group {} of row {}) is not finite",
                            x[i],
                            i % dims.groups_per_row(),
                            i / dims.groups_per_row()
                        ),
                    });
                }
                Ok(x)
            };
            let step = read("qat_step", dims.params_len())?;
            let min = if dims.has_min() { read("qat_min", dims.params_len())? } else { Vec::new() };
            tensors.insert(name.clone(), QatTensor { dims, stored_row_len, step, min });
        }
        Ok(Some(QatState { group, rules, tensors }))
    }
}
