//! The real binary on broken model directories: each case exits non-zero with a clear message
//! naming the file and the tensor or field, never panics, and leaves no output file.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy of the `qwen3_tied_a` fixture (single F32 model.safetensors) in a temp dir.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen3_tied_a");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    (tmp, dir)
}

/// Splits a safetensors file into its JSON header and data section.
fn split(path: &Path) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn join(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Rewrites one tensor's header entry of model.safetensors.
fn edit_tensor(dir: &Path, name: &str, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("model.safetensors");
    let (mut header, data) = split(&path);
    f(header.get_mut(name).unwrap());
    std::fs::write(&path, join(&header, &data)).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut c: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
}

/// Runs `moe-cli logits` on `dir` and checks the failure contract; returns stderr.
fn expect_clean_failure(dir: &Path, must_mention: &[&str]) -> String {
    let out_file = dir.parent().unwrap().join("logits.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .args(["--threads", "1", "logits", "--model"])
        .arg(dir)
        .args(["--ids", "1,2,3;4,5,6", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "exit code (a panic gives 101); stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for m in must_mention {
        assert!(stderr.contains(m), "stderr does not mention {m:?}: {stderr}");
    }
    assert!(!out_file.exists(), "an output file was left behind");
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.parent().unwrap()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "stray files: {leftovers:?}");
    stderr
}

#[test]
fn control_a_good_copy_succeeds() {
    let (_tmp, dir) = model_copy();
    let out_file = dir.parent().unwrap().join("logits.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .args(["logits", "--model"])
        .arg(&dir)
        .args(["--ids", "1,2,3;4,5,6", "--out"])
        .arg(&out_file)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(out_file.exists());
}

#[test]
fn truncated_safetensors() {
    let (_tmp, dir) = model_copy();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    expect_clean_failure(&dir, &["model.safetensors"]);
}

#[test]
fn header_length_beyond_the_file() {
    let (_tmp, dir) = model_copy();
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let too_long = bytes.len() as u64 * 2;
    bytes[..8].copy_from_slice(&too_long.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    expect_clean_failure(&dir, &["model.safetensors", "header"]);
}

#[test]
fn out_of_range_offsets() {
    let (_tmp, dir) = model_copy();
    edit_tensor(&dir, "model.norm.weight", |t| t["data_offsets"] = serde_json::json!([0, 1u64 << 40]));
    expect_clean_failure(&dir, &["model.safetensors", "model.norm.weight"]);
}

#[test]
fn overlapping_offsets() {
    let (_tmp, dir) = model_copy();
    let path = dir.join("model.safetensors");
    let (header, _) = split(&path);
    let other = header["model.layers.0.input_layernorm.weight"]["data_offsets"].clone();
    edit_tensor(&dir, "model.layers.1.input_layernorm.weight", |t| t["data_offsets"] = other);
    expect_clean_failure(&dir, &["model.safetensors", "input_layernorm.weight"]);
}

#[test]
fn header_that_is_not_json() {
    let (_tmp, dir) = model_copy();
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'#';
    std::fs::write(&path, &bytes).unwrap();
    expect_clean_failure(&dir, &["model.safetensors", "JSON"]);
}

#[test]
fn empty_safetensors_file() {
    let (_tmp, dir) = model_copy();
    std::fs::write(dir.join("model.safetensors"), b"").unwrap();
    expect_clean_failure(&dir, &["model.safetensors", "empty"]);
}

#[test]
fn dtype_that_disagrees_with_config() {
    let (_tmp, dir) = model_copy();
    // Same bytes, read as half as many elements of twice the size: consistent file, wrong for config.json.
    edit_tensor(&dir, "model.norm.weight", |t| {
        t["dtype"] = serde_json::json!("F64");
        let n = t["shape"][0].as_u64().unwrap();
        t["shape"] = serde_json::json!([n / 2]);
    });
    expect_clean_failure(&dir, &["model.safetensors", "model.norm.weight"]);
}

#[test]
fn bf16_tensor_where_config_says_float32() {
    let (_tmp, dir) = model_copy();
    edit_tensor(&dir, "model.norm.weight", |t| {
        t["dtype"] = serde_json::json!("BF16");
        let n = t["shape"][0].as_u64().unwrap();
        t["shape"] = serde_json::json!([n * 2]);
    });
    expect_clean_failure(&dir, &["model.safetensors", "model.norm.weight"]);
}

#[test]
fn shape_that_disagrees_with_config() {
    let (_tmp, dir) = model_copy();
    edit_config(&dir, |c| {
        c.insert("intermediate_size".into(), serde_json::json!(97));
    });
    expect_clean_failure(&dir, &["model.safetensors", "mlp.gate_proj.weight", "config.json"]);
}

#[test]
fn config_missing_a_field() {
    let (_tmp, dir) = model_copy();
    edit_config(&dir, |c| {
        c.remove("hidden_size");
    });
    expect_clean_failure(&dir, &["config.json", "hidden_size"]);
}

#[test]
fn config_field_with_wrong_type() {
    let (_tmp, dir) = model_copy();
    edit_config(&dir, |c| {
        c.insert("num_hidden_layers".into(), serde_json::json!("2"));
    });
    expect_clean_failure(&dir, &["config.json", "num_hidden_layers"]);
}

#[test]
fn config_that_is_not_json() {
    let (_tmp, dir) = model_copy();
    std::fs::write(dir.join("config.json"), b"{ this is not json").unwrap();
    expect_clean_failure(&dir, &["config.json", "JSON"]);
}

#[test]
fn empty_config_file() {
    let (_tmp, dir) = model_copy();
    std::fs::write(dir.join("config.json"), b"").unwrap();
    expect_clean_failure(&dir, &["config.json"]);
}

#[test]
fn token_id_outside_the_vocabulary() {
    let (_tmp, dir) = model_copy();
    let out_file = dir.parent().unwrap().join("logits.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .args(["logits", "--model"])
        .arg(&dir)
        .args(["--ids", "1,99999", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("99999") && stderr.contains("vocabulary"), "{stderr}");
    assert!(!out_file.exists());
}
