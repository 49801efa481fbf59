//! Helpers shared by the integration tests of the binary (`mod common;` in each test file).

use std::path::Path;

/// Copies the directory tree `from` into `to` (created), files and subdirectories.
#[allow(dead_code)]
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The binary with `--threads 2`.
#[allow(dead_code)]
pub fn moe_cli() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moe-cli"));
    c.args(["--threads", "2"]);
    c
}

/// The micro run configs in `dir`: run.json (world of 60k tokens, vocab 600, sequences of 64)
/// and base.json / p0.json / p1.json with a few steps each (8 for the base, 4 per phase).
#[allow(dead_code)]
pub fn write_micro_configs(dir: &Path) {
    let mut run: serde_json::Value = serde_json::from_str(include_str!("../../../configs/runs/tiny.json")).unwrap();
    run["world"]["corpus"]["tokens"] = 60_000.into();
    run["world"]["eval"] = serde_json::json!({ "fact_recall": 24, "two_hop": 12, "general": 12 });
    run["vocab"] = 600.into();
    run["seq_len"] = 64.into();
    run["dev_every"] = 10.into();
    run["importance_batches"] = 2.into();
    std::fs::write(dir.join("run.json"), run.to_string()).unwrap();
    for (phase, text) in [
        ("base", include_str!("../../../configs/phases/base.json")),
        ("p0", include_str!("../../../configs/phases/p0.json")),
        ("p1", include_str!("../../../configs/phases/p1.json")),
    ] {
        let mut p: serde_json::Value = serde_json::from_str(text).unwrap();
        let steps = if phase == "base" { 8 } else { 4 };
        let tiny = p["presets"]["tiny"].as_object_mut().unwrap();
        tiny.insert("tokens".into(), (256 * steps).into());
        tiny.insert("tokens_per_step".into(), 256.into());
        tiny.insert("micro_batch".into(), 4.into());
        tiny.insert("seq_len".into(), 64.into());
        tiny.insert("checkpoint_every".into(), 2.into());
        tiny.insert("keep_last".into(), 2.into());
        tiny.insert(
            "eval".into(),
            serde_json::json!({ "every": 0, "dev_seqs": 2, "mcq_items": 4, "final_mcq_items": 4, "final_dev_seqs": 2 }),
        );
        std::fs::write(dir.join(format!("{phase}.json")), p.to_string()).unwrap();
    }
}

/// `run <what...> --run-dir <run_dir>` with the micro configs of `cfg`, plus `extra` arguments.
#[allow(dead_code)]
pub fn run_micro(cfg: &Path, run_dir: &Path, what: &[&str], extra: &[&str]) -> std::process::Output {
    run_micro_env(cfg, run_dir, what, extra, &[])
}

/// [`run_micro`] with environment variables (fault hooks).
#[allow(dead_code)]
pub fn run_micro_env(
    cfg: &Path,
    run_dir: &Path,
    what: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut c = moe_cli();
    c.envs(env.iter().copied());
    c.arg("run").args(what).args(["--quiet", "--run-dir"]).arg(run_dir).arg("--config").arg(cfg.join("run.json"));
    for phase in ["base", "p0", "p1"] {
        c.arg("--phase-config").arg(format!("{phase}={}", cfg.join(format!("{phase}.json")).display()));
    }
    c.args(extra).output().unwrap()
}
