//! `moe-cli upcycle` through the real binary: with `--drop 0` the upcycled MoE (with and without
//! a shared copy) gives the dense model's logits; Drop-Upcycling is recorded in upcycle.json;
//! bad options and a MoE input are refused with no output left behind. `export expert` of the
//! upcycled model gives the dense logits back; a missing expert and a dense input are refused.

use std::path::Path;
use std::process::{Command, Output};

fn moe_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe-cli")).current_dir(dir).args(["--threads", "2"]).args(args).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) {
    let o = moe_cli(dir, args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn logits(dir: &Path, model: &str) -> Vec<f32> {
    let out = format!("{model}.logits.safetensors");
    ok(dir, &["logits", "--model", model, "--ids", "5,17,300,2,9,41,1000,7", "--out", &out]);
    model::safetensors_io::SafetensorsReader::open(&dir.join(out)).unwrap().read_f32("logits").unwrap()
}

#[test]
fn upcycled_models_reproduce_the_dense_logits_and_bad_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init", "--preset", "tiny-dense", "--std", "0.1", "--out", "dense"]);
    let want = logits(d, "dense");
    for (shared, out) in [("none", "up-none"), ("copy", "up-copy")] {
        ok(d, &["upcycle", "--model", "dense", "--experts", "4", "--shared", shared, "--seed", "3", "--out", out]);
        let got = logits(d, out);
        let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-5, "--shared {shared}: max abs logit diff {diff}");
    }
    ok(d, &["upcycle", "--model", "dense", "--experts", "4", "--drop", "0.25", "--seed", "5", "--out", "up-drop"]);
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("up-drop/upcycle.json")).unwrap()).unwrap();
    assert_eq!(rec["options"]["seed"], 5);
    assert_eq!(rec["dropped_per_expert"], 192, "0.25 x 768 neurons");
    assert_eq!(rec["dropped"][0][0].as_array().unwrap().len(), 192);
    assert_ne!(logits(d, "up-drop"), want, "dropped neurons change the function");

    for (args, must) in [
        (vec!["--drop", "1.5", "--out", "x"], "--drop 1.5"),
        (vec!["--drop", "NaN", "--out", "x"], "--drop"),
        (vec!["--out", "up-none"], "already exists"),
    ] {
        let mut all = vec!["upcycle", "--model", "dense", "--experts", "4"];
        all.extend(args);
        let o = moe_cli(d, &all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(must) && !err.contains("panicked"), "{all:?}: {err}");
        assert!(!d.join("x").exists());
    }
    // `export expert`: with a shared copy and drop 0, shared + any expert is the dense FFN again.
    ok(d, &["export", "expert", "--model", "up-copy", "--expert", "3", "--out", "expert3"]);
    let got = logits(d, "expert3");
    let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff <= 1e-5, "export expert: max abs logit diff {diff}");
    for (model, expert, must) in [("up-copy", "4", "--expert 4"), ("dense", "0", "dense model")] {
        let o = moe_cli(d, &["export", "expert", "--model", model, "--expert", expert, "--out", "x"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(must) && !err.contains("panicked"), "{err}");
        assert!(!d.join("x").exists());
    }
    let o = moe_cli(d, &["upcycle", "--model", "up-none", "--experts", "2", "--out", "x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("already MoE"), "{err}");
    assert!(!d.join("x").exists());
}
