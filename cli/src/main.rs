//! `moe-cli`: the medmoe command line. The binary is glue; the work lives in the library crates.

mod args;
mod cmd;
mod device;
mod ids;
mod presets;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// mimalloc keeps freed pages mapped for reuse: a training step frees and re-allocates the same
// activation sizes every step, and glibc returned them to the OS (page faults were ~10% of a step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// medmoe: turn dense LLMs into Mixture-of-Experts models and train them, in Rust.
#[derive(Parser)]
#[command(name = "moe-cli", version, about, long_about = None)]
struct Cli {
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model directory's config, tensor table and parameter counts.
    Inspect(cmd::inspect::Args),
    /// Run a model on token ids and write the logits [B,T,V] f32 to a safetensors file.
    Logits(cmd::logits::Args),
    /// Write a randomly initialised dense model from a preset.
    Init(cmd::init::Args),
    /// Per-FFN-neuron Taylor importance over a packed corpus (or the magnitude proxy).
    Importance(cmd::importance::Args),
    /// Convert a dense Qwen3 into a MoE: shared expert + top-1 of N routed experts.
    Surgery(cmd::surgery::Args),
    /// Export a model to a stock format (Hugging Face Dots1 / Qwen3) that reproduces its logits.
    Export(cmd::export::Args),
    /// GPTQ / round-to-nearest quantization from calibration data into an HF GPTQ checkpoint (vLLM).
    Quantize(cmd::quantize::Args),
    /// Measure speed: GEMM GFLOP/s or a full training step; prints JSON lines.
    Bench(cmd::bench::Args),
    /// Synthetic medical world, tokenizer, packing and data statistics.
    Data(cmd::data::Args),
    /// Generate text with a KV cache (greedy or sampled; plain or chat prompts); JSON line per prompt.
    Generate(cmd::generate::Args),
    /// Score models on the same MCQ sets (log-likelihood and generated answers), perplexity per
    /// domain, routing and capacity overflow, latency; CSV per model x set and summary.json.
    Eval(cmd::eval::Args),
    /// Write report.html with PNG plots for a run directory (training curves, routing, eval).
    Report(cmd::report::Args),
    /// Run the training pipeline (data, base, importance, surgery, p0, p1, p2, p3; baseline-small,
    /// eval) in a run directory.
    Run(cmd::run::Args),
    /// Run one of the honest experiments (configs/experiments/): compare-to-base, knowledge-capacity,
    /// conversion-ablation, specialization, data-scaling.
    Experiment(cmd::experiment::Args),
    /// Routing traces of a MoE model over a pack, next-expert prediction and a prefetch simulation.
    Trace(cmd::trace::Args),
    /// Sparse upcycling: a dense model's FFN copied into every expert (Drop-Upcycling optional).
    Upcycle(cmd::upcycle::Args),
    /// MoQE: quantized variants of one model as the experts of each FFN, only the gate trains.
    Moqe(cmd::moqe::Args),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build_global()?;
    match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Bench(a) => cmd::bench::run(a, threads),
        Command::Surgery(a) => cmd::surgery::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Importance(a) => cmd::importance::run(a),
        Command::Init(a) => cmd::init::run(a),
        Command::Data(a) => cmd::data::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Trace(a) => cmd::trace::run(a),
        Command::Upcycle(a) => cmd::upcycle::run(a),
        Command::Moqe(a) => cmd::moqe::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Experiment(a) => cmd::experiment::run(a),
    }
}

/// mimalloc's `mi_option_purge_delay` (index in its `mi_option_e`, v2 and v3 alike).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Never hand freed pages back to the OS: every step re-allocates the same activation
    // sizes, and re-faulting zeroed (huge) pages cost ~10% of a training step.
    // SAFETY: sets a process-wide allocator option before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
