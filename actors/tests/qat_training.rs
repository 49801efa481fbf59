//! Quantization-aware training through the one training step: with `Trainer::qat` set, the
//! forward runs the fake-quantized weights, the steps and mins train beside the weights (their
//! own AdamW moments, no weight decay), the loss on a repeated batch falls, and a step with a
//! non-finite loss is skipped without touching the QAT parameters.
//!
//! Model: a small random MoE (vocabulary 64, hidden 32, 2 layers, 8 routed experts of width 8
//! plus a shared expert of 16); routed gate/up train as Q5_K, which rows of 32 cannot take, so
//! they fall back to Q5_1 as llama-quantize does; the shared gate/up train as Q8_0 (the down
//! projections, rows of 8 and 16, fit no block and stay f32).

use actors::phase::PhaseConfig;
use actors::qat_training::QatTraining;
use actors::trainer::Trainer;
use autograd::ops::RouterWeighting;
use data::pack::PackedBatch;
use model::gguf::{Arch, Mask};
use model::moe_spec::MoeSpec;
use model::qat::{qat_plan, QatState};
use model::{Qwen3, Qwen3Config};

const V: usize = 64;

const MASK: &str = r#"[
  {"pattern": "blk.*.ffn_gate_exps.weight", "type": "q5_k"},
  {"pattern": "blk.*.ffn_up_exps.weight", "type": "q5_k"},
  {"pattern": "blk.*.ffn_gate_shexp.weight", "type": "q8_0"},
  {"pattern": "blk.*.ffn_up_shexp.weight", "type": "q8_0"},
  {"pattern": "*", "type": "f32"}
]"#;

fn model() -> Qwen3 {
    let json = format!(
        r#"{{"model_type": "qwen3", "vocab_size": {V}, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "max_position_embeddings": 64, "tie_word_embeddings": true, "rope_theta": 10000.0}}"#
    );
    let config = Qwen3Config::from_json(&json, std::path::Path::new("tiny.json")).unwrap();
    let spec = MoeSpec { num_experts: 8, expert_width: 8, shared_width: 16, weighting: RouterWeighting::Ste };
    Qwen3::from_init(config, Some(spec), autograd::DType::F32, model::init::qwen3_init(7, 0.05))
}

fn batch(b: usize, t: usize) -> PackedBatch {
    let ids: Vec<u32> = (0..b * t).map(|j| ((j * 37 + 11) % V) as u32).collect();
    PackedBatch {
        b,
        t,
        targets: (0..b * t).map(|j| if (j + 1) % t == 0 { -100 } else { ids[j + 1] as i32 }).collect(),
        pos: (0..b * t).map(|j| (j % t) as u32).collect(),
        seg: (0..b * t).map(|j| (j / t) as u32).collect(),
        ids,
        domains: vec!["random".into(); b],
        sequences: (0..b as u64).collect(),
    }
}

fn trainer() -> Trainer {
    let mut c = PhaseConfig::embedded("p1", "tiny").unwrap();
    (c.micro_batch, c.seq_len) = (2, 16);
    c.tokens_per_step = 32;
    c.tokens = 32 * 20;
    c.breakers.enabled = false;
    let m = model();
    let mask = Mask::from_json(MASK, std::path::Path::new("mask.json")).unwrap();
    let plan = qat_plan(&m.config, m.moe.as_ref(), Arch::Glm4Moe, &mask, 32).unwrap();
    let types: Vec<&str> = plan.values().map(|p| p.dims.ty.name()).collect();
    assert!(types.contains(&"Q5_1") && types.contains(&"Q8_0"), "{types:?}");
    let state = QatState::init(&plan, &mask, &m, &[1.0]).unwrap();
    let mut t = Trainer::new(c, m, None).unwrap();
    t.qat = Some(QatTraining::new(state, 10.0));
    t
}

/// `n` applied steps on the repeated batch `b`; their losses.
fn train_on(t: &mut Trainer, b: &PackedBatch, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (rec, _) = t.step(std::slice::from_ref(b), Default::default()).unwrap();
            assert!(rec.applied, "{rec:?}");
            rec.loss
        })
        .collect()
}

#[test]
fn qat_trains_weights_and_quantizer_and_skips_non_finite_steps() {
    let mut t = trainer();
    let init = t.qat.as_ref().unwrap().state.clone();
    let b = batch(2, 16);
    let losses = train_on(&mut t, &b, 12);
    println!("QAT losses on a repeated batch: {losses:?}");
    assert!(losses[11] < losses[0] * 0.95, "{losses:?}");
    let q = t.qat.as_ref().unwrap();
    assert_eq!(q.moments.step, 12);
    let moved = q.state.tensors.iter().filter(|(n, x)| x.step != init.tensors[*n].step).count();
    assert_eq!(moved, q.state.tensors.len(), "every tensor's steps trained");
    assert!(q.state.tensors.values().all(|x| x.step.iter().chain(&x.min).all(|v| v.is_finite())));

    // A NaN weight makes the loss non-finite: the step is skipped, the QAT parameters stay.
    let before = q.state.clone();
    let name = "model.norm.weight"; // after the MoE layers: the routing stays finite
    let mut w = t.model.params.get(name).unwrap().to_vec();
    w[3] = f32::NAN;
    t.model.params.set(name, &w).unwrap();
    let (rec, _) = t.step(std::slice::from_ref(&b), Default::default()).unwrap();
    assert!(!rec.applied);
    assert_eq!(t.qat.as_ref().unwrap().state, before);
    assert_eq!(t.qat.as_ref().unwrap().moments.step, 12);
}

#[test]
fn with_frozen_weights_only_the_steps_and_mins_train() {
    let mut t = trainer();
    t.freeze_weights = true;
    let (weights, init) = (t.model.params.flat().to_vec(), t.qat.as_ref().unwrap().state.clone());
    let b = batch(2, 16);
    let losses = train_on(&mut t, &b, 12);
    println!("QAT losses, steps and mins only: {losses:?}");
    assert!(losses[11] < losses[0], "{losses:?}");
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same(&t.model.params.flat(), &weights), "a frozen weight moved");
    let q = t.qat.as_ref().unwrap();
    assert!(q.state.tensors.iter().all(|(n, x)| x.step != init.tensors[n].step), "every tensor's steps trained");
}

#[test]
fn a_stage_switch_keeps_each_groups_clip_range() {
    let mut t = trainer();
    let q8 = Mask::from_json(&MASK.replace("q5_k", "q8_0"), std::path::Path::new("q8.json")).unwrap();
    let (c, moe) = (t.model.config.clone(), t.model.moe.clone());
    let plan8 = qat_plan(&c, moe.as_ref(), Arch::Glm4Moe, &q8, 32).unwrap();
    let q = t.qat.as_mut().unwrap();
    q.switch_to(&plan8, &q8).unwrap();
    let name = "model.layers.1.mlp.experts.2.up_proj.weight";
    let s8 = q.state.tensors[name].step.clone();
    assert_eq!(q.state.tensors[name].dims.ty.name(), "Q8_0");
    assert!(q.state.tensors[name].min.is_empty());
    let mask = Mask::from_json(MASK, std::path::Path::new("mask.json")).unwrap();
    let plan5 = qat_plan(&c, moe.as_ref(), Arch::Glm4Moe, &mask, 32).unwrap();
    q.switch_to(&plan5, &mask).unwrap();
    assert_eq!(q.state.rules, mask.rules);
    let t5 = &q.state.tensors[name];
    assert_eq!(t5.dims.ty.name(), "Q5_1");
    for (k, ((&s8k, &m), &s)) in s8.iter().zip(&t5.min).zip(&t5.step).enumerate() {
        // [-127 s8, 127 s8] becomes [-m, 31 s - m].
        assert!((m - 127.0 * s8k).abs() <= 1e-6 * m.abs(), "group {k}");
        assert!((31.0 * s - m - 127.0 * s8k).abs() <= 1e-5 * m.abs(), "group {k}");
    }
    assert_eq!(q.moments.step, 0);
    let bad = Mask::from_json(
        r#"[{"pattern": "blk.*.ffn_gate_exps.weight", "type": "q8_0"}]"#,
        std::path::Path::new("b.json"),
    )
    .unwrap();
    let plan_bad = qat_plan(&c, moe.as_ref(), Arch::Glm4Moe, &bad, 32).unwrap();
    assert!(q.switch_to(&plan_bad, &bad).unwrap_err().to_string().contains("tensors"));
}

#[test]
fn a_nan_step_size_skips_the_step_and_leaves_weights_and_quantizer_alone() {
    let mut t = trainer();
    let b = batch(2, 16);
    t.step(std::slice::from_ref(&b), Default::default()).unwrap();
    let name = "model.layers.0.mlp.experts.1.gate_proj.weight";
    t.qat.as_mut().unwrap().state.tensors.get_mut(name).unwrap().step[0] = f32::NAN;
    let (weights, qat) = (t.model.params.flat().to_vec(), t.qat.clone().unwrap());
    let (rec, _) = t.step(std::slice::from_ref(&b), Default::default()).unwrap();
    assert!(!rec.applied, "{rec:?}");
    assert_eq!(t.state.nonfinite_skipped, 1);
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same(&t.model.params.flat(), &weights), "the weights moved on a skipped step");
    let q = t.qat.as_ref().unwrap();
    assert_eq!(q.moments, qat.moments);
    assert!(same(&q.state.tensors[name].step, &qat.state.tensors[name].step));
}

#[test]
fn qat_state_and_moments_resume_from_a_checkpoint_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = trainer();
    let b = batch(2, 16);
    for _ in 0..3 {
        a.step(std::slice::from_ref(&b), Default::default()).unwrap();
    }
    let mut snap = actors::checkpoint::Snapshot::take(&a.model, &a.opt, a.state.step, a.state_json());
    snap.extra = a.checkpoint_files().unwrap();
    let path = actors::checkpoint::write_checkpoint(dir.path(), &snap, 2, &mut Default::default()).unwrap();
    assert!(path.join("qat.json").is_file() && path.join(actors::qat_training::QAT_MOMENTS_FILE).is_file());
    let mut r = trainer();
    r.qat = None;
    r.restore(actors::checkpoint::read_checkpoint(&path).unwrap()).unwrap();
    assert_eq!(r.qat, a.qat);
    for _ in 0..2 {
        let (x, _) = a.step(std::slice::from_ref(&b), Default::default()).unwrap();
        let (y, _) = r.step(std::slice::from_ref(&b), Default::default()).unwrap();
        assert_eq!(x.loss.to_bits(), y.loss.to_bits());
    }
    assert_eq!(r.qat, a.qat);
    assert!(r.model.params.flat().iter().zip(a.model.params.flat().iter()).all(|(x, y)| x.to_bits() == y.to_bits()));
    // A damaged QAT file is caught by the checkpoint's checksums.
    let st = path.join("qat.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&st, bytes).unwrap();
    let e = actors::checkpoint::read_checkpoint(&path).err().unwrap().to_string();
    assert!(e.contains("qat.safetensors"), "{e}");
}
