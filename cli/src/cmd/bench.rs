//! `moe-cli bench`: speed measurements printed as one JSON line each, with the same keys as the
//! Python references in tools/ so the two can be compared in one run (tools/bench_*.sh).

use crate::presets::preset_config;
use crate::progress::bar;
use anyhow::{bail, Context, Result};
use autograd::optim::AdamW;
use autograd::DType;
use kernels_cpu::adamw::AdamWConfig;
use kernels_cpu::check::rand_vec;
use kernels_cpu::gemm::{matmul, Trans};
use model::init::qwen3_init;
use model::moe_spec::MoeSpec;
use model::qwen3::RunOptions;
use model::train::train_step;
use model::{Qwen3, TokenBatch};
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
    /// f32 GEMM GFLOP/s, A[M,K] · B[K,N], median of repeated runs.
    Gemm {
        /// Comma-separated MxKxN shapes.
        #[arg(long, default_value = "2048x256x768,2048x768x256,512x2048x6144")]
        shapes: String,
        /// Timed repetitions per shape (after warm-up).
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
    /// One training step (forward + backward + AdamW) of a preset model on random tokens.
    Step {
        /// Model preset (configs/presets/).
        #[arg(long, default_value = "tiny-dense")]
        preset: String,
        /// Sequences per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 256)]
        seq: usize,
        /// Timed steps (the median is reported).
        #[arg(long, default_value_t = 6)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Also time every op (forward and backward) over the timed steps: adds `profile` to
        /// the JSON line and prints a table on stderr.
        #[arg(long)]
        profile: bool,
    },
}

/// Runs the chosen benchmark.
pub fn run(a: Args, threads: usize) -> Result<()> {
    match a.what {
        What::Gemm { shapes, reps } => bench_gemm(&shapes, reps, threads),
        What::Step { preset, batch, seq, steps, warmup, profile } => {
            bench_step(&StepBench { preset: &preset, b: batch, t: seq, steps, warmup, profile }, threads)
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

fn bench_gemm(shapes: &str, reps: usize, threads: usize) -> Result<()> {
    for s in shapes.split(',') {
        let (m, k, n) = parse_shape(s)?;
        let (a, b) = (rand_vec(m * k, 1), rand_vec(k * n, 2));
        let mut c = vec![0f32; m * n];
        for _ in 0..3 {
            matmul(&mut c, &a, &b, m, k, n, Trans::No, Trans::No, false);
        }
        let times: Vec<f64> = (0..reps.max(1))
            .map(|_| {
                let t0 = Instant::now();
                matmul(&mut c, &a, &b, m, k, n, Trans::No, Trans::No, false);
                t0.elapsed().as_secs_f64()
            })
            .collect();
        let gflops = 2.0 * (m * k * n) as f64 / median(times) / 1e9;
        println!(
            "{}",
            json!({"bench": "gemm", "impl": "medmoe", "m": m, "k": k, "n": n, "threads": threads, "gflops": gflops})
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
}

fn bench_step(sb: &StepBench, threads: usize) -> Result<()> {
    let StepBench { preset, b, t, steps, warmup, profile } = *sb;
    let config = preset_config(preset)?;
    if t > config.max_position_embeddings {
        bail!("--seq {t} exceeds the preset's max_position_embeddings {}", config.max_position_embeddings);
    }
    let v = config.vocab_size as u32;
    // A preset with a `moe` section trains the MoE model (training mode: capacity, router losses).
    let moe = MoeSpec::from_config(&config, Path::new(preset))?;
    let moe_json = moe.as_ref().map(|m| {
        json!({"experts": m.num_experts, "expert_width": m.expert_width, "shared_width": m.shared_width,
               "capacity_factor": m.capacity_factor, "weighting": model::moe_spec::weighting_name(m.weighting)})
    });
    let mut model = Qwen3::from_init(config, moe, DType::F32, qwen3_init(0, 0.02));
    let params = model.params.numel();
    let cfg = AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05 };
    let mut opt = AdamW::new(&model.params, cfg);
    let steps = steps.max(1);
    let pb = bar((warmup + steps) as u64, "bench step");
    let mut times = Vec::with_capacity(steps);
    let mut last_loss = 0.0;
    for i in 0..warmup + steps {
        let ids: Vec<u32> =
            rand_vec(b * t, 100 + i as u64).iter().map(|&x| ((x + 1.0) * 0.5 * v as f32) as u32 % v).collect();
        let targets: Vec<i32> = (0..b * t).map(|j| if (j + 1) % t == 0 { -100 } else { ids[j + 1] as i32 }).collect();
        let batch = TokenBatch::new(ids, b, t)?;
        if profile && i == warmup {
            autograd::profile::start();
        }
        let t0 = Instant::now();
        let stats = train_step(&mut model, &mut opt, &batch, &targets, &RunOptions::train(i as u64))?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
        last_loss = stats.loss;
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
