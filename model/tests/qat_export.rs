//! A QAT checkpoint exports to GGUF with its trained codes (no re-quantization): the GGUF's
//! dequantized weights equal the fake-quantized weights bit for bit, and the loaded file's logits
//! equal the fake-quant model's. The tiny MoE covers every format path: routed gate/up Q5_K,
//! routed down (rows of 64) Q5_1 by fallback, shared gate/up Q6_K, shared down (160 values padded
//! to 192) Q8_0 by fallback, attention V Q8_0. Also the bad inputs: a mask quantizing the router
//! or norms, a different mask at export, non-finite saved steps.

use autograd::DType;
use model::gguf::{export_gguf, load_gguf, write_gguf, Arch, GgufOptions, GgufType, Mask, ModelSource};
use model::init::qwen3_init;
use model::qat::{qat_plan, QatState, QAT_SAFETENSORS};
use model::{presets, Qwen3, TokenBatch};
use std::path::Path;

const MASK: &str = r#"[
  {"pattern": "blk.*.ffn_*_exps.weight", "type": "q5_k"},
  {"pattern": "blk.*.ffn_*_shexp.weight", "type": "q6_k"},
  {"pattern": "blk.*.attn_v.weight", "type": "q8_0"},
  {"pattern": "*", "type": "f32"}
]"#;

fn tiny() -> Qwen3 {
    let (c, spec) = presets::embedded_moe("tiny-k1p1-n16").unwrap();
    Qwen3::from_init(c, Some(spec), DType::F32, qwen3_init(5, 0.02))
}

fn mask(text: &str) -> Mask {
    Mask::from_json(text, Path::new("qat-mask.json")).unwrap()
}

/// A QAT state as training leaves it: min-max + MSE init, then steps and mins moved off their
/// initial values (so a re-quantizing exporter could not reproduce them).
fn trained_state(m: &Qwen3) -> QatState {
    let mk = mask(MASK);
    let plan = qat_plan(&m.config, m.moe.as_ref(), Arch::Glm4Moe, &mk, 32).unwrap();
    let mut state = QatState::init(&plan, &mk, m, &[1.0, 0.9, 0.8]).unwrap();
    for t in state.tensors.values_mut() {
        for (i, s) in t.step.iter_mut().enumerate() {
            *s *= 1.0 + 0.05 * ((i % 7) as f32 - 3.0) / 3.0;
        }
        for (i, x) in t.min.iter_mut().enumerate() {
            *x *= 1.0 - 0.03 * (i % 5) as f32;
        }
    }
    state
}

fn opts() -> GgufOptions {
    GgufOptions { ftype: GgufType::F32, mask: None, tokenizer_dir: None, moe_arch: Arch::Glm4Moe }
}

#[test]
fn the_plan_covers_every_format_path() {
    let m = tiny();
    let state = trained_state(&m);
    let ty = |n: &str| state.tensors[n].dims.ty.name();
    assert_eq!(ty("model.layers.0.mlp.experts.3.gate_proj.weight"), "Q5_K");
    assert_eq!(ty("model.layers.0.mlp.experts.3.down_proj.weight"), "Q5_1");
    assert_eq!(ty("model.layers.1.mlp.shared_experts.up_proj.weight"), "Q6_K");
    let down = &state.tensors["model.layers.1.mlp.shared_experts.down_proj.weight"];
    assert_eq!((down.dims.ty.name(), down.dims.row_len, down.stored_row_len), ("Q8_0", 160, 192));
    assert_eq!(ty("model.layers.2.self_attn.v_proj.weight"), "Q8_0");
    assert!(!state.tensors.contains_key("model.layers.0.mlp.gate.weight"));
    assert!(!state.tensors.contains_key("model.layers.0.self_attn.q_proj.weight"));
}

#[test]
fn qat_export_equals_the_fake_quant_model_bit_for_bit() {
    let m = tiny();
    let state = trained_state(&m);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qat.gguf");
    let report = write_gguf(&ModelSource::with_qat(&m, &state), &m.config, m.moe.as_ref(), &opts(), &out).unwrap();
    assert_eq!(report.qat_tensors, 4 * 7, "per layer: attn_v, 3 routed, 3 shared");
    let types: Vec<&str> = report.tensors.iter().map(|t| t.ty.name()).collect();
    for t in ["Q5_K", "Q5_1", "Q6_K", "Q8_0", "F32"] {
        assert!(types.contains(&t), "{t} written: {types:?}");
    }
    let loaded = load_gguf(&out, DType::F32).unwrap();
    let mut fq = m.clone();
    state.apply(&mut fq).unwrap();
    let mut compared = 0;
    for e in fq.params.entries() {
        let (a, b) = (fq.params.get(&e.name).unwrap().to_vec(), loaded.params.get(&e.name).unwrap().to_vec());
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "`{}`: dequantized GGUF differs from the fake-quantized weights", e.name);
        compared += 1;
        if state.tensors.contains_key(&e.name) {
            let latent = m.params.get(&e.name).unwrap().to_vec();
            assert!(latent != a, "`{}` was fake-quantized", e.name);
        }
    }
    assert!(compared > 50);
    let batch = TokenBatch::new((0..48).map(|i| (i * 937 + 11) % 4096).collect(), 2, 24).unwrap();
    let (want, got) = (fq.logits(&batch).unwrap(), loaded.logits(&batch).unwrap());
    let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("QAT export: max |logit diff| vs the fake-quant model = {diff:e}");
    assert!(diff <= 1e-5, "logits differ by {diff}");

    // Through a checkpoint directory (what `moe-cli export gguf` reads): the same file.
    let ckpt = dir.path().join("ckpt");
    m.save(&ckpt, None).unwrap();
    state.save(&ckpt).unwrap();
    assert_eq!(QatState::load(&ckpt).unwrap().as_ref(), Some(&state));
    let out2 = dir.path().join("qat2.gguf");
    export_gguf(&ckpt, &opts(), &out2).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&out2).unwrap(), "checkpoint export differs");
    // The same mask given again is accepted and changes nothing.
    let out3 = dir.path().join("qat3.gguf");
    export_gguf(&ckpt, &GgufOptions { mask: Some(mask(MASK)), ..opts() }, &out3).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&out3).unwrap(), "export with the mask differs");
}

#[test]
fn bad_masks_and_parameters_are_refused_with_the_reason() {
    let m = tiny();
    let (c, moe) = (&m.config, m.moe.as_ref());
    let plan = |text: &str| qat_plan(c, moe, Arch::Glm4Moe, &mask(text), 32).unwrap_err().to_string();
    let e = plan(r#"[{"pattern": "blk.*.ffn_gate_inp.weight", "type": "q8_0"}, {"pattern": "*", "type": "f32"}]"#);
    assert!(e.contains("[0].pattern") && e.contains("router"), "{e}");
    let e = plan(r#"[{"pattern": "*", "type": "q5_k"}]"#);
    assert!(e.contains("refused") && e.contains("norm"), "{e}");
    let e = plan(r#"[{"pattern": "blk.*.ffn_*_exps.weight", "type": "q4_k"}]"#);
    assert!(e.contains("Q4_K"), "{e}");
    let e = qat_plan(c, moe, Arch::Glm4Moe, &mask(MASK), 64).unwrap_err().to_string();
    assert!(e.contains("shared_experts.down_proj") && e.contains("160"), "{e}");
    let e = plan(r#"[{"pattern": "blk.*.ffn_norm.weight", "type": "f32"}, {"pattern": "*exps*", "type": "q8_0"}]"#);
    assert!(e.contains("matches no tensor"), "{e}");

    // Export of a QAT checkpoint with a different mask.
    let state = trained_state(&m);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    m.save(&ckpt, None).unwrap();
    state.save(&ckpt).unwrap();
    let other = mask(r#"[{"pattern": "blk.*.ffn_*_exps.weight", "type": "q6_k"}, {"pattern": "*", "type": "f32"}]"#);
    let out = dir.path().join("x.gguf");
    let e = export_gguf(&ckpt, &GgufOptions { mask: Some(other), ..opts() }, &out).unwrap_err().to_string();
    assert!(e.contains("trained with the mask"), "{e}");
    assert!(!out.exists());

    // A non-finite step in the saved parameters.
    let mut bad = state.clone();
    bad.tensors.values_mut().next().unwrap().step[3] = f32::NAN;
    let bad_dir = dir.path().join("bad");
    std::fs::create_dir(&bad_dir).unwrap();
    bad.save(&bad_dir).unwrap();
    let e = QatState::load(&bad_dir).unwrap_err().to_string();
    assert!(e.contains(QAT_SAFETENSORS) && e.contains("qat_step") && e.contains("not finite"), "{e}");
}
