//! Issue 18, deliverable 1 (part): an HF Qwen3 directory as the run's base. `base_model` names
//! the directory; the data stage packs the world with the directory's own tokenizer, the base
//! stage imports the checkpoint (no training) and evaluates it, and importance -> surgery -> p0
//! (distilled from it) -> p1 run on it. The directory here is a random-init `tiny-dense` Qwen3
//! saved in HF layout with a tokenizer trained on the micro world; bad directories are refused
//! before any stage runs, naming the file and the field.

mod common;

use common::{run_micro, write_micro_configs};
use model::Qwen3;
use std::path::Path;
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "moe-cli failed: {}", stderr(&o));
    stderr(&o)
}

fn fails(o: Output, must_mention: &[&str]) {
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for m in must_mention {
        assert!(err.contains(m), "`{m}` not in: {err}");
    }
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A random `tiny-dense` Qwen3 in HF layout at `dir`, with the tokenizer files of `tokenizer`.
fn write_hf_base(dir: &Path, tokenizer: &Path, seed: u64) {
    let config = model::presets::embedded("tiny-dense").unwrap().unwrap();
    let m = Qwen3::from_init(config, None, autograd::DType::F32, model::init::qwen3_init(seed, 0.02));
    let _ = std::fs::remove_dir_all(dir);
    m.save(dir, None).unwrap();
    model::tokenizer_files::copy_tokenizer_files(tokenizer, dir).unwrap();
}

fn set_base(cfg: &Path, base: &str) {
    let path = cfg.join("run.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["base_model"] = base.into();
    std::fs::write(&path, v.to_string()).unwrap();
}

fn summary(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The micro configs in `cfg` and a tokenizer of the micro world (from a run's data stage);
/// returns the tokenizer directory.
fn configs_and_tokenizer(cfg: &Path) -> std::path::PathBuf {
    write_micro_configs(cfg);
    let seed_run = cfg.join("seed-run");
    ok(run_micro(cfg, &seed_run, &["all", "--until", "data"], &[]));
    seed_run.join("data/tokenizer")
}

#[test]
fn an_hf_directory_base_is_imported_and_trained_on_through_p1() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path();
    let tok = configs_and_tokenizer(cfg);
    let hf = cfg.join("hf-base");
    write_hf_base(&hf, &tok, 7);
    set_base(cfg, hf.to_str().unwrap());

    let run = cfg.join("R");
    let err = ok(run_micro(cfg, &run, &["phase", "p1"], &[]));
    // The checkpoint and tokenizer were taken as they are.
    assert_eq!(bytes(&run.join("base/model/model.safetensors")), bytes(&hf.join("model.safetensors")));
    assert_eq!(bytes(&run.join("data/tokenizer/tokenizer.json")), bytes(&hf.join("tokenizer.json")));
    let base = summary(&run.join("base/summary.json"));
    assert_eq!(base["steps"], 0, "{base}");
    assert!(base["dev_ppl"]["medical"].as_f64().unwrap() > 1.0, "the imported base was evaluated: {base}");
    let p1 = summary(&run.join("summary.json"));
    assert_eq!(p1["phase"], "p1", "{p1}");
    assert!(p1["steps"].as_u64().unwrap() > 0, "{p1}");
    assert!(run.join("p1/model/model.safetensors").is_file(), "{err}");

    // Nothing changed: everything up to date.
    let err = ok(run_micro(cfg, &run, &["phase", "p1"], &[]));
    assert!(!err.contains("building"), "{err}");

    // Other weights in the directory: the base and every stage after it rebuild, the data stays.
    write_hf_base(&hf, &tok, 8);
    let err = ok(run_micro(cfg, &run, &["phase", "p1"], &[]));
    let line =
        |stage: &str| err.lines().find(|l| l.starts_with(&format!("stage {stage:<10} building"))).map(str::to_string);
    assert!(line("data").is_none(), "{err}");
    assert!(line("base").is_some_and(|l| l.contains("files.model.safetensors")), "{err}");
    for stage in ["importance", "moe-init", "p0", "p1"] {
        assert!(line(stage).is_some(), "{stage} not rebuilt: {err}");
    }
    assert_eq!(bytes(&run.join("base/model/model.safetensors")), bytes(&hf.join("model.safetensors")));
}

#[test]
fn bad_hf_base_directories_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path();
    let tok = configs_and_tokenizer(cfg);
    let hf = cfg.join("hf-base");
    let run = cfg.join("R");
    let check = |must: &[&str]| {
        set_base(cfg, hf.to_str().unwrap());
        fails(run_micro(cfg, &run, &["phase", "p1"], &[]), must);
        assert!(!run.join("data").exists(), "a stage ran before the refusal");
    };

    set_base(cfg, cfg.join("nowhere/model").to_str().unwrap());
    fails(run_micro(cfg, &run, &["phase", "p1"], &[]), &["base_model", "is not a directory"]);

    write_hf_base(&hf, &tok, 7);
    std::fs::remove_file(hf.join("tokenizer.json")).unwrap();
    check(&["base_model", "tokenizer.json is missing"]);

    write_hf_base(&hf, &tok, 7);
    std::fs::remove_file(hf.join("model.safetensors")).unwrap();
    check(&["base_model", "no model.safetensors"]);

    // A tokenizer with more tokens (600) than the embedding has rows.
    write_hf_base(&hf, &tok, 7);
    let path = hf.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c["vocab_size"] = 500.into();
    std::fs::write(&path, c.to_string()).unwrap();
    check(&["base_model", "has 600 tokens", "vocab_size 500"]);

    // A MoE checkpoint is not a base.
    write_hf_base(&hf, &tok, 7);
    let (moe_cfg, _) = model::presets::embedded_moe("tiny-k1p1-n16").unwrap();
    std::fs::write(&path, moe_cfg.to_json_string()).unwrap();
    check(&["base_model", "describes a MoE"]);
}
