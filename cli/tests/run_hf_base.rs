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

/// Issue 18 deliverable 4's end-to-end real-style run: a random HF Qwen3, a user corpus of
/// three JSONL sources (nested text fields, their own ids, one duplicated document) and a
/// MedQA-format eval file, named by a `data prepare` config in the run config's `corpus`,
/// through `run phase p1`. The data stage prepares the corpus (the duplicate removed), packs its
/// train split (and only it: `with_world` is off), and every phase evaluation scores the MedQA
/// items beside the world's sets.
#[test]
fn a_user_corpus_and_medqa_file_run_through_p1_on_an_hf_base() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path();
    let tok = configs_and_tokenizer(cfg);
    let hf = cfg.join("hf-base");
    write_hf_base(&hf, &tok, 7);
    set_base(cfg, hf.to_str().unwrap());

    // The micro world's documents as the user's corpus, one source per domain.
    let docs = data::world_dir::read_corpus(&cfg.join("seed-run/data/world")).unwrap();
    let corpus = cfg.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut sources = Vec::new();
    let mut written = 0usize;
    for domain in ["medical", "medical_chat", "general"] {
        let mut text = String::new();
        for d in docs.iter().filter(|d| d.domain == domain) {
            text.push_str(&serde_json::json!({ "key": format!("u-{}", d.id), "doc": { "body": d.text } }).to_string());
            text.push('\n');
            written += 1;
        }
        if domain == "medical" {
            // One exact duplicate of the first line (another id, same text).
            let first = docs.iter().find(|d| d.domain == domain).unwrap();
            text.push_str(&serde_json::json!({ "key": "dup", "doc": { "body": first.text } }).to_string());
            text.push('\n');
        }
        std::fs::write(corpus.join(format!("{domain}.jsonl")), text).unwrap();
        sources.push(serde_json::json!({
            "name": domain, "format": "jsonl", "path": format!("corpus/{domain}.jsonl"),
            "text_fields": ["doc.body"], "id_field": "key", "domain": domain, "license": "test-only",
        }));
    }
    let mut medqa = String::new();
    for i in 0..6 {
        let answer = ["A", "B", "C"][i % 3];
        medqa.push_str(
            &serde_json::json!({
                "question": format!("Question {i}: which option names the right answer for case number {i}?"),
                "options": { "A": "the first option", "B": "the second option", "C": "the third option" },
                "answer_idx": answer,
            })
            .to_string(),
        );
        medqa.push('\n');
    }
    std::fs::write(cfg.join("medqa.jsonl"), medqa).unwrap();
    let prepare = serde_json::json!({
        "sources": sources,
        "eval": [{ "name": "medqa", "format": "medqa", "path": "medqa.jsonl" }],
        "filter": { "min_words": 3, "languages": [], "lang_sample_chars": 1000 },
    });
    std::fs::write(cfg.join("prepare.json"), prepare.to_string()).unwrap();
    let path = cfg.join("run.json");
    let mut run_cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    run_cfg["corpus"] = serde_json::json!({ "prepare": cfg.join("prepare.json") });
    std::fs::write(&path, run_cfg.to_string()).unwrap();

    let run = cfg.join("R");
    let err = ok(run_micro(cfg, &run, &["phase", "p1"], &[]));
    let data_manifest = summary(&run.join("data/manifest.json"));
    let m = &data_manifest["metrics"];
    let counts = &m["corpus"]["prepared_counts"];
    // The duplicate was removed (the world's templates repeat some texts too: at least ours).
    assert!(counts["exact_duplicates"].as_u64().unwrap() >= 1, "{m}");
    for split in ["train", "val", "test"] {
        for f in std::fs::read_dir(run.join("data/prepared").join(split)).unwrap() {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            assert!(!text.contains(r#""id":"dup""#), "the duplicate was kept in {split}");
            assert!(text.contains(r#""license":"test-only""#), "source license not kept in {split}");
            assert!(text.contains(r#""id":"u-"#), "source ids not kept in {split}");
        }
    }
    let (train, val) = (
        m["corpus"]["prepared_train_documents"].as_u64().unwrap(),
        m["corpus"]["prepared_val_documents"].as_u64().unwrap(),
    );
    assert!(train > 0 && val > 0, "{m}");
    // Only the prepared documents were packed (the world's corpus is not added).
    assert_eq!((m["train_documents"].as_u64(), m["dev_documents"].as_u64()), (Some(train), Some(val)), "{m}");
    assert!(train + val <= written as u64, "{m}");
    let items = std::fs::read_to_string(run.join("data/evalsets/medqa.jsonl")).unwrap();
    assert_eq!(items.lines().count(), 6);
    // The phases scored the MedQA items beside the world's sets.
    let p1 = summary(&run.join("summary.json"));
    for set in ["medqa", "fact_recall"] {
        assert!(p1["mcq_accuracy"][set].as_f64().is_some(), "{set} not scored: {p1}\n{err}");
    }
    // Up to date on a second run; a changed eval file rebuilds the data stage.
    let err = ok(run_micro(cfg, &run, &["phase", "p1"], &[]));
    assert!(!err.contains("building"), "{err}");
    let mut more = std::fs::read_to_string(cfg.join("medqa.jsonl")).unwrap();
    more.push_str(
        &serde_json::json!({ "question": "One more question?", "options": { "A": "yes", "B": "no" }, "answer_idx": "B" })
            .to_string(),
    );
    more.push('\n');
    std::fs::write(cfg.join("medqa.jsonl"), more).unwrap();
    let err = ok(run_micro(cfg, &run, &["all", "--until", "data"], &[]));
    assert!(err.contains("stage data       building"), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("data/evalsets/medqa.jsonl")).unwrap().lines().count(), 7);
}

#[test]
fn a_corpus_config_that_does_not_parse_is_refused_before_any_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path();
    write_micro_configs(cfg);
    std::fs::write(cfg.join("prepare.json"), r#"{"sources": [{"name": "x", "format": "xml"}]}"#).unwrap();
    let path = cfg.join("run.json");
    let mut run_cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    run_cfg["corpus"] = serde_json::json!({ "prepare": cfg.join("prepare.json") });
    std::fs::write(&path, run_cfg.to_string()).unwrap();
    let run = cfg.join("R");
    fails(run_micro(cfg, &run, &["phase", "p1"], &[]), &["corpus.prepare", "prepare.json"]);
    assert!(!run.join("data").exists(), "a stage ran before the refusal");
}
