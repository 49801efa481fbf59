//! A run directory that trusts nothing it has not checked (issue 12), through the real binary on
//! a micro run (world of 60k tokens, vocab 600, sequences of 64, a few steps per phase). One
//! finished run directory is built once per test binary; each test works on a copy of it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::{moe_cli, write_micro_configs as write_configs};

/// `run <what...> --run-dir <run_dir>` with the micro configs of `cfg`, plus `extra` arguments.
fn run_in(cfg: &Path, run_dir: &Path, what: &[&str], extra: &[&str]) -> Output {
    common::run_micro(cfg, run_dir, what, extra)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "moe-cli failed: {}", stderr(&o));
    stderr(&o)
}

fn fails(o: Output, must_mention: &[&str]) -> String {
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for m in must_mention {
        assert!(err.contains(m), "`{m}` not in: {err}");
    }
    err
}

/// The micro configs and a finished run directory (`run phase p1`), built once.
fn finished() -> &'static (tempfile::TempDir, PathBuf) {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        write_configs(tmp.path());
        let run = tmp.path().join("finished");
        ok(run_in(tmp.path(), &run, &["phase", "p1"], &[]));
        let p = tmp.path().to_path_buf();
        (tmp, p)
    })
}

/// A private copy of the finished run: (its temp dir, configs dir, run dir).
fn copy_of_finished() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (_, src) = finished();
    let tmp = tempfile::tempdir().unwrap();
    for f in ["run.json", "base.json", "p0.json", "p1.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    common::copy_tree(&src.join("finished"), &tmp.path().join("R"));
    let (cfg, run) = (tmp.path().to_path_buf(), tmp.path().join("R"));
    (tmp, cfg, run)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stage_line<'a>(err: &'a str, stage: &str) -> Vec<&'a str> {
    err.lines().filter(|l| l.starts_with(&format!("stage {stage:<10}"))).collect()
}

fn up_to_date(err: &str, stage: &str) -> bool {
    stage_line(err, stage).iter().any(|l| l.contains("up to date"))
}

fn first_shard(run: &Path) -> PathBuf {
    run.join("data/train/shard-00000.bin")
}

// Failure 1: a changed base_model or seed was ignored.
#[test]
fn a_changed_seed_or_base_model_rebuilds_base_and_says_which_field_changed() {
    let (_tmp, cfg, run) = copy_of_finished();
    let old_base = bytes(&run.join("base/model/model.safetensors"));
    let old_p1 = bytes(&run.join("p1/manifest.json"));
    edit_json(&cfg.join("run.json"), |v| v["seed"] = 1.into());
    let err = ok(run_in(&cfg, &run, &["all", "--until", "moe-init"], &[]));
    assert!(up_to_date(&err, "data"), "{err}");
    for stage in ["base", "importance", "moe-init"] {
        assert!(!up_to_date(&err, stage), "{stage} was not rebuilt: {err}");
    }
    assert!(stage_line(&err, "base").iter().any(|l| l.contains("seed: 0 -> 1")), "{err}");
    assert!(stage_line(&err, "importance").iter().any(|l| l.contains("input `base` changed")), "{err}");
    assert_ne!(old_base, bytes(&run.join("base/model/model.safetensors")), "the base was not retrained");
    assert!(!run.join("base.next").exists());
    // p1 was not asked for: the finished one is untouched, and now out of date.
    assert_eq!(old_p1, bytes(&run.join("p1/manifest.json")));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("base/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["built_because"][0], "seed: 0 -> 1", "{manifest}");
    // The run's summary.json says what was done to every stage and why.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let stages = summary["stages"].as_array().unwrap();
    let report = |name: &str| stages.iter().find(|s| s["stage"] == name).unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(report("data")["status"], "up to date", "{summary}");
    assert_eq!(report("base")["status"], "built", "{summary}");
    assert_eq!(report("base")["because"][0], "seed: 0 -> 1", "{summary}");
    assert_eq!(report("importance")["because"][0], "input `base` changed", "{summary}");
    assert_eq!(summary["phase"], "base", "the last training stage's summary stays at the top level: {summary}");

    edit_json(&cfg.join("run.json"), |v| v["base_model"] = "tiny-dense-active".into());
    let err = ok(run_in(&cfg, &run, &["all", "--until", "base"], &[]));
    assert!(
        stage_line(&err, "base").iter().any(|l| l.contains("base_model: \"tiny-dense\" -> \"tiny-dense-active\"")),
        "{err}"
    );
    assert!(stage_line(&err, "base").iter().any(|l| l.contains("preset.intermediate_size")), "{err}");
}

// Formats issue, deliverable 2: every model directory the pipeline writes carries the run's
// tokenizer files, so any of them exports to GGUF (with vocabulary) or generates on its own.
#[test]
fn every_model_directory_carries_the_run_tokenizer() {
    let (_tmp, _cfg, run) = copy_of_finished();
    let tokenizer = bytes(&run.join("data/tokenizer/tokenizer.json"));
    for stage in ["base", "moe-init", "p0", "p1"] {
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            assert!(run.join(stage).join("model").join(file).is_file(), "{stage}/model/{file} missing");
        }
        assert_eq!(bytes(&run.join(stage).join("model/tokenizer.json")), tokenizer, "{stage}");
    }
}

// Issue 17: the GEMM precision determines a training stage's output, so it is part of its key
// (f32 keys are unchanged, so f32 run directories are not rebuilt) and recorded in its summary.
#[test]
fn a_changed_precision_rebuilds_the_training_stages_and_the_summary_records_it() {
    let (_tmp, cfg, run) = copy_of_finished();
    let summary =
        |p: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    assert_eq!(summary(&run.join("base/summary.json"))["precision"], "f32");
    let old_base = bytes(&run.join("base/model/model.safetensors"));
    let err = ok(run_in(&cfg, &run, &["all", "--until", "base"], &["--precision", "bf16"]));
    assert!(up_to_date(&err, "data"), "{err}");
    assert!(stage_line(&err, "base").iter().any(|l| l.contains("precision: (none) -> \"bf16\"")), "{err}");
    assert_ne!(old_base, bytes(&run.join("base/model/model.safetensors")), "the base was not retrained in bf16");
    for s in [summary(&run.join("base/summary.json")), summary(&run.join("summary.json"))] {
        assert_eq!(s["precision"], "bf16", "{s}");
        assert!(["amx-bf16", "avx512-bf16", "bf16-emulated"].contains(&s["gemm_backend"].as_str().unwrap()), "{s}");
    }
    // Back to f32: rebuilt again, then up to date.
    let err = ok(run_in(&cfg, &run, &["all", "--until", "base"], &[]));
    assert!(stage_line(&err, "base").iter().any(|l| l.contains("precision: \"bf16\" -> (none)")), "{err}");
    assert_eq!(old_base, bytes(&run.join("base/model/model.safetensors")), "f32 training is deterministic");
    let err = ok(run_in(&cfg, &run, &["all", "--until", "base"], &["--precision", "f32"]));
    assert!(up_to_date(&err, "base"), "{err}");
    // A precision the device cannot run fails before any stage.
    let err = fails(
        run_in(&cfg, &run, &["all", "--until", "p1"], &["--precision", "bf16", "--device", "sim"]),
        &["bf16 precision is not supported on the sim device"],
    );
    assert!(!err.contains("stage "), "{err}");
    let o = run_in(&cfg, &run, &["all"], &["--precision", "fp16"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses the value: {}", stderr(&o));
    assert!(stderr(&o).contains("`fp16` is not a precision (f32, bf16)"), "{}", stderr(&o));
}

// Failure 2: two runs on one directory deleted each other's work.
#[test]
fn a_second_run_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over() {
    let (_tmp, cfg, run) = copy_of_finished();
    let before = bytes(&run.join("p1/manifest.json"));
    {
        let _held = actors::lock::RunLock::acquire(&run).unwrap();
        let err = fails(run_in(&cfg, &run, &["phase", "p1"], &[]), &["is in use by", "R"]);
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
    }
    assert_eq!(before, bytes(&run.join("p1/manifest.json")));
    // A holder that was killed: its record stays in the file, its lock went with it.
    let dead = serde_json::json!({ "pid": 999_999_999u32, "host": "gone", "since": 1 });
    std::fs::write(run.join("run.lock"), dead.to_string()).unwrap();
    let err = ok(run_in(&cfg, &run, &["phase", "p1"], &[]));
    assert!(err.contains("pid 999999999 on host gone") && err.contains("taken over"), "{err}");
    assert!(up_to_date(&err, "p1"), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("run.lock")).unwrap(), "", "released cleanly");
}

// Failures 3 and 7 and the untyped-field part of 9: every config is checked before any work.
#[test]
fn bad_configs_fail_before_the_first_stage_naming_file_and_field() {
    let (_, src) = finished();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for f in ["run.json", "base.json", "p0.json", "p1.json"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let fresh = d.join("fresh");
    let check = |extra: &[&str], mention: &[&str]| {
        fails(run_in(d, &fresh, &["phase", "p1"], extra), mention);
        assert!(!fresh.exists(), "{extra:?} wrote into the run directory");
    };
    let p1 = d.join("p1.json").display().to_string();
    check(&["--phase-config", &format!("P1={p1}")], &["unknown phase `P1`", "base, p0, p1"]);
    check(&["--phase-config", &format!("base={p1}")], &["p1.json", "config of phase `p1`", "given for `base`"]);
    let bad = d.join("bad.json");
    let write_bad = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("p1.json")).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&bad, v.to_string()).unwrap();
    };
    let bad_arg = format!("p1={}", bad.display());
    write_bad(&|v| v["lr"]["max"] = "fast".into());
    check(&["--phase-config", &bad_arg], &["bad.json", "lr.max", "invalid type"]);
    write_bad(&|v| v["presets"]["tiny"]["eval"]["every"] = (-3).into());
    check(&["--phase-config", &bad_arg], &["bad.json", "presets.tiny.eval.every"]);
    write_bad(&|v| v["router"]["tempreature"] = 1.into());
    check(&["--phase-config", &bad_arg], &["bad.json", "router", "unknown field `tempreature`"]);
    write_bad(&|v| v["presets"]["tiny"]["seq_len"] = 32.into());
    check(&["--phase-config", &bad_arg], &["bad.json", "seq_len", "32", "sequences of 64"]);

    let run_json = std::fs::read_to_string(d.join("run.json")).unwrap();
    let bad_run = |edit: &dyn Fn(&mut serde_json::Value), mention: &[&str]| {
        let mut v: serde_json::Value = serde_json::from_str(&run_json).unwrap();
        edit(&mut v);
        std::fs::write(d.join("run.json"), v.to_string()).unwrap();
        check(&[], mention);
    };
    bad_run(&|v| v["base_model"] = "tiny-k1p1-n16".into(), &["run.json", "base_model", "is a MoE preset"]);
    bad_run(&|v| v["moe_model"] = "tiny-k9".into(), &["run.json", "moe_model", "unknown preset `tiny-k9`"]);
    bad_run(&|v| v["moe_model"] = "tiny-dense".into(), &["run.json", "moe_model", "no `moe` section"]);
    bad_run(&|v| v["moe_model"] = "qwen3-1.7b-k1p1-n16".into(), &["run.json", "moe_model", "does not fit"]);
    bad_run(&|v| v["world"]["eval"]["two_hop"] = 0.into(), &["run.json", "world.eval.two_hop", "0 items"]);
    bad_run(&|v| v["seed"] = "zero".into(), &["run.json", "field `seed`", "invalid type"]);
    bad_run(&|v| v["world"]["corpus"]["tokenz"] = 1.into(), &["run.json", "world.corpus", "unknown field `tokenz`"]);
}

// Failure 3 (second half) and deliverable 4: a changed phase config never deletes the finished
// phase before its replacement is complete.
#[test]
fn a_changed_phase_is_rebuilt_beside_the_finished_one_and_swapped_in_when_complete() {
    let (_tmp, cfg, run) = copy_of_finished();
    let old_model = bytes(&run.join("p1/model/model.safetensors"));
    let old_manifest = bytes(&run.join("p1/manifest.json"));
    edit_json(&cfg.join("p1.json"), |v| v["presets"]["tiny"]["lr"]["max"] = 2e-3.into());
    // Interrupted after three steps (a checkpoint at step 2): the finished p1 is still whole, the rebuild waits beside it.
    let mut c = moe_cli();
    let o = {
        c.env("MEDMOE_FAULT_STOP_AFTER", "3");
        c.arg("run").args(["phase", "p1", "--quiet", "--run-dir"]).arg(&run).arg("--config").arg(cfg.join("run.json"));
        for phase in ["base", "p0", "p1"] {
            c.arg("--phase-config").arg(format!("{phase}={}", cfg.join(format!("{phase}.json")).display()));
        }
        c.output().unwrap()
    };
    let err = fails(o, &["stopped early"]);
    assert!(stage_line(&err, "p1").iter().any(|l| l.contains("phase.lr.max: 0.001 -> 0.002")), "{err}");
    assert_eq!(old_model, bytes(&run.join("p1/model/model.safetensors")));
    assert_eq!(old_manifest, bytes(&run.join("p1/manifest.json")));
    assert!(run.join("p1.next/checkpoints").is_dir(), "the rebuild's checkpoints are kept for resuming");
    let err = ok(run_in(&cfg, &run, &["phase", "p1"], &[]));
    assert!(err.contains("resuming from"), "{err}");
    assert!(!run.join("p1.next").exists());
    assert_ne!(old_model, bytes(&run.join("p1/model/model.safetensors")), "p1 was not replaced");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["artifacts"]["model"], "p1/model", "{summary}");
    // Up to date now; --force rebuilds deliberately (importance: cheap and deterministic, so
    // everything after it stays up to date).
    let err = ok(run_in(&cfg, &run, &["all", "--until", "importance"], &["--force"]));
    assert!(stage_line(&err, "importance").iter().any(|l| l.contains("--force")), "{err}");
    let err = ok(run_in(&cfg, &run, &["phase", "p1"], &[]));
    for stage in ["data", "base", "importance", "moe-init", "p0", "p1"] {
        assert!(up_to_date(&err, stage), "{stage}: {err}");
    }
}

// Failures 5 and 6: damaged finished stages are noticed and rebuilt.
#[test]
fn damaged_finished_stages_are_rebuilt_and_the_same_files_come_back() {
    let (_tmp, cfg, run) = copy_of_finished();
    let model = run.join("p1/model/model.safetensors");
    let good_model = bytes(&model);
    let good_summary = std::fs::read_to_string(run.join("p1/summary.json")).unwrap();
    // A removed model: rebuilt in place from the phase's own final checkpoint, same weights.
    std::fs::remove_dir_all(run.join("p1/model")).unwrap();
    let err = ok(run_in(&cfg, &run, &["phase", "p1"], &[]));
    assert!(stage_line(&err, "p1").iter().any(|l| l.contains("damaged") && l.contains("model")), "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(good_model, bytes(&model));
    // A truncated model.
    std::fs::write(&model, &good_model[..good_model.len() / 2]).unwrap();
    let err = ok(run_in(&cfg, &run, &["phase", "p1"], &[]));
    assert!(stage_line(&err, "p1").iter().any(|l| l.contains("damaged") && l.contains("bytes")), "{err}");
    assert_eq!(good_model, bytes(&model));
    // A summary edited by hand.
    std::fs::write(run.join("p1/summary.json"), good_summary.replace("\"steps\": 4", "\"steps\": 5")).unwrap();
    let err = ok(run_in(&cfg, &run, &["phase", "p1"], &[]));
    assert!(stage_line(&err, "p1").iter().any(|l| l.contains("summary.json")), "{err}");
    // Failure 9: one token flipped in range inside a packed shard. The data stage is rebuilt
    // (deterministically: the same bytes), so nothing after it has to run again.
    let shard = first_shard(&run);
    let good_shard = bytes(&shard);
    let mut bad = good_shard.clone();
    bad[400] ^= 1;
    std::fs::write(&shard, &bad).unwrap();
    let err = ok(run_in(&cfg, &run, &["phase", "p1"], &[]));
    assert!(stage_line(&err, "data").iter().any(|l| l.contains("damaged") && l.contains("shard-00000.bin")), "{err}");
    assert_eq!(good_shard, bytes(&shard));
    for stage in ["base", "importance", "moe-init", "p0", "p1"] {
        assert!(up_to_date(&err, stage), "{stage}: {err}");
    }
    // A damaged tokenizer likewise.
    std::fs::write(run.join("data/tokenizer/tokenizer.json"), "{}").unwrap();
    let err = ok(run_in(&cfg, &run, &["all", "--until", "data"], &[]));
    assert!(stage_line(&err, "data").iter().any(|l| l.contains("tokenizer.json")), "{err}");
}

// Failure 6: a damaged newest checkpoint used to stop every rerun.
#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one() {
    let (_tmp, cfg, run) = copy_of_finished();
    let good_model = bytes(&run.join("p1/model/model.safetensors"));
    // p1 as a kill before its end leaves it: no manifest, no model, checkpoints 2 and 4.
    std::fs::remove_file(run.join("p1/manifest.json")).unwrap();
    std::fs::remove_dir_all(run.join("p1/model")).unwrap();
    let ck = run.join("p1/checkpoints");
    let steps = actors::checkpoint::list_checkpoints(&ck).unwrap();
    assert_eq!(steps.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 4]);
    let newest = steps[1].1.join("model.safetensors");
    let b = bytes(&newest);
    std::fs::write(&newest, &b[..b.len() - 100]).unwrap();
    // And stale staging left by killed writers: removed at start.
    std::fs::create_dir_all(ck.join(".step-00000006.tmp-4242-0")).unwrap();
    std::fs::write(run.join("p1/.summary.json.tmp-4242-1"), "partial").unwrap();
    let err = ok(run_in(&cfg, &run, &["phase", "p1"], &[]));
    assert!(err.contains("step-00000004 is damaged") && err.contains("trying an older one"), "{err}");
    assert!(err.contains("(step 2)"), "did not resume from step 2: {err}");
    assert!(err.contains("cleaned    2 temporary"), "{err}");
    assert!(!ck.join(".step-00000006.tmp-4242-0").exists() && !run.join("p1/.summary.json.tmp-4242-1").exists());
    assert!(ck.join("damaged-step-00000004").is_dir(), "the damaged checkpoint is set aside, not deleted");
    assert_eq!(good_model, bytes(&run.join("p1/model/model.safetensors")), "resume is not bit-identical");
}
