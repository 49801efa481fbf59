//! Reading a GPTQ checkpoint directory (ours, or any of the same layout) back as a float model:
//! every `X.qweight` is dequantized at load to `X.weight = scales[g_idx[k], n] · (q - zero)` with
//! the zeros as stored (`checkpoint_format` `gptq`: stored + 1; `gptq_v2`: as stored), so the
//! evaluator, `logits` and `inspect` run quantized models with the f32 code.
//!
//! Dots1 checkpoints must carry our `medmoe` config section (it says how wide the shared expert
//! really is); dense ones are plain Qwen3.

use super::pack::{per_word, unpack_qweight, unpack_qzeros};
use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::export::{DOTS1_KEYS, MEDMOE_KEY};
use crate::moe_spec::MoeSpec;
use crate::qwen3::{param_specs, router_bias_name, Qwen3};
use crate::safetensors_io::{FileDType, SafetensorsReader};
use autograd::DType;
use kernels_cpu::quant::half::f16_to_f32;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The `quantization_config` of `dir/config.json` when it says `quant_method: "gptq"`.
fn gptq_section(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let qc = v.get("quantization_config")?;
    (qc.get("quant_method").and_then(Value::as_str) == Some("gptq")).then(|| qc.clone())
}

/// Whether `dir` is a GPTQ checkpoint (config.json with `quantization_config.quant_method: "gptq"`).
pub fn is_gptq_dir(dir: &Path) -> bool {
    gptq_section(dir).is_some()
}

/// The GPTQ settings read from `quantization_config`.
struct Settings {
    bits: u32,
    /// Added to the stored zero (1 for v1 `gptq`, 0 for `gptq_v2`).
    zero_offset: u32,
}

fn settings(qc: &Value, path: &Path) -> Result<Settings> {
    let bad = |field: &str, msg: String| ModelError::ConfigField {
        path: path.to_path_buf(),
        field: format!("quantization_config.{field}"),
        msg,
    };
    let bits = qc.get("bits").and_then(Value::as_u64).ok_or_else(|| bad("bits", "missing or not an integer".into()))?;
    per_word(bits as u32).map_err(|e| bad("bits", e.to_string()))?;
    let format = qc.get("checkpoint_format").or_else(|| qc.get("format")).and_then(Value::as_str).unwrap_or("gptq");
    let zero_offset = match format {
        "gptq" => 1,
        "gptq_v2" => 0,
        f => return Err(bad("checkpoint_format", format!("{f:?} is not supported (gptq, gptq_v2)"))),
    };
    Ok(Settings { bits: bits as u32, zero_offset })
}

/// Tensor access with errors naming the file and the tensor.
struct Ckpt<'a> {
    r: &'a SafetensorsReader,
    dir: &'a Path,
    s: Settings,
}

impl Ckpt<'_> {
    fn file(&self, name: &str) -> PathBuf {
        self.r.path_of(name).map(Path::to_path_buf).unwrap_or_else(|| self.dir.join("model.safetensors"))
    }

    fn err(&self, name: &str, msg: String) -> ModelError {
        ModelError::Tensor { path: self.file(name), tensor: name.into(), msg }
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        match self.r.info(name) {
            Some(i) => Ok(i.shape.clone()),
            None => Err(ModelError::MissingTensor { path: self.file(name), tensor: name.into() }),
        }
    }

    fn i32s(&self, name: &str, shape: &[usize]) -> Result<Vec<i32>> {
        let info = self
            .r
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.file(name), tensor: name.into() })?;
        if info.dtype != FileDType::I32 || info.shape != shape {
            return Err(self.err(name, format!("{} {:?}, expected I32 {shape:?}", info.dtype, info.shape)));
        }
        Ok(self.r.bytes(name)?.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// `X.weight [N, K]` of `base` = `X`: dequantized when `X.qweight` exists, else as stored.
    fn weight(&self, base: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let qname = format!("{base}.qweight");
        if self.r.info(&qname).is_none() {
            let name = format!("{base}.weight");
            return Ok((self.r.read_f32(&name)?, self.shape(&name)?));
        }
        let bits = self.s.bits;
        let p = per_word(bits)?;
        let sname = format!("{base}.scales");
        let sshape = self.shape(&sname)?;
        let info = self.r.info(&sname).map(|i| i.dtype);
        if sshape.len() != 2 || !matches!(info, Some(FileDType::F16 | FileDType::F32 | FileDType::BF16)) {
            return Err(self.err(&sname, format!("{info:?} {sshape:?}, expected float [groups, N]")));
        }
        let (groups, n) = (sshape[0], sshape[1]);
        let qshape = self.shape(&qname)?;
        let k = qshape.first().copied().unwrap_or(0) * p;
        let qweight = self.i32s(&qname, &[k / p, n])?;
        let g_idx = self.i32s(&format!("{base}.g_idx"), &[k])?;
        if !n.is_multiple_of(p) {
            return Err(self.err(&sname, format!("N = {n} is not a multiple of {p}")));
        }
        let qzeros = self.i32s(&format!("{base}.qzeros"), &[groups, n / p])?;
        if let Some(&g) = g_idx.iter().find(|&&g| g < 0 || g as usize >= groups) {
            return Err(self.err(&format!("{base}.g_idx"), format!("group {g} outside 0..{groups}")));
        }
        let scales: Vec<f32> = if info == Some(FileDType::F16) {
            self.r.bytes(&sname)?.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()
        } else {
            self.r.read_f32(&sname)?
        };
        let codes = unpack_qweight(&qweight, bits, n, k)?;
        let zeros = unpack_qzeros(&qzeros, bits, groups, n)?;
        let off = self.s.zero_offset as f32 - 1.0;
        let mut w = vec![0f32; n * k];
        for r in 0..n {
            for c in 0..k {
                let g = g_idx[c] as usize;
                w[r * k + c] = scales[g * n + r] * (codes[r * k + c] as f32 - (zeros[g * n + r] as f32 + off));
            }
        }
        Ok((w, vec![n, k]))
    }
}

/// The leading `[rows, cols]` block of `v [.., full_cols]`.
fn cut(v: &[f32], full_cols: usize, rows: usize, cols: usize) -> Vec<f32> {
    v.chunks(full_cols).take(rows).flat_map(|r| r[..cols].iter().copied()).collect()
}

/// Loads the GPTQ checkpoint `dir` as a float model (parameters stored as `storage`).
pub fn load_gptq(dir: &Path, storage: DType) -> Result<Qwen3> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let raw: Value =
        serde_json::from_str(&text).map_err(|e| ModelError::ConfigJson { path: path.clone(), msg: e.to_string() })?;
    let qc = gptq_section(dir).ok_or_else(|| ModelError::Invalid(format!("{}: not a GPTQ config", path.display())))?;
    let s = settings(&qc, &path)?;
    let mut config = Qwen3Config::from_json_accepting(&text, &path, &["dots1"])?;
    config.raw.remove("quantization_config");
    let dots1 = raw.get("model_type").and_then(Value::as_str) == Some("dots1");
    let moe = if dots1 {
        let section = raw.get(MEDMOE_KEY).cloned().ok_or_else(|| ModelError::ConfigField {
            path: path.clone(),
            field: MEDMOE_KEY.into(),
            msg: "a GPTQ Dots1 checkpoint is read only with the medmoe section moe-cli quantize writes".into(),
        })?;
        for k in DOTS1_KEYS {
            config.raw.remove(k);
        }
        config.raw.insert("moe".into(), section);
        let spec = MoeSpec::from_config(&config, &path)?
            .ok_or_else(|| ModelError::Invalid(format!("{}: empty medmoe section", path.display())))?;
        spec.apply_to(&mut config);
        Some(spec)
    } else {
        MoeSpec::from_config(&config, &path)?
    };
    let r = SafetensorsReader::open(dir)?;
    let ckpt = Ckpt { r: &r, dir, s };
    let mut weights = std::collections::HashMap::new();
    for (name, shape) in param_specs(&config, moe.as_ref()) {
        let (v, got) = ckpt.weight(name.trim_end_matches(".weight"))?;
        let want: Vec<usize> = if shape.len() == 1 { vec![shape[0]] } else { shape.clone() };
        let v = if got == want {
            v
        } else if name.contains(".mlp.shared_experts.") && got.len() == 2 && got[0] >= want[0] && got[1] >= want[1] {
            cut(&v, got[1], want[0], want[1]) // the Dots1 shared expert is zero-padded to whole experts
        } else {
            return Err(ckpt.err(&name, format!("shape {got:?} disagrees with config.json, which implies {want:?}")));
        };
        weights.insert(name, v);
    }
    let mut model = Qwen3::from_init(config, moe.clone(), storage, |name, numel| {
        weights.remove(name).unwrap_or_else(|| vec![0.0; numel])
    });
    if let Some(m) = &moe {
        for i in 0..model.config.num_hidden_layers {
            let name = router_bias_name(i);
            if r.info(&name).is_some() {
                let b = r.read_f32(&name)?;
                if b.len() != m.num_experts {
                    return Err(ckpt.err(&name, format!("{} values for {} experts", b.len(), m.num_experts)));
                }
                model.router_bias[i] = b;
            }
        }
    }
    Ok(model)
}
