//! The real binary on absurd sizes, non-finite or out-of-range numbers, outputs that would
//! clobber a file, and missing inputs: each exits non-zero before allocating or writing, with a
//! message naming the option, size or file (an io error names its path and cause once), and
//! leaves no output behind.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `moe-cli args` in `dir`; asserts a non-zero exit in `codes` (1: our error, 2: clap's
/// refusal of an option), no panic or abort, that stderr mentions each of `must`, and that
/// none of `absent` exists afterwards. Returns stderr.
fn fails(dir: &Path, args: &[&str], codes: &[i32], must: &[&str], absent: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .current_dir(dir)
        // The memory check sees an 8 GiB machine wherever the test runs.
        .env("MEDMOE_FAULT_MEMORY_BYTES", (8u64 << 30).to_string())
        .args(["--threads", "1"])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| codes.contains(&c)),
        "{args:?}: exit {:?} (want {codes:?}); stderr: {err}",
        out.status
    );
    assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{args:?}: {err}");
    for m in must {
        assert!(err.contains(m), "{args:?}: `{m}` not in: {err}");
    }
    for a in absent {
        assert!(!dir.join(a).exists(), "{args:?} left {a} behind");
    }
    err
}

fn succeeds(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .current_dir(dir)
        .args(["--threads", "1"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A small corpus file (lines with "text").
fn corpus(dir: &Path) -> PathBuf {
    let path = dir.join("corpus.jsonl");
    let lines: String = (0..50)
        .map(|i| {
            format!("{{\"id\":\"d{i}\",\"domain\":\"medical\",\"text\":\"patient {i} has a fever and a cough\"}}\n")
        })
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

fn model_copy(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen3_tied_a");
    let m = dir.join("model");
    std::fs::create_dir(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), m.join(f)).unwrap();
    }
    m
}

#[test]
fn sizes_beyond_memory_are_refused_with_the_bytes_they_need() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    corpus(d);
    let needs = ["needs at least", "bytes", "available"];
    let e = fails(
        d,
        &["data", "tokenizer", "--corpus", "corpus.jsonl", "--vocab", "1e12", "--out", "T"],
        &[1],
        &needs,
        &["T"],
    );
    assert!(e.contains("--vocab 1000000000000") && e.contains("64000000000000 bytes"), "{e}");
    let e = fails(d, &["bench", "step", "--batch", "1e12"], &[1], &needs, &[]);
    assert!(e.contains("--batch 1000000000000"), "{e}");
    let e = fails(d, &["bench", "gemm", "--shapes", "100000x100000x100000"], &[1], &needs, &[]);
    assert!(e.contains("gemm 100000x100000x100000") && e.contains("120000000000 bytes"), "{e}");
    let e = fails(d, &["data", "world", "--tokens", "1e12", "--out", "W"], &[1], &needs, &["W"]);
    assert!(e.contains("1000000000000 tokens"), "{e}");
    // The same world in a run config: refused before any stage, naming the file and field.
    let mut run: serde_json::Value = serde_json::from_str(include_str!("../../configs/runs/tiny.json")).unwrap();
    run["world"]["corpus"]["tokens"] = 1_000_000_000_000u64.into();
    std::fs::write(d.join("big.json"), run.to_string()).unwrap();
    let args = ["run", "phase", "p1", "--quiet", "--config", "big.json", "--run-dir", "R"];
    let e = fails(d, &args, &[1], &needs, &["R"]);
    assert!(e.contains("big.json field `world.corpus.tokens`") && e.contains("12000000000000 bytes"), "{e}");
}

#[test]
fn non_finite_and_out_of_range_numbers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let m = model_copy(d);
    let m = m.to_str().unwrap();
    fails(d, &["init", "--std", "NaN", "--out", "M"], &[2], &["--std", "not finite"], &["M"]);
    fails(d, &["init", "--std=-1", "--out", "M"], &[2], &["--std", "negative"], &["M"]);
    for decay in ["2", "1", "NaN", "-0.5"] {
        let decay = format!("--decay={decay}");
        let args = ["importance", "--model", m, "--data", "magnitude", &decay, "--out", "i.st"];
        fails(d, &args, &[2], &["--decay"], &["i.st"]);
    }
    fails(d, &["data", "world", "--tokens", "0", "--out", "W"], &[2], &["--tokens", "at least 1"], &["W"]);
    fails(d, &["bench", "step", "--batch", "0"], &[2], &["--batch", "at least 1"], &[]);
    fails(d, &["bench", "gemm", "--reps", "0"], &[2], &["--reps"], &[]);
    // A world spec file with no tokens is refused by the library too (the run pipeline reads it).
    let mut spec: serde_json::Value =
        serde_json::from_str(include_str!("../../configs/data/world-default.json")).unwrap();
    spec["corpus"]["tokens"] = 0.into();
    std::fs::write(d.join("w.json"), spec.to_string()).unwrap();
    fails(d, &["data", "world", "--config", "w.json", "--out", "W"], &[1], &["corpus.tokens", "at least 1"], &["W"]);
}

#[test]
fn a_tokenizer_is_not_trained_on_no_text() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("empty.jsonl"), "").unwrap();
    fails(
        d,
        &["data", "tokenizer", "--corpus", "empty.jsonl", "--out", "T"],
        &[1],
        &["empty.jsonl", "no text"],
        &["T"],
    );
    std::fs::write(d.join("blank.jsonl"), "{\"text\":\"  \"}\n").unwrap();
    fails(
        d,
        &["data", "tokenizer", "--corpus", "blank.jsonl", "--out", "T"],
        &[1],
        &["blank.jsonl", "no text"],
        &["T"],
    );
}

#[test]
fn outputs_never_overwrite_a_file_without_force_nor_an_input_ever() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let m = model_copy(d);
    let weights = m.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let ms = m.to_str().unwrap();
    let w = weights.to_str().unwrap();
    // logits: an existing --out needs --force; the model's own file never.
    std::fs::write(d.join("l.st"), "keep").unwrap();
    fails(
        d,
        &["logits", "--model", ms, "--ids", "1,2", "--out", "l.st"],
        &[1],
        &["l.st", "already exists", "--force"],
        &[],
    );
    assert_eq!(std::fs::read_to_string(d.join("l.st")).unwrap(), "keep");
    fails(d, &["logits", "--model", ms, "--ids", "1,2", "--out", w, "--force"], &[1], &["is an input"], &[]);
    assert!(std::fs::read(&weights).unwrap() == before, "the model was overwritten");
    succeeds(d, &["logits", "--model", ms, "--ids", "1,2", "--out", "l.st", "--force"]);
    assert_ne!(std::fs::read_to_string(d.join("l.st")).ok().as_deref(), Some("keep"));

    // import-eval: the input never, another file only with --force.
    let eval = concat!(
        r#"{"id":"q1","set":"x","domain":"medical","question":"Q?","options":{"A":"a","B":"b"},"answer":"A"}"#,
        "\n"
    );
    std::fs::write(d.join("e.jsonl"), eval).unwrap();
    let import = |out: &str, force: bool| {
        let mut a = vec!["data", "import-eval", "--format", "medmoe", "--input", "e.jsonl", "--out", out];
        if force {
            a.push("--force");
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = import("e.jsonl", true);
    fails(d, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[1], &["e.jsonl", "is an input"], &[]);
    let args = import("./e.jsonl", true);
    fails(d, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[1], &["is an input"], &[]);
    assert_eq!(std::fs::read_to_string(d.join("e.jsonl")).unwrap(), eval);
    std::fs::write(d.join("o.jsonl"), "keep").unwrap();
    let args = import("o.jsonl", false);
    fails(d, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[1], &["o.jsonl", "already exists"], &[]);
    assert_eq!(std::fs::read_to_string(d.join("o.jsonl")).unwrap(), "keep");
    let args = import("o.jsonl", true);
    succeeds(d, &args.iter().map(String::as_str).collect::<Vec<_>>());

    // importance: an existing --out needs --force (or --resume, which continues it).
    std::fs::write(d.join("i.st"), "keep").unwrap();
    fails(d, &["importance", "--model", ms, "--data", "magnitude", "--out", "i.st"], &[1], &["i.st", "--force"], &[]);
    assert_eq!(std::fs::read_to_string(d.join("i.st")).unwrap(), "keep");
    fails(d, &["importance", "--model", ms, "--data", "magnitude", "--out", w, "--force"], &[1], &["is an input"], &[]);
    assert!(std::fs::read(&weights).unwrap() == before, "the model was overwritten");
}

#[test]
fn io_errors_name_the_path_and_the_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cases: [&[&str]; 4] = [
        &["logits", "--model", "nowhere", "--ids", "1,2", "--out", "l.st"],
        &["data", "import-eval", "--format", "medqa", "--input", "missing.jsonl", "--out", "o.jsonl"],
        &["data", "tokenizer", "--corpus", "missing.jsonl", "--out", "T"],
        &["data", "stats", "gone"],
    ];
    for args in cases {
        let e = fails(d, args, &[1], &["No such file or directory"], &["l.st", "o.jsonl", "T"]);
        assert_eq!(e.matches("No such file or directory").count(), 1, "{args:?}: cause repeated: {e}");
        let name = ["nowhere", "missing.jsonl", "gone"].into_iter().find(|n| args.contains(n)).unwrap();
        assert_eq!(e.matches(name).count(), 1, "{args:?}: path repeated: {e}");
    }
}

#[test]
fn surgery_refuses_an_importance_of_zeros_or_nans() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    succeeds(d, &["init", "--preset", "tiny-dense", "--out", "base"]);
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("base/config.json")).unwrap()).unwrap();
    let (l, f) = (c["num_hidden_layers"].as_u64().unwrap() as usize, c["intermediate_size"].as_u64().unwrap() as usize);
    for (name, value, why) in [("zeros.st", 0.0f32, "all zero"), ("nan.st", f32::NAN, "must be finite")] {
        let data: Vec<u8> = std::iter::repeat_n(value.to_le_bytes(), l * f).flatten().collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![l, f], &data).unwrap();
        let bytes = safetensors::tensor::serialize([("importance", view)], &None).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
        let args = ["surgery", "--model", "base", "--preset", "tiny-k1p1-n16", "--importance", name, "--out", "moe"];
        fails(d, &args, &[1], &[name, why], &["moe"]);
    }
}
