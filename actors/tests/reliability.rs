//! Reliability of the training engine on a micro run (small world, tiny-dense / tiny MoE,
//! sequences of 64): resume equals uninterrupted training bitwise, a failed DataLoader is
//! restarted without losing or repeating a batch, an injected router collapse makes the
//! breaker fire and log, a full disk while checkpointing is a clear error that leaves the
//! previous checkpoint intact.

use actors::batches::BatchStream;
use actors::checkpoint::{list_checkpoints, read_checkpoint};
use actors::phase::PhaseConfig;
use actors::stages::{Pipeline, RunConfig, RunOptions};
use actors::supervisor::{run_phase, Faults, PhaseOutcome, PhaseRun};
use actors::trainer::Trainer;
use data::pack::PackedDataset;
use model::Qwen3;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A run config small enough for tests.
fn micro_run_config() -> RunConfig {
    let mut c = RunConfig::embedded().unwrap();
    c.world.corpus.tokens = 60_000;
    c.world.eval.fact_recall = 24;
    c.world.eval.two_hop = 12;
    c.world.eval.general = 12;
    c.vocab = 600;
    c.seq_len = 64;
    c.dev_every = 10;
    c.importance_batches = 2;
    c
}

/// The micro run's data stage, built once per test binary.
fn data_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let run =
            Pipeline { root: tmp.path().to_path_buf(), config: micro_run_config(), options: RunOptions::default() };
        run.run_until("data").unwrap();
        let p = tmp.path().to_path_buf();
        (tmp, p)
    });
    p
}

/// A phase config for the micro run.
fn micro_phase(phase: &str, steps: u64) -> PhaseConfig {
    let mut c = PhaseConfig::embedded(phase, "tiny").unwrap();
    c.seq_len = 64;
    c.micro_batch = 2;
    c.tokens_per_step = 256; // 2 micro-batches per step: accumulation is exercised
    c.tokens = 256 * steps;
    c.checkpoint_every = 2;
    c.keep_last = 2;
    c.eval.every = 0;
    c
}

fn micro_model(moe: bool, vocab: usize) -> Qwen3 {
    let name = if moe { "tiny-k1p1-n16" } else { "tiny-dense" };
    let mut config = model::presets::embedded(name).unwrap().unwrap();
    config.vocab_size = vocab;
    config.num_hidden_layers = 2;
    let spec = if moe { Some(model::presets::embedded_moe(name).unwrap().1) } else { None };
    Qwen3::from_init(config, spec, autograd::DType::F32, model::init::qwen3_init(7, 0.02))
}

fn phase_run(cfg: &PhaseConfig, model: Qwen3, dir: &Path, faults: Faults) -> PhaseRun {
    let ds = Arc::new(PackedDataset::open(&data_dir().join("data/train")).unwrap());
    let total_micro = cfg.total_steps() * cfg.accumulation();
    let stream = BatchStream::new(ds, &cfg.mix, cfg.micro_batch, cfg.seed, total_micro).unwrap();
    let mut trainer = Trainer::new(cfg.clone(), model, None).unwrap();
    if let Some((_, p)) = list_checkpoints(&dir.join("ckpt")).unwrap().pop() {
        trainer.restore(read_checkpoint(&p).unwrap()).unwrap();
    }
    PhaseRun {
        trainer,
        stream,
        ckpt_dir: dir.join("ckpt"),
        metrics_dir: dir.join("metrics"),
        eval: None,
        progress: false,
        faults,
    }
}

fn vocab() -> usize {
    PackedDataset::open(&data_dir().join("data/train")).unwrap().manifest.vocab_size as usize
}

fn run(cfg: &PhaseConfig, model: Qwen3, dir: &Path, faults: Faults) -> actors::Result<PhaseOutcome> {
    run_phase(phase_run(cfg, model, dir, faults))
}

#[test]
fn resume_after_n_steps_equals_uninterrupted_bitwise() {
    let cfg = micro_phase("base", 6);
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = run(&cfg, micro_model(false, vocab()), straight_dir.path(), Faults::default()).unwrap();
    assert!(straight.completed && straight.state.step == 6);

    let dir = tempfile::tempdir().unwrap();
    let faults = Faults { stop_after_steps: Some(4), ..Faults::default() };
    let first = run(&cfg, micro_model(false, vocab()), dir.path(), faults).unwrap();
    assert!(!first.completed);
    assert_eq!(list_checkpoints(&dir.path().join("ckpt")).unwrap().last().unwrap().0, 4);
    // A fresh process: model re-initialised, then restored from the newest checkpoint.
    let resumed = run(&cfg, micro_model(false, vocab()), dir.path(), Faults::default()).unwrap();
    assert!(resumed.completed && resumed.state.step == 6);
    let (a, b) = (straight.model.params.flat(), resumed.model.params.flat());
    let diff = a.iter().zip(b.iter()).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    assert_eq!(diff, 0, "{diff} parameters differ after resume");
    assert_eq!(straight.state.cursor, resumed.state.cursor, "data cursor");
    assert_eq!(straight.state.autoclip, resumed.state.autoclip, "AutoClip window");
    assert_eq!(straight.state.last, resumed.state.last, "last step record");
}

#[test]
fn failed_dataloader_is_restarted_without_losing_or_repeating_a_batch() {
    let cfg = micro_phase("base", 4);
    let a = tempfile::tempdir().unwrap();
    let clean = run(&cfg, micro_model(false, vocab()), a.path(), Faults::default()).unwrap();
    let b = tempfile::tempdir().unwrap();
    let faults = Faults { loader_fail_at: Some(3), ..Faults::default() };
    let failed = run(&cfg, micro_model(false, vocab()), b.path(), faults).unwrap();
    assert_eq!(clean.loader_restarts, 0);
    assert_eq!(failed.loader_restarts, 1, "the supervisor restarted the loader once");
    assert_eq!(clean.trained_sequences, failed.trained_sequences, "same batches, same order");
    let (x, y) = (clean.model.params.flat(), failed.model.params.flat());
    assert!(x.iter().zip(y.iter()).all(|(p, q)| p.to_bits() == q.to_bits()), "same training");
    let log = std::fs::read_to_string(b.path().join("metrics/metrics.jsonl")).unwrap();
    assert!(log.contains("loader_retry"), "the retry is logged");
}

#[test]
fn injected_router_collapse_fires_the_breaker_and_logs_it() {
    let mut cfg = micro_phase("p1", 6);
    cfg.breakers.collapse_window = 3;
    let mut model = micro_model(true, vocab());
    // Collapse: a huge balancing bias sends every token of every layer to expert 0.
    for b in &mut model.router_bias {
        b[0] = 1e4;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(&cfg, model, dir.path(), Faults::default()).unwrap();
    let collapse: Vec<_> =
        out.state.actions.iter().filter(|a| a.action.breaker == actors::breakers::BreakerKind::Collapse).collect();
    assert!(!collapse.is_empty(), "collapse breaker fired: {:?}", out.state.actions);
    let a = &collapse[0];
    assert!(a.action.reason.contains("share"), "reason names the share: {}", a.action.reason);
    assert!(a.checkpoint.is_some(), "the action names a checkpoint to roll back to");
    let log = std::fs::read_to_string(dir.path().join("metrics/metrics.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"breaker\"") && l.contains("collapse")), "logged in metrics.jsonl");
}

#[test]
fn full_disk_while_checkpointing_is_a_clear_error_and_keeps_the_previous_checkpoint() {
    let cfg = micro_phase("base", 4);
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults { stop_after_steps: Some(2), ..Faults::default() };
    run(&cfg, micro_model(false, vocab()), dir.path(), faults).unwrap();
    let before = list_checkpoints(&dir.path().join("ckpt")).unwrap();
    assert_eq!(before.len(), 1);
    let faults = Faults { disk_budget: Some(100_000), ..Faults::default() };
    let err = run(&cfg, micro_model(false, vocab()), dir.path(), faults).unwrap_err().to_string();
    assert!(err.contains("No space left on device") || err.contains("os error 28"), "{err}");
    assert!(err.contains(".safetensors") || err.contains("config.json"), "names the file: {err}");
    let after = list_checkpoints(&dir.path().join("ckpt")).unwrap();
    assert_eq!(before, after, "previous checkpoint kept, no partial one");
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path().join("ckpt")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary directory left: {leftovers:?}");
    read_checkpoint(&after[0].1).expect("the previous checkpoint still loads");
}

#[test]
fn first_third_of_p1_is_domain_biased_then_mixed_and_the_stream_resumes_from_any_cursor() {
    let cfg = micro_phase("p1", 30);
    let ds = Arc::new(PackedDataset::open(&data_dir().join("data/train")).unwrap());
    let total = cfg.total_steps() * cfg.accumulation();
    let mut wide = cfg.mix.clone();
    wide.weights = [("medical".to_string(), 1.0), ("general".to_string(), 1.0)].into();
    let stream = BatchStream::new(ds, &wide, 8, cfg.seed, total).unwrap();
    let biased_until = (total as f64 * wide.biased_frac).round() as u64;
    let mut cursor = actors::batches::LoaderCursor::default();
    let (mut single, mut mixed_batches, mut cursors) = (0, 0, Vec::new());
    let mut all = Vec::new();
    for k in 0..total {
        cursors.push(cursor.clone());
        let (b, next) = stream.next(&cursor).unwrap();
        let one_domain = b.domains.iter().all(|d| d == &b.domains[0]);
        if k < biased_until {
            assert!(one_domain, "biased micro-batch {k} mixes domains: {:?}", b.domains);
            single += 1;
        } else if !one_domain {
            mixed_batches += 1;
        }
        all.push(b.sequences.clone());
        cursor = next;
    }
    assert!(single > 0 && mixed_batches > 0, "{single} biased, {mixed_batches} mixed");
    // Any cursor (as saved in a checkpoint) reproduces the rest of the stream exactly.
    for k in [0, biased_until.saturating_sub(1), biased_until, total - 1] {
        let (b, _) = stream.next(&cursors[k as usize]).unwrap();
        assert_eq!(b.sequences, all[k as usize], "micro-batch {k} from its cursor");
    }
}

#[test]
fn rollback_restores_the_newest_checkpoint_keeps_the_halved_lr_and_finishes() {
    let cfg = micro_phase("base", 8);
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults { rollback_at: Some(5), ..Faults::default() };
    let out = run(&cfg, micro_model(false, vocab()), dir.path(), faults).unwrap();
    assert!(out.completed && out.state.step == 8);
    let a = out.state.actions.iter().find(|a| a.action.rollback).expect("the rollback action is logged");
    assert!(a.checkpoint.as_deref().is_some_and(|c| c.ends_with("step-00000004")), "rolls back to step 4: {a:?}");
    assert_eq!(out.state.knobs.lr_scale, 0.5, "the halved LR survives the rollback");
    // Step 5 ran twice: once before the rollback, once after.
    let per_step = (cfg.accumulation() * cfg.micro_batch as u64) as usize;
    assert_eq!(out.trained_sequences.len(), 9 * per_step);
    let log = std::fs::read_to_string(dir.path().join("metrics/metrics.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"rollback\"") && l.contains("step-00000004")), "rollback logged");
    // Steps 5..8 replayed with half the LR: not the weights of a run without the rollback.
    let plain = tempfile::tempdir().unwrap();
    let reference = run(&cfg, micro_model(false, vocab()), plain.path(), Faults::default()).unwrap();
    assert_ne!(reference.model.params.flat(), out.model.params.flat());
}

/// A micro-batch's sequences and token ids.
type Drawn = (Vec<u64>, Vec<u32>);

/// Every micro-batch of `stream` from a fresh cursor.
fn walk(stream: &BatchStream, n: u64) -> (Vec<Drawn>, Vec<actors::batches::LoaderCursor>) {
    let mut cursor = actors::batches::LoaderCursor::default();
    let (mut out, mut cursors) = (Vec::new(), Vec::new());
    for _ in 0..n {
        cursors.push(cursor.clone());
        let (b, next) = stream.next(&cursor).unwrap();
        out.push((b.sequences, b.ids));
        cursor = next;
    }
    (out, cursors)
}

#[test]
fn baseline_small_stream_is_the_micro_batches_of_base_p0_p1_in_order_and_resumes_from_any_cursor() {
    let ds = Arc::new(PackedDataset::open(&data_dir().join("data/train")).unwrap());
    // Three phases with their own mixes and a domain-biased start (p1), as the pipeline builds them.
    let segs: Vec<(PhaseConfig, u64)> =
        [("base", 4), ("p0", 3), ("p1", 6)].into_iter().map(|(p, steps)| (micro_phase(p, steps), steps * 2)).collect();
    let own: Vec<Vec<Drawn>> = segs
        .iter()
        .map(|(c, n)| walk(&BatchStream::new(ds.clone(), &c.mix, c.micro_batch, c.seed, *n).unwrap(), *n).0)
        .collect();
    let parts = segs
        .iter()
        .map(|(c, n)| (BatchStream::new(ds.clone(), &c.mix, c.micro_batch, c.seed, *n).unwrap(), *n))
        .collect();
    let chain = BatchStream::chain(parts).unwrap();
    let total: u64 = segs.iter().map(|s| s.1).sum();
    let (got, cursors) = walk(&chain, total);
    assert_eq!(got, own.concat(), "the chain is not the phases' own micro-batches in order");
    assert_ne!(own[0], own[2][..own[0].len()], "the segments differ (else this test proves nothing)");
    // A resumed reference (any checkpointed cursor, segment boundaries included) continues exactly.
    for k in [0, 7, 8, 10, 11, total - 1] {
        let (b, _) = chain.next(&cursors[k as usize]).unwrap();
        assert_eq!((b.sequences, b.ids), got[k as usize], "micro-batch {k} from its cursor");
    }
}

#[test]
fn baseline_small_configs_are_checked_before_any_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = |config: RunConfig, files: &[(&str, serde_json::Value)]| {
        let mut options = RunOptions::default();
        for (phase, v) in files {
            let path = tmp.path().join(format!("{phase}.json"));
            std::fs::write(&path, v.to_string()).unwrap();
            options.phase_files.insert(phase.to_string(), path);
        }
        Pipeline { root: tmp.path().join("run"), config, options }
    };
    let stage = |n: &str| actors::manifest::Stage::from_name(n).unwrap();
    let embedded: serde_json::Value =
        serde_json::from_str(include_str!("../../configs/phases/baseline-small.json")).unwrap();
    // The budget is base + p0 + p1's micro-batches: 384 + 64 + 160 of the tiny presets.
    let p = pipeline(RunConfig::embedded().unwrap(), &[]);
    p.validate(stage("baseline-small")).unwrap();
    let cfg = p.phase_config(stage("baseline-small")).unwrap();
    assert_eq!((cfg.tokens, cfg.total_steps()), ((384 + 64 + 160) * 2048, 384 + 64 + 160));
    // No small preset: refused naming the field.
    let mut c = RunConfig::embedded().unwrap();
    c.small_model = None;
    let e = pipeline(c, &[]).validate(stage("baseline-small")).unwrap_err().to_string();
    assert!(e.contains("small_model") && e.contains("missing"), "{e}");
    // A MoE preset as the small reference.
    let mut c = RunConfig::embedded().unwrap();
    c.small_model = Some("tiny-k1p1-n16".into());
    let e = pipeline(c, &[]).validate(stage("p1")).unwrap_err().to_string();
    assert!(e.contains("small_model") && e.contains("MoE preset"), "{e}");
    // `eval` needs the harness.
    let e = pipeline(RunConfig::embedded().unwrap(), &[]).validate(stage("eval")).unwrap_err().to_string();
    assert!(e.contains("evaluator"), "{e}");
    // A budget of its own beside `same_tokens_as`.
    let mut v = embedded.clone();
    v["presets"]["tiny"]["tokens"] = 4096.into();
    let e = pipeline(RunConfig::embedded().unwrap(), &[("baseline-small", v)])
        .validate(stage("baseline-small"))
        .unwrap_err();
    assert!(e.to_string().contains("baseline-small.json") && e.to_string().contains("leave `tokens` out"), "{e}");
    // Micro-batches of another shape than the phases it follows.
    let mut v = embedded.clone();
    v["presets"]["tiny"]["micro_batch"] = 4.into();
    let e = pipeline(RunConfig::embedded().unwrap(), &[("baseline-small", v)])
        .validate(stage("baseline-small"))
        .unwrap_err();
    assert!(e.to_string().contains("field `micro_batch`: 4 but phase `base` has 8"), "{e}");
    // An unknown phase to follow.
    let mut v = embedded;
    v["same_tokens_as"] = serde_json::json!(["base", "p7"]);
    let e = pipeline(RunConfig::embedded().unwrap(), &[("baseline-small", v)])
        .validate(stage("baseline-small"))
        .unwrap_err();
    assert!(e.to_string().contains("same_tokens_as") && e.to_string().contains("p7"), "{e}");
}
