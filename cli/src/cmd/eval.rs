//! `moe-cli eval`: several models scored on the same items in the same order. Per (model, set):
//! MCQ by option log-likelihood (summed and per token) and by the greedy generated answer, a
//! CSV of the items and a JSON of the counts; per model: perplexity per domain on the held-out
//! documents of the world directories (refused across different tokenizers), router usage and
//! the overflow of capacity 1.0 / 1.05 / 1.25 on those dropless forwards, prefill and decode
//! tokens/s of the generation runs; with `--kl-ref`, each model's KL divergence from a reference model
//! on those documents (`eval_kl`). A result whose key (model files, tokenizer, items,
//! settings) matches is reused, so an interrupted evaluation resumes. Ends with summary.json
//! (Wilson 95% intervals).

use super::eval_io::{resumed, sha256_hex, write_json};
use super::eval_kl::{eval_kl, KlReference};
use super::eval_sets::{check_overlap, held_out_docs, load_sets, EvalSet};
use super::eval_summary::{EvalSummary, LatencyRow, McqRow, ModelInfo, PplRow, RoutingRow, SetInfo, FORMAT};
use actors::eval::{encode_items, score_items, subset_indices, DomainPpl, McqConfig};
use actors::harness::{
    csv_of, generate_answers, text_perplexity, GenMode, ItemRow, Latency, PplDoc, RoutingTally, SetResult,
};
use anyhow::{bail, Context, Result};
use data::tokenizer::Tokenizer;
use indicatif::ProgressBar;
use model::Qwen3;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `eval`.
#[derive(clap::Args)]
pub struct Args {
    /// A model to evaluate, `NAME=PATH`: a model directory (dense, MoE, Dots1 export, GPTQ) or a
    /// .gguf file. Repeatable; models are evaluated in the order given.
    #[arg(long = "model", required = true, value_parser = parse_model)]
    pub models: Vec<(String, PathBuf)>,
    /// Eval sets: a world directory (its eval/*.jsonl; its held-out documents give the
    /// perplexity), or a file, `FILE` (schema detected) or `FORMAT=FILE` (medmoe, medqa, medmcqa,
    /// medmcqa-hf, pubmedqa). Repeatable.
    #[arg(long = "sets", required = true, num_args = 1..)]
    pub sets: Vec<String>,
    /// Output directory (per model: <set>.csv, <set>.json, ppl.json; summary.json).
    #[arg(long)]
    pub out: PathBuf,
    /// tokenizer.json (or its directory) for models that carry none (default: the model
    /// directory's, or the one beside a .gguf file).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Items per set at most, evenly spaced over the set (default: all).
    #[arg(long, value_parser = crate::args::count_usize)]
    pub max_items: Option<usize>,
    /// Do not generate answers (no generated-answer accuracy, no latency).
    #[arg(long)]
    pub no_generate: bool,
    /// New tokens per generated answer at most.
    #[arg(long, default_value_t = 12, value_parser = crate::args::count_usize)]
    pub gen_tokens: usize,
    /// No perplexity (e.g. to compare models whose tokenizers differ).
    #[arg(long)]
    pub no_ppl: bool,
    /// Held-out documents per domain for the perplexity.
    #[arg(long, default_value_t = 64, value_parser = crate::args::count_usize)]
    pub ppl_docs: usize,
    /// The run's `dev_every`: a world document is held out when `label_hash(id) % dev_every == 0`.
    #[arg(long, default_value_t = 50, value_parser = crate::args::count_usize)]
    pub dev_every: usize,
    /// Tokens per row of the perplexity forwards.
    #[arg(long, default_value_t = 256, value_parser = crate::args::count_usize)]
    pub ppl_seq_len: usize,
    /// Training text for the 13-gram overlap check (world directory, corpus JSONL or a directory
    /// of them; repeatable). Default: the corpus of the world directories in --sets.
    #[arg(long)]
    pub train_text: Vec<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Generated answers from chat models: each item a user turn in the tokenizer's chat template
    /// (options as `A. text` lines, "Reply with the letter of the right option. /no_think", as P3
    /// asks), the answer read after the think block; stops at `<|im_end|>` only, so give
    /// --gen-tokens room for the think block.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: ask under `/think` instead of `/no_think`.
    #[arg(long, requires = "chat")]
    pub think: bool,
    /// The name of one of the `--model`s: every other model's KL divergence from it per domain
    /// on the perplexity documents (e.g. quantized models against the model they came from).
    #[arg(long)]
    pub kl_ref: Option<String>,
}

fn parse_model(s: &str) -> std::result::Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=PATH"))?;
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return Err(format!("model name `{name}`: use letters, digits, `.`, `_`, `-`"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// The tokenizer of a model: its directory's, the one beside a .gguf, or `--tokenizer`.
fn tokenizer_of(name: &str, path: &Path, fallback: Option<&Path>) -> Result<Tokenizer> {
    let own = if path.is_dir() { Some(path.to_path_buf()) } else { path.parent().map(Path::to_path_buf) };
    let own = own.filter(|d| d.join("tokenizer.json").is_file());
    match own.as_deref().or(fallback) {
        Some(p) => Tokenizer::load(p).with_context(|| format!("model `{name}`: loading its tokenizer")),
        None => bail!("model `{name}`: no tokenizer.json beside {}; pass --tokenizer", path.display()),
    }
}

/// Name, size and modification time of a model's files: a changed model changes its results' keys.
fn fingerprint(path: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    let mut parts = Vec::new();
    for f in files {
        let m = std::fs::metadata(&f).with_context(|| format!("reading {}", f.display()))?;
        let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        parts.push(format!("{name}:{}:{}", m.len(), mtime.map_or(0, |d| d.as_nanos())));
    }
    Ok(parts.join("|"))
}

/// Perplexity and routing of one model.
#[derive(Serialize, Deserialize)]
struct PplResult {
    key: String,
    per_domain: BTreeMap<String, DomainPpl>,
    routing: RoutingTally,
    seconds: f64,
}

/// Parameters of a model and those one token uses (one routed expert per layer).
fn param_counts(m: &Qwen3) -> (u64, u64) {
    let total = m.num_params() as u64;
    let inactive = m.moe.as_ref().map_or(0, |s| {
        (m.config.num_hidden_layers * s.num_experts.saturating_sub(1) * 3 * s.expert_width * m.config.hidden_size)
            as u64
    });
    (total, total - inactive)
}

fn progress(quiet: bool, len: u64, what: &str) -> ProgressBar {
    if quiet {
        ProgressBar::hidden()
    } else {
        crate::progress::bar(len, what)
    }
}

/// Evaluates one (model, set), or reuses its result.
#[allow(clippy::too_many_arguments)]
fn eval_set(
    a: &Args,
    name: &str,
    model: &Qwen3,
    tok: &Tokenizer,
    set: &EvalSet,
    model_key: &str,
    dir: &Path,
    bar: &ProgressBar,
) -> Result<(SetResult, bool)> {
    let mcq = McqConfig::default();
    let items_sha = sha256_hex(&serde_json::to_vec(&set.items)?);
    let mut key_src = serde_json::json!({
        "model": model_key, "tokenizer": tok.sha256(), "items": items_sha, "mcq": mcq,
        "generate": !a.no_generate, "gen_tokens": a.gen_tokens, "version": 1,
    });
    if a.chat {
        key_src["chat"] = serde_json::json!({ "think": a.think });
    }
    let key = sha256_hex(key_src.to_string().as_bytes());
    let (json_path, csv_path) = (dir.join(format!("{}.json", set.name)), dir.join(format!("{}.csv", set.name)));
    if csv_path.is_file() {
        if let Some(r) = resumed(&json_path, &key, |r: &SetResult| r.key.as_str()) {
            return Ok((r, true));
        }
    }
    let started = Instant::now();
    let encoded = encode_items(tok, &set.items).with_context(|| format!("set `{}`", set.name))?;
    let mut scores = Vec::with_capacity(encoded.len());
    for chunk in encoded.chunks(32) {
        scores.extend(score_items(model, chunk, &mcq).with_context(|| format!("model `{name}`, set `{}`", set.name))?);
        bar.inc(chunk.len() as u64);
    }
    let generated = if a.no_generate {
        None
    } else {
        let template = if a.chat {
            Some(tok.chat_template().with_context(|| format!("model `{name}`: its chat template"))?)
        } else {
            None
        };
        let mode = match &template {
            Some(template) => GenMode::Chat { template, think: a.think },
            None => GenMode::Plain,
        };
        let g = generate_answers(model, tok, &set.items, a.gen_tokens, mode, &mut || bar.inc(1))
            .with_context(|| format!("model `{name}`, set `{}`: generating answers", set.name))?;
        Some(g)
    };
    let rows: Vec<ItemRow> = match generated {
        Some(g) => scores.iter().zip(g).map(|(s, g)| ItemRow::new(s, Some(g))).collect(),
        None => scores.iter().map(|s| ItemRow::new(s, None)).collect(),
    };
    let r = SetResult::from_rows(key, name, &set.name, &rows, started.elapsed().as_secs_f64());
    atomicio::write_file(&csv_path, csv_of(&rows).as_bytes())
        .with_context(|| format!("writing {}", csv_path.display()))?;
    // The JSON last: with its key it marks the pair done.
    write_json(&json_path, &r)?;
    Ok((r, false))
}

/// Perplexity and routing of one model, or its previous result.
fn eval_ppl(
    model: &Qwen3,
    tok: &Tokenizer,
    docs: &[PplDoc],
    a: &Args,
    model_key: &str,
    dir: &Path,
    bar: &ProgressBar,
) -> Result<(PplResult, bool)> {
    bar.set_length(docs.iter().map(|d| d.ids.len() as u64).sum());
    let docs_sha = sha256_hex(format!("{docs:?}").as_bytes());
    let key_src = serde_json::json!({
        "model": model_key, "tokenizer": tok.sha256(), "docs": docs_sha, "seq_len": a.ppl_seq_len, "version": 1,
    });
    let key = sha256_hex(key_src.to_string().as_bytes());
    let path = dir.join("ppl.json");
    if let Some(r) = resumed(&path, &key, |r: &PplResult| r.key.as_str()) {
        return Ok((r, true));
    }
    let started = Instant::now();
    let mut routing = RoutingTally::default();
    let per_domain = text_perplexity(model, docs, a.ppl_seq_len, 4, &mut routing, &mut |n| bar.inc(n as u64))?;
    let r = PplResult { key, per_domain, routing, seconds: started.elapsed().as_secs_f64() };
    write_json(&path, &r)?;
    Ok((r, false))
}

/// Runs the evaluation.
pub fn run(a: Args) -> Result<()> {
    let mut names = std::collections::BTreeSet::new();
    for (n, _) in &a.models {
        if !names.insert(n.as_str()) {
            bail!("two models are named `{n}`");
        }
    }
    let sources = load_sets(&a.sets)?;
    // The same items, in the same order, for every model.
    let sets: Vec<EvalSet> = sources
        .sets
        .into_iter()
        .map(|s| {
            let items = subset_indices(s.items.len(), a.max_items).into_iter().map(|i| s.items[i].clone()).collect();
            EvalSet { items, ..s }
        })
        .collect();
    let toks = a.models.iter().map(|(n, p)| tokenizer_of(n, p, a.tokenizer.as_deref())).collect::<Result<Vec<_>>>()?;
    let ppl_on = !a.no_ppl && !sources.worlds.is_empty();
    if ppl_on {
        let (n0, t0) = (&a.models[0].0, &toks[0]);
        if let Some(((n, _), t)) = a.models.iter().zip(&toks).find(|(_, t)| t.sha256() != t0.sha256()) {
            bail!(
                "models `{n0}` and `{n}` have different tokenizers (tokenizer.json sha256 {} vs {}): perplexity is \
                 per tokenizer, so theirs are not comparable; evaluate them in separate runs or pass --no-ppl",
                &t0.sha256()[..12],
                &t.sha256()[..12]
            );
        }
    }
    let docs = if ppl_on { held_out_docs(&sources.worlds, a.dev_every, a.ppl_docs)? } else { Vec::new() };
    let kl_ref = match &a.kl_ref {
        None => None,
        Some(r) => {
            let Some((name, path)) = a.models.iter().find(|(n, _)| n == r) else {
                bail!("--kl-ref `{r}`: no --model is named so");
            };
            if !ppl_on {
                bail!("--kl-ref `{r}`: the KL is measured on the perplexity documents; give a world directory in --sets and no --no-ppl");
            }
            let model = Qwen3::load(path).with_context(|| format!("model `{name}`: loading {}", path.display()))?;
            Some(KlReference { name: name.clone(), model, key: fingerprint(path)? })
        }
    };
    let train = if a.train_text.is_empty() { sources.worlds.clone() } else { a.train_text.clone() };
    let overlaps = check_overlap(&sets, &train)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut summary = EvalSummary {
        format: FORMAT.into(),
        version: 1,
        models: Vec::new(),
        sets: sets
            .iter()
            .zip(overlaps)
            .map(|(s, overlap)| SetInfo {
                name: s.name.clone(),
                source: s.source.display().to_string(),
                format: s.format.clone(),
                items: s.items.len() as u64,
                overlap,
            })
            .collect(),
        mcq: Vec::new(),
        ppl: Vec::new(),
        routing: Vec::new(),
        latency: Vec::new(),
        kl: Vec::new(),
    };
    let started = Instant::now();
    for ((name, path), tok) in a.models.iter().zip(&toks) {
        let model = Qwen3::load(path).with_context(|| format!("model `{name}`: loading {}", path.display()))?;
        if tok.vocab_size() > model.config.vocab_size {
            bail!(
                "model `{name}`: its tokenizer has {} tokens, the model's vocabulary {}: tokenizer and model disagree",
                tok.vocab_size(),
                model.config.vocab_size
            );
        }
        let model_key = fingerprint(path)?;
        let (params, active_params) = param_counts(&model);
        summary.models.push(ModelInfo {
            name: name.clone(),
            path: path.display().to_string(),
            tokenizer_sha256: tok.sha256().to_string(),
            params,
            active_params,
        });
        let dir = a.out.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let per_item = if a.no_generate { 1 } else { 2 };
        let items: u64 = sets.iter().map(|s| s.items.len() as u64).sum();
        let bar = progress(a.quiet, items * per_item, name);
        let mut latency = Latency::default();
        for set in &sets {
            let (r, reused) = eval_set(&a, name, &model, tok, set, &model_key, &dir, &bar)?;
            if reused {
                bar.inc(r.items * per_item);
            }
            let row = McqRow::of(&r);
            let gen = row.generated.as_ref().map_or("-".to_string(), |g| format!("{:.1}%", 100.0 * g.value));
            bar.suspend(|| {
                println!(
                "mcq      {name:<12} {:<12} {:>5.1}% [{:.1}, {:.1}]  per-token {:>5.1}%  generated {gen}  chance {:.0}%{}",
                set.name,
                100.0 * row.loglik.value,
                100.0 * row.loglik.lo,
                100.0 * row.loglik.hi,
                100.0 * row.loglik_norm.value,
                100.0 * row.chance,
                if reused { "  (reused)" } else { "" }
                )
            });
            if let Some(l) = &r.latency {
                latency.prefill_tokens += l.prefill_tokens;
                latency.prefill_secs += l.prefill_secs;
                latency.decode_tokens += l.decode_tokens;
                latency.decode_secs += l.decode_secs;
            }
            summary.mcq.push(row);
        }
        bar.finish_and_clear();
        if !a.no_generate {
            summary.latency.push(LatencyRow {
                model: name.clone(),
                prefill_tokens: latency.prefill_tokens,
                prefill_tokens_per_s: latency.prefill_tokens_per_s(),
                decode_tokens: latency.decode_tokens,
                decode_tokens_per_s: latency.decode_tokens_per_s(),
            });
        }
        if ppl_on {
            let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
            let ids = tok.encode_batch(&texts)?;
            let docs: Vec<PplDoc> =
                docs.iter().zip(ids).map(|(d, ids)| PplDoc { domain: d.domain.clone(), ids }).collect();
            let bar = progress(a.quiet, 0, &format!("{name} ppl"));
            let (r, reused) = eval_ppl(&model, tok, &docs, &a, &model_key, &dir, &bar)?;
            bar.finish_and_clear();
            for (domain, p) in &r.per_domain {
                println!(
                    "ppl      {name:<12} {domain:<14} {:>8.3}  ({} tokens){}",
                    p.ppl,
                    p.tokens,
                    if reused { "  (reused)" } else { "" }
                );
                summary.ppl.push(PplRow {
                    model: name.clone(),
                    domain: domain.clone(),
                    tokens: p.tokens,
                    mean_ce: p.mean_ce,
                    ppl: p.ppl,
                });
            }
            if let Some(row) = RoutingRow::of(name, &r.routing) {
                let over: Vec<String> =
                    row.overflow.iter().map(|o| format!("{:.2}: {:.2}%", o.capacity_factor, 100.0 * o.frac)).collect();
                println!("routing  {name:<12} overflow {}  -> ship capacity {:.2}", over.join(", "), row.ship_capacity);
                summary.routing.push(row);
            }
            if let Some(reference) = kl_ref.as_ref().filter(|r| r.name != *name) {
                let bar = progress(a.quiet, 0, &format!("{name} KL"));
                let (rows, reused) = eval_kl(name, &model, &model_key, reference, &docs, a.ppl_seq_len, &dir, &bar)?;
                bar.finish_and_clear();
                for k in &rows {
                    println!(
                        "kl       {name:<12} {:<14} {:>9.6} nats (p99 {:.4}, same top-1 {:.1}%) from `{}`{}",
                        k.domain,
                        k.mean_kl,
                        k.p99_kl,
                        100.0 * k.same_top1,
                        k.reference,
                        if reused { "  (reused)" } else { "" }
                    );
                }
                summary.kl.extend(rows);
            }
        }
    }
    let path = a.out.join("summary.json");
    write_json(&path, &summary)?;
    println!("summary  {} ({:.1} s)", path.display(), started.elapsed().as_secs_f64());
    Ok(())
}
