//! `moe-cli experiment conversion-ablation | specialization | data-scaling` through the binary
//! on a micro run (world of 60k tokens, vocab 600, rows of 64 tokens, a few steps per phase),
//! each with a micro experiment config: the variants are built from the main run's stages, their
//! settings reach the stages that depend on them, and the tables hold what the runs measured.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const PHASES: [&str; 3] = ["base", "p0", "p1"];

/// run.json and the phase files of the micro run: 4 rows of 64 tokens a step; base 8 steps, p0
/// and p1 3 each.
fn write_configs(dir: &Path) {
    let mut run: Value = serde_json::from_str(include_str!("../../configs/runs/tiny.json")).unwrap();
    run["world"]["corpus"]["tokens"] = 60_000.into();
    run["world"]["eval"] = serde_json::json!({ "fact_recall": 16, "two_hop": 8, "general": 8 });
    run["vocab"] = 600.into();
    run["seq_len"] = 64.into();
    run["dev_every"] = 10.into();
    run["importance_batches"] = 2.into();
    std::fs::write(dir.join("run.json"), run.to_string()).unwrap();
    for (phase, text) in [
        ("base", include_str!("../../configs/phases/base.json")),
        ("p0", include_str!("../../configs/phases/p0.json")),
        ("p1", include_str!("../../configs/phases/p1.json")),
    ] {
        let mut p: Value = serde_json::from_str(text).unwrap();
        let tiny = p["presets"]["tiny"].as_object_mut().unwrap();
        let steps = if phase == "base" { 8 } else { 3 };
        tiny.insert("tokens".into(), (4 * 64 * steps).into());
        tiny.insert("tokens_per_step".into(), (4 * 64).into());
        tiny.insert("micro_batch".into(), 4.into());
        tiny.insert("seq_len".into(), 64.into());
        tiny.insert("checkpoint_every".into(), 4.into());
        tiny.insert(
            "eval".into(),
            serde_json::json!({ "every": 0, "dev_seqs": 2, "mcq_items": 4, "final_mcq_items": 4, "final_dev_seqs": 2 }),
        );
        std::fs::write(dir.join(format!("{phase}.json")), p.to_string()).unwrap();
    }
}

fn experiment(cfg: &Path, run_dir: &Path, which: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-cli"));
    c.args(["--threads", "2", "experiment"]).arg(which).args(["--quiet", "--run-dir"]).arg(run_dir);
    c.arg("--config").arg(cfg.join("run.json"));
    for phase in PHASES {
        c.arg("--phase-config").arg(format!("{phase}={}", cfg.join(format!("{phase}.json")).display()));
    }
    c.output().unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "moe-cli failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(path: &Path, v: Value) -> &Path {
    std::fs::write(path, v.to_string()).unwrap();
    path
}

#[test]
fn conversion_ablation_specialization_and_data_scaling_run_on_a_micro_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_configs(tmp.path());
    let run = tmp.path().join("run");
    let eval =
        serde_json::json!({ "every": 0, "dev_seqs": 1, "mcq_items": 2, "final_mcq_items": 2, "final_dev_seqs": 1 });

    // A bad variant is refused before anything trains.
    let bad = serde_json::json!({
        "experiment": "conversion-ablation", "p0_steps": 2, "ppl_domains": ["medical"],
        "variants": [{ "split": "kmeans", "fill": "overlap", "router_init": "zeros" }],
    });
    let o = experiment(tmp.path(), &run, write(&tmp.path().join("bad.json"), bad));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("variant `kmeans.overlap.zeros`") && err.contains("router_init"), "{err}");
    assert!(!run.join("base").exists(), "nothing trains before every variant is checked");

    // Conversion ablation: two conversions, p0 of 2 steps each.
    let conv = serde_json::json!({
        "experiment": "conversion-ablation", "p0_steps": 2, "p0_eval": eval, "max_items": 6,
        "ppl_domains": ["medical", "general"],
        "variants": [
            { "split": "importance-split", "fill": "overlap", "router_init": "centroids" },
            { "split": "kmeans", "fill": "drop-upcycle", "router_init": "random" },
        ],
    });
    let out = ok(&experiment(tmp.path(), &run, write(&tmp.path().join("conv.json"), conv)));
    let dir = run.join("experiments/conversion-ablation");
    let r = json(&dir.join("result.json"));
    let names: Vec<&str> = r["rows"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["importance.overlap.centroids", "kmeans.drop.random"], "{r}");
    for (name, split, fill) in [
        ("importance.overlap.centroids", "importance-split", "overlap"),
        ("kmeans.drop.random", "kmeans", "drop-upcycle"),
    ] {
        let v = dir.join("variants").join(name);
        let key = &json(&v.join("moe-init/manifest.json"))["key"];
        assert_eq!((key["split"].as_str(), key["fill"].as_str()), (Some(split), Some(fill)), "{name}: {key}");
        assert_eq!(json(&v.join("p0/summary.json"))["steps"], 2, "{name}");
        // The shared stages are the main run's, not retrained.
        assert_eq!(
            std::fs::read(v.join("base/manifest.json")).unwrap(),
            std::fs::read(run.join("base/manifest.json")).unwrap()
        );
    }
    let init = |n: &str| std::fs::read(dir.join("variants").join(n).join("moe-init/model/model.safetensors")).unwrap();
    assert_ne!(init("importance.overlap.centroids"), init("kmeans.drop.random"), "the conversions differ");
    let table = std::fs::read_to_string(dir.join("result.md")).unwrap();
    assert!(table.lines().nth(2).unwrap().starts_with("| teacher (dense) |"), "{table}");
    assert!(out.contains("| kmeans.drop.random |") && table.contains("p0 (2 steps, 512 tokens)"), "{table}");
    let eval_models = json(&dir.join("eval/summary.json"))["models"].as_array().unwrap().len();
    assert_eq!(eval_models, 5, "the teacher and each variant at init and after p0");

    // Specialization of the MoE at init and after p1.
    let spec = serde_json::json!({ "experiment": "specialization", "models": ["moe-init", "p1"], "seqs_per_domain": 4, "shuffles": 2 });
    ok(&experiment(tmp.path(), &run, write(&tmp.path().join("spec.json"), spec)));
    let dir = run.join("experiments/specialization");
    let r = json(&dir.join("result.json"));
    for m in ["moe-init", "p1"] {
        let layers = r[m]["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 4, "{m}: the tiny MoE has 4 layers");
        for l in layers {
            let n = l["normalised"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&n), "{m}: {l}");
            for row in l["share"].as_array().unwrap() {
                let s: f64 = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).sum();
                assert!((s - 1.0).abs() < 1e-9, "{m}: a domain's shares sum to {s}");
            }
        }
        let png = std::fs::read(dir.join(format!("{m}-routing.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{m}: not a PNG");
    }

    // Data scaling: p1 at 1x and 2x of 2 steps, the fit evaluated at 4x.
    let scal = serde_json::json!({
        "experiment": "data-scaling", "base_steps": 2, "multiples": [2, 1], "extrapolate": [4], "p1_eval": eval,
        "max_items": 6, "ppl_domains": ["medical"],
    });
    ok(&experiment(tmp.path(), &run, write(&tmp.path().join("scal.json"), scal)));
    let dir = run.join("experiments/data-scaling");
    let r = json(&dir.join("result.json"));
    let tokens: Vec<u64> = r["rows"].as_array().unwrap().iter().map(|x| x["tokens"].as_u64().unwrap()).collect();
    // Trained tokens (padding left out) of 2 and 4 steps of 4 x 64.
    assert!(tokens.len() == 2 && tokens[0] > 400 && tokens[0] <= 512 && tokens[1] > tokens[0], "{r}");
    for (k, steps) in [(1, 2), (2, 4)] {
        assert_eq!(json(&dir.join(format!("runs/x{k}/p1/summary.json")))["steps"], steps, "x{k}");
    }
    let fit = &r["fits"]["medical"]["fit"];
    assert!(fit["b"].as_f64().unwrap().is_finite() && fit["a"].as_f64().unwrap() > 0.0, "{r}");
    let table = std::fs::read_to_string(dir.join("result.md")).unwrap();
    let at4 = format!("4x ({} tokens)", 4 * tokens[0]);
    assert!(table.contains("**extrapolated**") && table.contains(&at4), "{at4}: {table}");
}
