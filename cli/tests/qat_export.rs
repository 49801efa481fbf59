//! `moe-cli export gguf` of a QAT checkpoint (weights + qat.json + qat.safetensors): the binary
//! writes the trained codes (its stderr says how many tensors), the file decodes to exactly the
//! fake-quantized weights; a different `--mask` and non-finite saved steps are refused with the
//! reason, a non-zero exit and no output.

use autograd::DType;
use model::gguf::{load_gguf, Arch, Mask};
use model::init::qwen3_init;
use model::qat::{qat_plan, QatState};
use model::{presets, Qwen3};
use std::path::Path;
use std::process::{Command, Output};

const MASK: &str = r#"[
  {"pattern": "blk.*.ffn_*_exps.weight", "type": "q5_k"},
  {"pattern": "blk.*.ffn_*_shexp.weight", "type": "q6_k"},
  {"pattern": "*", "type": "f32"}
]"#;

fn moe_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe-cli")).current_dir(dir).args(args).output().unwrap()
}

/// A tiny MoE and its QAT state (min-max, steps nudged as training would), saved as `dir/name`.
fn qat_checkpoint(dir: &Path, name: &str, nan: bool) -> (Qwen3, QatState) {
    let (c, spec) = presets::embedded_moe("tiny-k1p1-n16").unwrap();
    let m = Qwen3::from_init(c, Some(spec), DType::F32, qwen3_init(9, 0.02));
    let mask = Mask::from_json(MASK, Path::new("mask.json")).unwrap();
    let plan = qat_plan(&m.config, m.moe.as_ref(), Arch::Glm4Moe, &mask, 32).unwrap();
    let mut state = QatState::init(&plan, &mask, &m, &[1.0, 0.9]).unwrap();
    for t in state.tensors.values_mut() {
        t.step.iter_mut().enumerate().for_each(|(i, s)| *s *= 1.0 + 0.01 * (i % 5) as f32);
    }
    if nan {
        state.tensors.values_mut().last().unwrap().step[2] = f32::INFINITY;
    }
    m.save(&dir.join(name), None).unwrap();
    state.save(&dir.join(name)).unwrap();
    (m, state)
}

#[test]
fn qat_checkpoint_exports_its_trained_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (m, state) = qat_checkpoint(d, "ckpt", false);
    let out = moe_cli(d, &["export", "gguf", "--model", "ckpt", "--type", "q8_0", "--no-tokenizer", "--out", "q.gguf"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("QAT checkpoint: 24 tensors written from their trained codes"), "{err}");
    let loaded = load_gguf(&d.join("q.gguf"), DType::F32).unwrap();
    let mut fq = m.clone();
    state.apply(&mut fq).unwrap();
    for e in fq.params.entries() {
        let (a, b) = (fq.params.get(&e.name).unwrap().to_vec(), loaded.params.get(&e.name).unwrap().to_vec());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "`{}` differs", e.name);
    }
}

#[test]
fn qat_export_refuses_another_mask_and_non_finite_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    qat_checkpoint(d, "ckpt", false);
    std::fs::write(d.join("other.json"), r#"[{"pattern": "*exps*", "type": "q8_0"}, {"pattern": "*", "type": "f32"}]"#)
        .unwrap();
    let args = ["export", "gguf", "--model", "ckpt", "--type", "f32", "--no-tokenizer", "--mask", "other.json"];
    let out = moe_cli(d, &[&args[..], &["--out", "x.gguf"][..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("other.json") && err.contains("trained with the mask"), "{err}");
    assert!(!err.contains("panicked") && !d.join("x.gguf").exists());

    qat_checkpoint(d, "bad", true);
    let out = moe_cli(d, &["export", "gguf", "--model", "bad", "--type", "f32", "--no-tokenizer", "--out", "y.gguf"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("qat.safetensors") && err.contains("not finite"), "{err}");
    assert!(!err.contains("panicked") && !d.join("y.gguf").exists());
}
