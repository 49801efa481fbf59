//! Dense → MoE surgery function checks on the transformers-verified dense fixtures.

use kernels_cpu::check::max_errors;
use medmoe_tests::fixture_dir;
use model::importance::magnitude;
use model::moe_spec::MoeSpec;
use model::qwen3::ForwardOptions;
use model::surgery::apply::{convert, plan_model, RouterInit, SurgeryOptions};
use model::surgery::plan::{FillStrategy, SplitStrategy};
use model::{Qwen3, TokenBatch};

fn spec(e: usize, w: usize, s: usize) -> MoeSpec {
    medmoe_tests::ste_spec(e, w, s)
}

fn batch(dir: &std::path::Path) -> (TokenBatch, Vec<i32>) {
    medmoe_tests::reference_batch(dir)
}

fn opts(split: SplitStrategy) -> SurgeryOptions {
    SurgeryOptions { split, fill: FillStrategy::Overlap, router_init: RouterInit::NearUniform, seed: 3 }
}

#[test]
fn partitioned_experts_all_active_reproduce_the_dense_logits() {
    // qwen3_tied_a: F = 96 = shared 32 + 4 experts x 16, so the experts partition the neurons.
    let dir = fixture_dir("qwen3_tied_a");
    let dense = Qwen3::load(&dir).unwrap();
    let (b, _) = batch(&dir);
    let want = dense.logits(&b).unwrap();
    let imp = magnitude(&dense).unwrap();
    let s = spec(4, 16, 32);
    for split in [SplitStrategy::ImportanceSplit, SplitStrategy::KMeans, SplitStrategy::Random] {
        let plans = plan_model(&dense, &imp, &s, &opts(split)).unwrap();
        let moe = convert(&dense, &plans, &s, &opts(split)).unwrap();
        let run = ForwardOptions { dense_equivalent: true, ..ForwardOptions::eval() };
        let got = moe.logits_with(&b, &run).unwrap();
        let (abs, _) = max_errors(&got, &want);
        println!("{split:?}: dense-equivalent MoE logits max abs diff {abs:.3e}");
        assert!(abs <= 1e-5, "{split:?}: max abs diff {abs:.3e} > 1e-5");
    }
}

#[test]
fn moe_checkpoint_round_trips_and_top1_loss_gap_is_reported() {
    let dir = fixture_dir("qwen3_untied_b");
    let dense = Qwen3::load(&dir).unwrap();
    let (b, t) = batch(&dir);
    let run = ForwardOptions::eval();
    let tape = autograd::Tape::inference();
    let dense_loss = dense.loss(&tape, &dense.bind(&tape), &b, &t, &run).unwrap().ce;
    // F = 80: shared 16 + 8 experts x 12 = 112 > 80, so each expert gets 8 own neurons + 4 filled.
    let s = spec(8, 12, 16);
    let imp = magnitude(&dense).unwrap();
    for split in [SplitStrategy::ImportanceSplit, SplitStrategy::KMeans, SplitStrategy::Random] {
        for fill in [FillStrategy::Overlap, FillStrategy::DropUpcycle] {
            let o = SurgeryOptions { fill, ..opts(split) };
            let moe = convert(&dense, &plan_model(&dense, &imp, &s, &o).unwrap(), &s, &o).unwrap();
            let out = moe.loss(&tape, &moe.bind(&tape), &b, &t, &run).unwrap();
            println!(
                "{split:?}/{fill:?}: top-1 CE at init {:.4} vs dense {dense_loss:.4} (gap {:+.4})",
                out.ce,
                out.ce - dense_loss
            );
            assert!(out.ce.is_finite() && out.router.len() == dense.config.num_hidden_layers);
        }
    }
    let o = opts(SplitStrategy::KMeans);
    let moe = convert(&dense, &plan_model(&dense, &imp, &s, &o).unwrap(), &s, &o).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moe");
    moe.save(&out, None).unwrap();
    let back = Qwen3::load(&out).unwrap();
    assert_eq!(back.moe, moe.moe);
    assert_eq!(back.logits(&b).unwrap(), moe.logits(&b).unwrap(), "MoE checkpoint round trip");
}

#[test]
fn missing_expert_tensor_is_a_clear_error() {
    let dir = fixture_dir("qwen3_tied_a");
    let dense = Qwen3::load(&dir).unwrap();
    let s = spec(4, 16, 32);
    let o = opts(SplitStrategy::Random);
    let moe = convert(&dense, &plan_model(&dense, &magnitude(&dense).unwrap(), &s, &o).unwrap(), &s, &o).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moe");
    moe.save(&out, None).unwrap();
    // Rewrite the checkpoint without expert 3 of layer 1.
    let ck = model::safetensors_io::SafetensorsReader::open(&out).unwrap();
    let gone = "model.layers.1.mlp.experts.3.up_proj.weight";
    let kept: Vec<_> = ck
        .names()
        .into_iter()
        .filter(|n| *n != gone)
        .map(|n| {
            let info = ck.info(n).unwrap();
            model::safetensors_io::TensorToWrite {
                name: n.to_string(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                data: std::borrow::Cow::Owned(ck.bytes(n).unwrap().to_vec()),
            }
        })
        .collect();
    drop(ck);
    model::safetensors_io::write_checkpoint_dir(&out, &kept, None, None).unwrap();
    let err = Qwen3::load(&out).unwrap_err().to_string();
    assert!(err.contains(gone), "{err}");
    let bad_widths = spec(4, 16, 96);
    assert!(plan_model(&dense, &magnitude(&dense).unwrap(), &bad_widths, &o)
        .unwrap_err()
        .to_string()
        .contains("shared width"));
    let short_importance = vec![vec![1.0; 10]; 2];
    assert!(plan_model(&dense, &short_importance, &s, &o).unwrap_err().to_string().contains("importance has shape"));
}
