//! `moe-cli run phase p1` killed (SIGKILL) at chosen moments of chosen steps and resumed each
//! time gives the same summary.json, metrics.jsonl and weights as a run never interrupted: mid
//! step, right after the checkpoint taken for a breaker action, after an evaluation, right after
//! a periodic checkpoint and after the last one. The kill points come from the
//! `MEDMOE_FAULT_KILL_AT=<point>:<step>` hook (actors::supervisor::KillPoint). A damaged
//! metrics.jsonl is repaired on resume with a warning instead of stopping the run.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn moe_cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-cli"));
    c.args(["--threads", "2"]);
    c
}

/// Overrides `presets.tiny` of an embedded phase file.
fn phase_file(dir: &Path, name: &str, text: &str, tiny: Value) -> PathBuf {
    let mut v: Value = serde_json::from_str(text).unwrap();
    let t = v["presets"]["tiny"].as_object_mut().unwrap();
    for (k, x) in tiny.as_object().unwrap() {
        t.insert(k.clone(), x.clone());
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, v.to_string()).unwrap();
    path
}

/// A micro pipeline: small world, vocab 600, sequences of 64, 4 base and p0 steps; p1 runs 8
/// steps with a collapse breaker that fires every 3 steps (1, 4, 7), the dev-PPL breaker on
/// every rising eval (every 2 steps; at LR 1.0 it halves the LR at step 4), and a checkpoint
/// every 3 steps.
struct Setup {
    run: PathBuf,
    phases: Vec<(&'static str, PathBuf)>,
}

impl Setup {
    fn new(dir: &Path) -> Setup {
        let mut run: Value = serde_json::from_str(include_str!("../../configs/runs/tiny.json")).unwrap();
        run["world"]["corpus"]["tokens"] = 60_000.into();
        run["world"]["eval"] = serde_json::json!({ "fact_recall": 24, "two_hop": 12, "general": 12 });
        run["vocab"] = 600.into();
        run["seq_len"] = 64.into();
        run["dev_every"] = 10.into();
        run["importance_batches"] = 2.into();
        run["importance_batch"] = 2.into();
        let run_path = dir.join("run.json");
        std::fs::write(&run_path, run.to_string()).unwrap();
        let eval = |every: u64| serde_json::json!({ "every": every, "dev_seqs": 2, "mcq_items": 4, "final_mcq_items": 4, "final_dev_seqs": 2 });
        let small = |steps: u64, every: u64, ckpt: u64| {
            serde_json::json!({
                "tokens": 128 * steps, "tokens_per_step": 128, "micro_batch": 2, "seq_len": 64,
                "eval": eval(every), "checkpoint_every": ckpt, "keep_last": 2,
            })
        };
        let base = phase_file(dir, "base", include_str!("../../configs/phases/base.json"), small(4, 0, 4));
        let p0 = phase_file(dir, "p0", include_str!("../../configs/phases/p0.json"), small(4, 0, 4));
        let mut p1 = small(8, 2, 3);
        p1["lr"] = serde_json::json!({ "max": 1.0, "min": 1.0, "warmup_frac": 0.0 });
        p1["breakers"] = serde_json::json!({
            "collapse_share": 0.0, "collapse_window": 1, "cooldown": 3, "overflow_window": 1000,
            "underuse_window": 1000, "ppl_rising_evals": 1,
        });
        let p1 = phase_file(dir, "p1", include_str!("../../configs/phases/p1.json"), p1);
        Setup { run: run_path, phases: vec![("base", base), ("p0", p0), ("p1", p1)] }
    }

    fn command(&self, run_dir: &Path, what: &[&str]) -> Command {
        let mut c = moe_cli();
        c.args(what).arg("--quiet").arg("--run-dir").arg(run_dir).arg("--config").arg(&self.run);
        for (name, path) in &self.phases {
            c.arg("--phase-config").arg(format!("{name}={}", path.display()));
        }
        c
    }

    /// `run phase p1`, killed at `kill` (`<point>:<step>`) when given.
    fn p1(&self, run_dir: &Path, kill: Option<&str>) -> Output {
        let mut c = self.command(run_dir, &["run", "phase", "p1"]);
        if let Some(k) = kill {
            c.env("MEDMOE_FAULT_KILL_AT", k);
        }
        c.output().unwrap()
    }
}

/// Replaces every occurrence of the run directory in string values by `<run>`.
fn relative(v: &mut Value, root: &str) {
    match v {
        Value::String(s) => *s = s.replace(root, "<run>"),
        Value::Array(a) => a.iter_mut().for_each(|x| relative(x, root)),
        Value::Object(o) => o.values_mut().for_each(|x| relative(x, root)),
        _ => {}
    }
}

/// metrics.jsonl without wall-clock fields, paths relative to the run directory.
fn metrics(run_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run_dir.join("p1/metrics/metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}"));
            let o = v.as_object_mut().unwrap();
            o.remove("wall_time");
            o.remove("tokens_per_s");
            relative(&mut v, &run_dir.display().to_string());
            v
        })
        .collect()
}

/// p1/summary.json without its wall-clock seconds, paths relative to the run directory.
fn summary(run_dir: &Path) -> Value {
    let mut v: Value = serde_json::from_slice(&std::fs::read(run_dir.join("p1/summary.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("seconds");
    relative(&mut v, &run_dir.display().to_string());
    v
}

fn weights(run_dir: &Path) -> Vec<u8> {
    std::fs::read(run_dir.join("p1/model/model.safetensors")).unwrap()
}

fn assert_same_as(reference: &Path, resumed: &Path, what: &str) {
    let (a, b) = (metrics(reference), metrics(resumed));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "{what}: metrics.jsonl line {} differs", i + 1);
    }
    assert_eq!(a.len(), b.len(), "{what}: metrics.jsonl has {} lines, the uninterrupted run {}", b.len(), a.len());
    assert_eq!(summary(reference), summary(resumed), "{what}: summary.json differs");
    assert!(weights(reference) == weights(resumed), "{what}: p1 weights differ");
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn killed(out: &Output, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{what}: not killed; stderr: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kills_anywhere_in_a_phase_resume_to_the_same_summary_metrics_and_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let setup = Setup::new(tmp.path());
    let prefix = tmp.path().join("prefix");
    ok(&setup.command(&prefix, &["run", "all", "--until", "p0"]).output().unwrap(), "data..p0");

    let reference = tmp.path().join("reference");
    common::copy_tree(&prefix, &reference);
    ok(&setup.p1(&reference, None), "uninterrupted p1");
    let s = summary(&reference);
    let actions = s["breaker_actions"].as_array().unwrap();
    for a in actions {
        eprintln!(
            "reference action: step {} {} rollback {}",
            a["action"]["step"], a["action"]["breaker"], a["action"]["rollback"]
        );
    }
    assert!(actions.len() >= 2, "the run must exercise breaker actions: {actions:?}");
    let at: Vec<u64> = actions.iter().map(|a| a["action"]["step"].as_u64().unwrap()).collect();
    assert!(at.contains(&1) && at.contains(&4), "collapse actions at steps 1 and 4 expected: {at:?}");

    // One directory killed again and again: each resume starts from what the previous kill left.
    let resumed = tmp.path().join("resumed");
    common::copy_tree(&prefix, &resumed);
    let kills = [
        "step:1",              // the update of step 1 (which fires a breaker) is done, nothing saved
        "action-checkpoint:4", // step 4's action is in its checkpoint; its eval is not done
        "eval:4",              // resumed in the middle of step 4: the eval is redone, then killed
        "checkpoint:6",        // right after a periodic checkpoint
        "step:7",              // mid step after a breaker action's step
        "checkpoint:8",        // the last checkpoint: final eval, model and summary still to do
    ];
    for k in kills {
        killed(&setup.p1(&resumed, Some(k)), k);
    }
    ok(&setup.p1(&resumed, None), "final resume");
    assert_same_as(&reference, &resumed, "after kills at every point");

    let damaged = tmp.path().join("damaged");
    common::copy_tree(&prefix, &damaged);
    a_damaged_metrics_log_is_repaired_on_resume_with_a_warning(&setup, &damaged, tmp.path());
}

/// Killed after a checkpoint, metrics.jsonl damaged (a garbage line among the checkpoint's, a
/// cut line and junk after them): the resume warns, drops the bad line and keeps the others.
fn a_damaged_metrics_log_is_repaired_on_resume_with_a_warning(setup: &Setup, dir: &Path, tmp: &Path) {
    killed(&setup.p1(dir, Some("checkpoint:6")), "checkpoint:6");
    a_checkpoint_beyond_the_phase_is_not_resumed(setup, dir, &tmp.join("bad-step"));
    let log = dir.join("p1/metrics/metrics.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Line 2 overwritten with garbage, a cut line and junk appended.
    let mut damaged = lines.clone();
    damaged[1] = "\u{0}\u{7f}garbage";
    std::fs::write(&log, damaged.join("\n") + "\n{\"step\":6,\"wall_t\nmore junk").unwrap();
    let out = setup.p1(dir, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ok(&out, "resume with a damaged metrics.jsonl");
    assert!(stderr.contains("warning") && stderr.contains("metrics.jsonl: line 2"), "no warning: {stderr}");
    let after = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = after.lines().collect();
    assert_eq!(kept[0], lines[0]);
    assert_eq!(kept[1..lines.len() - 1], lines[2..], "the checkpoint's other lines are kept in order");
    assert!(after.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "every line is a record");
}

/// The newest checkpoint's trainer.json says step 999 (under its own name, then renamed to
/// match): the run never trains on from it. With its checksums.json the edit is damage (named);
/// without (a checkpoint from before checksums) the step check stops it, naming the file and the
/// step. The run stops, or (where an intact older checkpoint exists) warns and resumes from that
/// one to the phase's 8 steps.
fn a_checkpoint_beyond_the_phase_is_not_resumed(setup: &Setup, dir: &Path, copy: &Path) {
    for (rename, checksums) in [(false, true), (false, false), (true, false)] {
        let _ = std::fs::remove_dir_all(copy);
        common::copy_tree(dir, copy);
        let ckpts = copy.join("p1/checkpoints");
        let newest = ckpts.join("step-00000006");
        let path = newest.join("trainer.json");
        let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state["step"] = 999.into();
        std::fs::write(&path, state.to_string()).unwrap();
        if !checksums {
            std::fs::remove_file(newest.join("checksums.json")).unwrap();
        }
        if rename {
            std::fs::rename(&newest, ckpts.join("step-00000999")).unwrap();
        }
        let out = setup.p1(copy, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let why = if checksums { "damaged" } else { "999" };
        assert!(stderr.contains("trainer.json") && stderr.contains(why), "rename {rename}: {stderr}");
        if rename {
            assert!(stderr.contains("beyond the 8 steps"), "{stderr}");
        }
        if out.status.success() {
            assert_eq!(summary(copy)["steps"], 8, "resumed from an intact checkpoint: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(!copy.join("p1/summary.json").exists());
        }
    }
}
