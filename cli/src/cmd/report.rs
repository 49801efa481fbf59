//! `moe-cli report --run-dir DIR`: `DIR/report/report.html` with PNG plots beside it — loss and
//! dev-perplexity curves per phase with the breaker actions on the timeline, the layer x expert
//! routing shares of each MoE phase and per layer over its training steps, and, when
//! `moe-cli eval` (or stage `eval`) wrote `DIR/eval/summary.json`, accuracy bars with Wilson
//! intervals, confusion matrices, perplexity, capacity overflow and latency. Self-contained
//! (relative image links, no script, no network). The directory is built beside its target and
//! renamed into place.

use super::eval_summary::EvalSummary;
use super::report_data::{read_run, PhaseMetrics, ReportInputs};
use super::report_plots::{
    accuracy_bars, confusion, heatmap, latency_bars, loss_curve, ppl_curves, routing_over_steps,
};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Arguments of `report`.
#[derive(clap::Args)]
pub struct Args {
    /// Run directory (its phases' metrics and, if present, eval/summary.json).
    #[arg(long, default_value = "runs/default")]
    pub run_dir: PathBuf,
    /// Directory of a `moe-cli eval` output (default: <run-dir>/eval).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Output directory (default: <run-dir>/report; replaced when it exists).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// HTML-escaped text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A file name part made of safe characters.
fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// PNG files to write and the HTML that shows them.
struct Page {
    html: String,
    files: Vec<(String, Vec<u8>)>,
}

impl Page {
    fn image(&mut self, name: String, png: Vec<u8>, alt: &str) {
        let _ = writeln!(self.html, "<p><img src=\"{}\" alt=\"{}\"></p>", esc(&name), esc(alt));
        self.files.push((name, png));
    }
}

fn phase_section(p: &mut Page, m: &PhaseMetrics) -> Result<()> {
    let _ = writeln!(p.html, "<h3>{}</h3>", esc(&m.phase));
    if let Some(last) = m.train.last() {
        let _ = writeln!(p.html, "<p>{} logged steps; last step {}: loss {:.4}</p>", m.train.len(), last.0, last.1);
    }
    if let Some(png) = loss_curve(m)? {
        p.image(format!("loss_{}.png", slug(&m.phase)), png, &format!("{} loss", m.phase));
    }
    if let Some(png) = ppl_curves(m)? {
        p.image(format!("ppl_{}.png", slug(&m.phase)), png, &format!("{} dev perplexity", m.phase));
    }
    if !m.breakers.is_empty() {
        p.html.push_str("<table><tr><th>step</th><th>breaker</th><th>rollback</th><th>reason</th></tr>\n");
        for b in &m.breakers {
            let _ = writeln!(
                p.html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                b.step,
                esc(&b.breaker),
                if b.rollback { "yes" } else { "" },
                esc(&b.reason)
            );
        }
        p.html.push_str("</table>\n");
    }
    if let Some(png) =
        routing_over_steps(&format!("{}: routing share per expert over training", m.phase), &m.router_steps)?
    {
        p.image(format!("routing_steps_{}.png", slug(&m.phase)), png, &format!("{} routing share over steps", m.phase));
    }
    if let Some(share) = &m.router_share {
        let png = heatmap(&format!("{}: routing share per layer and expert (%)", m.phase), share)?;
        p.image(format!("routing_{}.png", slug(&m.phase)), png, &format!("{} routing share", m.phase));
    }
    Ok(())
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

fn eval_section(p: &mut Page, s: &EvalSummary, dir: &Path) -> Result<()> {
    let _ = writeln!(p.html, "<h2>Evaluation</h2>\n<p>From <code>{}</code>.</p>", esc(&dir.display().to_string()));
    p.html.push_str("<table><tr><th>model</th><th>path</th><th>params</th><th>active params</th></tr>\n");
    for m in &s.models {
        let _ = writeln!(
            p.html,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&m.name),
            esc(&m.path),
            m.params,
            m.active_params
        );
    }
    p.html.push_str("</table>\n<h3>Multiple choice</h3>\n");
    p.html.push_str("<table><tr><th>model</th><th>set</th><th>items</th><th>log-likelihood [95% CI]</th><th>per token</th><th>generated (parsed)</th><th>chance</th></tr>\n");
    for r in &s.mcq {
        let gen = match (&r.generated, r.generated_parsed) {
            (Some(g), Some(k)) => format!("{} ({k} of {})", pct(g.value), r.items),
            _ => "-".into(),
        };
        let _ = writeln!(
            p.html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} [{}, {}]</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.model),
            esc(&r.set),
            r.items,
            pct(r.loglik.value),
            pct(r.loglik.lo),
            pct(r.loglik.hi),
            pct(r.loglik_norm.value),
            gen,
            pct(r.chance)
        );
    }
    p.html.push_str("</table>\n");
    for set in &s.sets {
        if let Some(o) = &set.overlap {
            if o.overlapping > 0 {
                let _ = writeln!(
                    p.html,
                    "<p class=\"warn\">Set {}: {} of {} items share a {}-gram with the training text.</p>",
                    esc(&set.name),
                    o.overlapping,
                    o.items,
                    o.n
                );
            }
        }
    }
    if let Some(png) = accuracy_bars(s)? {
        p.image("accuracy.png".into(), png, "accuracy per model and set");
    }
    p.html.push_str("<h3>Confusion matrices</h3>\n");
    for r in &s.mcq {
        let png = confusion(&format!("{} / {}: log-likelihood", r.model, r.set), &r.letters, &r.letters, &r.confusion)?;
        p.image(format!("confusion_{}_{}.png", slug(&r.model), slug(&r.set)), png, "confusion matrix");
        if let Some(m) = &r.confusion_gen {
            let mut cols = r.letters.clone();
            cols.push("none".into());
            let png = confusion(&format!("{} / {}: generated", r.model, r.set), &r.letters, &cols, m)?;
            p.image(format!("confusion_gen_{}_{}.png", slug(&r.model), slug(&r.set)), png, "confusion matrix");
        }
    }
    if !s.ppl.is_empty() {
        p.html.push_str("<h3>Perplexity (held-out documents)</h3>\n<table><tr><th>model</th><th>domain</th><th>tokens</th><th>perplexity</th></tr>\n");
        for r in &s.ppl {
            let _ = writeln!(
                p.html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>",
                esc(&r.model),
                esc(&r.domain),
                r.tokens,
                r.ppl
            );
        }
        p.html.push_str("</table>\n");
    }
    if !s.routing.is_empty() {
        p.html.push_str("<h3>Routing at evaluation (dropless) and capacity</h3>\n<table><tr><th>model</th>");
        for o in &s.routing[0].overflow {
            let _ = write!(p.html, "<th>dropped at {:.2}</th>", o.capacity_factor);
        }
        p.html.push_str("<th>ship capacity</th></tr>\n");
        for r in &s.routing {
            let _ = write!(p.html, "<tr><td>{}</td>", esc(&r.model));
            for o in &r.overflow {
                let _ = write!(p.html, "<td>{:.2}%</td>", 100.0 * o.frac);
            }
            let _ = writeln!(p.html, "<td>{:.2}</td></tr>", r.ship_capacity);
        }
        p.html.push_str("</table>\n<p>Rule (seed plan): capacity 1.0 drops tokens -> ship 1.25, else 1.05.</p>\n");
        for r in &s.routing {
            let png = heatmap(&format!("{}: routing share at evaluation (%)", r.model), &r.share)?;
            p.image(format!("routing_eval_{}.png", slug(&r.model)), png, "routing share");
        }
    }
    if let Some(png) = latency_bars(&s.latency)? {
        p.html.push_str("<h3>Latency (our runtime, batch 1)</h3>\n<table><tr><th>model</th><th>prefill tokens</th><th>prefill tokens/s</th><th>decoded tokens</th><th>decode tokens/s</th></tr>\n");
        for r in &s.latency {
            let _ = writeln!(
                p.html,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.1}</td></tr>",
                esc(&r.model),
                r.prefill_tokens,
                r.prefill_tokens_per_s,
                r.decode_tokens,
                r.decode_tokens_per_s
            );
        }
        p.html.push_str("</table>\n");
        p.image("latency.png".into(), png, "tokens per second");
    }
    Ok(())
}

/// The page of a run's inputs.
fn page(run_dir: &Path, inputs: &ReportInputs) -> Result<Page> {
    let mut p = Page { html: String::new(), files: Vec::new() };
    let _ = writeln!(
        p.html,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>medmoe report: {0}</title>\n<style>\
         body{{font-family:sans-serif;max-width:1050px;margin:2em auto;}} table{{border-collapse:collapse;margin:1em 0;}}\
         td,th{{border:1px solid #bbb;padding:3px 8px;font-size:14px;}} img{{max-width:100%;}} .warn{{color:#a00;}}\
         </style></head><body>\n<h1>medmoe report</h1>\n<p>Run directory <code>{0}</code>.</p>",
        esc(&run_dir.display().to_string())
    );
    for w in &inputs.warnings {
        let _ = writeln!(p.html, "<p class=\"warn\">{}</p>", esc(w));
    }
    if !inputs.phases.is_empty() {
        p.html.push_str("<h2>Training</h2>\n");
        for m in &inputs.phases {
            phase_section(&mut p, m)?;
        }
    }
    if let (Some(s), Some(dir)) = (&inputs.eval, &inputs.eval_dir) {
        eval_section(&mut p, s, dir)?;
    }
    p.html.push_str("</body></html>\n");
    Ok(p)
}

/// Writes the report of `run_dir` into `out` (replacing it); returns the path of report.html.
pub fn write_report(run_dir: &Path, eval: Option<&Path>, out: &Path) -> Result<PathBuf> {
    let inputs = read_run(run_dir, eval)?;
    for w in &inputs.warnings {
        eprintln!("warning: {w}");
    }
    let p = page(run_dir, &inputs)?;
    let staging = atomicio::StagingDir::replacing(out)?;
    for (name, bytes) in &p.files {
        let path = staging.path().join(name);
        atomicio::write_file(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    atomicio::write_file(&staging.path().join("report.html"), p.html.as_bytes())?;
    let dir = staging.commit()?;
    Ok(dir.join("report.html"))
}

/// Runs `report`.
pub fn run(a: Args) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.run_dir.join("report"));
    let path = write_report(&a.run_dir, a.eval.as_deref(), &out)?;
    println!("report   {}", path.display());
    Ok(())
}
