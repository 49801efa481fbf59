//! `moe-cli experiment <name>`: one of the honest experiments of issue 16, its config in
//! configs/experiments/<name>.json (embedded; or a file of the same form). An experiment runs the
//! pipeline stages it needs on a run directory (`moe-cli run all --until <until>`: stages already
//! done are skipped) and tabulates their results into `<run>/experiments/<name>/result.md` and
//! `result.json`, printing the table and the wall time.
//!
//! Implemented: `conversion-ablation` (exp_conversion), `specialization` (exp_specialization),
//! `data-scaling` (exp_scaling), which train or probe variants of their own; and
//! `compare-to-base` (the head-to-head the way moe-upcycle's compare_base.py
//! reports it: quality, total / active parameters, bytes of the weights, tokens/s; every model on
//! the same items, from stage `eval`) and `knowledge-capacity` (the MoE against the dense model
//! of its active parameters and the dense teacher continued for the same tokens, on fact recall
//! and two-hop questions, with the tokens each saw and its training wall time).

use super::eval_summary::EvalSummary;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The embedded experiment configs.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("compare-to-base", include_str!("../../../configs/experiments/compare-to-base.json")),
    ("knowledge-capacity", include_str!("../../../configs/experiments/knowledge-capacity.json")),
    ("conversion-ablation", include_str!("../../../configs/experiments/conversion-ablation.json")),
    ("specialization", include_str!("../../../configs/experiments/specialization.json")),
    ("data-scaling", include_str!("../../../configs/experiments/data-scaling.json")),
];

/// The models an experiment can name: eval name, the stage whose model it is, the training
/// stages behind it (their tokens and wall time add up; importance and surgery, seconds at the
/// tiny scale, are left out).
const MODEL_STAGES: [(&str, &str, &[&str]); 4] = [
    ("teacher", "base", &["base"]),
    ("moe", "p1", &["base", "p0", "p1"]),
    ("small", "baseline-small", &["baseline-small"]),
    ("teacher-continued", "teacher-continued", &["base", "teacher-continued"]),
];

/// Arguments of `experiment`.
#[derive(clap::Args)]
pub struct Args {
    /// Experiment: an embedded name (compare-to-base, knowledge-capacity, conversion-ablation,
    /// specialization, data-scaling) or the path of a JSON config of one.
    pub name: String,
    /// Run directory (stages already done there are skipped).
    #[arg(long, default_value = "runs/default")]
    pub run_dir: PathBuf,
    /// Run config JSON (default: the embedded configs/runs/tiny.json).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Replace a phase's config: `p1=path/to/p1.json` (repeatable), as `run` takes it.
    #[arg(long = "phase-config", value_parser = super::run::parse_phase_file)]
    pub phase_configs: Vec<(String, PathBuf)>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// An experiment config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Experiment {
    /// What it measures (free text).
    #[serde(default)]
    #[allow(dead_code)]
    comment: String,
    /// Which experiment (`compare-to-base`, `knowledge-capacity`).
    experiment: String,
    /// The pipeline stages it needs (each with what it reads).
    until: Vec<String>,
    /// The model the others are compared to (an eval model name).
    base: String,
    /// Rows of the table, in order (eval model names).
    models: Vec<String>,
    /// The held-out domain whose perplexity is shown.
    ppl_domain: String,
    /// Items per eval set at most (experiments that run the harness themselves).
    #[serde(default)]
    max_items: Option<usize>,
}

/// One row of the compare-to-base table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareRow {
    /// Model name.
    pub model: String,
    /// Accuracy by option log-likelihood per set: (set, value, lo, hi).
    pub accuracy: Vec<(String, f64, f64, f64)>,
    /// Held-out perplexity of the chosen domain.
    pub ppl: Option<f64>,
    /// Parameters.
    pub params: u64,
    /// Parameters one token uses.
    pub active_params: u64,
    /// Bytes of the weights on disk (safetensors files of a directory, or the .gguf file).
    pub bytes: u64,
    /// Decode tokens/s, batch 1, our runtime.
    pub decode_tokens_per_s: Option<f64>,
    /// Prefill tokens/s.
    pub prefill_tokens_per_s: Option<f64>,
}

/// Bytes of a model's weights: the `.safetensors` files of a directory, or the file itself.
fn weight_bytes(path: &Path) -> Result<u64> {
    if !path.is_dir() {
        return Ok(std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            total += std::fs::metadata(&p)?.len();
        }
    }
    Ok(total)
}

/// The table's rows from an evaluation summary; `bytes_of` gives a model path's weight bytes.
fn compare_rows(e: &Experiment, s: &EvalSummary, bytes_of: &dyn Fn(&Path) -> Result<u64>) -> Result<Vec<CompareRow>> {
    let known: Vec<&str> = s.models.iter().map(|m| m.name.as_str()).collect();
    let mut rows = Vec::new();
    for name in std::iter::once(&e.base).chain(e.models.iter().filter(|m| **m != e.base)) {
        let Some(info) = s.models.iter().find(|m| &m.name == name) else {
            bail!("model `{name}` is not in the evaluation (it has {})", known.join(", "));
        };
        let accuracy = s
            .sets
            .iter()
            .filter_map(|set| s.mcq.iter().find(|r| &r.model == name && r.set == set.name))
            .map(|r| (r.set.clone(), r.loglik.value, r.loglik.lo, r.loglik.hi))
            .collect();
        let latency = s.latency.iter().find(|l| &l.model == name);
        rows.push(CompareRow {
            model: name.clone(),
            accuracy,
            ppl: s.ppl.iter().find(|p| &p.model == name && p.domain == e.ppl_domain).map(|p| p.ppl),
            params: info.params,
            active_params: info.active_params,
            bytes: bytes_of(Path::new(&info.path))?,
            decode_tokens_per_s: latency.map(|l| l.decode_tokens_per_s),
            prefill_tokens_per_s: latency.map(|l| l.prefill_tokens_per_s),
        });
    }
    Ok(rows)
}

/// The rows as a markdown table; the first row is the base, the others show their accuracy
/// difference to it in points.
pub fn compare_markdown(rows: &[CompareRow], ppl_domain: &str) -> String {
    let mut out = String::from("| model |");
    let sets: Vec<&str> = rows.first().map(|r| r.accuracy.iter().map(|a| a.0.as_str()).collect()).unwrap_or_default();
    for set in &sets {
        let _ = write!(out, " {set} |");
    }
    let _ =
        writeln!(out, " ppl {ppl_domain} | params | active / token | weights (MB) | decode tok/s | prefill tok/s |");
    out.push_str(&"|---".repeat(sets.len() + 7));
    out.push_str("|\n");
    let base = rows.first();
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(out, "| {} |", r.model);
        for (j, (_, v, lo, hi)) in r.accuracy.iter().enumerate() {
            let delta = match base.and_then(|b| b.accuracy.get(j)) {
                Some(b) if i > 0 => format!(" ({:+.1})", 100.0 * (v - b.1)),
                _ => String::new(),
            };
            let _ = write!(out, " {:.1}% [{:.1}, {:.1}]{delta} |", 100.0 * v, 100.0 * lo, 100.0 * hi);
        }
        let opt = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            out,
            " {} | {:.2} M | {:.2} M | {:.2} | {} | {} |",
            opt(r.ppl, 3),
            r.params as f64 / 1e6,
            r.active_params as f64 / 1e6,
            r.bytes as f64 / 1e6,
            opt(r.decode_tokens_per_s, 0),
            opt(r.prefill_tokens_per_s, 0)
        );
    }
    out
}

/// An experiment that trains or probes on its own and returns its markdown and JSON record:
/// (config text, config source, run directory, run config, phase files, quiet).
type Runner = fn(&str, &str, &Path, Option<&Path>, &[(String, PathBuf)], bool) -> Result<(String, serde_json::Value)>;

/// Runs an experiment.
pub fn run(a: Args) -> Result<()> {
    let (text, source) = match EMBEDDED.iter().find(|(n, _)| *n == a.name) {
        Some((n, t)) => (t.to_string(), format!("configs/experiments/{n}.json")),
        None if Path::new(&a.name).is_file() => {
            (std::fs::read_to_string(&a.name).with_context(|| format!("reading {}", a.name))?, a.name.clone())
        }
        None => {
            let known: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
            bail!("unknown experiment `{}` (known: {}; or the path of a JSON config)", a.name, known.join(", "))
        }
    };
    let started = std::time::Instant::now();
    let kind: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{source}: not JSON"))?;
    let own = match kind["experiment"].as_str() {
        Some("conversion-ablation") => Some(super::exp_conversion::run as Runner),
        Some("specialization") => Some(super::exp_specialization::run as Runner),
        Some("data-scaling") => Some(super::exp_scaling::run as Runner),
        _ => None,
    };
    if let Some(runner) = own {
        let name = kind["experiment"].as_str().unwrap_or_default();
        let (table, mut json) = runner(&text, &source, &a.run_dir, a.config.as_deref(), &a.phase_configs, a.quiet)?;
        let out = a.run_dir.join("experiments").join(name);
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let seconds = started.elapsed().as_secs_f64();
        json["experiment"] = serde_json::json!(name);
        json["config"] = serde_json::json!(source);
        json["seconds"] = serde_json::json!(seconds);
        atomicio::write_file(&out.join("result.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
        atomicio::write_file(&out.join("result.md"), table.as_bytes())?;
        println!("{table}");
        println!("result     {}", out.join("result.md").display());
        println!("wall       {seconds:.1} s");
        return Ok(());
    }
    let e: Experiment = serde_json::from_str(&text).with_context(|| format!("{source}: not an experiment config"))?;
    let out = a.run_dir.join("experiments").join(&e.experiment);
    let (summary_path, training) = match e.experiment.as_str() {
        "compare-to-base" => {
            if e.until != ["eval"] {
                bail!("{source}: field `until`: compare-to-base tabulates stage `eval`, not {:?}", e.until);
            }
            super::run::run_all(&a.run_dir, a.config.as_deref(), a.phase_configs.clone(), "eval", a.quiet)?;
            (a.run_dir.join("eval").join("summary.json"), None)
        }
        "knowledge-capacity" => {
            for until in &e.until {
                super::run::run_all(&a.run_dir, a.config.as_deref(), a.phase_configs.clone(), until, a.quiet)?;
            }
            let (models, training) = model_stages(&e, &a.run_dir).with_context(|| source.clone())?;
            let run_config = run_config(a.config.as_deref())?;
            let args = super::eval::Args {
                models,
                sets: vec![a.run_dir.join("data").join("world").display().to_string()],
                out: out.join("eval"),
                tokenizer: None,
                max_items: e.max_items,
                no_generate: true,
                gen_tokens: 12,
                no_ppl: false,
                ppl_docs: 64,
                dev_every: run_config.dev_every as usize,
                ppl_seq_len: run_config.seq_len,
                train_text: Vec::new(),
                quiet: a.quiet,
                chat: false,
                think: false,
                kl_ref: None,
            };
            super::eval::run(args)?;
            (out.join("eval").join("summary.json"), Some(training))
        }
        other => bail!(
            "{source}: field `experiment`: `{other}` is not implemented (implemented: compare-to-base, knowledge-capacity, \
             conversion-ablation, specialization, data-scaling)"
        ),
    };
    let summary: EvalSummary = serde_json::from_str(
        &std::fs::read_to_string(&summary_path).with_context(|| format!("reading {}", summary_path.display()))?,
    )
    .with_context(|| format!("{}: not an eval summary", summary_path.display()))?;
    let rows = compare_rows(&e, &summary, &weight_bytes).with_context(|| source.clone())?;
    let mut table = compare_markdown(&rows, &e.ppl_domain);
    if let Some(t) = &training {
        table.push_str("\n| model | training tokens seen | training wall (s) | stages |\n|---|---|---|---|\n");
        for (name, tokens, secs, stages) in t {
            let _ = writeln!(table, "| {name} | {tokens} | {secs:.1} | {} |", stages.join(" + "));
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let json = serde_json::json!({
        "experiment": e.experiment, "config": source, "rows": rows, "training": training, "seconds": seconds,
    });
    atomicio::write_file(&out.join("result.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    atomicio::write_file(&out.join("result.md"), table.as_bytes())?;
    println!("{table}");
    println!("result     {}", out.join("result.md").display());
    println!("wall       {seconds:.1} s");
    Ok(())
}

/// The run config (its `dev_every` says which world documents are held out).
fn run_config(config: Option<&Path>) -> Result<actors::stages::RunConfig> {
    Ok(match config {
        Some(p) => actors::stages::RunConfig::parse(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            &p.display().to_string(),
        )?,
        None => actors::stages::RunConfig::embedded()?,
    })
}

/// Training rows: (model, tokens seen, wall seconds, stages).
type Training = Vec<(String, u64, f64, Vec<String>)>;

/// The experiment's models as (name, model directory) and what their training cost, from the
/// stages' summaries.
fn model_stages(e: &Experiment, run_dir: &Path) -> Result<(Vec<(String, PathBuf)>, Training)> {
    let (mut models, mut training) = (Vec::new(), Vec::new());
    for name in &e.models {
        let Some((_, stage, behind)) = MODEL_STAGES.iter().find(|(n, _, _)| n == name) else {
            let known: Vec<&str> = MODEL_STAGES.iter().map(|m| m.0).collect();
            bail!("field `models`: unknown model `{name}` (known: {})", known.join(", "));
        };
        models.push((name.clone(), run_dir.join(stage).join("model")));
        let (mut tokens, mut secs) = (0, 0.0);
        for s in *behind {
            let path = run_dir.join(s).join("summary.json");
            let v: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
            )?;
            tokens += v["tokens"].as_u64().unwrap_or(0);
            secs += v["seconds"].as_f64().unwrap_or(0.0);
        }
        training.push((name.clone(), tokens, secs, behind.iter().map(|s| s.to_string()).collect()));
    }
    Ok((models, training))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_configs_parse_and_the_table_puts_the_base_first_with_differences() {
        use crate::cmd::{exp_conversion, exp_scaling, exp_specialization};
        for (name, text) in EMBEDDED {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(v["experiment"], *name);
            let parsed = match *name {
                "conversion-ablation" => serde_json::from_str::<exp_conversion::Config>(text).err(),
                "specialization" => serde_json::from_str::<exp_specialization::Config>(text).err(),
                "data-scaling" => serde_json::from_str::<exp_scaling::Config>(text).err(),
                _ => serde_json::from_str::<Experiment>(text).err(),
            };
            assert!(parsed.is_none(), "{name}: {parsed:?}");
        }
        let acc = |v: f64| (String::from("fact_recall"), v, v - 0.05, v + 0.05);
        let row = |m: &str, v: f64| CompareRow {
            model: m.into(),
            accuracy: vec![acc(v)],
            ppl: Some(2.0),
            params: 4_070_000,
            active_params: 2_410_000,
            bytes: 16_280_000,
            decode_tokens_per_s: Some(700.0),
            prefill_tokens_per_s: None,
        };
        let md = compare_markdown(&[row("teacher", 0.40), row("moe", 0.57)], "medical");
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| model | fact_recall | ppl medical | params | active / token | weights (MB) | decode tok/s | prefill tok/s |");
        assert_eq!(lines[2], "| teacher | 40.0% [35.0, 45.0] | 2.000 | 4.07 M | 2.41 M | 16.28 | 700 | - |");
        assert!(lines[3].starts_with("| moe | 57.0% [52.0, 62.0] (+17.0) |"), "{}", lines[3]);
    }
}
