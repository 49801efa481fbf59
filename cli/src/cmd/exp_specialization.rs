//! `moe-cli experiment specialization`: per-layer domain -> expert routing on held-out documents
//! (the statistics in exp_specialization_stats). For each model named in the config (a MoE stage of the main
//! run: moe-init, p0, p1, ...), `seqs_per_domain` held-out sequences of each domain of the run's
//! dev pack go through the inference forward (dropless, each packed document in its own
//! context); per layer: the share of each domain's tokens per expert, the balanced mutual
//! information of domain and expert (bits, and normalised by log2 of the domains), the same with
//! the documents' domain labels shuffled (the noise floor), and each domain's top expert with
//! its lift (its share in the domain over its share in the other domains). A PNG heatmap per
//! model (rows: layer x domain, columns: experts).

use super::exp_specialization_stats::{shuffled_baseline, specialization, DocRouting, LayerSpecialization};
use anyhow::{bail, Context, Result};
use model::trace::collect::Tracer;
use model::Qwen3;
use serde::Deserialize;
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
    /// `specialization`.
    #[allow(dead_code)]
    experiment: String,
    /// MoE stages of the run whose models are probed, in table order.
    models: Vec<String>,
    /// Held-out sequences per domain (evenly spaced over the domain's; fewer when it has fewer).
    seqs_per_domain: usize,
    /// Label shuffles averaged for the baseline.
    #[serde(default = "default_shuffles")]
    shuffles: usize,
}

fn default_shuffles() -> usize {
    8
}

/// Sequences traced per forward.
const BATCH_SEQS: usize = 16;

/// The routing of `seqs` sequences of each domain of the pack at `dev`, per document.
fn route_docs(model: &Qwen3, dev: &Path, seqs: usize) -> Result<(Vec<String>, Vec<DocRouting>, usize, usize)> {
    let tracer = Tracer::new(model)?;
    let (layers, experts) = (tracer.layers(), tracer.experts());
    let ds = data::pack::PackedDataset::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    if ds.manifest.vocab_size as usize > model.config.vocab_size {
        bail!("{}: packed for a vocabulary of {}, larger than the model's", dev.display(), ds.manifest.vocab_size);
    }
    let by_domain = ds.sequences_by_domain();
    let domains: Vec<String> = by_domain.keys().cloned().collect();
    let mut docs = Vec::new();
    for (d, (_, all)) in by_domain.iter().enumerate() {
        let chosen: Vec<u64> =
            actors::eval::subset_indices(all.len(), Some(seqs)).into_iter().map(|i| all[i]).collect();
        for batch in chosen.chunks(BATCH_SEQS) {
            let mut toks: Vec<Vec<u32>> = Vec::new();
            for &g in batch {
                let s = ds.sequence(g);
                for seg in s.segments {
                    toks.push(s.tokens[seg.start as usize..][..seg.len as usize].to_vec());
                }
            }
            let refs: Vec<&[u32]> = toks.iter().map(Vec::as_slice).collect();
            let (records, _) = tracer.trace(&refs, None)?;
            let mut at = 0;
            for t in &toks {
                let mut counts = vec![vec![0u64; experts]; layers];
                for tok in 0..t.len() {
                    for (l, c) in counts.iter_mut().enumerate() {
                        c[records[(at + tok) * layers + l].expert as usize] += 1;
                    }
                }
                at += t.len();
                docs.push(DocRouting { domain: d, counts });
            }
        }
    }
    Ok((domains, docs, layers, experts))
}

/// Each domain's top expert as `medical e3 41% (x2.6)`: its share and its lift over the other
/// domains' mean share of that expert.
fn top_experts(l: &LayerSpecialization, domains: &[String]) -> String {
    let mut parts = Vec::new();
    for (d, row) in l.share.iter().enumerate() {
        let Some((e, &s)) = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) else { continue };
        if s == 0.0 {
            continue;
        }
        let others: Vec<f64> = l
            .share
            .iter()
            .enumerate()
            .filter(|(o, r)| *o != d && r.iter().sum::<f64>() > 0.0)
            .map(|(_, r)| r[e])
            .collect();
        let mean = others.iter().sum::<f64>() / others.len().max(1) as f64;
        let lift = if mean > 0.0 { format!("x{:.1}", s / mean) } else { "only here".to_string() };
        parts.push(format!("{} e{e} {:.0}% ({lift})", domains[d], 100.0 * s));
    }
    parts.join("; ")
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
    let c: Config = serde_json::from_str(cfg_text).with_context(|| format!("{source}: not a specialization config"))?;
    if c.models.is_empty() || c.seqs_per_domain == 0 {
        bail!("{source}: fields `models` and `seqs_per_domain` must not be empty / 0");
    }
    for m in &c.models {
        let stage = actors::manifest::Stage::from_name(m).with_context(|| format!("{source}: field `models`"))?;
        if matches!(stage.name(), "data" | "base" | "importance" | "baseline-small" | "teacher-continued" | "eval") {
            bail!("{source}: field `models`: `{m}` is not a MoE stage (moe-init, p0, p1, p2, p3)");
        }
        super::run::run_all(run_dir, config, phase_configs.to_vec(), m, quiet)?;
    }
    let out = run_dir.join("experiments").join("specialization");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let dev = run_dir.join("data").join("dev");
    let mut md = String::new();
    let mut record = serde_json::Map::new();
    for m in &c.models {
        let dir = run_dir.join(m).join("model");
        let model = Qwen3::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
        let (domains, docs, layers, experts) = route_docs(&model, &dev, c.seqs_per_domain)?;
        let spec = specialization(&docs, domains.len(), layers, experts);
        let floor = shuffled_baseline(&docs, domains.len(), layers, experts, c.shuffles, 0);
        let mut tokens = vec![0u64; domains.len()];
        for d in &docs {
            tokens[d.domain] += d.counts.first().map_or(0, |c| c.iter().sum());
        }
        let counts: Vec<String> = domains.iter().zip(&tokens).map(|(d, t)| format!("{d} {t}")).collect();
        let _ = writeln!(
            md,
            "**{m}** ({} held-out documents; tokens: {}; log2 {} domains = {:.3} bits)\n",
            docs.len(),
            counts.join(", "),
            domains.len(),
            (domains.len() as f64).log2()
        );
        md.push_str("| layer | domain-expert MI (bits) | normalised | shuffled labels (bits) | top expert per domain (share, lift over the other domains) |\n|---|---:|---:|---:|---|\n");
        for (l, (s, f)) in spec.iter().zip(&floor).enumerate() {
            let _ = writeln!(
                md,
                "| {l} | {:.3} | {:.3} | {:.3} | {} |",
                s.mi_bits,
                s.normalised,
                f,
                top_experts(s, &domains)
            );
        }
        let mean = spec.iter().map(|s| s.normalised).sum::<f64>() / spec.len().max(1) as f64;
        let _ = writeln!(md, "\nmean normalised MI over layers: {mean:.3}\n");
        let rows: Vec<String> =
            (0..layers).flat_map(|l| domains.iter().map(move |d| format!("layer {l} {d}"))).collect();
        let share: Vec<Vec<f64>> = spec.iter().flat_map(|s| s.share.iter().cloned()).collect();
        let png =
            super::report_plots::row_heatmap(&format!("{m}: share of each domain's tokens per expert"), &rows, &share)?;
        let png_path = out.join(format!("{m}-routing.png"));
        atomicio::write_file(&png_path, &png)?;
        let _ = writeln!(md, "![{m} routing]({m}-routing.png)\n");
        record.insert(
            m.clone(),
            serde_json::json!({
                "domains": domains, "tokens": tokens, "documents": docs.len(), "layers": spec, "shuffled_mi_bits": floor,
                "mean_normalised": mean, "heatmap": png_path,
            }),
        );
    }
    Ok((md, serde_json::Value::Object(record)))
}
