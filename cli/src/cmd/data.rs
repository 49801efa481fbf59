//! `moe-cli data`: the synthetic medical world, the tokenizer, packing and statistics.
//!
//! ```text
//! moe-cli data world --seed 0 --tokens 2000000 --out runs/demo/world
//! moe-cli data tokenizer --corpus runs/demo/world --vocab 4096 --out runs/demo/tokenizer
//! moe-cli data pack --corpus runs/demo/world --tokenizer runs/demo/tokenizer --seq-len 2048 --out runs/demo/pack
//! moe-cli data stats runs/demo/pack --verify
//! moe-cli data prepare --config configs/data/prepare-example.json --out runs/med/prepared
//! ```

use crate::progress::bar;
use anyhow::{bail, Context, Result};
use data::world_dir::{build_world_dir, WorldProgress, WorldSpec};
use std::path::PathBuf;

/// Arguments of `data`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Generate the synthetic world: corpus/<domain>.jsonl, eval/<set>.jsonl, world.json, manifest.json.
    World {
        /// World spec JSON (default: built-in, the same as configs/data/world-default.json).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seed (overrides the spec).
        #[arg(long)]
        seed: Option<u64>,
        /// Corpus size in (estimated) tokens (overrides the spec; at least 1, `2e6` works).
        #[arg(long, value_parser = crate::args::count)]
        tokens: Option<u64>,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Train a byte-level BPE tokenizer on a corpus; writes tokenizer.json + tokenizer_config.json.
    Tokenizer {
        /// A world directory, a directory of .jsonl files, or one .jsonl file (lines with "text").
        #[arg(long)]
        corpus: PathBuf,
        /// Vocabulary size (bytes and special tokens included; `1e4` works).
        #[arg(long, default_value_t = 4096, value_parser = crate::args::count_usize)]
        vocab: usize,
        /// Minimum pair frequency for a merge.
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Tokenize a corpus and pack it into fixed-length sequences (memory-mapped shards + index).
    Pack {
        /// A world directory, a directory of .jsonl files, or one .jsonl file.
        #[arg(long)]
        corpus: PathBuf,
        /// A tokenizer.json, or a directory with tokenizer.json (+ tokenizer_config.json).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 2048, value_parser = crate::args::count_usize)]
        seq_len: usize,
        /// Largest shard in tokens.
        #[arg(long, default_value_t = 1 << 24, value_parser = crate::args::count_usize)]
        shard_tokens: usize,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Also print one JSON line (tokens/s and the SHA-256 of all packed tokens) for tools/bench_tokenize.sh.
        #[arg(long)]
        json: bool,
    },
    /// Counts of a world directory (documents, estimated tokens, eval sets) or a pack
    /// (sequences, tokens, padding per domain).
    Stats {
        /// A world directory or a pack directory.
        dir: PathBuf,
        /// Packs: also check SHA-256 of every shard and that every token id is in the vocabulary.
        #[arg(long)]
        verify: bool,
    },
    /// Clean, PII-scrub, deduplicate, decontaminate, tag and split a corpus (JSONL / Parquet /
    /// text directories) into shards `data pack` reads; resumable (run it again after a stop).
    Prepare {
        /// Prepare config (JSON: sources, eval files, filters; see configs/data/prepare-example.json).
        #[arg(long)]
        config: PathBuf,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Also print one JSON line (MB/s, counts) for tools/bench_prepare.sh.
        #[arg(long)]
        json: bool,
    },
    /// Convert a MedQA / MedMCQA / PubMedQA file into our eval JSONL schema.
    ImportEval {
        /// medqa, medmcqa (cop 1-4), medmcqa-hf (cop 0-3), pubmedqa or medmoe.
        #[arg(long)]
        format: String,
        /// The file to read.
        #[arg(long)]
        input: PathBuf,
        /// The JSONL file to write (never the input).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing `--out` file.
        #[arg(long)]
        force: bool,
    },
}

/// Runs the chosen subcommand.
pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::World { config, seed, tokens, out } => world(config, seed, tokens, out),
        What::Tokenizer { corpus, vocab, min_frequency, out } => tokenizer(corpus, vocab, min_frequency, out),
        What::Pack { corpus, tokenizer, seq_len, shard_tokens, out, json } => {
            pack(corpus, tokenizer, seq_len, shard_tokens, out, json)
        }
        What::Stats { dir, verify } => stats(dir, verify),
        What::ImportEval { format, input, out, force } => import_eval(&format, input, out, force),
        What::Prepare { config, out, json } => super::data_prepare::run(&config, &out, json),
    }
}

fn world(config: Option<PathBuf>, seed: Option<u64>, tokens: Option<u64>, out: PathBuf) -> Result<()> {
    let mut spec: WorldSpec = match &config {
        Some(p) => data::fsutil::read_json(p)?,
        None => WorldSpec::default(),
    };
    if let Some(s) = seed {
        spec.seed = s;
    }
    if let Some(t) = tokens {
        spec.corpus.tokens = t;
    }
    // The corpus is held in memory (documents, their JSONL and the n-gram index of the overlap
    // check): at least ~12 bytes per estimated token.
    crate::args::ensure_fits(&format!("a world of {} tokens", spec.corpus.tokens), 12 * spec.corpus.tokens as u128)?;
    let start = std::time::Instant::now();
    let pb = bar(spec.corpus.tokens, "corpus");
    let manifest = build_world_dir(&spec, &out, &mut |p| match p {
        WorldProgress::Corpus(t) => pb.set_position(t.min(spec.corpus.tokens)),
        WorldProgress::Step(s) => pb.set_message(s),
    })
    .with_context(|| format!("building the world in {}", out.display()))?;
    pb.finish_and_clear();
    println!("world      {} (seed {}, {:.1} s)", out.display(), spec.seed, start.elapsed().as_secs_f64());
    for (domain, n) in &manifest.documents {
        println!(
            "corpus     {domain:<14} {n:>8} documents {:>10} tokens (estimated)",
            manifest.estimated_tokens[domain]
        );
    }
    println!("forms      {} distinct", manifest.forms.len());
    for (set, n) in &manifest.eval {
        println!("eval       {set:<14} {n:>8} items");
    }
    println!(
        "held out   no eval item shares a {}-gram with the corpus ({} n-grams indexed)",
        manifest.overlap.n, manifest.overlap.train_ngrams
    );
    Ok(())
}

fn tokenizer(corpus: PathBuf, vocab: usize, min_frequency: u64, out: PathBuf) -> Result<()> {
    let start = std::time::Instant::now();
    // The trainer's vocabulary tables are sized for the vocabulary up front (~64 bytes a token).
    crate::args::ensure_fits(&format!("--vocab {vocab}"), 64 * vocab as u128)?;
    let docs = data::world_dir::read_corpus(&corpus)?;
    if docs.iter().all(|d| d.text.trim().is_empty()) {
        bail!("{}: no text to train a tokenizer on ({} documents)", corpus.display(), docs.len());
    }
    let pb = bar(1, "training");
    let config = data::tokenizer::TrainConfig { vocab_size: vocab, min_frequency };
    let tok = data::tokenizer::Tokenizer::train(docs.iter().map(|d| d.text.as_str()), &config)?;
    let staging = atomicio::StagingDir::new(&out)?;
    tok.save(staging.path())?;
    staging.commit()?;
    pb.finish_and_clear();
    println!(
        "tokenizer  {} (vocab {}, {} documents, {:.1} s)",
        out.display(),
        tok.vocab_size(),
        docs.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn pack(
    corpus: PathBuf,
    tokenizer: PathBuf,
    seq_len: usize,
    shard_tokens: usize,
    out: PathBuf,
    json: bool,
) -> Result<()> {
    let start = std::time::Instant::now();
    let tok = data::tokenizer::Tokenizer::load(&tokenizer)?;
    let docs = data::world_dir::read_corpus(&corpus)?;
    let pb = bar(docs.len() as u64, "packing");
    let config = data::pack::PackConfig { seq_len, shard_tokens, ..Default::default() };
    let manifest = data::pack::pack_documents(&docs, &tok, &config, &out, &mut |n| pb.set_position(n as u64))
        .with_context(|| format!("packing into {}", out.display()))?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let tokens: u64 = manifest.domains.values().map(|d| d.tokens).sum();
    println!("pack       {} ({} shards, seq_len {})", out.display(), manifest.shards.len(), manifest.seq_len);
    print_pack_domains(&manifest);
    println!(
        "speed      {tokens} tokens in {secs:.2} s = {:.0} tokens/s (read + tokenize + pack + write)",
        tokens as f64 / secs
    );
    if json {
        // SHA-256 of every shard's tokens in order: equal to the reference's if both packed the same ids.
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for name in &manifest.shards {
            let p = out.join(format!("{name}.bin"));
            h.update(std::fs::read(&p).with_context(|| p.display().to_string())?);
        }
        let sha: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let line = serde_json::json!({
            "bench": "tokenize_pack", "impl": "medmoe", "tokens": tokens, "documents": docs.len(),
            "seq_len": seq_len, "seconds": secs, "tokens_per_s": tokens as f64 / secs,
            "threads": rayon::current_num_threads(), "tokens_sha256": sha,
        });
        println!("{line}");
    }
    Ok(())
}

fn print_pack_domains(m: &data::pack::format::PackManifest) {
    for (d, t) in &m.domains {
        println!(
            "domain     {d:<14} {:>8} sequences {:>10} tokens {:>8} padding {:>8} documents",
            t.sequences, t.tokens, t.padding, t.documents
        );
    }
}

fn stats(dir: PathBuf, verify: bool) -> Result<()> {
    std::fs::metadata(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    if dir.join("pack.json").is_file() {
        let ds = data::pack::PackedDataset::open(&dir)?;
        println!(
            "pack       {} ({} shards, {} sequences of {})",
            dir.display(),
            ds.shards.len(),
            ds.len(),
            ds.manifest.seq_len
        );
        print_pack_domains(&ds.manifest);
        if verify {
            ds.verify()?;
            println!("verified   SHA-256 of every shard file, token ids < {}", ds.manifest.vocab_size);
        }
        return Ok(());
    }
    if !dir.join("manifest.json").is_file() {
        bail!("{} is neither a pack (pack.json) nor a world (manifest.json)", dir.display());
    }
    // Its errors name the file.
    let manifest: data::world_dir::WorldManifest = data::fsutil::read_json(&dir.join("manifest.json"))?;
    println!("world      {} (seed {})", dir.display(), manifest.spec.seed);
    for (domain, n) in &manifest.documents {
        println!(
            "corpus     {domain:<14} {n:>8} documents {:>10} tokens (estimated)",
            manifest.estimated_tokens[domain]
        );
    }
    println!("forms      {} distinct", manifest.forms.len());
    for (set, n) in &manifest.eval {
        println!("eval       {set:<14} {n:>8} items");
    }
    if verify {
        for (rel, sha) in &manifest.files {
            let got = data::fsutil::sha256_file(&dir.join(rel))?;
            anyhow::ensure!(&got == sha, "{}: SHA-256 {got} differs from manifest.json", dir.join(rel).display());
        }
        println!("verified   SHA-256 of {} files", manifest.files.len());
    }
    Ok(())
}

fn import_eval(format: &str, input: PathBuf, out: PathBuf, force: bool) -> Result<()> {
    crate::args::check_output(&out, &[input.as_path()], force)?;
    let format: data::eval::readers::EvalFormat = format.parse()?;
    let items = data::eval::readers::read_eval_file(&input, format)?;
    atomicio::write_file(&out, &data::jsonl::to_jsonl(&items))?;
    println!("eval       {} items from {} -> {}", items.len(), input.display(), out.display());
    Ok(())
}
