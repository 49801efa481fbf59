//! `moe-cli run` on bad input: each case exits non-zero with a message naming what is wrong,
//! never panics, and writes nothing into the run directory.

use std::path::Path;
use std::process::Command;

fn run_fails(dir: &Path, args: &[&str], must_mention: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-cli")).current_dir(dir).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // 1 for our errors, 2 for clap's usage errors.
    assert!(matches!(out.status.code(), Some(1 | 2)), "{args:?}: expected exit 1 or 2, stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for m in must_mention {
        assert!(err.contains(m), "{args:?}: `{m}` not in: {err}");
    }
    assert!(!dir.join("R").exists(), "{args:?} wrote into the run directory");
}

#[test]
fn unknown_phase() {
    let tmp = tempfile::tempdir().unwrap();
    run_fails(tmp.path(), &["run", "phase", "p9", "--run-dir", "R"], &["p9", "base, p0, p1"]);
    run_fails(tmp.path(), &["run", "all", "--until", "p7", "--run-dir", "R"], &["p7", "moe-init"]);
}

#[test]
fn run_config_not_json_or_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("run.json"), "{ not json").unwrap();
    run_fails(tmp.path(), &["run", "phase", "p1", "--run-dir", "R", "--config", "run.json"], &["run.json"]);
    let mut c: serde_json::Value = serde_json::from_str(include_str!("../../configs/runs/tiny.json")).unwrap();
    c["split"] = "sideways".into();
    std::fs::write(tmp.path().join("bad.json"), c.to_string()).unwrap();
    run_fails(tmp.path(), &["run", "phase", "p1", "--run-dir", "R", "--config", "bad.json"], &["split", "sideways"]);
}

#[test]
fn phase_config_with_bad_values() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p: serde_json::Value = serde_json::from_str(include_str!("../../configs/phases/p1.json")).unwrap();
    p["presets"]["tiny"]["lr"]["max"] = (-1.0).into();
    std::fs::write(tmp.path().join("p1.json"), p.to_string()).unwrap();
    run_fails(
        tmp.path(),
        &["run", "phase", "p1", "--run-dir", "R", "--phase-config", "p1=p1.json"],
        &["p1.json", "lr"],
    );
    let mut p: serde_json::Value = serde_json::from_str(include_str!("../../configs/phases/p0.json")).unwrap();
    p["distill"]["hidden_l2"] = 0.5.into();
    std::fs::write(tmp.path().join("p0.json"), p.to_string()).unwrap();
    run_fails(
        tmp.path(),
        &["run", "phase", "p1", "--run-dir", "R", "--phase-config", "p0=p0.json"],
        &["p0.json", "hidden_l2"],
    );
    run_fails(
        tmp.path(),
        &["run", "phase", "p1", "--run-dir", "R", "--phase-config", "p0=missing.json"],
        &["missing.json"],
    );
    run_fails(tmp.path(), &["run", "phase", "p1", "--run-dir", "R", "--phase-config", "nonsense"], &["PHASE=FILE"]);
}

#[test]
fn named_expert_map_naming_a_missing_expert_or_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p: serde_json::Value = serde_json::from_str(include_str!("../../configs/phases/p1.json")).unwrap();
    p["router"]["named_experts"] = serde_json::json!({ "coef": 0.1, "map": { "medical": 3, "general": 16 } });
    std::fs::write(tmp.path().join("p1.json"), p.to_string()).unwrap();
    run_fails(
        tmp.path(),
        &["run", "phase", "p1", "--run-dir", "R", "--phase-config", "p1=p1.json"],
        &["p1.json", "router.named_experts.map", "domain `general`", "expert 16", "16 routed experts"],
    );
    p["router"]["named_experts"]["map"] = serde_json::json!({ "medicine": 3 });
    std::fs::write(tmp.path().join("p1.json"), p.to_string()).unwrap();
    run_fails(
        tmp.path(),
        &["run", "phase", "p1", "--run-dir", "R", "--phase-config", "p1=p1.json"],
        &["p1.json", "domain `medicine`", "general, medical, medical_chat"],
    );
}
