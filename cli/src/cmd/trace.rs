//! `moe-cli trace`: routing traces of a MoE model over a pack, and next-expert prediction for
//! expert prefetching (model::trace).
//!
//! ```sh
//! moe-cli trace --model runs/default/p1/model --data runs/default/data/dev --out runs/default/trace
//! ```
//! Traces `--seqs` sequences spread evenly over the pack (each document of a packed sequence in
//! its own context), `--chunk` sequences per chunk file; a killed run resumes at the first
//! missing chunk. Then fits the counting predictors on 4 of every 5 chunks, scores every
//! predictor per layer on the fifth, simulates expert caches, prints the tables and writes
//! `report.json`.

use anyhow::{bail, Context, Result};
use model::trace::collect::Tracer;
use model::trace::file::{chunk_path, open_dir, write_chunk, Chunk, TraceMeta};
use model::trace::hidden::{hidden_path, write_hidden, HiddenChunk};
use model::trace::predict::{accuracy_of, tokens, Fitted, Hits, Predictor};
use model::trace::prefetch::{simulate, Policy, Predict};
use model::trace::probe::ProbeConfig;
use model::trace::probe_features::{guesses, tokens_with_hidden, Features, Probes};
use model::trace::LayerRecord;
use model::Qwen3;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Arguments of `trace`.
#[derive(clap::Args)]
pub struct Args {
    /// MoE model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Pack directory (`data pack` output, e.g. a run's data/dev) tokenized for this model.
    #[arg(long)]
    pub data: PathBuf,
    /// Trace directory (created; resumed when it holds a trace of the same model and data).
    #[arg(long)]
    pub out: PathBuf,
    /// Sequences to trace, spread evenly over the pack (default: all).
    #[arg(long, value_parser = crate::args::count_usize)]
    pub seqs: Option<usize>,
    /// Sequences per chunk file (one of every five chunks is held out).
    #[arg(long, default_value_t = 16, value_parser = crate::args::count_usize)]
    pub chunk: usize,
    /// Also keep every token's input hidden state to every MoE layer (`hidden-<i>.bin`, f16:
    /// 2 x layers x D bytes per token) and train the hidden-state probes on them.
    #[arg(long)]
    pub hidden: bool,
    /// Hidden units of the probes (0: linear softmax probes).
    #[arg(long, default_value_t = 0)]
    pub probe_units: usize,
    /// Training epochs of the probes.
    #[arg(long, default_value_t = 8, value_parser = crate::args::count_usize)]
    pub probe_epochs: usize,
    /// The probes also see the previous token's input to the layer.
    #[arg(long)]
    pub probe_prev_hidden: bool,
}

/// Expert cache sizes simulated per layer.
const CACHE_SIZES: [usize; 3] = [1, 2, 4];

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of the model's config.json and, per safetensors file, its name, size and first
/// 64 KiB (the header): the identity a trace directory is checked against.
fn model_identity(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let config = dir.join("config.json");
    h.update(std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes[..bytes.len().min(64 << 10)]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    if a.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    let model = Qwen3::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let tracer = Tracer::new(&model).with_context(|| format!("{}", a.model.display()))?;
    let ds = data::pack::PackedDataset::open(&a.data)?;
    let vocab = model.config.vocab_size;
    if ds.manifest.vocab_size as usize > vocab {
        bail!(
            "{}: the pack's vocabulary ({} tokens) is larger than the model's ({vocab}): packed with another tokenizer",
            a.data.display(),
            ds.manifest.vocab_size
        );
    }
    let total = ds.len() as usize;
    let seqs = a.seqs.unwrap_or(total).min(total);
    if seqs == 0 {
        bail!("{}: no sequences to trace", a.data.display());
    }
    let spec = model.moe.as_ref().expect("Tracer::new checked the model is MoE");
    let pack_json = a.data.join("pack.json");
    let meta = TraceMeta {
        model: model_identity(&a.model)?,
        data: sha256_hex(&std::fs::read(&pack_json).with_context(|| format!("reading {}", pack_json.display()))?),
        layers: tracer.layers(),
        experts: tracer.experts(),
        expert_bytes: (3 * spec.expert_width * model.config.hidden_size * 4) as u64,
        chunk_seqs: a.chunk,
        seqs,
        hidden: if a.hidden { tracer.hidden() } else { 0 },
    };
    open_dir(&a.out, &meta)?;
    let chunks = seqs.div_ceil(a.chunk);
    let pb = crate::progress::bar(chunks as u64, "chunks");
    let (mut agree, mut pairs) = (0usize, 0usize);
    for c in 0..chunks {
        pb.set_position(c as u64);
        if chunk_path(&a.out, c).exists() {
            continue;
        }
        let idx: Vec<u64> = (c * a.chunk..((c + 1) * a.chunk).min(seqs)).map(|i| (i * total / seqs) as u64).collect();
        let mut docs: Vec<Vec<u32>> = Vec::new();
        for &g in &idx {
            let s = ds.sequence(g);
            for seg in s.segments {
                docs.push(s.tokens[seg.start as usize..][..seg.len as usize].to_vec());
            }
        }
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let mut states = Vec::new();
        let (records, ok) = tracer.trace(&refs, a.hidden.then_some(&mut states))?;
        agree += ok;
        pairs += records.len();
        let starts: Vec<bool> = docs.iter().flat_map(|d| (0..d.len()).map(|t| t == 0)).collect();
        if a.hidden {
            // Before the chunk file: a chunk that exists has its hidden states.
            write_hidden(&a.out, c, meta.layers, meta.hidden, &states)?;
        }
        write_chunk(&a.out, c, meta.layers, meta.experts, idx.len(), &starts, &records)?;
    }
    pb.finish_and_clear();
    if pairs > 0 {
        eprintln!(
            "router self-check: the recomputed router picks the op's expert in {agree} of {pairs} (token, layer) pairs"
        );
    }
    let probe = ProbeConfig { hidden: a.probe_units, epochs: a.probe_epochs, ..ProbeConfig::default() };
    report(&a.out, &meta, chunks, &probe, a.probe_prev_hidden)
}

/// Fits, scores and simulates on the finished trace; prints the tables, writes report.json.
fn report(dir: &Path, meta: &TraceMeta, chunks: usize, probe: &ProbeConfig, prev_hidden: bool) -> Result<()> {
    let opened: Vec<Chunk> =
        (0..chunks).map(|c| Chunk::open(&chunk_path(dir, c), meta.layers, meta.experts)).collect::<Result<_, _>>()?;
    // One chunk of every five is held out.
    let is_held = |i: usize| i % 5 == 4;
    let held: Vec<&Chunk> = opened.iter().enumerate().filter(|(i, _)| is_held(*i)).map(|(_, c)| c).collect();
    let train: Vec<&Chunk> = opened.iter().enumerate().filter(|(i, _)| !is_held(*i)).map(|(_, c)| c).collect();
    if held.is_empty() || train.is_empty() {
        bail!("{chunks} chunk(s): at least 5 are needed (one of every five is held out); trace more --seqs or use a smaller --chunk");
    }
    let fitted = Fitted::fit(tokens(&train), meta.layers, meta.experts);
    let mut named: Vec<(String, Box<Predict>)> = Predictor::ALL
        .iter()
        .map(|&p| {
            let f = &fitted;
            let b: Box<Predict> = Box::new(move |_, l, r: &[LayerRecord], prev| f.predict(p, l, r, prev));
            (p.name().to_string(), b)
        })
        .collect();
    let mut sim_names = vec!["gate_input".to_string(), "trained".to_string()];
    let mut probe_json = serde_json::Map::new();
    if meta.hidden > 0 {
        let start = std::time::Instant::now();
        let hidden: Vec<HiddenChunk> = opened
            .iter()
            .enumerate()
            .map(|(i, c)| HiddenChunk::open(&hidden_path(dir, i), meta.layers, meta.hidden, c.tokens))
            .collect::<Result<_, _>>()?;
        let pairs = |want_held: bool| -> Vec<(&Chunk, &HiddenChunk)> {
            opened.iter().zip(&hidden).enumerate().filter(|(i, _)| is_held(*i) == want_held).map(|(_, p)| p).collect()
        };
        let (train_pairs, held_pairs) = (pairs(false), pairs(true));
        let (train_tok, held_tok) = (tokens_with_hidden(&train_pairs), tokens_with_hidden(&held_pairs));
        let variants = [
            ("probe_hidden", Features { hidden: true, prev_hidden, discrete: false }),
            ("probe", Features { hidden: true, prev_hidden, discrete: true }),
        ];
        for (name, features) in variants {
            let probes = Probes::fit(&train_tok, meta.layers, meta.experts, features, probe);
            let lp = probes.log_probs(&held_tok, meta.layers);
            for (suffix, counts) in [("", None), ("+counts", Some(&fitted))] {
                let g = guesses(&lp, &held_tok, meta.layers, meta.experts, counts);
                let layers = meta.layers;
                let b: Box<Predict> = Box::new(move |t, l, _, _| g[t * layers + l]);
                named.push((format!("{name}{suffix}"), b));
            }
            let final_loss: Vec<f64> = probes.losses.iter().filter_map(|l| l.last().copied()).collect();
            probe_json.insert(
                name.into(),
                serde_json::json!({ "inputs": features.inputs(meta.hidden, meta.experts), "train_loss_per_layer": final_loss }),
            );
        }
        sim_names.push("probe+counts".into());
        eprintln!("probes: trained and scored in {:.0} s", start.elapsed().as_secs_f64());
        probe_json.insert(
            "config".into(),
            serde_json::json!({ "units": probe.hidden, "epochs": probe.epochs, "batch": probe.batch, "lr": probe.lr,
                "l2": probe.l2, "seed": probe.seed, "prev_hidden": prev_hidden }),
        );
    }
    let held_tokens: usize = held.iter().map(|c| c.tokens).sum();
    println!("next-expert prediction, held-out: {held_tokens} tokens ({} chunks); top-1 / top-2 per layer", held.len());
    let mut acc_json = serde_json::Map::new();
    for (name, f) in &named {
        let per_layer: Vec<Hits> = accuracy_of(meta.layers, tokens(&held), &**f);
        let cells: Vec<String> =
            per_layer.iter().map(|h| format!("{:.1}/{:.1}", 100.0 * h.top1_rate(), 100.0 * h.top2_rate())).collect();
        let all = per_layer.iter().fold((0, 0, 0), |s, h| (s.0 + h.tokens, s.1 + h.top1, s.2 + h.top2));
        let mean1 = all.1 as f64 / all.0.max(1) as f64;
        let mean2 = all.2 as f64 / all.0.max(1) as f64;
        println!(
            "  {:<20} layers 1..: {}   all: {:.1}% / {:.1}%",
            name,
            cells.join("  "),
            100.0 * mean1,
            100.0 * mean2
        );
        acc_json.insert(name.clone(), serde_json::json!({ "per_layer": per_layer, "top1": mean1, "top2": mean2 }));
    }
    println!("prefetch simulation (expert of {} bytes in f32), held-out tokens in order:", meta.expert_bytes);
    let mut sims = Vec::new();
    for k in CACHE_SIZES {
        for policy in Policy::ALL {
            let preds: &[String] = if policy == Policy::Lru { &sim_names[..1] } else { &sim_names };
            for p in preds {
                let f = &named.iter().find(|(n, _)| n == p).expect("a simulated predictor is named").1;
                let o = simulate(policy, k, meta.layers, tokens(&held), &**f);
                let by = if policy == Policy::Lru { "-".to_string() } else { p.clone() };
                println!(
                    "  k={k} {:<14} {:<14} hit {:5.1}%  loads/token {:.3}  bytes/token {:.0}",
                    policy.name(),
                    by,
                    100.0 * o.hit_rate(),
                    o.loads_per_token(),
                    o.loads_per_token() * meta.expert_bytes as f64
                );
                sims.push(serde_json::json!({
                    "k": k, "policy": policy.name(), "predictor": by, "hit_rate": o.hit_rate(),
                    "loads_per_token": o.loads_per_token(),
                    "bytes_per_token": o.loads_per_token() * meta.expert_bytes as f64, "outcome": o,
                }));
            }
        }
    }
    let mut report =
        serde_json::json!({ "trace": meta, "held_out_tokens": held_tokens, "accuracy": acc_json, "prefetch": sims });
    if !probe_json.is_empty() {
        report["probes"] = serde_json::Value::Object(probe_json);
    }
    let path = dir.join("report.json");
    atomicio::write_file(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!("report     {}", path.display());
    Ok(())
}
