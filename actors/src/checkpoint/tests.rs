//! Interrupted checkpoint housekeeping: a kill while an old checkpoint is pruned or while a
//! checkpoint of the same step is replaced never leaves a partial `step-<N>` directory; damaged
//! checkpoint files are caught by their checksums.

use super::*;

fn snapshot(step: u64) -> Snapshot {
    Snapshot {
        step,
        config_json: "{}".into(),
        tensors: vec![("w".into(), vec![2], vec![step as f32, 1.0])],
        adam_m: vec![0.0; 2],
        adam_v: vec![0.0; 2],
        adam_step: step,
        trainer_json: format!("{{\"step\":{step}}}"),
        extra: Vec::new(),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn pruning_keeps_the_last_k_and_leaves_nothing_hidden() {
    let tmp = tempfile::tempdir().unwrap();
    for step in 1..=4 {
        write_checkpoint(tmp.path(), &snapshot(step), 2, &mut DiskBudget::default()).unwrap();
    }
    assert_eq!(names(tmp.path()), ["step-00000003", "step-00000004"]);
}

#[test]
fn a_kill_while_pruning_leaves_only_a_hidden_directory_that_is_cleared() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), &snapshot(2), 2, &mut DiskBudget::default()).unwrap();
    // What a kill in the middle of deleting step 1 leaves: a renamed, half-deleted directory.
    let half = tmp.path().join(".step-00000001.del-99");
    fs::create_dir(&half).unwrap();
    fs::write(half.join(TRAINER_FILE), "{\"step\":1}").unwrap();
    let listed: Vec<u64> = list_checkpoints(tmp.path()).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(listed, [2], "a half-deleted checkpoint is never listed");
    remove_stale_temps(tmp.path());
    assert_eq!(names(tmp.path()), ["step-00000002"]);
}

#[test]
fn a_kill_between_the_renames_of_a_replacement_restores_the_old_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let first = write_checkpoint(tmp.path(), &snapshot(3), 2, &mut DiskBudget::default()).unwrap();
    // The replacement renamed the old step-3 aside and was killed before its own rename.
    fs::rename(&first, tmp.path().join(".step-00000003.old-99")).unwrap();
    fs::create_dir(tmp.path().join(".step-00000003.tmp-99")).unwrap();
    remove_stale_temps(tmp.path());
    assert_eq!(names(tmp.path()), ["step-00000003"]);
    assert_eq!(fs::read_to_string(first.join(TRAINER_FILE)).unwrap(), "{\"step\":3}");
    // With the replacement in place, the renamed-aside copy is just deleted.
    write_checkpoint(tmp.path(), &snapshot(3), 2, &mut DiskBudget::default()).unwrap();
    fs::create_dir(tmp.path().join(".step-00000003.old-98")).unwrap();
    fs::write(tmp.path().join(".step-00000003.old-98").join(TRAINER_FILE), "{}").unwrap();
    remove_stale_temps(tmp.path());
    assert_eq!(names(tmp.path()), ["step-00000003"]);
}

#[test]
fn replacing_a_checkpoint_of_the_same_step_leaves_one_complete_directory() {
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(tmp.path(), &snapshot(5), 2, &mut DiskBudget::default()).unwrap();
    let mut again = snapshot(5);
    again.trainer_json = "{\"step\":5,\"replaced\":true}".into();
    let path = write_checkpoint(tmp.path(), &again, 2, &mut DiskBudget::default()).unwrap();
    assert_eq!(names(tmp.path()), ["step-00000005"]);
    assert!(fs::read_to_string(path.join(TRAINER_FILE)).unwrap().contains("replaced"));
}

#[test]
fn adamw_step_past_two_to_the_24_is_stored_exactly() {
    // As f32, 2^24 + 1 rounds to 2^24: bias correction would then use the wrong step on resume.
    let tmp = tempfile::tempdir().unwrap();
    let step = (1u64 << 24) + 1;
    let dir = write_checkpoint(tmp.path(), &snapshot(step), 2, &mut DiskBudget::default()).unwrap();
    let ck = model::safetensors_io::SafetensorsReader::open(&dir.join(OPTIMIZER_FILE)).unwrap();
    assert_eq!(ck.read_i64("step").unwrap(), vec![step as i64]);
}

/// A byte changed inside the model's tensor data (the size and the safetensors header intact,
/// so loading alone would not notice) is caught by `checksums.json`, naming the file; so is a
/// trainer.json edited by hand. A checkpoint from before `checksums.json` is read unchecked.
#[test]
fn checksums_catch_in_range_damage_and_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_checkpoint(tmp.path(), &snapshot(3), 2, &mut DiskBudget::default()).unwrap();
    assert!(dir.join(CHECKSUMS_FILE).exists());
    verify_checksums(&dir).unwrap();

    let model = dir.join(MODEL_FILE);
    let mut bytes = fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&model, &bytes).unwrap();
    let err = verify_checksums(&dir).unwrap_err().to_string();
    assert!(err.contains(MODEL_FILE) && err.contains("SHA-256"), "{err}");
    bytes[last] ^= 0x40;
    fs::write(&model, &bytes).unwrap();
    verify_checksums(&dir).unwrap();

    fs::write(dir.join(TRAINER_FILE), "{\"step\":999}").unwrap();
    let err = verify_checksums(&dir).unwrap_err().to_string();
    assert!(err.contains(TRAINER_FILE), "{err}");

    fs::remove_file(dir.join(CHECKSUMS_FILE)).unwrap();
    verify_checksums(&dir).unwrap();
}

#[test]
fn the_last_checkpoint_moves_the_moments_and_equals_a_copying_snapshot() {
    let config = model::presets::embedded("tiny-dense").unwrap().unwrap();
    let m = model::Qwen3::from_init(config, None, autograd::DType::F32, model::init::qwen3_init(3, 0.02));
    let n = m.params.numel();
    let mut opt = autograd::optim::AdamW::new(&m.params, Default::default());
    opt.m = (0..n).map(|i| i as f32 * 1e-3).collect();
    opt.v = (0..n).map(|i| (i % 7) as f32).collect();
    opt.step = 5;
    let copied = Snapshot::take(&m, &opt, 9, "{}".into());
    let moved = Snapshot::take_moving_moments(&m, &mut opt, 9, "{}".into());
    assert_eq!((copied.adam_m.len(), copied.adam_v.len(), copied.adam_step), (n, n, 5));
    assert!(copied.adam_m == moved.adam_m && copied.adam_v == moved.adam_v && copied.adam_step == moved.adam_step);
    assert!(copied.tensors == moved.tensors && copied.config_json == moved.config_json);
    assert!(opt.m.is_empty() && opt.v.is_empty(), "the moments were moved, not copied");
}
