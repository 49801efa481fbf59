//! What `moe-cli report` reads from a run directory: each phase's `metrics/metrics.jsonl`
//! (train loss, eval perplexities, breaker actions, the routing share of every step), its
//! `summary.json` (router share per layer
//! and expert at the end of the phase), and the summary of `moe-cli eval` if there is one.

use super::eval_summary::{EvalSummary, FORMAT};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A breaker action on the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerMark {
    /// Step of the action.
    pub step: u64,
    /// Breaker name.
    pub breaker: String,
    /// Why it acted.
    pub reason: String,
    /// Whether it rolled back to a checkpoint.
    pub rollback: bool,
}

/// One phase's metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseMetrics {
    /// Phase (stage) name.
    pub phase: String,
    /// `(step, loss, cross-entropy)` of every train line.
    pub train: Vec<(u64, f64, f64)>,
    /// Dev perplexity per domain: `domain -> [(step, ppl)]`.
    pub ppl: BTreeMap<String, Vec<(u64, f64)>>,
    /// Breaker actions.
    pub breakers: Vec<BreakerMark>,
    /// `[layer][expert]` routing share at the end of the phase (MoE phases).
    pub router_share: Option<Vec<Vec<f64>>>,
    /// `(step, [layer][expert] share)` of every logged step (`router` lines; MoE phases).
    pub router_steps: Vec<(u64, Vec<Vec<f64>>)>,
}

/// Every input of a report.
pub struct ReportInputs {
    /// Phases in pipeline order.
    pub phases: Vec<PhaseMetrics>,
    /// The evaluation summary, if any.
    pub eval: Option<EvalSummary>,
    /// Where the evaluation summary came from.
    pub eval_dir: Option<PathBuf>,
    /// Lines skipped (an unfinished last line of a log).
    pub warnings: Vec<String>,
}

/// Pipeline order of the known stages; others follow by name.
const ORDER: [&str; 7] = ["base", "p0", "p1", "p2", "p3", "p4", "baseline-small"];

fn num(v: &serde_json::Value, k: &str) -> f64 {
    v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN)
}

/// Reads one `metrics.jsonl`; a malformed complete line is an error naming file and line, an
/// unfinished last line (a killed writer) is skipped with a warning.
pub fn read_metrics(phase: &str, path: &Path, warnings: &mut Vec<String>) -> Result<PhaseMetrics> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut m = PhaseMetrics { phase: phase.to_string(), ..Default::default() };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == lines.len() && !complete => {
                warnings.push(format!("{}: line {}: unfinished last line skipped", path.display(), i + 1));
                continue;
            }
            Err(e) => bail!("{}: line {}: {e}", path.display(), i + 1),
        };
        let step = v.get("step").and_then(serde_json::Value::as_u64).unwrap_or(0);
        match v.get("kind").and_then(serde_json::Value::as_str) {
            Some("train") => m.train.push((step, num(&v, "loss"), num(&v, "ce"))),
            Some("eval") => {
                for (k, x) in v.as_object().into_iter().flatten() {
                    if let (Some(d), Some(p)) = (k.strip_prefix("ppl_"), x.as_f64()) {
                        m.ppl.entry(d.to_string()).or_default().push((step, p));
                    }
                }
            }
            Some("router") => {
                let share: Option<Vec<Vec<f64>>> = v.get("share").and_then(serde_json::Value::as_array).map(|layers| {
                    layers
                        .iter()
                        .map(|l| {
                            l.as_array()
                                .map(|s| s.iter().filter_map(serde_json::Value::as_f64).collect())
                                .unwrap_or_default()
                        })
                        .collect()
                });
                match share {
                    Some(s) if !s.is_empty() => m.router_steps.push((step, s)),
                    _ => bail!("{}: line {}: a `router` line without a `share` list per layer", path.display(), i + 1),
                }
            }
            Some("breaker") => {
                let a = v.get("action").cloned().unwrap_or_default();
                let s = |k: &str| match a.get(k) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                m.breakers.push(BreakerMark {
                    step,
                    breaker: s("breaker"),
                    reason: s("reason"),
                    rollback: a.get("rollback").and_then(serde_json::Value::as_bool).unwrap_or(false),
                });
            }
            _ => {}
        }
    }
    Ok(m)
}

/// `router[i].share` of a phase's summary.json, if it has any.
fn router_share(path: &Path) -> Result<Option<Vec<Vec<f64>>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let Some(layers) = v.get("router").and_then(serde_json::Value::as_array) else { return Ok(None) };
    let share: Vec<Vec<f64>> = layers
        .iter()
        .map(|l| {
            l.get("share")
                .and_then(serde_json::Value::as_array)
                .map(|s| s.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default()
        })
        .collect();
    Ok((!share.is_empty() && share.iter().all(|s| !s.is_empty())).then_some(share))
}

/// Reads a run directory (and the evaluation in `eval_dir`, default `<run>/eval`).
pub fn read_run(run_dir: &Path, eval_dir: Option<&Path>) -> Result<ReportInputs> {
    if !run_dir.is_dir() {
        bail!("{}: no such run directory", run_dir.display());
    }
    let mut names: Vec<String> = std::fs::read_dir(run_dir)
        .with_context(|| format!("reading {}", run_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("metrics").join("metrics.jsonl").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| (ORDER.iter().position(|o| *o == n.as_str()).unwrap_or(ORDER.len()), n.clone()));
    let mut warnings = Vec::new();
    let mut phases = Vec::new();
    for n in names {
        let dir = run_dir.join(&n);
        let mut m = read_metrics(&n, &dir.join("metrics").join("metrics.jsonl"), &mut warnings)?;
        m.router_share = router_share(&dir.join("summary.json"))?;
        phases.push(m);
    }
    let eval_dir = eval_dir.map(Path::to_path_buf).unwrap_or_else(|| run_dir.join("eval"));
    let summary = eval_dir.join("summary.json");
    let eval = if summary.is_file() {
        let text = std::fs::read_to_string(&summary).with_context(|| format!("reading {}", summary.display()))?;
        let s: EvalSummary =
            serde_json::from_str(&text).with_context(|| format!("{}: not an eval summary", summary.display()))?;
        if s.format != FORMAT {
            bail!("{}: format `{}`, expected `{FORMAT}`", summary.display(), s.format);
        }
        Some(s)
    } else {
        None
    };
    if phases.is_empty() && eval.is_none() {
        bail!("{}: nothing to report (no <phase>/metrics/metrics.jsonl, no eval/summary.json)", run_dir.display());
    }
    Ok(ReportInputs { phases, eval_dir: eval.as_ref().map(|_| eval_dir), eval, warnings })
}
