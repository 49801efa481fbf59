//! The QAT mask: the one `--mask` file (configs/qat/experts-shared-q5.json: routed experts +
//! shared FFN at Q5_K, everything else unquantized; the router and norms never) that P4 trains
//! and `moe-cli export gguf --mask` writes, read by the same parser (`model::gguf::Mask`). A
//! stage trains the mask's quantized rules in its own format ([`stage_mask`]); the V/O gate adds
//! attention V and output at Q8_0 in front ([`with_vo`]). P2's `sft.q8_fraction` trains the same
//! tensors at Q8_0.

use crate::error::{EngineError, Result};
use kernels_cpu::quant::BlockType;
use model::gguf::mask::Rule;
use model::gguf::{Arch, Mask};
use model::qat::{qat_plan, QatState};
use model::Qwen3;
use std::path::Path;

/// The default mask's path (phase configs name it; embedded in the binary).
pub const DEFAULT_MASK_PATH: &str = "configs/qat/experts-shared-q5.json";
/// The default mask's contents.
pub const DEFAULT_MASK: &str = include_str!("../../configs/qat/experts-shared-q5.json");

/// The mask at `path` (a file; the default path falls back to the embedded copy when no such
/// file exists, so a binary run anywhere finds it).
pub fn load_mask(path: &str) -> Result<Mask> {
    let p = Path::new(path);
    if !p.is_file() && path == DEFAULT_MASK_PATH {
        return Ok(Mask::from_json(DEFAULT_MASK, p)?);
    }
    Ok(Mask::from_file(p)?)
}

/// The mask's text (file, or the embedded default as [`load_mask`] finds it).
pub fn mask_text(path: &str) -> Result<String> {
    let p = Path::new(path);
    if !p.is_file() && path == DEFAULT_MASK_PATH {
        return Ok(DEFAULT_MASK.to_string());
    }
    std::fs::read_to_string(p).map_err(EngineError::io(p))
}

fn quantized(t: BlockType) -> bool {
    !matches!(t, BlockType::F32 | BlockType::F16 | BlockType::BF16)
}

/// `mask` with every quantized rule's type replaced by `ty` (the stage's format).
pub fn stage_mask(mask: &Mask, ty: BlockType) -> Mask {
    let rules =
        mask.rules.iter().map(|r| Rule { pattern: r.pattern.clone(), ty: if quantized(r.ty) { ty } else { r.ty } });
    Mask { path: mask.path.clone(), rules: rules.collect() }
}

/// `mask` with attention V and output at Q8_0 in front (the V/O gate's trial).
pub fn with_vo(mask: &Mask) -> Mask {
    let mut rules = vec![
        Rule { pattern: "blk.*.attn_v.weight".into(), ty: BlockType::Q8_0 },
        Rule { pattern: "blk.*.attn_output.weight".into(), ty: BlockType::Q8_0 },
    ];
    rules.extend(mask.rules.iter().cloned());
    Mask { path: mask.path.clone(), rules }
}

/// QAT parameters of `model` under `mask`, `group` values per step, initialised min-max and
/// refined by the per-group MSE search over `clip_ratios` (the calibration pass). A rule that
/// would quantize the router or a norm is refused with the reason (`model::qat::qat_plan`).
pub fn calibrate(model: &Qwen3, mask: &Mask, group: usize, clip_ratios: &[f32]) -> Result<QatState> {
    let plan = qat_plan(&model.config, model.moe.as_ref(), Arch::Glm4Moe, mask, group)?;
    Ok(QatState::init(&plan, mask, model, clip_ratios)?)
}

/// The type of a stage format.
pub fn block_type(t: crate::qat_policy::QatStageType) -> BlockType {
    match t {
        crate::qat_policy::QatStageType::Q8_0 => BlockType::Q8_0,
        crate::qat_policy::QatStageType::Q6K => BlockType::Q6_K,
        crate::qat_policy::QatStageType::Q5K => BlockType::Q5_K,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autograd::DType;
    use model::init::qwen3_init;

    fn tiny() -> Qwen3 {
        let (c, spec) = model::presets::embedded_moe("tiny-k1p1-n16").unwrap();
        Qwen3::from_init(c, Some(spec), DType::F32, qwen3_init(3, 0.02))
    }

    #[test]
    fn the_default_mask_trains_experts_and_shared_ffn_only() {
        let m = tiny();
        let mask = load_mask(DEFAULT_MASK_PATH).unwrap();
        let s = calibrate(&m, &stage_mask(&mask, BlockType::Q8_0), 32, &[1.0]).unwrap();
        assert!(s.tensors.keys().all(|n| n.contains("mlp.experts") || n.contains("shared")), "{:?}", s.tensors.keys());
        assert!(s.tensors.values().all(|t| t.dims.ty == BlockType::Q8_0));
        let vo = calibrate(&m, &with_vo(&stage_mask(&mask, BlockType::Q5_K)), 32, &[1.0]).unwrap();
        assert!(vo.tensors.keys().any(|n| n.contains("v_proj")) && vo.tensors.keys().any(|n| n.contains("o_proj")));
        assert!(vo.tensors.len() > s.tensors.len());
    }

    #[test]
    fn a_mask_quantizing_the_router_or_norms_is_refused_with_the_reason() {
        let m = tiny();
        for (pattern, why) in [("blk.*.ffn_gate_inp.weight", "router"), ("blk.*.attn_norm.weight", "norm")] {
            let text = format!(r#"[{{"pattern": "{pattern}", "type": "q8_0"}}, {{"pattern": "*", "type": "f32"}}]"#);
            let mask = Mask::from_json(&text, Path::new("bad-mask.json")).unwrap();
            let e = calibrate(&m, &mask, 32, &[1.0]).unwrap_err().to_string();
            assert!(e.contains("bad-mask.json") && e.contains(why) && e.contains("refused"), "{e}");
        }
    }
}
