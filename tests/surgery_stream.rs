//! Streaming surgery (memory-mapped input, tensor-by-tensor output) against the in-memory reference
//! (`plan_model` + `convert`): identical parameters and logits for F32 input, the same rounded to BF16 for BF16
//! input; bad input leaves no output directory.

use medmoe_tests::fixture_dir;
use model::importance::{magnitude, read_importance, write_importance, TaylorForm, TaylorState};
use model::moe_spec::MoeSpec;
use model::safetensors_io::{write_checkpoint_dir, FileDType, SafetensorsReader, TensorToWrite};
use model::surgery::apply::{convert, plan_model, RouterInit, SurgeryOptions};
use model::surgery::plan::{FillStrategy, SplitStrategy};
use model::surgery::stream::{surgery_streaming, ImportanceSource};
use model::{Qwen3, TokenBatch};
use std::borrow::Cow;
use std::path::Path;

fn spec(e: usize, w: usize, s: usize) -> MoeSpec {
    medmoe_tests::ste_spec(e, w, s)
}

fn batch(dir: &Path) -> TokenBatch {
    medmoe_tests::reference_batch(dir).0
}

fn round(v: &[f32], dtype: FileDType) -> Vec<f32> {
    match dtype {
        // The writer's own rounding (nearest, ties to even), decoded exactly: bf16 is f32's high half.
        FileDType::BF16 => model::safetensors_io::f32_to_bytes(v, FileDType::BF16)
            .unwrap()
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        _ => v.to_vec(),
    }
}

/// `want` (in-memory result) with every parameter rounded to `dtype`.
fn rounded(want: &Qwen3, dtype: FileDType) -> Qwen3 {
    let flat = want.params.flat();
    Qwen3::from_init(want.config.clone(), want.moe.clone(), autograd::DType::F32, |name, _| {
        let e = want.params.entry(name).unwrap();
        round(&flat[e.offset..e.offset + e.numel()], dtype)
    })
}

/// Streams `dir` through `s`/`o` and checks the output against the in-memory path.
fn check_identical(dir: &Path, s: &MoeSpec, o: &SurgeryOptions, imp: &ImportanceSource, shard: Option<u64>) {
    let dense = Qwen3::load(dir).unwrap();
    let dtype = dense.file_dtypes[0].1;
    let importance = match imp {
        ImportanceSource::Magnitude => magnitude(&dense).unwrap(),
        ImportanceSource::File(p) => {
            read_importance(p, dense.config.num_hidden_layers, dense.config.intermediate_size).unwrap()
        }
    };
    let want = rounded(&convert(&dense, &plan_model(&dense, &importance, s, o).unwrap(), s, o).unwrap(), dtype);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moe");
    let mut last = (0, 0);
    let report = surgery_streaming(dir, s, imp, o, &out, shard, |d, t| last = (d, t)).unwrap();
    assert_eq!(last.0, last.1, "progress reaches the total");
    assert_eq!(report.num_params, want.num_params());
    if shard.is_some() {
        assert!(out.join("model.safetensors.index.json").exists(), "sharded output");
    }
    let got = Qwen3::load(&out).unwrap();
    let ctx = format!("{} {o:?} {imp:?}", dir.display());
    assert_eq!(got.moe, want.moe, "{ctx}");
    assert!(got.file_dtypes.iter().all(|(_, d)| *d == dtype), "{ctx}: output dtypes {:?}", got.file_dtypes);
    assert!(got.router_bias.iter().flatten().all(|&b| b == 0.0));
    let (gf, wf) = (got.params.flat(), want.params.flat());
    for e in want.params.entries() {
        let g = got.params.entry(&e.name).unwrap();
        let (a, b) = (&gf[g.offset..g.offset + g.numel()], &wf[e.offset..e.offset + e.numel()]);
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{ctx}: `{}` differs from the in-memory surgery",
            e.name
        );
    }
    let b = batch(dir);
    let (lg, lw) = (got.logits(&b).unwrap(), want.logits(&b).unwrap());
    assert!(lg.iter().zip(&lw).all(|(x, y)| x.to_bits() == y.to_bits()), "{ctx}: logits differ");
}

fn all_options() -> Vec<SurgeryOptions> {
    let mut v = Vec::new();
    for split in [SplitStrategy::ImportanceSplit, SplitStrategy::KMeans, SplitStrategy::Random] {
        for fill in [FillStrategy::Overlap, FillStrategy::DropUpcycle] {
            for router_init in RouterInit::ALL {
                v.push(SurgeryOptions { split, fill, router_init, seed: 11 });
            }
        }
    }
    v
}

#[test]
fn f32_streaming_equals_in_memory_for_every_option() {
    // F = 96: shared 32 + 4 x 24 = 128 > 96, so every fill strategy is exercised.
    let dir = fixture_dir("qwen3_tied_a");
    for o in all_options() {
        check_identical(&dir, &spec(4, 24, 32), &o, &ImportanceSource::Magnitude, None);
    }
    // Untied, 3 layers (the random stream carries across layers), sharded output.
    let dir = fixture_dir("qwen3_untied_b");
    for o in all_options() {
        check_identical(&dir, &spec(8, 12, 16), &o, &ImportanceSource::Magnitude, Some(20_000));
    }
    // Sharded input.
    let o = SurgeryOptions {
        split: SplitStrategy::KMeans,
        fill: FillStrategy::DropUpcycle,
        router_init: RouterInit::SmallRandom,
        seed: 5,
    };
    check_identical(&fixture_dir("qwen3_mqa_sharded_c"), &spec(4, 40, 20), &o, &ImportanceSource::Magnitude, None);
}

#[test]
fn bf16_input_gives_a_bf16_checkpoint_of_the_rounded_in_memory_result() {
    let dir = fixture_dir("qwen3_bf16_d");
    for o in all_options() {
        check_identical(&dir, &spec(4, 24, 32), &o, &ImportanceSource::Magnitude, None);
    }
    // Exact partition (no fill): every expert tensor is a copy of dense bf16 weights.
    let o = SurgeryOptions {
        split: SplitStrategy::Random,
        fill: FillStrategy::Overlap,
        router_init: RouterInit::NearUniform,
        seed: 1,
    };
    check_identical(&dir, &spec(4, 16, 32), &o, &ImportanceSource::Magnitude, None);
}

fn importance_file(path: &Path, layers: usize, width: usize) {
    let mut st = TaylorState::new(layers, width, 0.5);
    for (k, v) in st.first.iter_mut().enumerate() {
        *v = ((k * 37) % 101) as f32;
    }
    st.batches = 1;
    write_importance(path, &st, TaylorForm::First, &Default::default()).unwrap();
}

#[test]
fn importance_file_drives_streaming_like_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("imp.safetensors");
    importance_file(&file, 3, 80);
    let o = SurgeryOptions {
        split: SplitStrategy::ImportanceSplit,
        fill: FillStrategy::Overlap,
        router_init: RouterInit::Centroids,
        seed: 2,
    };
    check_identical(&fixture_dir("qwen3_untied_b"), &spec(8, 12, 16), &o, &ImportanceSource::File(file), None);
}

fn no_output(parent: &Path, out: &Path) {
    assert!(!out.exists(), "{} left behind", out.display());
    let hidden: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moe");
    let o = SurgeryOptions {
        split: SplitStrategy::KMeans,
        fill: FillStrategy::Overlap,
        router_init: RouterInit::NearUniform,
        seed: 0,
    };
    let s = spec(4, 16, 32);

    // A dense checkpoint missing one FFN tensor.
    let src = fixture_dir("qwen3_tied_a");
    let broken = tmp.path().join("in").join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(src.join("config.json"), broken.join("config.json")).unwrap();
    let ck = SafetensorsReader::open(&src).unwrap();
    let gone = "model.layers.1.mlp.down_proj.weight";
    let kept: Vec<TensorToWrite> = ck
        .names()
        .into_iter()
        .filter(|n| *n != gone)
        .map(|n| {
            let info = ck.info(n).unwrap();
            TensorToWrite {
                name: n.into(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                data: Cow::Borrowed(ck.bytes(n).unwrap()),
            }
        })
        .collect();
    write_checkpoint_dir(&broken, &kept, None, None).unwrap();
    let err = surgery_streaming(&broken, &s, &ImportanceSource::Magnitude, &o, &out, None, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains(gone), "{err}");
    no_output(tmp.path(), &out);

    // An importance file of the wrong shape.
    let file = tmp.path().join("in").join("imp.safetensors");
    importance_file(&file, 2, 95);
    let err = surgery_streaming(&src, &s, &ImportanceSource::File(file), &o, &out, None, |_, _| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("importance") && msg.contains("[2, 95]") && msg.contains("[2, 96]"), "{msg}");
    no_output(tmp.path(), &out);

    // Widths that do not fit.
    let err =
        surgery_streaming(&src, &spec(4, 16, 96), &ImportanceSource::Magnitude, &o, &out, None, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("shared width"), "{err}");
    no_output(tmp.path(), &out);

    // An MoE model as input.
    let moe_dir = tmp.path().join("in").join("moe");
    surgery_streaming(&src, &s, &ImportanceSource::Magnitude, &o, &moe_dir, None, |_, _| {}).unwrap();
    let err = surgery_streaming(&moe_dir, &s, &ImportanceSource::Magnitude, &o, &out, None, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("already a MoE"), "{err}");
    no_output(tmp.path(), &out);

    // An existing output directory is never overwritten.
    let err = surgery_streaming(&src, &s, &ImportanceSource::Magnitude, &o, &moe_dir, None, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}
