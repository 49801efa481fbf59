//! `moe-cli experiment conversion-ablation`: which dense -> MoE conversion works best. The main
//! run's base and importance are converted once per variant (neuron split: importance-ordered
//! round robin / balanced k-means on the gate-up rows / random; slots beyond the dense neurons
//! filled by overlap or Drop-Upcycling re-initialisation; router init: centroids / near-uniform
//! / random), each in its own run directory under the experiment (the shared stages hard-linked
//! from the main run), and each trains a short p0 (the config's `p0_steps`, scaled down from the
//! phase's budget). The harness then scores the teacher and every variant at init and after p0
//! on the same items: fact_recall, two_hop, held-out perplexity.

use super::exp_runs::{
    accuracy, accuracy_cell, evaluate, given_phase_file, link_stages, ppl, run_config, write_phase_config,
    write_run_config,
};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One conversion.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// `importance-split`, `kmeans` or `random`.
    pub split: String,
    /// `overlap` or `drop-upcycle`.
    pub fill: String,
    /// `centroids`, `near-uniform` or `random`.
    pub router_init: String,
}

impl Variant {
    /// A short name usable as a directory and model name (`kmeans.drop.centroids`).
    pub fn name(&self) -> String {
        let split = self.split.strip_suffix("-split").unwrap_or(&self.split);
        let fill = if self.fill == "drop-upcycle" { "drop" } else { &self.fill };
        format!("{split}.{fill}.{}", self.router_init)
    }
}

/// The experiment's config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What it measures (free text).
    #[serde(default)]
    #[allow(dead_code)]
    comment: String,
    /// `conversion-ablation`.
    #[allow(dead_code)]
    experiment: String,
    /// Optimiser steps of each variant's p0 (the phase's tokens per step and schedule shape).
    p0_steps: u64,
    /// Replaces fields of p0's evaluation schedule (the harness scores the models afterwards,
    /// so the phase's own evaluation can be kept small).
    #[serde(default)]
    p0_eval: Option<serde_json::Value>,
    /// Items per eval set at most in the harness (evenly spaced; None: all).
    #[serde(default)]
    max_items: Option<usize>,
    /// Held-out domains whose perplexity is shown.
    ppl_domains: Vec<String>,
    /// The conversions, in table order.
    variants: Vec<Variant>,
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The conversion.
    pub variant: Variant,
    /// Model name in the harness (`<name>` after p0, `<name>.init` at init).
    pub name: String,
    /// fact_recall at init.
    pub init_fact_recall: Option<f64>,
    /// Held-out perplexity of the first domain at init.
    pub init_ppl: Option<f64>,
    /// After p0: accuracy per set.
    pub fact_recall: Option<f64>,
    /// two_hop after p0.
    pub two_hop: Option<f64>,
    /// Perplexity per `ppl_domains` after p0.
    pub ppl: Vec<Option<f64>>,
    /// p0's last training objective (KL to the teacher).
    pub p0_final_loss: f32,
    /// Largest expert share in any layer at p0's last step.
    pub max_share: f32,
    /// Mean overflow fraction over layers at p0's last step.
    pub overflow: f32,
    /// p0's wall-clock seconds (when it was built).
    pub p0_seconds: f64,
}

/// Runs the experiment; returns the markdown table and the JSON record.
pub fn run(
    cfg_text: &str,
    source: &str,
    run_dir: &Path,
    config: Option<&Path>,
    phase_configs: &[(String, PathBuf)],
    quiet: bool,
) -> Result<(String, serde_json::Value)> {
    let c: Config =
        serde_json::from_str(cfg_text).with_context(|| format!("{source}: not a conversion-ablation config"))?;
    if c.variants.is_empty() {
        bail!("{source}: field `variants`: no conversions to compare");
    }
    if c.ppl_domains.is_empty() {
        bail!("{source}: field `ppl_domains`: name at least one held-out domain");
    }
    let mut names: Vec<String> = c.variants.iter().map(Variant::name).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("{source}: field `variants`: `{}` is listed twice", w[0]);
    }
    let (run_json, run) = run_config(config)?;
    // Every variant's run config is checked before anything trains.
    let out = run_dir.join("experiments").join("conversion-ablation");
    std::fs::create_dir_all(out.join("configs")).with_context(|| format!("creating {}", out.display()))?;
    for v in &c.variants {
        let fields = [
            ("split", serde_json::json!(v.split)),
            ("fill", serde_json::json!(v.fill)),
            ("router_init", serde_json::json!(v.router_init)),
        ];
        let path = out.join("configs").join(format!("{}.run.json", v.name()));
        write_run_config(&run_json, &fields, &path).with_context(|| format!("{source}: variant `{}`", v.name()))?;
        let shown = path.display().to_string();
        actors::stages::RunConfig::parse(&std::fs::read_to_string(&path)?, &shown)?
            .validate(&shown)
            .with_context(|| format!("{source}: variant `{}`", v.name()))?;
    }
    let p0_path = out.join("configs").join("p0.json");
    let (steps, tokens) = write_phase_config(
        given_phase_file(phase_configs, "p0"),
        "p0",
        &run.preset,
        c.p0_steps,
        c.p0_eval.as_ref(),
        &p0_path,
    )
    .with_context(|| format!("{source}: the variants' p0"))?;
    super::run::run_all(run_dir, config, phase_configs.to_vec(), "importance", quiet)?;
    let mut phases: Vec<(String, PathBuf)> = phase_configs.iter().filter(|(n, _)| n != "p0").cloned().collect();
    phases.push(("p0".into(), p0_path));
    let mut models = vec![("teacher".to_string(), run_dir.join("base").join("model"))];
    let mut trained = Vec::new();
    for v in &c.variants {
        let name = v.name();
        let dir = out.join("variants").join(&name);
        println!("variant    {name}: p0 {steps} steps ({tokens} tokens) in {}", dir.display());
        link_stages(run_dir, &dir, &["data", "base", "importance"])?;
        let run_cfg = out.join("configs").join(format!("{name}.run.json"));
        super::run::run_all(&dir, Some(&run_cfg), phases.clone(), "p0", quiet)
            .with_context(|| format!("variant `{name}`"))?;
        let summary_path = dir.join("p0").join("summary.json");
        let s: actors::summary::PhaseSummary = serde_json::from_str(
            &std::fs::read_to_string(&summary_path).with_context(|| format!("reading {}", summary_path.display()))?,
        )
        .with_context(|| format!("{}: not a phase summary", summary_path.display()))?;
        models.push((format!("{name}.init"), dir.join("moe-init").join("model")));
        models.push((name.clone(), dir.join("p0").join("model")));
        trained.push((v.clone(), name, s));
    }
    let summary = evaluate(models, run_dir, &run, &out.join("eval"), c.max_items, quiet)?;
    let first = &c.ppl_domains[0];
    let rows: Vec<Row> = trained
        .into_iter()
        .map(|(variant, name, s)| {
            let init = format!("{name}.init");
            let layers = s.router.len().max(1) as f32;
            Row {
                init_fact_recall: accuracy(&summary, &init, "fact_recall"),
                init_ppl: ppl(&summary, &init, first),
                fact_recall: accuracy(&summary, &name, "fact_recall"),
                two_hop: accuracy(&summary, &name, "two_hop"),
                ppl: c.ppl_domains.iter().map(|d| ppl(&summary, &name, d)).collect(),
                p0_final_loss: s.final_loss,
                max_share: s.router.iter().flat_map(|r| r.share.iter().copied()).fold(0.0, f32::max),
                overflow: s.router.iter().map(|r| r.overflow_frac).sum::<f32>() / layers,
                p0_seconds: s.seconds,
                variant,
                name,
            }
        })
        .collect();
    let table = markdown(&rows, &summary, &c.ppl_domains, steps, tokens);
    let json = serde_json::json!({
        "p0_steps": steps, "p0_tokens": tokens, "ppl_domains": c.ppl_domains, "rows": rows,
        "teacher": {
            "fact_recall": accuracy(&summary, "teacher", "fact_recall"),
            "two_hop": accuracy(&summary, "teacher", "two_hop"),
            "ppl": c.ppl_domains.iter().map(|d| ppl(&summary, "teacher", d)).collect::<Vec<_>>(),
        },
    });
    Ok((table, json))
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn num(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.3}"))
}

/// The table: the teacher first, then one row per conversion (at init and after p0).
fn markdown(rows: &[Row], s: &super::eval_summary::EvalSummary, domains: &[String], steps: u64, tokens: u64) -> String {
    let mut out = format!(
        "| conversion (split . fill . router init) | init fact_recall | init ppl {} | p0 ({steps} steps, {tokens} tokens): fact_recall | two_hop |",
        domains[0]
    );
    for d in domains {
        let _ = write!(out, " ppl {d} |");
    }
    out.push_str(" p0 final KL | max expert share | overflow | p0 wall (s) |\n");
    out.push_str(&"|---".repeat(9 + domains.len()));
    out.push_str("|\n");
    let _ = write!(
        out,
        "| teacher (dense) | - | - | {} | {} |",
        accuracy_cell(s, "teacher", "fact_recall"),
        accuracy_cell(s, "teacher", "two_hop")
    );
    for d in domains {
        let _ = write!(out, " {} |", num(ppl(s, "teacher", d)));
    }
    out.push_str(" - | - | - | - |\n");
    for r in rows {
        let _ = write!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.name,
            pct(r.init_fact_recall),
            num(r.init_ppl),
            accuracy_cell(s, &r.name, "fact_recall"),
            accuracy_cell(s, &r.name, "two_hop")
        );
        for p in &r.ppl {
            let _ = write!(out, " {} |", num(*p));
        }
        let _ = writeln!(
            out,
            " {:.4} | {:.1}% | {:.1}% | {:.1} |",
            r.p0_final_loss,
            100.0 * r.max_share,
            100.0 * r.overflow,
            r.p0_seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_are_short_and_distinct() {
        let v = |s: &str, f: &str, r: &str| Variant { split: s.into(), fill: f.into(), router_init: r.into() };
        assert_eq!(v("importance-split", "overlap", "centroids").name(), "importance.overlap.centroids");
        assert_eq!(v("kmeans", "drop-upcycle", "near-uniform").name(), "kmeans.drop.near-uniform");
    }
}
