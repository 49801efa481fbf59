//! Issue 18 deliverable 1: the importance pass over the whole train pack (`importance_batches:
//! 0`), streaming and resumable. The binary is killed right after a save of the partial state;
//! the restarted run continues after that batch and ends with exactly the EMA state of a run
//! that was never interrupted, having visited every sequence of the pack once.

mod common;

use common::{copy_tree, run_micro, run_micro_env, write_micro_configs};
use std::path::Path;

fn whole_pack_configs(cfg: &Path) {
    write_micro_configs(cfg);
    let path = cfg.join("run.json");
    let mut run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    run["world"]["corpus"]["tokens"] = 12_000.into();
    run["importance_batches"] = 0.into();
    run["importance_batch"] = 8.into();
    std::fs::write(&path, run.to_string()).unwrap();
}

fn state(run: &Path) -> model::importance::TaylorState {
    model::importance::read_taylor_state(&run.join("importance/importance.safetensors")).unwrap().0
}

#[test]
fn a_whole_pack_importance_pass_resumes_after_a_kill_to_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path();
    whole_pack_configs(cfg);

    let clean = cfg.join("clean");
    let o = run_micro(cfg, &clean, &["all", "--until", "importance"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = state(&clean);
    let sequences = data::pack::PackedDataset::open(&clean.join("data/train")).unwrap().len();
    assert_eq!(reference.batches, sequences.div_ceil(8), "one pass over the {sequences} sequences");
    assert!(reference.batches > 2 * actors::importance_pass::SAVE_EVERY, "the pass is long enough to save twice");

    // The same data and base (copied: only the importance stage runs again).
    let killed = cfg.join("killed");
    copy_tree(&clean, &killed);
    std::fs::remove_dir_all(killed.join("importance")).unwrap();
    let at = (2 * actors::importance_pass::SAVE_EVERY).to_string();
    let kill = format!("importance:{at}");
    let o = run_micro_env(cfg, &killed, &["all", "--until", "importance"], &[], &[("MEDMOE_FAULT_KILL_AT", &kill)]);
    assert!(!o.status.success(), "the kill did not happen");
    assert!(!killed.join("importance/importance.safetensors").exists(), "a killed stage looks finished");
    let o = run_micro(cfg, &killed, &["all", "--until", "importance"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("resumed after batch {at}")), "{err}");
    let resumed = state(&killed);
    assert_eq!((resumed.batches, resumed.tokens), (reference.batches, reference.tokens));
    assert!(resumed.first == reference.first && resumed.squared == reference.squared, "EMA state differs");
    assert!(!killed.join("importance").join(actors::importance_pass::PARTIAL_FILE).exists());
}
