//! The real binary through the dense → MoE pipeline on the embedded synthetic world:
//! world → tokenizer → pack → init → importance (interrupted and resumed) → surgery → logits.

use std::path::Path;
use std::process::Command;

fn moe_cli(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .current_dir(dir)
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "moe-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn importance_resumes_exactly_and_feeds_surgery() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    moe_cli(d, &["data", "world", "--seed", "1", "--tokens", "60000", "--out", "W"]);
    moe_cli(d, &["data", "tokenizer", "--corpus", "W", "--vocab", "4096", "--out", "T"]);
    moe_cli(d, &["data", "pack", "--corpus", "W", "--tokenizer", "T", "--seq-len", "64", "--out", "P"]);
    moe_cli(d, &["init", "--preset", "tiny-dense", "--seed", "2", "--out", "base"]);
    // 4 batches in one go vs 2 + 2 resumed: identical files.
    moe_cli(d, &["importance", "--model", "base", "--data", "P", "--out", "full.st", "--batch", "2", "--batches", "4"]);
    moe_cli(d, &["importance", "--model", "base", "--data", "P", "--out", "part.st", "--batch", "2", "--batches", "2"]);
    moe_cli(
        d,
        &[
            "importance",
            "--model",
            "base",
            "--data",
            "P",
            "--out",
            "part.st",
            "--batch",
            "2",
            "--batches",
            "2",
            "--resume",
        ],
    );
    let full = std::fs::read(d.join("full.st")).unwrap();
    let part = std::fs::read(d.join("part.st")).unwrap();
    assert!(full == part, "resumed importance differs from the uninterrupted run");

    moe_cli(
        d,
        &[
            "surgery",
            "--model",
            "base",
            "--preset",
            "tiny-k1p1-n16",
            "--importance",
            "full.st",
            "--split",
            "kmeans",
            "--out",
            "moe",
        ],
    );
    moe_cli(d, &["logits", "--model", "moe", "--ids", "5,6,7;8,9,10", "--out", "l.safetensors"]);
    assert!(d.join("l.safetensors").exists());

    // Bad inputs leave nothing behind: wrong-shape importance, widths that do not fit.
    let bad = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .current_dir(d)
        .args(["surgery", "--model", "moe", "--preset", "tiny-k1p1-n16", "--out", "moe2"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("already a MoE"));
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen3_tied_a");
    let bad = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .current_dir(d)
        .args(["surgery", "--model"])
        .arg(&fixture)
        .args(["--preset", "tiny-k1p1-n16", "--out", "moe3"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("preset `tiny-k1p1-n16` is for hidden 256"));
    let bad = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .current_dir(d)
        .args(["surgery", "--model", "base", "--preset", "tiny-k1p1-n16", "--importance"])
        .arg(fixture.join("reference.safetensors"))
        .args(["--out", "moe4"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("importance"), "{}", String::from_utf8_lossy(&bad.stderr));
    for name in ["moe2", "moe3", "moe4"] {
        assert!(!d.join(name).exists(), "{name} was left behind");
    }
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// `init` from a preset of a bf16 model (torch_dtype bfloat16, as configs/presets/qwen3-0.6b.json)
/// writes f32 weights and says so in config.json, so the directory loads.
#[test]
fn init_of_a_bf16_preset_writes_a_loadable_f32_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut cfg: serde_json::Value =
        serde_json::from_str(include_str!("../../configs/presets/tiny-dense.json")).unwrap();
    cfg["torch_dtype"] = "bfloat16".into();
    std::fs::write(d.join("bf16.json"), cfg.to_string()).unwrap();
    moe_cli(d, &["init", "--preset", "bf16.json", "--out", "m"]);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("m/config.json")).unwrap()).unwrap();
    assert_eq!(written["torch_dtype"], "float32");
    model::Qwen3::load(&d.join("m")).unwrap();
}
