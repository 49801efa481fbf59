//! `moe-cli export gguf`, and `.gguf` files given to `logits` / `inspect`: a good export works end to
//! end; bad input (unknown type, bad mask rules, missing tokenizer, existing output, truncated or
//! garbage files) fails with a clear message naming the problem, a non-zero exit, and no output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn moe_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe-cli")).current_dir(dir).args(args).output().unwrap()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf")
}

/// A small dense model and its MoE (tests/fixtures/gguf configs), tokenizer files in both.
fn models() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixtures();
    let dense_config = fx.join("dense_config.json");
    let ok =
        moe_cli(tmp.path(), &["init", "--preset", dense_config.to_str().unwrap(), "--seed", "3", "--out", "dense"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let preset = fx.join("moe_preset.json");
    let ok =
        moe_cli(tmp.path(), &["surgery", "--model", "dense", "--preset", preset.to_str().unwrap(), "--out", "moe"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    for d in ["dense", "moe"] {
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fx.join("tokenizer").join(f), tmp.path().join(d).join(f)).unwrap();
        }
    }
    tmp
}

/// Runs `args`, requires failure with every `needle` in stderr and `absent` not created.
fn fails(dir: &Path, args: &[&str], needles: &[&str], absent: &str) -> String {
    let out = moe_cli(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks {n:?}:\n{err}");
    }
    assert!(!dir.join(absent).exists(), "{args:?} left {absent}");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{args:?} left temporary files {leftovers:?}");
    err
}

#[test]
fn export_then_logits_and_inspect_on_the_gguf() {
    let tmp = models();
    let d = tmp.path();
    let out = moe_cli(d, &["export", "gguf", "--model", "moe", "--type", "q5_k_m", "--out", "m.gguf"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(text.contains("bits per weight") && text.contains("bytes"), "{text}");
    // 128-value rows of ffn_down_exps cannot be Q5_K / Q6_K: each fallback is printed.
    assert!(err.contains("fallback") && err.contains("blk.0.ffn_down_exps.weight") && err.contains("Q5_1"), "{err}");
    let ok = moe_cli(d, &["logits", "--model", "m.gguf", "--ids", "1,2,3", "--out", "l.safetensors"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let ok = moe_cli(d, &["inspect", "m.gguf"]);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success() && text.contains("glm4moe") && text.contains("ffn_down_exps"), "{text}");
}

#[test]
fn bad_export_arguments_fail_cleanly() {
    let tmp = models();
    let d = tmp.path();
    fails(
        d,
        &["export", "gguf", "--model", "dense", "--type", "q3_k", "--out", "x.gguf"],
        &["unknown GGUF type `q3_k`", "q5_k_m"],
        "x.gguf",
    );
    std::fs::write(d.join("nothing.json"), r#"[{"pattern": "blk.*.attn_zz.weight", "type": "q8_0"}]"#).unwrap();
    fails(
        d,
        &["export", "gguf", "--model", "dense", "--type", "f16", "--mask", "nothing.json", "--out", "x.gguf"],
        &["nothing.json", "[0].pattern", "matches no quantizable tensor"],
        "x.gguf",
    );
    std::fs::write(d.join("k.json"), r#"[{"pattern": "blk.*.ffn_down_exps.weight", "type": "q5_k"}]"#).unwrap();
    fails(
        d,
        &["export", "gguf", "--model", "moe", "--type", "bf16", "--mask", "k.json", "--out", "x.gguf"],
        &["k.json", "blk.0.ffn_down_exps.weight", "128 values", "Q5_K"],
        "x.gguf",
    );
    std::fs::write(d.join("typo.json"), r#"[{"pattern": "*", "type": "q5"}]"#).unwrap();
    fails(
        d,
        &["export", "gguf", "--model", "dense", "--type", "f16", "--mask", "typo.json", "--out", "x.gguf"],
        &["typo.json", "unknown type `q5`"],
        "x.gguf",
    );
    std::fs::remove_file(d.join("dense/tokenizer.json")).unwrap();
    fails(
        d,
        &["export", "gguf", "--model", "dense", "--type", "f16", "--out", "x.gguf"],
        &["tokenizer.json", "--no-tokenizer"],
        "x.gguf",
    );
    let ok = moe_cli(d, &["export", "gguf", "--model", "dense", "--type", "f16", "--no-tokenizer", "--out", "x.gguf"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let before = std::fs::read(d.join("x.gguf")).unwrap();
    let out = moe_cli(d, &["export", "gguf", "--model", "moe", "--type", "q8_0", "--out", "x.gguf"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read(d.join("x.gguf")).unwrap(), before, "existing --out was modified");
}

#[test]
fn truncated_and_garbage_gguf_files_fail_cleanly() {
    let tmp = models();
    let d = tmp.path();
    let ok = moe_cli(d, &["export", "gguf", "--model", "moe", "--type", "q8_0", "--no-tokenizer", "--out", "m.gguf"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bytes = std::fs::read(d.join("m.gguf")).unwrap();
    let cases: [(&str, Vec<u8>, &[&str]); 5] = [
        ("cut.gguf", bytes[..bytes.len() - 1000].to_vec(), &["cut.gguf", "truncated"]),
        ("head.gguf", bytes[..3000].to_vec(), &["head.gguf", "truncated"]),
        (
            "garbage.gguf",
            (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(),
            &["garbage.gguf", "not a GGUF file"],
        ),
        ("empty.gguf", Vec::new(), &["empty.gguf", "shorter than a GGUF header"]),
        ("count.gguf", [&bytes[..8], &u64::MAX.to_le_bytes()[..], &bytes[16..]].concat(), &["count.gguf", "n_tensors"]),
    ];
    for (name, data, needles) in cases {
        std::fs::write(d.join(name), data).unwrap();
        fails(d, &["logits", "--model", name, "--ids", "1,2", "--out", "l.safetensors"], needles, "l.safetensors");
        fails(d, &["inspect", name], needles, "l.safetensors");
    }
}
