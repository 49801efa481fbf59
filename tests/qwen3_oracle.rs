//! Dense Qwen3 against transformers' Qwen3ForCausalLM (fixtures from tools/gen_qwen3_fixtures.py):
//! logits max abs diff <= 1e-4, loss relative <= 1e-5, every parameter gradient norm-wise
//! relative <= 1e-3, all f32. And a load/save round trip is bit-identical.

use kernels_cpu::check::{max_errors, rel_norm_err};
use medmoe_tests::{fixtures_with_prefix, open_reference, reference_batch};
use model::qwen3::ForwardOptions;
use model::safetensors_io::SafetensorsReader;
use model::Qwen3;

const LOGITS_MAX_ABS: f64 = 1e-4;
const LOSS_REL: f64 = 1e-5;
const GRAD_REL: f64 = 1e-3;

#[test]
fn qwen3_matches_transformers_logits_loss_and_every_gradient() {
    let dirs = fixtures_with_prefix("qwen3_");
    assert!(dirs.len() >= 3, "expected >= 3 qwen3 fixtures, found {}", dirs.len());
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let reference = open_reference(&dir);
        let model = Qwen3::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (batch, targets) = reference_batch(&dir);

        let logits = model.logits(&batch).unwrap();
        let (abs, _) = max_errors(&logits, &reference.read_f32("logits").unwrap());
        println!("{name}: logits max abs diff {abs:.3e}");
        assert!(abs <= LOGITS_MAX_ABS, "{name}: logits max abs diff {abs:.3e} > {LOGITS_MAX_ABS:e}");

        let (out, grads) = model.loss_and_grads(&batch, &targets, &ForwardOptions::eval()).unwrap();
        let loss = out.loss.item();
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
        let (a, b) = (SafetensorsReader::open(&dir).unwrap(), SafetensorsReader::open(&saved).unwrap());
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
    let (batch, _) = reference_batch(&dir);
    let f32_model = Qwen3::load(&dir).unwrap();
    let bf16_model = Qwen3::load_as(&dir, autograd::DType::BF16).unwrap();
    assert_eq!(bf16_model.params.dtype(), autograd::DType::BF16);
    assert_eq!(f32_model.logits(&batch).unwrap(), bf16_model.logits(&batch).unwrap());
}

#[test]
fn inference_tape_records_nothing_and_training_tape_records_every_op() {
    let dir = medmoe_tests::fixture_dir("qwen3_tied_a");
    let model = Qwen3::load(&dir).unwrap();
    let (batch, targets) = reference_batch(&dir);
    let tape = autograd::Tape::inference();
    let bound = model.bind(&tape);
    model.loss(&tape, &bound, &batch, &targets, &ForwardOptions::eval()).unwrap();
    assert!(tape.is_empty());
    let tape = autograd::Tape::new();
    let bound = model.bind(&tape);
    model.loss(&tape, &bound, &batch, &targets, &ForwardOptions::eval()).unwrap();
    // per layer: 2 norms + qkv + 3 slices + 2 head norms + 2 ropes + attention + o + add + gate_up
    // + fused swiglu + down + add = 17; plus embedding, final norm, loss.
    assert_eq!(tape.len(), 17 * model.config.num_hidden_layers + 3);
}

#[test]
fn adamw_training_curve_matches_pytorch() {
    // llm.c-style training check against tools/gen_qwen3_fixtures.py's train.safetensors: from the
    // stored weights, `steps` x (forward, backward, AdamW) on the reference batch must follow
    // torch.optim.AdamW(foreach=False) on transformers' model: every step's loss relative <= 1e-4,
    // every parameter after the last step norm-wise relative <= 1e-4. The steps are the product
    // training step (`actors::trainer::Trainer::step`) with a constant learning rate and a clip
    // threshold that never clips.
    use actors::trainer::Trainer;
    use kernels_cpu::adamw::AdamWConfig;

    const TRAIN_LOSS_REL: f64 = 1e-4;
    const TRAIN_PARAM_REL: f64 = 1e-4;

    let dirs: Vec<_> =
        fixtures_with_prefix("qwen3_").into_iter().filter(|d| d.join("train.safetensors").is_file()).collect();
    assert!(dirs.len() >= 2, "expected >= 2 fixtures with train.safetensors, found {}", dirs.len());
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let train = SafetensorsReader::open(&dir.join("train.safetensors")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let meta = train.metadata().expect("train.safetensors has __metadata__");
        assert_eq!(meta.get("format").map(String::as_str), Some("medmoe-fixture"), "{name}: fixture magic");
        assert_eq!(meta.get("version").map(String::as_str), Some("1"), "{name}: fixture version");
        let value = |key: &str| meta.get(key).unwrap_or_else(|| panic!("{name}: metadata has no `{key}`"));
        let hyper = |key: &str| -> f32 { value(key).parse().unwrap_or_else(|e| panic!("{name}: `{key}`: {e}")) };
        let cfg = AdamWConfig {
            lr: hyper("lr"),
            beta1: hyper("beta1"),
            beta2: hyper("beta2"),
            eps: hyper("eps"),
            weight_decay: hyper("weight_decay"),
        };
        let steps: usize = value("steps").parse().unwrap();
        let want_losses = train.read_f32("losses").unwrap();
        assert_eq!(want_losses.len(), steps, "{name}: losses length");

        let model = Qwen3::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (batch, targets) = reference_batch(&dir);
        let phase =
            medmoe_tests::plain_phase(batch.b, batch.t, steps, cfg.lr, [cfg.beta1, cfg.beta2], cfg.weight_decay);
        let mut trainer = Trainer::new(phase, model, None).unwrap();
        trainer.opt.cfg = cfg;
        let micro = [medmoe_tests::packed(&batch, &targets)];
        let mut worst_loss = 0f64;
        for (step, &want) in want_losses.iter().enumerate() {
            let (rec, _) = trainer.step(&micro, Default::default()).unwrap();
            assert!(rec.applied && rec.lr == cfg.lr, "{name}: step {step}: {rec:?}");
            let got = rec.loss;
            let rel = ((got - want) as f64).abs() / (want as f64).abs();
            println!("{name}: step {step} loss {got} vs {want} (rel {rel:.3e})");
            assert!(rel <= TRAIN_LOSS_REL, "{name}: step {step} loss rel diff {rel:.3e} > {TRAIN_LOSS_REL:e}");
            worst_loss = worst_loss.max(rel);
        }

        // Every final.* tensor is a model parameter and every parameter has one.
        let model = &trainer.model;
        let n_final = train.names().iter().filter(|n| n.starts_with("final.")).count();
        assert_eq!(n_final, model.params.entries().len(), "{name}: final.* count");
        let flat = model.params.flat();
        let mut worst = (0f64, String::new());
        for e in model.params.entries() {
            let want = train.read_f32(&format!("final.{}", e.name)).unwrap_or_else(|err| panic!("{name}: {err}"));
            let err = rel_norm_err(&flat[e.offset..e.offset + e.numel()], &want);
            assert!(err <= TRAIN_PARAM_REL, "{name}: final {} rel err {err:.3e} > {TRAIN_PARAM_REL:e}", e.name);
            if err > worst.0 {
                worst = (err, e.name.clone());
            }
        }
        println!(
            "{name}: {steps} AdamW steps ({cfg:?}): worst loss rel {worst_loss:.3e}, {} parameters, worst rel err \
             {:.3e} ({})",
            model.params.entries().len(),
            worst.0,
            worst.1
        );
    }
}
