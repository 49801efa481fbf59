//! Bad-input tests at the library level: one test per broken file, each asserting the error variant and that
//! the message names the file and, where there is one, the tensor or config field.

use std::fs;
use std::path::{Path, PathBuf};

use model::config::Qwen3Config;
use model::error::ModelError;
use model::safetensors_io::{write_checkpoint_dir, FileDType, SafetensorsReader, TensorToWrite};

/// A safetensors file from a literal header and data section (header length is computed).
fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn open_err(path: &Path) -> ModelError {
    SafetensorsReader::open(path).expect_err("opening a broken checkpoint must fail")
}

fn assert_names(e: &ModelError, parts: &[&str]) {
    let s = e.to_string();
    for p in parts {
        assert!(s.contains(p), "message {s:?} does not contain {p:?}");
    }
}

const GOOD_HEADER: &str = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

#[test]
fn good_file_opens() {
    // control for the cases below: the same helper with a valid header is accepted
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "ok.safetensors", &st_bytes(GOOD_HEADER, &[0; 8]));
    let ck = SafetensorsReader::open(&p).unwrap();
    assert_eq!(ck.read_f32("w").unwrap(), vec![0.0, 0.0]);
}

#[test]
fn empty_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "empty.safetensors", b"");
    let e = open_err(&p);
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["empty.safetensors", "empty"]);
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    // shorter than the 8-byte length field
    let p = write(dir.path(), "short.safetensors", &[8, 0, 0]);
    let e = open_err(&p);
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["short.safetensors", "3 bytes"]);
    // a valid file cut inside its data section: the tensor now extends past the data
    let full = st_bytes(GOOD_HEADER, &[0; 8]);
    let p = write(dir.path(), "cut.safetensors", &full[..full.len() - 3]);
    let e = open_err(&p);
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "w"), "{e}");
    assert_names(&e, &["cut.safetensors", "`w`", "past the end"]);
}

#[test]
fn header_length_beyond_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = st_bytes(GOOD_HEADER, &[0; 8]);
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    let p = write(dir.path(), "longhdr.safetensors", &bytes);
    let e = open_err(&p);
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["longhdr.safetensors", "header length 1000"]);
    // an absurd length is caught before any allocation
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let p = write(dir.path(), "huge.safetensors", &bytes);
    let e = open_err(&p);
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["huge.safetensors", "header length"]);
}

#[test]
fn header_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "garbage.safetensors", &st_bytes("{not json!", &[]));
    let e = open_err(&p);
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["garbage.safetensors", "not a valid JSON object"]);
}

#[test]
fn header_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "list.safetensors", &st_bytes("[1, 2]  ", &[]));
    let e = open_err(&p);
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["list.safetensors", "JSON object"]);
}

#[test]
fn header_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[b'{', 0xFF, 0xFE, b'}']);
    let p = write(dir.path(), "latin.safetensors", &bytes);
    let e = open_err(&p);
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["latin.safetensors", "UTF-8"]);
}

#[test]
fn unknown_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let h = r#"{"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#;
    let p = write(dir.path(), "dt.safetensors", &st_bytes(h, &[0; 8]));
    let e = open_err(&p);
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "w"), "{e}");
    assert_names(&e, &["dt.safetensors", "`w`", "unknown dtype \"F33\""]);
}

#[test]
fn dtype_shape_vs_bytes_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    // BF16 [3] needs 6 bytes, the offsets span 8
    let h = r#"{"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}}"#;
    let p = write(dir.path(), "mismatch.safetensors", &st_bytes(h, &[0; 8]));
    let e = open_err(&p);
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "w"), "{e}");
    assert_names(&e, &["mismatch.safetensors", "`w`", "needs 6 bytes", "span 8"]);
}

#[test]
fn out_of_range_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"far":{"dtype":"F32","shape":[1],"data_offsets":[64,68]}}"#;
    let p = write(dir.path(), "range.safetensors", &st_bytes(h, &[0; 8]));
    let e = open_err(&p);
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "far"), "{e}");
    assert_names(&e, &["range.safetensors", "`far`", "[64, 68]", "past the end"]);
}

#[test]
fn reversed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let h = r#"{"r":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#;
    let p = write(dir.path(), "rev.safetensors", &st_bytes(h, &[0; 8]));
    let e = open_err(&p);
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "r"), "{e}");
    assert_names(&e, &["rev.safetensors", "`r`", "reversed"]);
}

#[test]
fn overlapping_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let p = write(dir.path(), "overlap.safetensors", &st_bytes(h, &[0; 12]));
    let e = open_err(&p);
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "b"), "{e}");
    assert_names(&e, &["overlap.safetensors", "`b`", "overlap tensor `a`"]);
}

#[test]
fn gap_between_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    let p = write(dir.path(), "gap.safetensors", &st_bytes(h, &[0; 12]));
    let e = open_err(&p);
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "b"), "{e}");
    assert_names(&e, &["gap.safetensors", "`b`", "gap", "[4, 8)"]);
}

#[test]
fn trailing_data_not_covered() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "tail.safetensors", &st_bytes(GOOD_HEADER, &[0; 12]));
    let e = open_err(&p);
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["tail.safetensors", "4 trailing bytes"]);
}

#[test]
fn duplicate_tensor_in_header() {
    let dir = tempfile::tempdir().unwrap();
    let h = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let p = write(dir.path(), "dup.safetensors", &st_bytes(h, &[0; 8]));
    let e = open_err(&p);
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "w"), "{e}");
    assert_names(&e, &["dup.safetensors", "twice"]);
}

#[test]
fn missing_file_is_io() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_err(&dir.path().join("absent.safetensors"));
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
    assert_names(&e, &["absent.safetensors"]);
}

#[test]
fn missing_tensor_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "ok.safetensors", &st_bytes(GOOD_HEADER, &[0; 8]));
    let ck = SafetensorsReader::open(&p).unwrap();
    let e = ck.read_f32("lm_head.weight").unwrap_err();
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
    assert_names(&e, &["ok.safetensors", "`lm_head.weight`"]);
}

/// A valid two-shard checkpoint in `dir` (tensors "a" and "b", one per shard).
fn two_shards(dir: &Path) -> Vec<PathBuf> {
    let t = |name: &str| TensorToWrite::from_f32(name, FileDType::F32, vec![2], &[1.0, 2.0]).unwrap();
    let files = write_checkpoint_dir(dir, &[t("a"), t("b")], None, Some(8)).unwrap();
    assert_eq!(files.len(), 3);
    SafetensorsReader::open(dir).unwrap();
    files
}

#[test]
fn index_naming_a_missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    let files = two_shards(dir.path());
    fs::remove_file(&files[1]).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["model.safetensors.index.json", "model-00002-of-00002.safetensors", "`b`", "does not exist"]);
}

#[test]
fn index_not_json() {
    let dir = tempfile::tempdir().unwrap();
    two_shards(dir.path());
    write(dir.path(), "model.safetensors.index.json", b"{\"weight_map\": ");
    let e = open_err(dir.path());
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert_names(&e, &["model.safetensors.index.json", "JSON"]);
}

#[test]
fn index_lists_tensor_the_shard_lacks() {
    let dir = tempfile::tempdir().unwrap();
    two_shards(dir.path());
    let idx = r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
        "b": "model-00002-of-00002.safetensors", "ghost": "model-00001-of-00002.safetensors"}}"#;
    write(dir.path(), "model.safetensors.index.json", idx.as_bytes());
    let e = open_err(dir.path());
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "ghost"), "{e}");
    assert_names(&e, &["model-00001-of-00002.safetensors", "`ghost`", "missing from this shard"]);
}

#[test]
fn tensor_in_two_shards() {
    let dir = tempfile::tempdir().unwrap();
    let files = two_shards(dir.path());
    // shard 2 now holds "a" as well as shard 1
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    fs::write(&files[1], st_bytes(h, &[0; 16])).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "a"), "{e}");
    assert_names(
        &e,
        &["model-00002-of-00002.safetensors", "`a`", "also present in shard `model-00001-of-00002.safetensors`"],
    );
}

#[test]
fn index_shard_path_escaping_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    two_shards(dir.path());
    let idx = r#"{"weight_map": {"a": "../model-00001-of-00002.safetensors"}}"#;
    write(dir.path(), "model.safetensors.index.json", idx.as_bytes());
    let e = open_err(dir.path());
    assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "a"), "{e}");
    assert_names(&e, &["model.safetensors.index.json", "relative path"]);
}

// ---- config.json ----

const MINIMAL: &str = r#""vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4"#;

fn config_err(dir: &Path, name: &str, text: &str) -> ModelError {
    let p = write(dir, name, text.as_bytes());
    Qwen3Config::from_file(&p).expect_err("a broken config must fail")
}

#[test]
fn config_control_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "config.json", format!("{{{MINIMAL}}}").as_bytes());
    let c = Qwen3Config::from_file(&p).unwrap();
    assert_eq!((c.vocab_size, c.num_key_value_heads, c.head_dim), (64, 4, 128));
}

#[test]
fn config_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = Qwen3Config::from_file(&dir.path().join("nope_config.json")).unwrap_err();
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
    assert_names(&e, &["nope_config.json"]);
}

#[test]
fn config_missing_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{{{}}}", MINIMAL.replace(r#""hidden_size": 16,"#, ""));
    let e = config_err(dir.path(), "nohidden.json", &text);
    assert!(matches!(&e, ModelError::ConfigField { field, .. } if field == "hidden_size"), "{e}");
    assert_names(&e, &["nohidden.json", "`hidden_size`", "missing"]);
}

#[test]
fn config_wrong_type() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{{{}}}", MINIMAL.replace(r#""vocab_size": 64"#, r#""vocab_size": "256""#));
    let e = config_err(dir.path(), "strvocab.json", &text);
    assert!(matches!(&e, ModelError::ConfigField { field, .. } if field == "vocab_size"), "{e}");
    assert_names(&e, &["strvocab.json", "`vocab_size`", "expected a positive integer, got string \"256\""]);
}

#[test]
fn config_integer_given_as_float() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{{{}}}", MINIMAL.replace(r#""vocab_size": 64"#, r#""vocab_size": 256.0"#));
    let e = config_err(dir.path(), "floatvocab.json", &text);
    assert!(matches!(&e, ModelError::ConfigField { field, .. } if field == "vocab_size"), "{e}");
    assert_names(&e, &["floatvocab.json", "`vocab_size`", "256.0"]);
}

#[test]
fn config_wrong_bool_type() {
    let dir = tempfile::tempdir().unwrap();
    let e = config_err(dir.path(), "tie.json", &format!(r#"{{{MINIMAL}, "tie_word_embeddings": "true"}}"#));
    assert!(matches!(&e, ModelError::ConfigField { field, .. } if field == "tie_word_embeddings"), "{e}");
    assert_names(&e, &["tie.json", "`tie_word_embeddings`", "expected a boolean"]);
}

#[test]
fn config_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let e = config_err(dir.path(), "broken.json", "{\"vocab_size\": 64,");
    assert!(matches!(e, ModelError::ConfigJson { .. }), "{e}");
    assert_names(&e, &["broken.json", "not valid JSON"]);
}

#[test]
fn config_empty() {
    let dir = tempfile::tempdir().unwrap();
    let e = config_err(dir.path(), "empty.json", "");
    assert!(matches!(e, ModelError::ConfigJson { .. }), "{e}");
    assert_names(&e, &["empty.json", "empty"]);
}

#[test]
fn config_top_level_not_object() {
    let dir = tempfile::tempdir().unwrap();
    let e = config_err(dir.path(), "array.json", "[64, 16]");
    assert!(matches!(e, ModelError::ConfigJson { .. }), "{e}");
    assert_names(&e, &["array.json", "expected an object"]);
}

#[test]
fn config_unsupported_rope_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(r#"{{{MINIMAL}, "rope_scaling": {{"rope_type": "yarn", "factor": 4.0}}}}"#);
    let e = config_err(dir.path(), "yarn.json", &text);
    assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
    assert_names(&e, &["yarn.json", "`rope_scaling`", "yarn"]);
}

#[test]
fn config_unsupported_attention_bias() {
    let dir = tempfile::tempdir().unwrap();
    let e = config_err(dir.path(), "bias.json", &format!(r#"{{{MINIMAL}, "attention_bias": true}}"#));
    assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
    assert_names(&e, &["bias.json", "`attention_bias`"]);
}

#[test]
fn config_unsupported_model_type() {
    let dir = tempfile::tempdir().unwrap();
    let e = config_err(dir.path(), "llama.json", &format!(r#"{{{MINIMAL}, "model_type": "llama"}}"#));
    assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
    assert_names(&e, &["llama.json", "`model_type`", "llama"]);
}
