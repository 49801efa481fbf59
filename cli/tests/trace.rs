//! `moe-cli trace` through the real binary on a tiny world: traces, predictor accuracy and the
//! prefetch simulation in report.json; resuming after a lost chunk gives the same report; a
//! directory traced by another model, a dense model and a damaged chunk are refused by name.
//! With `--hidden`: hidden-state files beside the chunks, the probes' rows in report.json, the
//! same report after resuming, and a directory traced without hidden states (or a lost or
//! damaged hidden file) refused by name.

use std::path::Path;
use std::process::{Command, Output};

fn moe_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe-cli")).current_dir(dir).args(["--threads", "2"]).args(args).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = moe_cli(dir, args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(dir: &Path, args: &[&str], must: &[&str]) {
    let o = moe_cli(dir, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for m in must {
        assert!(err.contains(m), "{args:?}: `{m}` not in {err}");
    }
}

#[test]
fn trace_reports_predictors_and_prefetch_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["data", "world", "--seed", "0", "--tokens", "30000", "--out", "world"]);
    ok(d, &["data", "tokenizer", "--corpus", "world", "--vocab", "600", "--out", "tok"]);
    ok(d, &["data", "pack", "--corpus", "world", "--tokenizer", "tok", "--seq-len", "64", "--out", "pack"]);
    ok(d, &["init", "--preset", "tiny-dense", "--out", "dense"]);
    ok(d, &["surgery", "--model", "dense", "--preset", "tiny-k1p1-n16", "--importance", "magnitude", "--out", "moe"]);

    let args = ["trace", "--model", "moe", "--data", "pack", "--out", "T", "--seqs", "40", "--chunk", "4"];
    let out = ok(d, &args);
    assert!(out.contains("gate_input") && out.contains("lru+predicted"), "{out}");
    let read =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(d.join("T/report.json")).unwrap()).unwrap() };
    let report = read();
    assert!(report["held_out_tokens"].as_u64().unwrap() > 0, "{report}");
    for p in ["gate_mid", "gate_input", "prev_token", "most_frequent", "trained"] {
        let top1 = report["accuracy"][p]["top1"].as_f64().unwrap();
        let top2 = report["accuracy"][p]["top2"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1) && top1 <= top2 && top2 <= 1.0, "{p}: {report}");
        assert_eq!(report["accuracy"][p]["per_layer"].as_array().unwrap().len(), 3, "layers 1..4");
    }
    // 3 cache sizes x (lru + 2 policies x 2 predictors).
    assert_eq!(report["prefetch"].as_array().unwrap().len(), 15, "{report}");
    assert_eq!(report["trace"]["expert_bytes"], 3 * 64 * 256 * 4);

    // A lost chunk is traced again: the same report.
    std::fs::remove_file(d.join("T/chunk-00003.bin")).unwrap();
    ok(d, &args);
    assert_eq!(read(), report);

    // Another model on the same directory; a dense model; a damaged chunk.
    ok(d, &["init", "--preset", "tiny-dense", "--seed", "1", "--out", "dense1"]);
    ok(d, &["surgery", "--model", "dense1", "--preset", "tiny-k1p1-n16", "--importance", "magnitude", "--out", "moe1"]);
    let other = ["trace", "--model", "moe1", "--data", "pack", "--out", "T", "--seqs", "40", "--chunk", "4"];
    fails(d, &other, &["trace.json", "field `model`", "use a new --out"]);
    fails(d, &["trace", "--model", "dense", "--data", "pack", "--out", "D"], &["dense"]);
    let chunk = d.join("T/chunk-00002.bin");
    let bytes = std::fs::read(&chunk).unwrap();
    std::fs::write(&chunk, &bytes[..bytes.len() - 16]).unwrap();
    fails(d, &args, &["chunk-00002.bin", "truncated or damaged"]);

    // Hidden states: kept beside every chunk, the probes scored and simulated.
    let hargs = ["trace", "--model", "moe", "--data", "pack", "--out", "H", "--seqs", "40", "--chunk", "4", "--hidden"];
    let out = ok(d, &hargs);
    assert!(out.contains("probe+counts"), "{out}");
    let read_h =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(d.join("H/report.json")).unwrap()).unwrap() };
    let report_h = read_h();
    for c in 0..10 {
        let n = std::fs::metadata(d.join(format!("H/hidden-{c:05}.bin"))).unwrap().len();
        let tokens = std::fs::metadata(d.join(format!("H/chunk-{c:05}.bin"))).unwrap().len();
        assert!(n > 32 && tokens > 32, "chunk {c}");
    }
    assert_eq!(report_h["trace"]["hidden"], 256);
    for p in ["probe_hidden", "probe_hidden+counts", "probe", "probe+counts"] {
        let top1 = report_h["accuracy"][p]["top1"].as_f64().unwrap();
        let top2 = report_h["accuracy"][p]["top2"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1) && top1 <= top2 && top2 <= 1.0, "{p}: {report_h}");
    }
    // The counting predictors see the same records with or without hidden states.
    assert_eq!(report_h["accuracy"]["trained"], report["accuracy"]["trained"]);
    // 3 cache sizes x (lru + 2 policies x 3 predictors).
    assert_eq!(report_h["prefetch"].as_array().unwrap().len(), 21, "{report_h}");
    // A lost chunk and its hidden states are traced again: the same report.
    std::fs::remove_file(d.join("H/chunk-00003.bin")).unwrap();
    std::fs::remove_file(d.join("H/hidden-00003.bin")).unwrap();
    ok(d, &hargs);
    assert_eq!(read_h(), report_h);
    // A directory traced without hidden states; a lost or damaged hidden-state file.
    let mut with_hidden = args.to_vec();
    with_hidden.push("--hidden");
    fails(d, &with_hidden, &["trace.json", "field `hidden", "use a new --out"]);
    std::fs::remove_file(d.join("H/hidden-00001.bin")).unwrap();
    fails(d, &hargs, &["hidden-00001.bin"]);
    std::fs::write(d.join("H/hidden-00001.bin"), b"x").unwrap();
    fails(d, &hargs, &["hidden-00001.bin", "not a medmoe hidden-state chunk"]);
}
