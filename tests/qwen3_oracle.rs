//! Dense Qwen3 against transformers' Qwen3ForCausalLM (fixtures from tools/gen_qwen3_fixtures.py):
//! logits max abs diff <= 1e-4, loss relative <= 1e-5, every parameter gradient norm-wise
//! relative <= 1e-3, all f32. And a load/save round trip is bit-identical.

use kernels_cpu::check::{max_errors, rel_norm_err};
use medmoe_tests::{fixtures_with_prefix, open_reference};
use model::safetensors_io::Checkpoint;
use model::train::loss_and_grads;
use model::{Qwen3, TokenBatch};

const LOGITS_MAX_ABS: f64 = 1e-4;
const LOSS_REL: f64 = 1e-5;
const GRAD_REL: f64 = 1e-3;

fn batch_of(reference: &Checkpoint) -> (TokenBatch, Vec<i32>) {
    let shape = reference.info("input_ids").expect("input_ids").shape.clone();
    let ids: Vec<u32> = reference.read_i64("input_ids").unwrap().iter().map(|&x| x as u32).collect();
    let targets: Vec<i32> = reference.read_i64("targets").unwrap().iter().map(|&x| x as i32).collect();
    (TokenBatch::new(ids, shape[0], shape[1]).unwrap(), targets)
}

#[test]
fn qwen3_matches_transformers_logits_loss_and_every_gradient() {
    let dirs = fixtures_with_prefix("qwen3_");
    assert!(dirs.len() >= 3, "expected >= 3 qwen3 fixtures, found {}", dirs.len());
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let reference = open_reference(&dir);
        let model = Qwen3::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (batch, targets) = batch_of(&reference);

        let logits = model.logits(&batch).unwrap();
        let (abs, _) = max_errors(&logits, &reference.read_f32("logits").unwrap());
        println!("{name}: logits max abs diff {abs:.3e}");
        assert!(abs <= LOGITS_MAX_ABS, "{name}: logits max abs diff {abs:.3e} > {LOGITS_MAX_ABS:e}");

        let (loss, _, grads) = loss_and_grads(&model, &batch, &targets).unwrap();
        let want_loss = reference.read_f32("loss").unwrap()[0];
        let rel = ((loss - want_loss) as f64).abs() / (want_loss as f64).abs();
        println!("{name}: loss {loss} vs {want_loss} (rel {rel:.3e})");
        assert!(rel <= LOSS_REL, "{name}: loss rel diff {rel:.3e} > {LOSS_REL:e}");

        let mut worst = (0f64, String::new());
        for e in model.params.entries() {
            let want = reference.read_f32(&format!("grad.{}", e.name)).unwrap_or_else(|err| panic!("{name}: {err}"));
            let got = &grads[e.offset..e.offset + e.numel()];
            let err = rel_norm_err(got, &want);
            assert!(err <= GRAD_REL, "{name}: grad of {} rel err {err:.3e} > {GRAD_REL:e}", e.name);
            if err > worst.0 {
                worst = (err, e.name.clone());
            }
        }
        println!("{name}: {} gradients, worst rel err {:.3e} ({})", model.params.entries().len(), worst.0, worst.1);
    }
}

#[test]
fn load_then_save_is_bit_identical_for_every_fixture() {
    for dir in fixtures_with_prefix("qwen3_") {
        let model = Qwen3::load(&dir).unwrap();
        let out = tempfile::tempdir().unwrap();
        let saved = out.path().join("saved");
        model.save(&saved, None).unwrap();
        let (a, b) = (Checkpoint::open(&dir).unwrap(), Checkpoint::open(&saved).unwrap());
        for e in model.params.entries() {
            assert_eq!(a.info(&e.name).unwrap().dtype, b.info(&e.name).unwrap().dtype, "{}", e.name);
            assert!(a.bytes(&e.name).unwrap() == b.bytes(&e.name).unwrap(), "{}: {} differs", dir.display(), e.name);
        }
        let reloaded = Qwen3::load(&saved).unwrap();
        assert_eq!(reloaded.config, model.config, "config round trip");
    }
}

#[test]
fn bf16_storage_gives_the_same_logits_as_f32_storage_for_bf16_weights() {
    // qwen3_bf16_d's weights are bf16 on disk, so keeping them as bf16 in memory loses nothing.
    let dir = medmoe_tests::fixture_dir("qwen3_bf16_d");
    let reference = open_reference(&dir);
    let (batch, _) = batch_of(&reference);
    let f32_model = Qwen3::load(&dir).unwrap();
    let bf16_model = Qwen3::load_as(&dir, autograd::DType::BF16).unwrap();
    assert_eq!(bf16_model.params.dtype(), autograd::DType::BF16);
    assert_eq!(f32_model.logits(&batch).unwrap(), bf16_model.logits(&batch).unwrap());
}

#[test]
fn inference_tape_records_nothing_and_training_tape_records_every_op() {
    let dir = medmoe_tests::fixture_dir("qwen3_tied_a");
    let model = Qwen3::load(&dir).unwrap();
    let (batch, targets) = batch_of(&open_reference(&dir));
    let tape = autograd::Tape::inference();
    let bound = model.bind(&tape);
    model.loss(&tape, &bound, &batch, &targets).unwrap();
    assert!(tape.is_empty());
    let tape = autograd::Tape::new();
    let bound = model.bind(&tape);
    model.loss(&tape, &bound, &batch, &targets).unwrap();
    // per layer: 2 norms + qkv + 3 slices + 2 head norms + 2 ropes + attention + o + add + gate_up + 2 slices
    // + swiglu + down + add = 19; plus embedding, final norm, loss.
    assert_eq!(tape.len(), 19 * model.config.num_hidden_layers + 3);
}
