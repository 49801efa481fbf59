//! `moe-cli run`: the training pipeline on a run directory (data -> base -> importance ->
//! moe-init -> p0 -> p1 -> p2 -> p3 -> p4 (staged QAT); baseline-small, the small dense reference on the same
//! micro-batches as base + p0 + p1; eval, same-mask PTQ and the comparison table through
//! `moe-cli eval`), running missing prerequisites and resuming from checkpoints. Every
//! config is checked before the first stage; the run holds the directory's lock; a stage whose
//! inputs changed is rebuilt beside the finished one and swapped in (actors::stages).

use actors::stages::{PhaseSummary, Pipeline, RunConfig, RunOptions, STAGES};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `run`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Args)]
struct Common {
    /// Run directory (created if missing; stages already done there are skipped).
    #[arg(long, default_value = "runs/default")]
    run_dir: PathBuf,
    /// Run config JSON (default: the embedded configs/runs/tiny.json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Replace a phase's config: `p1=path/to/p1.json` (repeatable; default: configs/phases/, embedded).
    #[arg(long = "phase-config", value_parser = parse_phase_file)]
    phase_configs: Vec<(String, PathBuf)>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Rebuild the last stage even when it is up to date (the finished one is replaced only when
    /// the new one is complete).
    #[arg(long)]
    force: bool,
    /// Where the training steps run: cpu, sim (the GPU kernels in the simulator: slow), cuda.
    #[arg(long, default_value = "cpu", value_parser = crate::device::parse_device)]
    device: autograd::Device,
    /// GEMM operand precision of the training stages: f32, or bf16 (bf16 operands, f32
    /// accumulation, f32 weights / gradients / AdamW; AMX tiles or AVX512-BF16 where the CPU has
    /// them, else emulated at f32 speed; cpu device only). Part of the training stages' keys.
    #[arg(long, default_value = "f32", value_parser = crate::args::precision)]
    precision: autograd::Precision,
}

#[derive(clap::Subcommand)]
enum What {
    /// Run one training phase (base, p0, p1, p2, p3, p4, baseline-small, teacher-continued) and
    /// every missing prerequisite (p4, staged QAT, trains from the newest finished of p3, p2, p1).
    Phase {
        /// Phase name.
        phase: String,
        #[command(flatten)]
        common: Common,
    },
    /// Run every stage up to and including `--until`.
    All {
        /// Last stage (data, base, importance, moe-init, p0, p1, p2, p3, p4, baseline-small,
        /// teacher-continued, eval): it and the stages it reads are built (`eval`: data .. p1,
        /// baseline-small, then the table).
        #[arg(long, default_value = "p1")]
        until: String,
        #[command(flatten)]
        common: Common,
    },
}

pub fn parse_phase_file(s: &str) -> std::result::Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected PHASE=FILE"))?;
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Test hooks read from the environment (only the CLI touches the environment).
fn faults_from_env() -> actors::supervisor::Faults {
    let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    actors::supervisor::Faults {
        loader_fail_at: num("MEDMOE_FAULT_LOADER_AT"),
        disk_budget: num("MEDMOE_FAULT_DISK_BYTES"),
        stop_after_steps: num("MEDMOE_FAULT_STOP_AFTER"),
        rollback_at: num("MEDMOE_FAULT_ROLLBACK_AT"),
        kill_at: std::env::var("MEDMOE_FAULT_KILL_AT").ok().and_then(|v| actors::supervisor::KillPoint::parse(&v)),
        qat_penalty_pp: std::env::var("MEDMOE_FAULT_QAT_PENALTY_PP").ok().and_then(|v| v.parse().ok()),
    }
}

/// `moe-cli run all --until <until>` on `run_dir` with the run config at `config` (default: the
/// embedded one) and the phase files given, on the CPU in f32 (the experiments' way in).
pub fn run_all(
    run_dir: &std::path::Path,
    config: Option<&std::path::Path>,
    phase_configs: Vec<(String, PathBuf)>,
    until: &str,
    quiet: bool,
) -> Result<()> {
    let common = Common {
        run_dir: run_dir.to_path_buf(),
        config: config.map(std::path::Path::to_path_buf),
        phase_configs,
        quiet,
        force: false,
        device: autograd::Device::Cpu,
        precision: autograd::Precision::F32,
    };
    run(Args { what: What::All { until: until.to_string(), common } })
}

/// Stage `eval` runs `moe-cli eval` on the models the pipeline names (all items, generated
/// answers, perplexity on the run's held-out documents).
fn evaluator() -> actors::eval_job::Evaluator {
    actors::eval_job::Evaluator(std::sync::Arc::new(|job: &actors::eval_job::EvalJob| {
        let args = super::eval::Args {
            models: job.models.clone(),
            sets: vec![job.world.display().to_string()],
            out: job.out.clone(),
            tokenizer: None,
            max_items: job.max_items,
            no_generate: false,
            gen_tokens: job.gen_tokens,
            no_ppl: false,
            ppl_docs: job.ppl_docs,
            dev_every: job.dev_every as usize,
            ppl_seq_len: job.seq_len,
            train_text: Vec::new(),
            quiet: !job.progress,
            chat: false,
            think: false,
            kl_ref: None,
        };
        super::eval::run(args).map_err(|e| format!("{e:#}"))
    }))
}

/// Runs the pipeline.
pub fn run(a: Args) -> Result<()> {
    let (until, common) = match a.what {
        What::Phase { phase, common } => {
            if !actors::phase::EMBEDDED.iter().any(|(n, _)| *n == phase) {
                anyhow::bail!("unknown phase `{phase}` (known: {})", actors::phase::phase_names());
            }
            (phase, common)
        }
        What::All { until, common } => (until, common),
    };
    if !STAGES.contains(&until.as_str()) {
        anyhow::bail!("unknown stage `{until}` (known: {})", STAGES.join(", "));
    }
    let config = match &common.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            RunConfig::parse(&text, &p.display().to_string())?
        }
        None => RunConfig::embedded()?,
    };
    let options = RunOptions {
        progress: !common.quiet,
        phase_files: common.phase_configs.into_iter().collect(),
        faults: faults_from_env(),
        verbose: true,
        device: common.device,
        precision: common.precision,
        force: common.force,
        config_source: common.config.as_ref().map_or("configs/runs/tiny.json".into(), |p| p.display().to_string()),
        evaluator: Some(evaluator()),
    };
    let started = std::time::Instant::now();
    let pipeline = Pipeline { root: common.run_dir.clone(), config, options };
    pipeline.validate(actors::manifest::Stage::from_name(&until)?)?;
    check_memory(&pipeline.config, &pipeline.options.config_source)?;
    // A device (or precision) this build or machine cannot run fails now, not after the data and
    // base stages.
    autograd::Tape::new_on(autograd::Compute { device: common.device, precision: common.precision })?;
    if let Some(w) = crate::args::precision_warning(common.precision) {
        eprintln!("{w}");
    }
    let summary = pipeline.run_until(&until)?;
    if let Some(s) = summary {
        print_summary(&s);
        println!("summary    {}", common.run_dir.join("summary.json").display());
    }
    // The report of what the run directory holds now (a failed report does not fail the run).
    match super::report::write_report(&common.run_dir, None, &common.run_dir.join("report")) {
        Ok(path) => println!("report     {}", path.display()),
        Err(e) => eprintln!("warning: no report: {e:#}"),
    }
    println!("total      {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The run's largest allocations against the memory available, before any stage runs: the
/// world corpus (held in memory while it is built: ~12 bytes per token, as `data world`
/// counts) and training each model (f32 weights, gradients and AdamW's two moments: 16 bytes
/// per parameter).
fn check_memory(c: &RunConfig, source: &str) -> Result<()> {
    let tokens = c.world.corpus.tokens as u128;
    crate::args::ensure_fits(&format!("{source} field `world.corpus.tokens` ({tokens} tokens)"), 12 * tokens)?;
    let base = match c.hf_base(source)? {
        Some(h) => Some((h.config, None)),
        None => model::presets::embedded(&c.base_model).transpose()?.map(|cfg| (cfg, None)),
    };
    let moe = model::presets::embedded_moe(&c.moe_model).ok().map(|(cfg, spec)| (cfg, Some(spec)));
    for (field, name, preset) in [("base_model", &c.base_model, base), ("moe_model", &c.moe_model, moe)] {
        if let Some((cfg, spec)) = preset {
            let params = crate::args::param_count(&cfg, spec.as_ref());
            crate::args::ensure_fits(
                &format!("{source} field `{field}`: training `{name}` ({params} parameters)"),
                16 * params,
            )?;
        }
    }
    Ok(())
}

fn print_summary(s: &PhaseSummary) {
    println!("phase      {} ({} steps, {} tokens, {:.1} s)", s.phase, s.steps, s.tokens, s.seconds);
    match s.gemm_backend.as_str() {
        "" => println!("precision  {}", s.precision),
        gemm => println!("precision  {} (GEMM backend {gemm})", s.precision),
    }
    println!("loss       {:.4}", s.final_loss);
    for (d, p) in &s.dev_ppl {
        println!("dev ppl    {d:<14} {p:>8.2}");
    }
    for (set, acc) in &s.mcq_accuracy {
        let chance = s.mcq_chance.get(set).copied().unwrap_or(0.0);
        let norm = s.mcq_accuracy_norm.get(set).copied().unwrap_or(0.0);
        println!(
            "mcq        {set:<14} {:>6.1}%  (per-token {:>5.1}%, chance {:>4.1}%)",
            100.0 * acc,
            100.0 * norm,
            100.0 * chance
        );
    }
    for (i, r) in s.router.iter().enumerate() {
        let max = r.share.iter().cloned().fold(0.0f32, f32::max);
        let min = r.share.iter().cloned().fold(1.0f32, f32::min);
        println!(
            "router     layer {i}: share min {:.1}% max {:.1}%, load entropy {:.2}, overflow {:.2}%",
            100.0 * min,
            100.0 * max,
            r.load_entropy,
            100.0 * r.overflow_frac
        );
    }
    for (d, r) in &s.named_routing {
        let layers: Vec<String> = r.per_layer.iter().map(|a| format!("{:.1}%", 100.0 * a)).collect();
        println!(
            "named      {d:<14} -> expert {:<3} {:>6.1}% of {} held-out tokens routed there (per layer {})",
            r.expert,
            100.0 * r.accuracy,
            r.tokens,
            layers.join(" ")
        );
    }
    for (k, v) in &s.data {
        println!("data       {k:<22} {v}");
    }
    println!("breakers   {} actions", s.breaker_actions.len());
    for a in &s.breaker_actions {
        println!("           step {}: {:?} ({})", a.action.step, a.action.breaker, a.action.reason);
    }
    let artifacts: BTreeMap<_, _> = s.artifacts.iter().collect();
    for (k, v) in artifacts {
        println!("artifact   {k:<14} {v}");
    }
}
