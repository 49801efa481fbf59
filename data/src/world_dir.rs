//! `data world`: the world, its corpus and its evaluation sets written to one directory.
//!
//! Layout: `world.json` (the ground truth), `corpus/<domain>.jsonl` (documents), `eval/<set>.jsonl`
//! (MCQ), `manifest.json` (spec, counts, SHA-256 of every file, the overlap report). The
//! directory is built in a staging directory and renamed into place only when complete and clean.

use crate::corpus::{estimate_tokens, generate_corpus, CorpusConfig, Document};
use crate::error::{DataError, Result};
use crate::eval::overlap::{NgramIndex, OverlapReport, DEFAULT_N};
use crate::eval::{generate_eval, EvalConfig};
use crate::fsutil::{sha256_hex, write_json_atomic};
use crate::jsonl::to_jsonl;
use crate::world::{generate, WorldConfig};
use atomicio::StagingDir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Everything that determines a world directory (`configs/data/world-default.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Entity counts.
    pub world: WorldConfig,
    /// Token budget and domain mixture.
    pub corpus: CorpusConfig,
    /// Evaluation set sizes.
    pub eval: EvalConfig,
    /// n-gram length of the held-out check.
    pub overlap_n: usize,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            seed: 0,
            world: WorldConfig::default(),
            corpus: CorpusConfig::default(),
            eval: EvalConfig::default(),
            overlap_n: DEFAULT_N,
        }
    }
}

/// `manifest.json` of a world directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldManifest {
    /// `medmoe-world`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The spec it was built from.
    pub spec: WorldSpec,
    /// Documents per domain.
    pub documents: BTreeMap<String, usize>,
    /// Estimated tokens per domain.
    pub estimated_tokens: BTreeMap<String, u64>,
    /// Documents per form.
    pub forms: BTreeMap<String, usize>,
    /// Items per evaluation set.
    pub eval: BTreeMap<String, usize>,
    /// The held-out check.
    pub overlap: OverlapReport,
    /// SHA-256 of every file, by path relative to the directory.
    pub files: BTreeMap<String, String>,
}

/// Progress reports of [`build_world_dir`].
pub enum WorldProgress {
    /// Tokens generated so far (of `spec.corpus.tokens`).
    Corpus(u64),
    /// A named step started.
    Step(&'static str),
}

/// Builds the directory `out` (which must not exist or be empty). Returns the manifest.
pub fn build_world_dir(spec: &WorldSpec, out: &Path, progress: &mut dyn FnMut(WorldProgress)) -> Result<WorldManifest> {
    if spec.overlap_n < 4 {
        return Err(DataError::config("overlap_n", "must be at least 4 words"));
    }
    if spec.corpus.tokens == 0 {
        return Err(DataError::config("corpus.tokens", "must be at least 1"));
    }
    let staging = StagingDir::new(out)?;
    progress(WorldProgress::Step("world"));
    let world = generate(spec.seed, &spec.world)?;
    let docs = generate_corpus(&world, spec.seed, &spec.corpus, &mut |t| progress(WorldProgress::Corpus(t)))?;
    progress(WorldProgress::Step("eval sets"));
    let eval = generate_eval(&world, spec.seed, &spec.eval)?;
    progress(WorldProgress::Step("overlap check"));
    let index = NgramIndex::new(docs.iter().map(|d| d.text.as_str()), spec.overlap_n);
    let all_items: Vec<_> = eval.sets().iter().flat_map(|(_, items)| items.iter().cloned()).collect();
    let overlap = index.check(&all_items);
    if !overlap.is_clean() {
        let (id, ngram) = &overlap.overlapping[0];
        return Err(DataError::Check(format!(
            "{} eval items share a {}-gram with the corpus, e.g. {id}: \"{ngram}\"",
            overlap.overlapping.len(),
            spec.overlap_n
        )));
    }
    progress(WorldProgress::Step("writing"));
    let dir = staging.path();
    let mut files = BTreeMap::new();
    let mut put = |rel: &str, bytes: Vec<u8>| -> Result<()> {
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| DataError::io(p, e))?;
        }
        files.insert(rel.to_string(), sha256_hex(&bytes));
        Ok(atomicio::write_file(&path, &bytes)?)
    };
    let mut world_json = serde_json::to_vec_pretty(&world).map_err(|e| DataError::Check(e.to_string()))?;
    world_json.push(b'\n');
    put("world.json", world_json)?;
    let mut by_domain: BTreeMap<&str, Vec<&Document>> = BTreeMap::new();
    let mut documents = BTreeMap::new();
    let mut estimated_tokens = BTreeMap::new();
    let mut forms = BTreeMap::new();
    for d in &docs {
        by_domain.entry(d.domain.as_str()).or_default().push(d);
        *documents.entry(d.domain.clone()).or_insert(0) += 1;
        *estimated_tokens.entry(d.domain.clone()).or_insert(0) += estimate_tokens(&d.text);
        *forms.entry(d.form.clone()).or_insert(0) += 1;
    }
    for (domain, ds) in &by_domain {
        put(&format!("corpus/{domain}.jsonl"), to_jsonl(ds))?;
    }
    let mut eval_counts = BTreeMap::new();
    for (name, items) in eval.sets() {
        put(&format!("eval/{name}.jsonl"), to_jsonl(items))?;
        eval_counts.insert(name.to_string(), items.len());
    }
    let manifest = WorldManifest {
        format: "medmoe-world".into(),
        version: 1,
        spec: spec.clone(),
        documents,
        estimated_tokens,
        forms,
        eval: eval_counts,
        overlap,
        files,
    };
    write_json_atomic(&dir.join("manifest.json"), &manifest)?;
    staging.commit()?;
    Ok(manifest)
}

/// The corpus JSONL files of a world directory (sorted), or `path` itself if it is a file.
pub fn corpus_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = if path.join("corpus").is_dir() { path.join("corpus") } else { path.to_path_buf() };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| DataError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::file(&dir, "no .jsonl corpus files here"));
    }
    Ok(files)
}

/// Reads every document of a world directory's corpus (or of one JSONL file / a directory of them).
/// Lines need at least `text`; missing `id`, `domain`, `source`, `license` get defaults
/// (`<file>:<line>`, `general`, the file name, `unknown`).
pub fn read_corpus(path: &Path) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for file in corpus_files(path)? {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        crate::jsonl::for_each_line(&file, |line, text| {
            let doc = parse_doc(text, &stem, line).map_err(|message| DataError::Line {
                path: file.clone(),
                line,
                message,
            })?;
            docs.push(doc);
            Ok(())
        })?;
    }
    Ok(docs)
}

#[derive(Deserialize)]
struct LooseDoc {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    form: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    license: Option<String>,
    text: String,
    #[serde(default)]
    messages: Option<Vec<crate::chat::Message>>,
}

fn parse_doc(line_text: &str, stem: &str, line: usize) -> std::result::Result<Document, String> {
    let d: LooseDoc = serde_json::from_str(line_text).map_err(|e| e.to_string())?;
    if d.text.is_empty() {
        return Err("empty `text`".into());
    }
    Ok(Document {
        id: d.id.unwrap_or_else(|| format!("{stem}:{line}")),
        domain: d.domain.unwrap_or_else(|| "general".into()),
        topic: d.topic.unwrap_or_default(),
        form: d.form.unwrap_or_default(),
        source: d.source.unwrap_or_else(|| stem.to_string()),
        license: d.license.unwrap_or_else(|| "unknown".into()),
        text: d.text,
        messages: d.messages,
    })
}
