//! What the experiments that train several variants share: a variant's run directory made from
//! the finished stages of the main run (hard links, so nothing is copied or retrained), a phase
//! config with a scaled-down budget written as a file, a run config with fields replaced, and
//! the harness over a list of models.

use super::eval_summary::EvalSummary;
use actors::phase::PhaseConfig;
use actors::stages::RunConfig;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The run config at `config` (default: the embedded one) as JSON, with its parsed form.
pub fn run_config(config: Option<&Path>) -> Result<(serde_json::Value, RunConfig)> {
    let (text, source) = match config {
        Some(p) => {
            (std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?, p.display().to_string())
        }
        None => (actors::stages::DEFAULT_RUN.to_string(), "configs/runs/tiny.json".to_string()),
    };
    let parsed = RunConfig::parse(&text, &source)?;
    let value = serde_json::from_str(&text).with_context(|| format!("{source}: not JSON"))?;
    Ok((value, parsed))
}

/// Writes `value` with `fields` replaced as the run config `path` (checked by parsing it back).
pub fn write_run_config(value: &serde_json::Value, fields: &[(&str, serde_json::Value)], path: &Path) -> Result<()> {
    let mut v = value.clone();
    for (k, x) in fields {
        v[*k] = x.clone();
    }
    let text = serde_json::to_string_pretty(&v)?;
    RunConfig::parse(&text, &path.display().to_string())?;
    atomicio::write_file(path, text.as_bytes())?;
    Ok(())
}

/// Makes `dst`'s `stages` the finished stages of `src` (each must have its manifest): a stage
/// whose manifest already equals the source's is kept; anything else there is replaced by hard
/// links to the source's files (copies where links are refused).
pub fn link_stages(src: &Path, dst: &Path, stages: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for s in stages {
        let (from, to) = (src.join(s), dst.join(s));
        let manifest = std::fs::read(from.join("manifest.json"))
            .with_context(|| format!("{}: stage `{s}` is not finished (no manifest.json)", from.display()))?;
        if std::fs::read(to.join("manifest.json")).ok().as_deref() == Some(manifest.as_slice()) {
            continue;
        }
        if to.exists() {
            std::fs::remove_dir_all(&to).with_context(|| format!("removing {}", to.display()))?;
        }
        link_tree(&from, &to)?;
    }
    Ok(())
}

fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let (a, b) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            link_tree(&a, &b)?;
        } else if std::fs::hard_link(&a, &b).is_err() {
            std::fs::copy(&a, &b).with_context(|| format!("copying {} to {}", a.display(), b.display()))?;
        }
    }
    Ok(())
}

/// The phase file given for `phase` on the command line, if any.
pub fn given_phase_file<'a>(phase_configs: &'a [(String, PathBuf)], phase: &str) -> Option<&'a Path> {
    phase_configs.iter().rev().find(|(n, _)| n == phase).map(|(_, p)| p.as_path())
}

/// Writes the config of `phase` (the file given for it, else the embedded one, resolved for
/// `preset`) with a budget of `steps` optimiser steps and `eval` merged over its evaluation
/// schedule, as `path`. Returns the steps and tokens written.
pub fn write_phase_config(
    given: Option<&Path>,
    phase: &str,
    preset: &str,
    steps: u64,
    eval: Option<&serde_json::Value>,
    path: &Path,
) -> Result<(u64, u64)> {
    let mut cfg = match given {
        Some(p) => PhaseConfig::parse(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            &p.display().to_string(),
            preset,
        )?,
        None => PhaseConfig::embedded(phase, preset)?,
    };
    if steps == 0 {
        bail!("a phase of 0 steps");
    }
    cfg.tokens = steps * cfg.accumulation() * cfg.micro_tokens();
    let mut v = serde_json::to_value(&cfg)?;
    if let Some(e) = eval {
        let Some(obj) = e.as_object() else { bail!("`eval` must be an object of evaluation settings") };
        for (k, x) in obj {
            v["eval"][k] = x.clone();
        }
    }
    let text = serde_json::to_string_pretty(&v)?;
    let back = PhaseConfig::parse(&text, &path.display().to_string(), preset)?;
    atomicio::write_file(path, text.as_bytes())?;
    Ok((back.total_steps(), back.tokens))
}

/// Runs the harness (option log-likelihood, perplexity on the run's held-out documents, no
/// generation) on `models` against the world of `run_dir` into `out`; returns its summary.
pub fn evaluate(
    models: Vec<(String, PathBuf)>,
    run_dir: &Path,
    run: &RunConfig,
    out: &Path,
    max_items: Option<usize>,
    quiet: bool,
) -> Result<EvalSummary> {
    let args = super::eval::Args {
        models,
        sets: vec![run_dir.join("data").join("world").display().to_string()],
        out: out.to_path_buf(),
        tokenizer: None,
        max_items,
        no_generate: true,
        gen_tokens: 12,
        no_ppl: false,
        ppl_docs: 64,
        dev_every: run.dev_every as usize,
        ppl_seq_len: run.seq_len,
        train_text: Vec::new(),
        quiet,
        chat: false,
        think: false,
        kl_ref: None,
    };
    super::eval::run(args)?;
    read_summary(&out.join("summary.json"))
}

/// Reads an eval summary.
pub fn read_summary(path: &Path) -> Result<EvalSummary> {
    serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("{}: not an eval summary", path.display()))
}

/// `name`'s accuracy on `set` in `s` as `57.0% [51.6, 62.2]` (`-` when absent).
pub fn accuracy_cell(s: &EvalSummary, name: &str, set: &str) -> String {
    s.mcq.iter().find(|r| r.model == name && r.set == set).map_or("-".into(), |r| {
        format!("{:.1}% [{:.1}, {:.1}]", 100.0 * r.loglik.value, 100.0 * r.loglik.lo, 100.0 * r.loglik.hi)
    })
}

/// `name`'s accuracy on `set` (None when absent).
pub fn accuracy(s: &EvalSummary, name: &str, set: &str) -> Option<f64> {
    s.mcq.iter().find(|r| r.model == name && r.set == set).map(|r| r.loglik.value)
}

/// `name`'s held-out perplexity on `domain` (None when absent).
pub fn ppl(s: &EvalSummary, name: &str, domain: &str) -> Option<f64> {
    s.ppl.iter().find(|p| p.model == name && p.domain == domain).map(|p| p.ppl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_config_is_scaled_to_the_steps_asked_and_its_eval_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p0.json");
        let eval = serde_json::json!({ "every": 0, "final_mcq_items": 7 });
        let (steps, tokens) = write_phase_config(None, "p0", "tiny", 5, Some(&eval), &path).unwrap();
        let tiny = PhaseConfig::embedded("p0", "tiny").unwrap();
        assert_eq!((steps, tokens), (5, 5 * tiny.tokens_per_step));
        let back = PhaseConfig::parse(&std::fs::read_to_string(&path).unwrap(), "p0", "tiny").unwrap();
        assert_eq!((back.eval.every, back.eval.final_mcq_items), (0, 7));
        assert_eq!(back.eval.dev_seqs, tiny.eval.dev_seqs, "fields not named keep their values");
        assert!(write_phase_config(None, "p0", "tiny", 0, None, &path).is_err());
        let bad = serde_json::json!({ "every": "often" });
        assert!(write_phase_config(None, "p0", "tiny", 5, Some(&bad), &path).is_err());
    }

    #[test]
    fn linked_stages_are_kept_when_their_manifest_matches_and_replaced_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        std::fs::create_dir_all(src.join("base/model")).unwrap();
        std::fs::write(src.join("base/manifest.json"), "{\"v\":1}").unwrap();
        std::fs::write(src.join("base/model/w.bin"), "weights").unwrap();
        link_stages(&src, &dst, &["base"]).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("base/model/w.bin")).unwrap(), "weights");
        std::fs::write(dst.join("base/extra"), "x").unwrap();
        link_stages(&src, &dst, &["base"]).unwrap();
        assert!(dst.join("base/extra").exists(), "same manifest: kept as it is");
        std::fs::remove_file(src.join("base/manifest.json")).unwrap();
        std::fs::write(src.join("base/manifest.json"), "{\"v\":2}").unwrap();
        link_stages(&src, &dst, &["base"]).unwrap();
        assert!(!dst.join("base/extra").exists(), "another manifest: replaced");
        let err = link_stages(&src, &dst, &["p0"]).unwrap_err().to_string();
        assert!(err.contains("stage `p0` is not finished"), "{err}");
    }
}
