//! `moe-cli run all --until eval` on a micro run (world of 60k tokens, vocab 600, a few steps per
//! phase): the small dense reference trained on the micro-batches of base + p0 + p1, the
//! same-mask GGUF PTQ of the MoE, the teacher and the reference, and the six models scored on the
//! same items (issue 16 item 3); p2 / p3 are not built for it; a second run is a no-op.

use model::gguf::GgufFile;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const PHASES: [&str; 5] = ["base", "p0", "p1", "baseline-small", "teacher-continued"];

/// run.json and the phase files of the micro run: 4 rows of 64 tokens a step; base 8 steps, p0 and
/// p1 3 each, so baseline-small trains 14.
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
        ("baseline-small", include_str!("../../configs/phases/baseline-small.json")),
        ("teacher-continued", include_str!("../../configs/phases/teacher-continued.json")),
    ] {
        let mut p: Value = serde_json::from_str(text).unwrap();
        let own_budget = p.get("same_tokens_as").is_none();
        let tiny = p["presets"]["tiny"].as_object_mut().unwrap();
        if own_budget {
            let steps = if phase == "base" { 8 } else { 3 };
            tiny.insert("tokens".into(), (4 * 64 * steps).into());
        }
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

fn run_until(cfg: &Path, run_dir: &Path, until: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-cli"));
    c.args(["--threads", "2", "run", "all", "--until", until, "--quiet", "--run-dir"]).arg(run_dir);
    c.arg("--config").arg(cfg.join("run.json"));
    for phase in PHASES {
        c.arg("--phase-config").arg(format!("{phase}={}", cfg.join(format!("{phase}.json")).display()));
    }
    c.output().unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ty(file: &GgufFile, name: &str) -> &'static str {
    file.tensor(name).unwrap_or_else(|| panic!("no tensor {name}")).ty.name()
}

#[test]
fn run_until_eval_trains_the_small_reference_on_the_same_tokens_and_compares_six_models() {
    let tmp = tempfile::tempdir().unwrap();
    write_configs(tmp.path());
    let run = tmp.path().join("run");
    let o = run_until(tmp.path(), &run, "eval");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "moe-cli failed: {err}");

    // The reference saw exactly the micro-batches of base + p0 + p1: 8 + 3 + 3 of 4 x 64 tokens.
    let small = json(&run.join("baseline-small/summary.json"));
    assert_eq!(small["steps"], 14, "{small}");
    assert_eq!(
        (small["data"]["micro_batches_base"].as_f64(), small["data"]["micro_batches_p1"].as_f64()),
        (Some(8.0), Some(3.0))
    );
    let tokens = |s: &str| json(&run.join(format!("{s}/summary.json")))["tokens"].as_u64().unwrap();
    assert_eq!(tokens("baseline-small"), tokens("base") + tokens("p0") + tokens("p1"));
    let config = std::fs::read_to_string(run.join("baseline-small/model/config.json")).unwrap();
    assert!(config.contains("\"intermediate_size\": 224"), "not tiny-dense-active: {config}");
    assert!(!run.join("p2").exists(), "the table does not need p2");

    // One mask by role for the three PTQ models.
    let moe = GgufFile::open(&run.join("eval/ptq/moe.gguf")).unwrap();
    let teacher = GgufFile::open(&run.join("eval/ptq/teacher.gguf")).unwrap();
    let small = GgufFile::open(&run.join("eval/ptq/small.gguf")).unwrap();
    for (t, ffn) in [(&moe, "ffn_down_exps"), (&moe, "ffn_gate_shexp"), (&teacher, "ffn_down"), (&small, "ffn_up")] {
        assert_eq!(ty(t, &format!("blk.1.{ffn}.weight")), "Q5_0", "{ffn}");
        assert_eq!(ty(t, "blk.1.attn_v.weight"), "Q8_0");
        assert_eq!(ty(t, "blk.1.attn_output.weight"), "Q8_0");
        assert_eq!(ty(t, "blk.1.attn_q.weight"), "F16");
    }

    // Six models on the same items.
    let s = json(&run.join("eval/summary.json"));
    let names: Vec<&str> = s["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["moe", "moe-ptq", "teacher", "teacher-ptq", "small", "small-ptq"]);
    let rows = s["mcq"].as_array().unwrap();
    assert_eq!(rows.len(), 6 * 3, "{s}");
    for set in ["fact_recall", "two_hop", "general"] {
        let csv = |m: &str| {
            let text = std::fs::read_to_string(run.join(format!("eval/{m}/{set}.csv"))).unwrap();
            text.lines().map(|l| l.split(',').next().unwrap().to_string()).collect::<Vec<_>>()
        };
        for m in &names[1..] {
            assert_eq!(csv(m), csv("moe"), "{m} {set}: other items or order");
        }
    }
    assert!(out.contains("small-ptq"), "{out}");
    let report = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    assert!(report.contains("teacher-ptq"), "the report lacks the table");
    assert!(report.contains("routing_steps_p1.png"), "no routing heatmap over p1's steps");

    // Nothing to do the second time: compare-to-base tabulates the same stages.
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-cli"));
    c.args(["--threads", "2", "experiment", "compare-to-base", "--quiet", "--run-dir"]).arg(&run);
    c.arg("--config").arg(tmp.path().join("run.json"));
    for phase in PHASES {
        c.arg("--phase-config").arg(format!("{phase}={}", tmp.path().join(format!("{phase}.json")).display()));
    }
    let o = c.output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(err.contains("stage eval       up to date") && err.contains("stage baseline-small up to date"), "{err}");
    let table = std::fs::read_to_string(run.join("experiments/compare-to-base/result.md")).unwrap();
    assert!(table.lines().nth(2).unwrap().starts_with("| teacher |"), "the base first: {table}");
    for m in ["| moe |", "| small |", "| moe-ptq |"] {
        assert!(table.contains(m) && out.contains(m), "{m}: {table}");
    }

    // Knowledge capacity: the teacher continued on p0 + p1's micro-batches joins the table.
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-cli"));
    c.args(["--threads", "2", "experiment", "knowledge-capacity", "--quiet", "--run-dir"]).arg(&run);
    c.arg("--config").arg(tmp.path().join("run.json"));
    for phase in PHASES {
        c.arg("--phase-config").arg(format!("{phase}={}", tmp.path().join(format!("{phase}.json")).display()));
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tokens("teacher-continued"), tokens("p0") + tokens("p1"));
    let table = std::fs::read_to_string(run.join("experiments/knowledge-capacity/result.md")).unwrap();
    let seen = |m: &str| {
        // The training table: | model | tokens seen | wall | stages |
        let line = table.lines().find(|l| l.starts_with(&format!("| {m} | ")) && l.matches('|').count() == 5).unwrap();
        line.split('|').nth(2).unwrap().trim().parse::<u64>().unwrap()
    };
    let all = tokens("base") + tokens("p0") + tokens("p1");
    assert_eq!((seen("moe"), seen("teacher-continued"), seen("small")), (all, all, all), "{table}");
}

#[test]
fn an_unknown_experiment_is_refused_with_the_known_ones() {
    let o = Command::new(env!("CARGO_BIN_EXE_moe-cli")).args(["experiment", "knowledge-cap"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown experiment `knowledge-cap`") && err.contains("compare-to-base"), "{err}");
}
