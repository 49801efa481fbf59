//! `moe-cli bench`: speed measurements printed as one JSON line each, with the same keys as the
//! Python references in tools/ so the two can be compared in one run (tools/bench_*.sh).

use crate::presets::preset_config;
use crate::progress::bar;
use actors::batches::LoaderCursor;
use actors::phase::PhaseConfig;
use actors::trainer::Trainer;
use anyhow::{bail, Context, Result};
use autograd::{DType, Device, Precision};
use data::pack::PackedBatch;
use kernels_cpu::check::rand_vec;
use kernels_cpu::gemm::{matmul_with, Trans};
use model::init::qwen3_init;
use model::moe_spec::MoeSpec;
use model::Qwen3;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// GEMM GFLOP/s, A[M,K] · B[K,N], median of repeated runs.
    Gemm {
        /// Comma-separated MxKxN shapes.
        #[arg(long, default_value = "2048x256x768,2048x768x256,512x2048x6144")]
        shapes: String,
        /// Timed repetitions per shape (after warm-up).
        #[arg(long, default_value_t = 20, value_parser = crate::args::count_usize)]
        reps: usize,
        /// Operand precision: f32, or bf16 (operands rounded to bf16, f32 accumulation; the
        /// backend `--precision bf16` training runs on this CPU: AMX, AVX512-BF16 or emulated).
        #[arg(long, default_value = "f32", value_parser = crate::args::precision)]
        precision: Precision,
    },
    /// One training step of a preset model on random tokens: the product step (`Trainer::step`:
    /// forward, backward, AutoClip, AdamW; MoE: router losses, capacity 1.25, temperature 0.9).
    Step {
        /// Model preset (configs/presets/).
        #[arg(long, default_value = "tiny-dense")]
        preset: String,
        /// Sequences per step.
        #[arg(long, default_value_t = 8, value_parser = crate::args::count_usize)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 256, value_parser = crate::args::count_usize)]
        seq: usize,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = 6, value_parser = crate::args::count_usize)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Also time every op (forward and backward) over the timed steps: adds `profile` to
        /// the JSON line and prints a table on stderr.
        #[arg(long)]
        profile: bool,
        /// Where the step runs: cpu, sim (the GPU kernels in the simulator: slow), cuda.
        #[arg(long, default_value = "cpu", value_parser = crate::device::parse_device)]
        device: Device,
        /// GEMM operand precision: f32, or bf16 (bf16 operands, f32 accumulation; AMX tiles or
        /// AVX512-BF16 where the CPU has them, else emulated at f32 speed; cpu device only).
        #[arg(long, default_value = "f32", value_parser = crate::args::precision)]
        precision: Precision,
    },
}

/// Runs the chosen benchmark.
pub fn run(a: Args, threads: usize) -> Result<()> {
    match a.what {
        What::Gemm { shapes, reps, precision } => {
            if let Some(w) = crate::args::precision_warning(precision) {
                eprintln!("{w}");
            }
            bench_gemm(&shapes, reps, precision, threads)
        }
        What::Step { preset, batch, seq, steps, warmup, profile, device, precision } => {
            let sb = StepBench { preset: &preset, b: batch, t: seq, steps, warmup, profile, device, precision };
            bench_step(&sb, threads)
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Peak resident set size of this process in MiB (VmHWM), if the OS reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let dims: Vec<usize> = s
        .split('x')
        .map(|d| d.trim().parse::<usize>().with_context(|| format!("shape `{s}`: `{d}` is not a size")))
        .collect::<Result<_>>()?;
    match dims[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
        _ => bail!("shape `{s}` must be MxKxN with positive sizes"),
    }
}

fn bench_gemm(shapes: &str, reps: usize, precision: Precision, threads: usize) -> Result<()> {
    let backend = precision.backend();
    let shapes: Vec<(usize, usize, usize)> = shapes.split(',').map(parse_shape).collect::<Result<_>>()?;
    for &(m, k, n) in &shapes {
        let (m, k, n) = (m as u128, k as u128, n as u128);
        crate::args::ensure_fits(&format!("gemm {m}x{k}x{n}"), 4 * (m * k + k * n + m * n))?;
    }
    for (m, k, n) in shapes {
        let (a, b) = (rand_vec(m * k, 1), rand_vec(k * n, 2));
        let mut c = vec![0f32; m * n];
        let threads_now = rayon::current_num_threads();
        let mut run = || matmul_with(backend, threads_now, &mut c, &a, &b, m, k, n, Trans::No, Trans::No, false);
        for _ in 0..3 {
            run();
        }
        let times: Vec<f64> = (0..reps.max(1))
            .map(|_| {
                let t0 = Instant::now();
                run();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        let gflops = 2.0 * (m * k * n) as f64 / median(times) / 1e9;
        println!(
            "{}",
            json!({"bench": "gemm", "impl": "medmoe", "m": m, "k": k, "n": n, "threads": threads, "gflops": gflops,
                   "precision": precision.name(), "backend": backend.name()})
        );
    }
    Ok(())
}

/// What `bench step` runs.
struct StepBench<'a> {
    preset: &'a str,
    b: usize,
    t: usize,
    steps: usize,
    warmup: usize,
    profile: bool,
    device: Device,
    precision: Precision,
}

/// The phase `bench step` trains: one micro-batch of `b` x `t` per optimiser step, `steps`
/// steps, breakers off. Dense: the `base` phase. MoE: the pretraining phase `p1` with p0's
/// fixed router settings (capacity 1.25, temperature 0.9, lb 0.01, z 1e-4, no dropout or
/// noise), so every step routes alike.
fn bench_phase(moe: bool, b: usize, t: usize, steps: usize) -> Result<PhaseConfig> {
    let mut c = PhaseConfig::embedded(if moe { "p1" } else { "base" }, "seed-plan")?;
    if moe {
        c.router = PhaseConfig::embedded("p0", "seed-plan")?.router;
    }
    c.micro_batch = b;
    c.seq_len = t;
    c.tokens_per_step = (b * t) as u64;
    c.tokens = (b * t * steps) as u64;
    c.breakers.enabled = false;
    c.eval.every = 0;
    Ok(c)
}

/// `b` rows of `t` random ids below `v` (one document per row); targets are the next token,
/// `-100` at each row's end.
fn random_batch(b: usize, t: usize, v: u32, seed: u64) -> PackedBatch {
    let ids: Vec<u32> = rand_vec(b * t, seed).iter().map(|&x| ((x + 1.0) * 0.5 * v as f32) as u32 % v).collect();
    let targets = (0..b * t).map(|j| if (j + 1) % t == 0 { -100 } else { ids[j + 1] as i32 }).collect();
    PackedBatch {
        b,
        t,
        pos: (0..b * t).map(|j| (j % t) as u32).collect(),
        seg: (0..b * t).map(|j| (j / t) as u32).collect(),
        ids,
        targets,
        domains: vec!["random".into(); b],
        sequences: (0..b as u64).collect(),
    }
}

fn bench_step(sb: &StepBench, threads: usize) -> Result<()> {
    let StepBench { preset, b, t, steps, warmup, profile, device, precision } = *sb;
    let config = preset_config(preset)?;
    if t > config.max_position_embeddings {
        bail!("--seq {t} exceeds the preset's max_position_embeddings {}", config.max_position_embeddings);
    }
    if b == 0 || t < 2 {
        bail!("--batch must be positive and --seq at least 2");
    }
    let v = config.vocab_size as u32;
    // A preset with a `moe` section trains the MoE model (router losses, capacity).
    let moe = MoeSpec::from_config(&config, Path::new(preset))?;
    // Parameters, gradients and AdamW moments, plus at least the activations every layer keeps
    // for its backward (~6 hidden-size and 3 FFN-width vectors per token).
    let per_token =
        config.num_hidden_layers as u128 * (6 * config.hidden_size as u128 + 3 * config.intermediate_size as u128);
    let bytes = 4 * (4 * crate::args::param_count(&config, moe.as_ref()) + (b as u128) * (t as u128) * per_token);
    crate::args::ensure_fits(&format!("a step of --batch {b} --seq {t} on {preset}"), bytes)?;
    let steps = steps.max(1);
    let phase = bench_phase(moe.is_some(), b, t, warmup + steps)?;
    let model = Qwen3::from_init(config, moe, DType::F32, qwen3_init(0, 0.02));
    let params = model.params.numel();
    let mut trainer = Trainer::new(phase, model, None)?;
    trainer.set_precision(precision)?;
    trainer.set_device(device)?;
    if let Some(w) = crate::args::precision_warning(precision) {
        eprintln!("{w}");
    }
    let moe_json = trainer.model.moe.as_ref().map(|m| {
        let capacity = trainer.router_training_at(0).and_then(|r| r.capacity_factor);
        json!({"experts": m.num_experts, "expert_width": m.expert_width, "shared_width": m.shared_width,
               "capacity_factor": capacity, "weighting": model::moe_spec::weighting_name(m.weighting)})
    });
    let pb = bar((warmup + steps) as u64, "bench step");
    let mut times = Vec::with_capacity(steps);
    let mut last_loss = 0.0;
    for i in 0..warmup + steps {
        let batch = random_batch(b, t, v, 100 + i as u64);
        if profile && i == warmup {
            autograd::profile::start();
        }
        let t0 = Instant::now();
        let (rec, _) = trainer.step(std::slice::from_ref(&batch), LoaderCursor::default())?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
        last_loss = rec.loss;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let profile_json = profile.then(|| profile_report(&autograd::profile::take(), steps, &times));
    let all_step_s: Vec<f64> = times.iter().map(|t| (t * 1e4).round() / 1e4).collect();
    let min_step_s = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let step_s = median(times.clone());
    println!(
        "{}",
        json!({
            "bench": "step", "impl": "medmoe", "preset": preset, "batch": b, "seq": t, "threads": threads,
            "device": device.to_string(), "precision": precision.name(), "gemm": precision.backend().name(),
            "row_isa": kernels_cpu::fastmath::row_isa().name(),
            "tokens_per_s": (b * t) as f64 / step_s, "step_s": step_s,
            "peak_rss_mb": peak_rss_mb(), "loss": last_loss, "min_step_s": min_step_s, "all_step_s": all_step_s,
            "params": params, "moe": moe_json, "profile": profile_json,
        })
    );
    Ok(())
}

/// Prints the per-op profile of `steps` timed steps as a table on stderr and returns it as JSON
/// (milliseconds per step).
fn profile_report(ops: &[autograd::profile::OpTimes], steps: usize, times: &[f64]) -> serde_json::Value {
    let per_step = |s: f64| s * 1e3 / steps as f64;
    let step_ms = per_step(times.iter().sum());
    let covered: f64 = ops.iter().map(|o| per_step(o.forward_s + o.backward_s)).sum();
    eprintln!("{:<24} {:>10} {:>10} {:>10} {:>6} {:>7}", "op", "fwd ms", "bwd ms", "total ms", "calls", "share");
    for o in ops {
        let total = per_step(o.forward_s + o.backward_s);
        eprintln!(
            "{:<24} {:>10.2} {:>10.2} {:>10.2} {:>6} {:>6.1}%",
            o.op,
            per_step(o.forward_s),
            per_step(o.backward_s),
            total,
            o.calls / steps,
            100.0 * total / step_ms
        );
    }
    eprintln!(
        "{:<24} {:>10} {:>10} {:>10.2} {:>6} {:>6.1}%",
        "(all ops)",
        "",
        "",
        covered,
        "",
        100.0 * covered / step_ms
    );
    eprintln!("{:<24} {:>10} {:>10} {:>10.2}", "(mean step)", "", "", step_ms);
    serde_json::Value::Array(
        ops.iter()
            .map(|o| {
                json!({"op": o.op, "forward_ms": per_step(o.forward_s), "backward_ms": per_step(o.backward_s),
                       "calls_per_step": o.calls / steps})
            })
            .collect(),
    )
}
