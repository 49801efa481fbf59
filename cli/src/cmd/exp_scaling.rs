//! `moe-cli experiment data-scaling`: the MoE's quality against its training tokens. From the
//! main run's p0 model, p1 is trained with `base_steps x k` optimiser steps for every multiple
//! `k` of the config (each a full schedule, in its own run directory under the experiment with
//! the shared stages hard-linked from the main run); the harness scores every result on the same
//! items; a power law `CE(D) = a * D^-b` is fitted by least squares in log-log space to the
//! held-out cross-entropy (ln perplexity) of each domain against p1's tokens D, with R^2, and
//! evaluated at the config's `extrapolate` multiples, which the table marks as extrapolation.

use super::exp_runs::{accuracy_cell, evaluate, given_phase_file, link_stages, ppl, run_config, write_phase_config};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The experiment's config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What it measures (free text).
    #[serde(default)]
    #[allow(dead_code)]
    comment: String,
    /// `data-scaling`.
    #[allow(dead_code)]
    experiment: String,
    /// p1 optimiser steps at multiple 1.
    base_steps: u64,
    /// Token multiples trained (at least two).
    multiples: Vec<u64>,
    /// Multiples the fitted curve is evaluated at (not trained: extrapolation).
    #[serde(default)]
    extrapolate: Vec<u64>,
    /// Replaces fields of p1's evaluation schedule (the harness scores the models afterwards).
    #[serde(default)]
    p1_eval: Option<serde_json::Value>,
    /// Items per eval set at most in the harness (evenly spaced; None: all).
    #[serde(default)]
    max_items: Option<usize>,
    /// Held-out domains whose cross-entropy is fitted.
    ppl_domains: Vec<String>,
}

/// `y = a * x^-b` fitted by least squares on `(ln x, ln y)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PowerLaw {
    /// Scale.
    pub a: f64,
    /// Exponent (positive: decreasing).
    pub b: f64,
    /// Coefficient of determination in log-log space.
    pub r2: f64,
}

impl PowerLaw {
    /// The fitted value at `x`.
    pub fn at(&self, x: f64) -> f64 {
        self.a * x.powf(-self.b)
    }
}

/// Fits `y = a * x^-b` to the points (all positive; at least two distinct x). None otherwise.
pub fn fit_power_law(points: &[(f64, f64)]) -> Option<PowerLaw> {
    if points.len() < 2 || points.iter().any(|&(x, y)| !(x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite())) {
        return None;
    }
    let n = points.len() as f64;
    let lx: Vec<f64> = points.iter().map(|p| p.0.ln()).collect();
    let ly: Vec<f64> = points.iter().map(|p| p.1.ln()).collect();
    let (mx, my) = (lx.iter().sum::<f64>() / n, ly.iter().sum::<f64>() / n);
    let sxx: f64 = lx.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = lx.iter().zip(&ly).map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_res: f64 = lx.iter().zip(&ly).map(|(x, y)| (y - intercept - slope * x).powi(2)).sum();
    let ss_tot: f64 = ly.iter().map(|y| (y - my).powi(2)).sum();
    let r2 = if ss_tot > 0.0 { 1.0 - ss_res / ss_tot } else { 1.0 };
    Some(PowerLaw { a: intercept.exp(), b: -slope, r2 })
}

/// Runs the experiment; returns the markdown and the JSON record.
pub fn run(
    cfg_text: &str,
    source: &str,
    run_dir: &Path,
    config: Option<&Path>,
    phase_configs: &[(String, PathBuf)],
    quiet: bool,
) -> Result<(String, serde_json::Value)> {
    let c: Config = serde_json::from_str(cfg_text).with_context(|| format!("{source}: not a data-scaling config"))?;
    let mut sorted = c.multiples.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() < 2 || sorted[0] == 0 || c.base_steps == 0 {
        bail!(
            "{source}: fields `multiples` / `base_steps`: need at least two distinct positive multiples and steps > 0"
        );
    }
    if c.ppl_domains.is_empty() {
        bail!("{source}: field `ppl_domains`: name at least one held-out domain");
    }
    let (_, run) = run_config(config)?;
    let out = run_dir.join("experiments").join("data-scaling");
    std::fs::create_dir_all(out.join("configs")).with_context(|| format!("creating {}", out.display()))?;
    let mut plans = Vec::new();
    for &k in &sorted {
        let path = out.join("configs").join(format!("p1-x{k}.json"));
        let (steps, tokens) = write_phase_config(
            given_phase_file(phase_configs, "p1"),
            "p1",
            &run.preset,
            c.base_steps * k,
            c.p1_eval.as_ref(),
            &path,
        )
        .with_context(|| format!("{source}: p1 at x{k}"))?;
        plans.push((k, path, steps, tokens));
    }
    super::run::run_all(run_dir, config, phase_configs.to_vec(), "p0", quiet)?;
    let mut models = Vec::new();
    let mut trained = Vec::new();
    for (k, path, steps, tokens) in &plans {
        let dir = out.join("runs").join(format!("x{k}"));
        println!("scale      x{k}: p1 {steps} steps ({tokens} tokens) in {}", dir.display());
        link_stages(run_dir, &dir, &["data", "base", "importance", "moe-init", "p0"])?;
        let mut phases: Vec<(String, PathBuf)> = phase_configs.iter().filter(|(n, _)| n != "p1").cloned().collect();
        phases.push(("p1".into(), path.clone()));
        super::run::run_all(&dir, config, phases, "p1", quiet).with_context(|| format!("p1 at x{k}"))?;
        let summary_path = dir.join("p1").join("summary.json");
        let s: actors::summary::PhaseSummary = serde_json::from_str(
            &std::fs::read_to_string(&summary_path).with_context(|| format!("reading {}", summary_path.display()))?,
        )
        .with_context(|| format!("{}: not a phase summary", summary_path.display()))?;
        models.push((format!("x{k}"), dir.join("p1").join("model")));
        trained.push((*k, s.tokens, s.seconds, s.final_loss));
    }
    let summary = evaluate(models, run_dir, &run, &out.join("eval"), c.max_items, quiet)?;
    let mut md = String::from("| p1 tokens | multiple | fact_recall | two_hop |");
    for d in &c.ppl_domains {
        let _ = write!(md, " CE {d} (ln ppl) |");
    }
    md.push_str(" p1 final loss | p1 wall (s) |\n");
    md.push_str(&"|---".repeat(6 + c.ppl_domains.len()));
    md.push_str("|\n");
    let mut rows = Vec::new();
    for &(k, tokens, seconds, loss) in &trained {
        let name = format!("x{k}");
        let ce: Vec<Option<f64>> = c.ppl_domains.iter().map(|d| ppl(&summary, &name, d).map(f64::ln)).collect();
        let _ = write!(
            md,
            "| {tokens} | {k}x | {} | {} |",
            accuracy_cell(&summary, &name, "fact_recall"),
            accuracy_cell(&summary, &name, "two_hop")
        );
        for x in &ce {
            let _ = write!(md, " {} |", x.map_or("-".into(), |v| format!("{v:.4}")));
        }
        let _ = writeln!(md, " {loss:.4} | {seconds:.1} |");
        rows.push(
            serde_json::json!({ "multiple": k, "tokens": tokens, "seconds": seconds, "final_loss": loss, "ce": ce }),
        );
    }
    md.push_str("\nFitted CE(D) = a * D^-b (least squares in log-log space over the trained points):\n\n");
    md.push_str("| domain | a | b | R^2 | value at each trained multiple | **extrapolated** (not trained) |\n|---|---:|---:|---:|---|---|\n");
    let base_tokens = trained.first().map_or(0, |t| t.1) as f64 / sorted[0] as f64;
    let mut fits = serde_json::Map::new();
    for (i, d) in c.ppl_domains.iter().enumerate() {
        let points: Vec<(f64, f64)> =
            trained.iter().zip(&rows).filter_map(|(t, r)| r["ce"][i].as_f64().map(|ce| (t.1 as f64, ce))).collect();
        let Some(fit) = fit_power_law(&points) else {
            let _ = writeln!(md, "| {d} | - | - | - | (no fit: fewer than two points) | - |");
            continue;
        };
        let fitted: Vec<String> = points.iter().map(|&(x, y)| format!("{:.4} (measured {y:.4})", fit.at(x))).collect();
        let extra: Vec<String> = c
            .extrapolate
            .iter()
            .map(|&k| format!("{k}x ({:.0} tokens): {:.4}", k as f64 * base_tokens, fit.at(k as f64 * base_tokens)))
            .collect();
        let _ = writeln!(
            md,
            "| {d} | {:.4} | {:.4} | {:.3} | {} | {} |",
            fit.a,
            fit.b,
            fit.r2,
            fitted.join("; "),
            extra.join("; ")
        );
        fits.insert(d.clone(), serde_json::json!({ "fit": fit, "points": points, "extrapolated": c.extrapolate.iter().map(|&k| (k, fit.at(k as f64 * base_tokens))).collect::<Vec<_>>() }));
    }
    Ok((md, serde_json::json!({ "base_steps": c.base_steps, "rows": rows, "fits": fits })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_power_law_is_recovered_and_degenerate_points_are_refused() {
        let pts: Vec<(f64, f64)> = [1e4, 2e4, 4e4, 8e4].iter().map(|&x| (x, 3.0 * f64::powf(x, -0.25))).collect();
        let f = fit_power_law(&pts).unwrap();
        assert!((f.a - 3.0).abs() < 1e-9 && (f.b - 0.25).abs() < 1e-12 && (f.r2 - 1.0).abs() < 1e-12, "{f:?}");
        assert!((f.at(16e4) - 3.0 * f64::powf(16e4, -0.25)).abs() < 1e-12);
        // Noisy points: R^2 below 1, exponent near the truth.
        let noisy: Vec<(f64, f64)> = pts.iter().zip([1.01, 0.99, 1.02, 0.98]).map(|(&(x, y), m)| (x, y * m)).collect();
        let g = fit_power_law(&noisy).unwrap();
        assert!(g.r2 < 1.0 && (g.b - 0.25).abs() < 0.05, "{g:?}");
        assert!(fit_power_law(&pts[..1]).is_none());
        assert!(fit_power_law(&[(1.0, 2.0), (1.0, 3.0)]).is_none(), "one distinct x");
        assert!(fit_power_law(&[(1.0, 2.0), (2.0, -1.0)]).is_none(), "non-positive y");
    }
}
