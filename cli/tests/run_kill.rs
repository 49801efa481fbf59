//! `moe-cli run` under SIGKILL: the real binary is killed at random moments while it trains
//! and writes a checkpoint every step (20 trials); after every kill each `step-*` directory is
//! complete and loads, a restart resumes from the newest complete checkpoint, and the run
//! finally completes with the same weights as a run that was never interrupted.

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn moe_cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-cli"));
    c.args(["--threads", "2"]);
    c
}

/// A micro run: small world, vocab 600, sequences of 64, a checkpoint every step.
fn write_configs(dir: &Path) -> (PathBuf, PathBuf) {
    let mut run: serde_json::Value = serde_json::from_str(include_str!("../../configs/runs/tiny.json")).unwrap();
    run["world"]["corpus"]["tokens"] = 60_000.into();
    run["world"]["eval"] = serde_json::json!({ "fact_recall": 24, "two_hop": 12, "general": 12 });
    run["vocab"] = 600.into();
    run["seq_len"] = 64.into();
    run["dev_every"] = 10.into();
    let run_path = dir.join("run.json");
    std::fs::write(&run_path, run.to_string()).unwrap();
    let mut base: serde_json::Value = serde_json::from_str(include_str!("../../configs/phases/base.json")).unwrap();
    let tiny = base["presets"]["tiny"].as_object_mut().unwrap();
    tiny.insert("tokens".into(), (128 * 2 * 30).into());
    tiny.insert("tokens_per_step".into(), 256.into());
    tiny.insert("micro_batch".into(), 2.into());
    tiny.insert("seq_len".into(), 64.into());
    tiny.insert("checkpoint_every".into(), 1.into());
    tiny.insert(
        "eval".into(),
        serde_json::json!({ "every": 0, "dev_seqs": 2, "mcq_items": 4, "final_mcq_items": 4, "final_dev_seqs": 2 }),
    );
    let phase_path = dir.join("base.json");
    std::fs::write(&phase_path, base.to_string()).unwrap();
    (run_path, phase_path)
}

fn run_args(run_dir: &Path, run: &Path, phase: &Path) -> Vec<String> {
    ["run", "phase", "base", "--quiet", "--run-dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            run_dir.display().to_string(),
            "--config".into(),
            run.display().to_string(),
            "--phase-config".into(),
            format!("base={}", phase.display()),
        ])
        .collect()
}

fn complete_steps(run_dir: &Path) -> Vec<u64> {
    let ckpts = actors::checkpoint::list_checkpoints(&run_dir.join("base/checkpoints")).unwrap();
    for (step, path) in &ckpts {
        let loaded = actors::checkpoint::read_checkpoint(path)
            .unwrap_or_else(|e| panic!("checkpoint {} (step {step}) is incomplete: {e}", path.display()));
        let state: serde_json::Value = serde_json::from_str(&loaded.trainer_json).unwrap();
        assert_eq!(state["step"], *step, "trainer.json of {}", path.display());
    }
    ckpts.into_iter().map(|(s, _)| s).collect()
}

#[test]
fn sigkill_during_checkpoints_always_resumes_from_the_last_complete_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, phase) = write_configs(tmp.path());
    // Reference: never interrupted.
    let reference = tmp.path().join("reference");
    let out = moe_cli().args(run_args(&reference, &run, &phase)).output().unwrap();
    assert!(out.status.success(), "reference run failed: {}", String::from_utf8_lossy(&out.stderr));

    let killed = tmp.path().join("killed");
    // Data first (shared by every trial), so kills land in training.
    let mut data = moe_cli();
    data.args(["run", "all", "--until", "data", "--quiet", "--run-dir"]).arg(&killed).arg("--config").arg(&run);
    assert!(data.output().unwrap().status.success());
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261122);
    let mut newest = 0;
    let mut kills = 0;
    for trial in 0..20 {
        let mut child = moe_cli()
            .args(run_args(&killed, &run, &phase))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..900)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        let steps = complete_steps(&killed);
        let last = steps.last().copied().unwrap_or(0);
        assert!(last >= newest, "trial {trial}: newest checkpoint went back from {newest} to {last}");
        newest = last;
    }
    assert!(kills >= 10, "only {kills} of 20 trials were killed mid-run: the run is too short to test");
    let out = moe_cli().args(run_args(&killed, &run, &phase)).output().unwrap();
    assert!(out.status.success(), "final resume failed: {}", String::from_utf8_lossy(&out.stderr));
    let a = model::Qwen3::load(&reference.join("base/model")).unwrap();
    let b = model::Qwen3::load(&killed.join("base/model")).unwrap();
    let (pa, pb) = (a.params.flat(), b.params.flat());
    let differ = pa.iter().zip(pb.iter()).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    assert_eq!(differ, 0, "after {kills} kills the weights differ from the uninterrupted run in {differ} places");
}
