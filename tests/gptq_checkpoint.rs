//! GPTQ checkpoints end to end: quantize (model::gptq) -> write -> load back -> logits, dense and
//! MoE; the transformers oracle on a committed MoE checkpoint (tests/fixtures/gptq/, written by
//! `tools/gen_gptq_fixtures.py --only moe`); bad input.

use autograd::DType;
use kernels_cpu::check::max_errors;
use medmoe_tests::fixture_dir;
use model::gptq::{quantize_model, write_gptq, QuantMethod, QuantizeOptions};
use model::moe_spec::MoeSpec;
use model::safetensors_io::SafetensorsReader;
use model::{Qwen3, TokenBatch};
use std::path::Path;

fn opts(method: QuantMethod, bits: u32, group: usize, act_order: bool) -> QuantizeOptions {
    QuantizeOptions { method, bits, group, act_order, min_expert_tokens: None }
}

/// Deterministic calibration ids `[4, 24]` below `vocab`.
fn calib(vocab: usize) -> TokenBatch {
    let ids = (0..96u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % vocab as u32).collect();
    TokenBatch::new(ids, 4, 24).unwrap()
}

fn eval_batch(vocab: usize) -> TokenBatch {
    let ids = (0..32u32).map(|i| (i * 37 + 11) % vocab as u32).collect();
    TokenBatch::new(ids, 2, 16).unwrap()
}

/// The tiny MoE: qwen3_tied_a's attention and embeddings, 4 experts x 32, shared 32, random FFN.
fn tiny_moe() -> Qwen3 {
    let dense = Qwen3::load(&fixture_dir("qwen3_tied_a")).unwrap();
    let mut config = dense.config.clone();
    config.raw.insert(
        "moe".into(),
        serde_json::json!({"num_experts": 4, "expert_width": 32, "shared_width": 32, "router_weighting": "ste"}),
    );
    let spec = MoeSpec::from_config(&config, Path::new("test")).unwrap().unwrap();
    let mut seed = 1u64;
    Qwen3::from_init(config, Some(spec), DType::F32, |name, numel| match dense.params.get(name) {
        Ok(t) => t.to_vec(),
        Err(_) if name.contains("norm") => vec![1.0; numel],
        Err(_) => (0..numel)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.3
            })
            .collect(),
    })
}

/// Quantize, write, load back: the loaded model computes what the in-memory quantized one does.
fn round_trip(model: &Qwen3, o: &QuantizeOptions) -> (model::gptq::QuantizedModel, Qwen3) {
    let q = quantize_model(model, &calib(model.config.vocab_size), o, &|_| true, &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gptq");
    write_gptq(&q, &out).unwrap();
    let loaded = Qwen3::load(&out).unwrap();
    let batch = eval_batch(model.config.vocab_size);
    let (want, got) = (q.model.logits(&batch).unwrap(), loaded.logits(&batch).unwrap());
    let e = max_errors(&got, &want);
    assert!(e.0 <= 1e-5, "loaded GPTQ checkpoint vs in-memory quantized model: {e:?}");
    // Format facts vLLM relies on.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let qc = &config["quantization_config"];
    assert_eq!(qc["sym"], true);
    assert_eq!(qc["checkpoint_format"], "gptq");
    assert_eq!(qc["bits"], o.bits);
    let qc_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("quantize_config.json")).unwrap()).unwrap();
    assert_eq!(&qc_file, qc);
    let r = SafetensorsReader::open(&out).unwrap();
    let zero_word = if o.bits == 4 { 0x7777_7777u32 } else { 0x7F7F_7F7F };
    for name in r.names().into_iter().filter(|n| n.ends_with(".qzeros")) {
        let b = r.bytes(name).unwrap();
        assert!(b.chunks(4).all(|c| u32::from_le_bytes(c.try_into().unwrap()) == zero_word), "{name}: v1 sym zeros");
    }
    for name in ["model.embed_tokens.weight", "model.norm.weight"] {
        assert!(r.info(name).is_some(), "{name} stays float");
    }
    (q, loaded)
}

#[test]
fn dense_gptq_checkpoint_loads_back_exactly_and_beats_rtn() {
    let model = Qwen3::load(&fixture_dir("qwen3_tied_a")).unwrap();
    let (q, _) = round_trip(&model, &opts(QuantMethod::Gptq, 4, 32, true));
    assert_eq!(q.tensors.len(), 2 * 7, "q, k, v, o, gate, up, down of 2 layers");
    let (gptq, rtn): (f64, f64) =
        q.report.iter().fold((0.0, 0.0), |(a, b), r| (a + r.error.unwrap(), b + r.rtn_error.unwrap()));
    eprintln!("dense 4-bit g32 act-order: output error GPTQ {gptq:.4e} vs RTN {rtn:.4e}");
    assert!(gptq < rtn, "GPTQ output error {gptq} >= RTN {rtn}");
    // 8-bit is close to the float model.
    let (q8, _) = round_trip(&model, &opts(QuantMethod::Rtn, 8, 32, false));
    let batch = eval_batch(model.config.vocab_size);
    let e = max_errors(&q8.model.logits(&batch).unwrap(), &model.logits(&batch).unwrap());
    eprintln!("dense RTN 8-bit vs float logits: {e:?}");
    assert!(e.0 < 0.05, "{e:?}");
}

#[test]
fn moe_gptq_checkpoint_is_dots1_and_loads_back_exactly() {
    let model = tiny_moe();
    let (q, loaded) = round_trip(&model, &opts(QuantMethod::Gptq, 4, 32, true));
    assert_eq!(loaded.moe, model.moe, "the medmoe section restores the spec");
    // Every expert of every layer got its own Hessian or was reported as starved.
    let experts = q.report.iter().filter(|r| r.name.contains(".mlp.experts.")).count();
    assert_eq!(experts, 2 * 4 * 3);
    for r in q.report.iter().filter(|r| r.name.contains(".mlp.experts.")) {
        let starved =
            q.starved_experts.iter().any(|(l, e, _)| r.name.starts_with(&format!("model.layers.{l}.mlp.experts.{e}.")));
        assert_eq!(r.method == QuantMethod::Rtn, starved, "{}: {} tokens", r.name, r.tokens);
    }
    eprintln!("starved experts (layer, expert, tokens): {:?}", q.starved_experts);
}

#[test]
fn bad_settings_and_existing_output_are_refused_without_output() {
    let model = Qwen3::load(&fixture_dir("qwen3_tied_a")).unwrap();
    let batch = calib(model.config.vocab_size);
    // intermediate 96 is not a multiple of 64.
    let err = quantize_model(&model, &batch, &opts(QuantMethod::Gptq, 4, 64, false), &|_| true, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("down_proj") && err.contains("64"), "{err}");
    let err = quantize_model(&model, &batch, &opts(QuantMethod::Gptq, 4, 32, false), &|_| false, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("picks no quantizable weight"), "{err}");
    let err =
        quantize_model(&model, &batch, &opts(QuantMethod::Gptq, 4, 32, false), &|n| n.contains("q_proj"), &mut |_| {})
            .err()
            .unwrap()
            .to_string();
    assert!(err.contains("merged kernel"), "{err}");
    let q = quantize_model(&model, &batch, &opts(QuantMethod::Rtn, 4, 32, false), &|_| true, &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    assert!(write_gptq(&q, &dir.path().join("taken")).is_err());
    assert_eq!(std::fs::read_dir(dir.path().join("taken")).unwrap().count(), 0, "nothing written into it");
    let bad_ids = TokenBatch::new(vec![9999; 8], 1, 8).unwrap();
    let err = quantize_model(&model, &bad_ids, &opts(QuantMethod::Rtn, 4, 32, false), &|_| true, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("outside the model's vocabulary"), "{err}");
}

/// The committed MoE GPTQ checkpoint (written by `moe-cli quantize`), dequantized by numpy and run by
/// transformers Dots1ForCausalLM: our loader + forward give the same logits.
#[test]
fn committed_moe_checkpoint_matches_transformers() {
    let dir = fixture_dir("gptq");
    let r = medmoe_tests::open_reference(&dir);
    let shape = r.info("input_ids").unwrap().shape.clone();
    let ids = r.read_i64("input_ids").unwrap().iter().map(|&x| x as u32).collect();
    let batch = TokenBatch::new(ids, shape[0], shape[1]).unwrap();
    let model = Qwen3::load(&dir.join("moe_gptq")).unwrap();
    let e = max_errors(&model.logits(&batch).unwrap(), &r.read_f32("logits").unwrap());
    eprintln!("GPTQ MoE checkpoint, ours vs transformers: {e:?}");
    assert!(e.0 <= 1e-4, "{e:?}");
}
