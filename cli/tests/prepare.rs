//! `moe-cli data prepare` through the real binary: bad records are reported per file (never a
//! silently smaller corpus); a wrong Parquet schema, an eval file inside the corpus and a bad
//! config exit non-zero with a message naming the file and the field, without a panic and
//! without any output.

use data::prepare::sources::parquet_write::{write_parquet, ColumnData};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

fn moe_cli(args: &[&str], config: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .args(["--threads", "1", "data", "prepare", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

const DOC: &str = "The patient was admitted with shortness of breath and a productive cough. Chest \
                   radiography showed a right lower lobe consolidation consistent with pneumonia.";
const DOC2: &str = "Thyroid function tests were ordered to exclude an endocrine cause of fatigue, and the \
                    neurologist found no focal deficit; the headache resolved with rest.";
const QUESTION: &str = "A 45-year-old man presents with crushing chest pain radiating to the left arm. What is \
                        the most likely diagnosis?";

fn write_config(dir: &Path, sources: serde_json::Value, eval: serde_json::Value) -> std::path::PathBuf {
    let p = dir.join("prepare.json");
    std::fs::write(
        &p,
        serde_json::to_vec(&json!({"sources": sources, "eval": eval, "max_bad_fraction": 0.6})).unwrap(),
    )
    .unwrap();
    p
}

fn jsonl_source() -> serde_json::Value {
    json!([{"name": "notes", "format": "jsonl", "path": "notes.jsonl", "domain": "medical", "license": "CC-BY-4.0"}])
}

fn expect_failure(out: &Output, out_dir: &Path, must: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for m in must {
        assert!(stderr.contains(m), "`{m}` missing from: {stderr}");
    }
    assert!(!out_dir.exists(), "no output");
    let work = out_dir.with_file_name(format!(".{}.prepare-work", out_dir.file_name().unwrap().to_string_lossy()));
    assert!(!work.exists(), "no work directory");
}

#[test]
fn invalid_utf8_lines_and_missing_text_are_counted_and_reported_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut notes = format!("{}\n{}\n", json!({ "text": DOC }), json!({ "text": DOC2 })).into_bytes();
    notes.extend(b"{\"text\": \"caf\xe9\"}\n");
    notes.extend(format!("{}\n", json!({"body": "no text field"})).into_bytes());
    std::fs::write(tmp.path().join("notes.jsonl"), notes).unwrap();
    let config = write_config(tmp.path(), jsonl_source(), json!([]));
    let out_dir = tmp.path().join("out");
    let out = moe_cli(&["--json"], &config, &out_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("notes.jsonl: 2 of 4 records skipped (1 invalid UTF-8, 0 invalid JSON, 1 without text)"),
        "{stdout}"
    );
    assert!(stdout.contains("line 3: not valid UTF-8") && stdout.contains("line 4: no text in `text`"), "{stdout}");
    let json_line: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!((json_line["records"].as_u64(), json_line["kept"].as_u64()), (Some(4), Some(2)));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"][0]["invalid_utf8"], 1);
    assert_eq!(manifest["files"][0]["missing_text"], 1);
    assert_eq!(manifest["counts"]["bad_records"], 2);
}

#[test]
fn a_parquet_file_with_the_wrong_schema_fails_naming_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(
        &tmp.path().join("abstracts.parquet"),
        &[
            ("abstract", ColumnData::Strings(vec![Some(DOC.as_bytes().to_vec())])),
            ("pmid", ColumnData::Ints(vec![Some(1)])),
        ],
        8,
    )
    .unwrap();
    let sources = json!([{"name": "pubmed", "format": "parquet", "path": "abstracts.parquet", "text_fields": ["abstract"],
                          "url_field": "pmid", "domain": "medical", "license": "CC0-1.0"}]);
    let config = write_config(tmp.path(), sources, json!([]));
    let out_dir = tmp.path().join("out");
    expect_failure(&moe_cli(&[], &config, &out_dir), &out_dir, &["abstracts.parquet", "column `pmid` is INT64"]);
}

#[test]
fn an_eval_file_that_fully_overlaps_the_corpus_fails_with_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let item = json!({"question": QUESTION, "options": {"A": "Myocardial infarction", "B": "Gout"}, "answer_idx": "A"});
    std::fs::write(tmp.path().join("medqa.jsonl"), format!("{item}\n")).unwrap();
    let notes = [json!({ "text": DOC }), json!({ "text": format!("Quiz: {QUESTION} Myocardial infarction.") })];
    std::fs::write(tmp.path().join("notes.jsonl"), notes.iter().map(|n| format!("{n}\n")).collect::<String>()).unwrap();
    let config =
        write_config(tmp.path(), jsonl_source(), json!([{"name": "medqa", "format": "medqa", "path": "medqa.jsonl"}]));
    let out_dir = tmp.path().join("out");
    expect_failure(
        &moe_cli(&[], &config, &out_dir),
        &out_dir,
        &["medqa.jsonl", "every one of its 1 items", "1 documents matching them were removed"],
    );
}

#[test]
fn a_bad_config_names_the_file_and_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("prepare.json");
    std::fs::write(&p, serde_json::to_vec(&json!({"sources": jsonl_source(), "dedupe": {}})).unwrap()).unwrap();
    let out_dir = tmp.path().join("out");
    expect_failure(&moe_cli(&[], &p, &out_dir), &out_dir, &["prepare.json", "dedupe"]);
    std::fs::write(
        &p,
        serde_json::to_vec(&json!({"sources": jsonl_source(), "dedup": {"minhash": {"bands": 0}}})).unwrap(),
    )
    .unwrap();
    expect_failure(&moe_cli(&[], &p, &out_dir), &out_dir, &["prepare.json", "dedup.minhash", "bands 0"]);
    std::fs::write(&p, serde_json::to_vec(&json!({"sources": jsonl_source()})).unwrap()).unwrap();
    expect_failure(&moe_cli(&[], &p, &out_dir), &out_dir, &["notes.jsonl"]);
}
