//! Writing a model as GGUF, streaming: the tensor infos (types and offsets) are fixed first from the
//! plan ([`super::names::plan`]), the policy ([`super::policy::choose`]) and the mask; then each tensor
//! is built a chunk of rows at a time from the source, encoded with our llama.cpp-identical codecs
//! (`kernels_cpu::quant`) and written. Peak memory is one chunk (about 4 MB of f32) plus the
//! metadata, whatever the model size; a memory-mapped checkpoint source drops each tensor's pages
//! once it is written ([`SafetensorsReader::release`]).
//!
//! The file is written through `atomicio` (temporary sibling, fsync, rename): it appears complete
//! or not at all, and an existing `out` is refused.

use super::format::{pad_to, tensor_bytes, write_kv, write_tensor_info, DEFAULT_ALIGNMENT, MAGIC, VERSION};
use super::keys::model_metadata;
use super::mask::{glob_match, Mask};
use super::names::{plan, Arch, PlannedTensor, Segment};
use super::policy::{choose, fallback, quantizable, GgufType, ModelFacts};
use super::qat_rows::{encode_chunk, qat_type};
use super::tokenizer_meta::tokenizer_metadata;
use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::moe_spec::MoeSpec;
use crate::qat::state::QatState;
use crate::qwen3::{router_bias_name, Qwen3};
use crate::safetensors_io::{FileDType, SafetensorsReader};
use kernels_cpu::quant::{quantize_rows_into, BlockType};
use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Values per chunk of rows encoded at once.
const CHUNK_VALUES: usize = 1 << 20;

/// Where the writer reads our tensors (HF names) from.
pub trait TensorSource {
    /// Copies row `row` of HF tensor `name` into `dst` (`dst.len()` = the tensor's row length).
    fn row(&self, name: &str, row: usize, dst: &mut [f32]) -> Result<()>;
    /// The router balancing bias of MoE layer `layer`.
    fn router_bias(&self, layer: usize) -> Result<Vec<f32>>;
    /// Tensor `name` will not be read again (a mapped source may drop its pages).
    fn release(&self, _name: &str) {}
    /// The QAT parameters of a QAT checkpoint: its fake-quantized tensors are written from them.
    fn qat(&self) -> Option<&QatState> {
        None
    }
}

/// A checkpoint directory read through its memory map (checked against its config first).
pub struct CheckpointSource {
    reader: SafetensorsReader,
    qat: Option<QatState>,
}

impl CheckpointSource {
    /// Opens `dir` and checks every tensor `config` / `moe` imply (shape, float dtype), and reads
    /// its QAT parameters when it is a QAT checkpoint (`qat.json`).
    pub fn open(dir: &Path, config: &Qwen3Config, moe: Option<&MoeSpec>) -> Result<Self> {
        let reader = SafetensorsReader::open(dir)?;
        crate::expected_tensors::check_tensor_files(dir, config, moe, &reader)?;
        Ok(CheckpointSource { reader, qat: QatState::load(dir)? })
    }
}

fn decode_into(bytes: &[u8], dtype: FileDType, dst: &mut [f32]) {
    match dtype {
        FileDType::F32 => {
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        FileDType::BF16 => {
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        _ => {
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
    }
}

impl TensorSource for CheckpointSource {
    fn row(&self, name: &str, row: usize, dst: &mut [f32]) -> Result<()> {
        let info = self.reader.info(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.reader.path().to_path_buf(),
            tensor: name.to_string(),
        })?;
        let size = info.dtype.size();
        let start = row * dst.len() * size;
        let bytes = self.reader.bytes(name)?;
        let chunk = bytes.get(start..start + dst.len() * size).ok_or_else(|| ModelError::Tensor {
            path: self.reader.path().to_path_buf(),
            tensor: name.to_string(),
            msg: format!("row {row} of {} values is outside the tensor", dst.len()),
        })?;
        decode_into(chunk, info.dtype, dst);
        Ok(())
    }

    fn router_bias(&self, layer: usize) -> Result<Vec<f32>> {
        let name = router_bias_name(layer);
        match self.reader.info(&name) {
            Some(_) => self.reader.read_f32(&name),
            None => Ok(Vec::new()),
        }
    }

    fn release(&self, name: &str) {
        self.reader.release(name);
    }

    fn qat(&self) -> Option<&QatState> {
        self.qat.as_ref()
    }
}

/// A model in memory as a source (Dots1 exports, tests); the last tensor read is cached as f32.
pub struct ModelSource<'a> {
    model: &'a Qwen3,
    cache: RefCell<Option<(String, Vec<f32>)>>,
    qat: Option<&'a QatState>,
}

impl<'a> ModelSource<'a> {
    /// `model` as a source.
    pub fn new(model: &'a Qwen3) -> Self {
        ModelSource { model, cache: RefCell::new(None), qat: None }
    }

    /// `model` with its QAT parameters (its latent weights, not the fake-quantized ones).
    pub fn with_qat(model: &'a Qwen3, qat: &'a QatState) -> Self {
        ModelSource { model, cache: RefCell::new(None), qat: Some(qat) }
    }
}

impl TensorSource for ModelSource<'_> {
    fn row(&self, name: &str, row: usize, dst: &mut [f32]) -> Result<()> {
        let mut cache = self.cache.borrow_mut();
        if cache.as_ref().is_none_or(|(n, _)| n != name) {
            let t = self.model.params.get(name).map_err(|e| ModelError::Invalid(e.to_string()))?;
            *cache = Some((name.to_string(), t.to_vec()));
        }
        let values = &cache.as_ref().expect("filled above").1;
        let src = values
            .get(row * dst.len()..(row + 1) * dst.len())
            .ok_or_else(|| ModelError::Invalid(format!("row {row} is outside tensor `{name}`")))?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn router_bias(&self, layer: usize) -> Result<Vec<f32>> {
        Ok(self.model.router_bias.get(layer).cloned().unwrap_or_default())
    }

    fn qat(&self) -> Option<&QatState> {
        self.qat
    }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct GgufOptions {
    /// File type (`--type`).
    pub ftype: GgufType,
    /// Per-tensor type rules overriding the policy.
    pub mask: Option<Mask>,
    /// Directory holding tokenizer.json (+ tokenizer_config.json); None writes no vocabulary.
    pub tokenizer_dir: Option<PathBuf>,
    /// Architecture for MoE models ([`Arch::Glm4Moe`] or [`Arch::Dots1`]); dense models are `qwen3`.
    pub moe_arch: Arch,
}

/// One tensor as written.
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenTensor {
    /// GGUF name.
    pub name: String,
    /// ggml dims.
    pub ne: Vec<usize>,
    /// Type written.
    pub ty: BlockType,
    /// The type the policy wanted, when the row length forced a fallback.
    pub fallback_from: Option<BlockType>,
    /// Bytes of data.
    pub bytes: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufReport {
    /// The file.
    pub path: PathBuf,
    /// Architecture written.
    pub arch: Arch,
    /// Every tensor, in file order.
    pub tensors: Vec<WrittenTensor>,
    /// File size in bytes.
    pub file_bytes: u64,
    /// GGUF tensors written from a QAT checkpoint's trained codes (0 for other sources).
    pub qat_tensors: usize,
}

impl GgufReport {
    /// Values stored in all tensors (padding neurons and repeated K/V included).
    pub fn weights(&self) -> u64 {
        self.tensors.iter().map(|t| t.ne.iter().product::<usize>() as u64).sum()
    }

    /// Bits per stored value over the tensor data.
    pub fn bits_per_weight(&self) -> f64 {
        let data: u64 = self.tensors.iter().map(|t| t.bytes).sum();
        data as f64 * 8.0 / self.weights().max(1) as f64
    }
}

/// The types of the planned tensors: the mask's where it has a rule, else the policy's. A QAT
/// checkpoint fixes the types of its fake-quantized tensors ([`qat_types`]).
fn choose_types(
    tensors: &[PlannedTensor],
    opts: &GgufOptions,
    facts: &ModelFacts,
    qat: Option<&QatState>,
    out: &Path,
) -> Result<Vec<(BlockType, Option<BlockType>)>> {
    if let Some(q) = qat {
        return qat_types(tensors, opts, facts, q, out);
    }
    let named: Vec<(&str, &[usize])> = tensors.iter().map(|t| (t.name.as_str(), t.ne.as_slice())).collect();
    let masked = match &opts.mask {
        Some(m) => m.resolve(&named)?,
        None => vec![None; tensors.len()],
    };
    tensors.iter().zip(masked).map(|(t, m)| policy_or(m, t, opts, facts)).collect()
}

/// `masked`, or the `--type` policy's choice for `t`.
fn policy_or(
    masked: Option<BlockType>,
    t: &PlannedTensor,
    opts: &GgufOptions,
    facts: &ModelFacts,
) -> Result<(BlockType, Option<BlockType>)> {
    match masked {
        Some(ty) => Ok((ty, None)),
        None => choose(opts.ftype, &t.name, &t.ne, t.layer, facts)
            .map(|c| (c.ty, c.fallback_from))
            .map_err(|msg| ModelError::Unsupported(format!("--type {}: {msg}", opts.ftype.name()))),
    }
}

/// The types of a QAT checkpoint's tensors: its fake-quantized tensors keep the format they were
/// trained in; the others follow the mask it was trained with (a `--mask` must be that same mask),
/// with llama-quantize's fallbacks as in training (`qat::plan`), else the `--type` policy.
fn qat_types(
    tensors: &[PlannedTensor],
    opts: &GgufOptions,
    facts: &ModelFacts,
    qat: &QatState,
    out: &Path,
) -> Result<Vec<(BlockType, Option<BlockType>)>> {
    if let Some(m) = &opts.mask {
        qat.check_mask(m)?;
    }
    tensors
        .iter()
        .map(|t| {
            if let Some(ty) = qat_type(t, qat, out)? {
                return Ok((ty, None));
            }
            let rule = qat.rules.iter().find(|r| glob_match(&r.pattern, &t.name));
            let masked = match rule {
                Some(r) if quantizable(&t.name, &t.ne) => {
                    let c = fallback(r.ty, t.row_len()).map_err(|msg| ModelError::Tensor {
                        path: out.to_path_buf(),
                        tensor: t.name.clone(),
                        msg,
                    })?;
                    return Ok((c.ty, c.fallback_from));
                }
                _ => None,
            };
            policy_or(masked, t, opts, facts)
        })
        .collect()
}

/// Fills `dst` (rows `first..first + dst.len() / row_len` of tensor `t`) from `src`.
fn fill_rows(src: &dyn TensorSource, t: &PlannedTensor, first: usize, dst: &mut [f32]) -> Result<()> {
    let row_len = t.row_len();
    let mut seg_start = 0;
    let mut rows = dst.chunks_exact_mut(row_len).enumerate().peekable();
    for seg in &t.segments {
        let n = seg.rows();
        while let Some((k, _)) = rows.peek() {
            let r = first + k;
            if r >= seg_start + n {
                break;
            }
            let (_, out) = rows.next().expect("peeked");
            let i = r - seg_start;
            match seg {
                Segment::Hf { name, first_row, cols, .. } => {
                    src.row(name, first_row + i, &mut out[..*cols])?;
                    out[*cols..].fill(0.0);
                }
                Segment::Zero { .. } => out.fill(0.0),
                Segment::RouterBias { layer } => {
                    let b = src.router_bias(*layer)?;
                    if b.is_empty() {
                        out.fill(0.0);
                    } else if b.len() == out.len() {
                        out.copy_from_slice(&b);
                    } else {
                        return Err(ModelError::Invalid(format!(
                            "router bias of layer {layer} has {} values, the model has {} experts",
                            b.len(),
                            out.len()
                        )));
                    }
                }
            }
        }
        seg_start += n;
    }
    Ok(())
}

/// Writes the model (`config`, `moe`, tensors from `src`) as the new GGUF file `out`.
pub fn write_gguf(
    src: &dyn TensorSource,
    config: &Qwen3Config,
    moe: Option<&MoeSpec>,
    opts: &GgufOptions,
    out: &Path,
) -> Result<GgufReport> {
    atomicio::ensure_absent(out)?;
    let arch = match (moe, opts.moe_arch) {
        (None, _) => Arch::Qwen3,
        (Some(_), Arch::Qwen3) => {
            return Err(ModelError::Unsupported("a MoE model is written as glm4moe or dots1, not qwen3".into()))
        }
        (Some(_), a) => a,
    };
    let tensors = plan(config, moe, arch);
    let facts = ModelFacts {
        n_layer: config.num_hidden_layers,
        n_expert: moe.map_or(0, |m| m.num_experts),
        has_output: tensors.iter().any(|t| t.name == "output.weight"),
    };
    let types = choose_types(&tensors, opts, &facts, src.qat(), out)?;
    let is_qat: Vec<bool> = match src.qat() {
        Some(q) => tensors.iter().map(|t| qat_type(t, q, out).map(|x| x.is_some())).collect::<Result<_>>()?,
        None => vec![false; tensors.len()],
    };
    let mut kv = model_metadata(config, moe, arch, opts.ftype.file_type());
    if let Some(dir) = &opts.tokenizer_dir {
        kv.extend(tokenizer_metadata(dir, config.vocab_size, &config.raw)?);
    }

    let align = DEFAULT_ALIGNMENT as u64;
    let mut written = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for (t, &(ty, fallback_from)) in tensors.iter().zip(&types) {
        let bytes = tensor_bytes(ty, &t.ne).ok_or_else(|| ModelError::Tensor {
            path: out.to_path_buf(),
            tensor: t.name.clone(),
            msg: format!("rows of {} values cannot be stored as {ty}", t.row_len()),
        })?;
        offsets.push(offset);
        offset = pad_to(offset + bytes, align);
        written.push(WrittenTensor { name: t.name.clone(), ne: t.ne.clone(), ty, fallback_from, bytes });
    }

    let io = |e: std::io::Error| ModelError::io(out, e);
    atomicio::write_file_with(out, |w| -> Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, v) in &kv {
            write_kv(&mut head, k, v).map_err(io)?;
        }
        for (t, off) in written.iter().zip(&offsets) {
            write_tensor_info(&mut head, &t.name, &t.ne, t.ty, *off).map_err(io)?;
        }
        head.resize(pad_to(head.len() as u64, align) as usize, 0);
        w.write_all(&head).map_err(io)?;
        let mut pos = 0u64;
        for (ti, (t, info)) in tensors.iter().zip(&written).enumerate() {
            let row_len = t.row_len();
            let row_bytes = info.bytes as usize / t.rows().max(1);
            let chunk_rows = (CHUNK_VALUES / row_len).max(1);
            let mut values = vec![0f32; chunk_rows.min(t.rows().max(1)) * row_len];
            let mut encoded = vec![0u8; chunk_rows.min(t.rows().max(1)) * row_bytes];
            let mut r = 0;
            while r < t.rows().max(1) {
                let n = chunk_rows.min(t.rows().max(1) - r);
                let vals = &mut values[..n * row_len];
                fill_rows(src, t, r, vals)?;
                let enc = &mut encoded[..n * row_bytes];
                match src.qat().filter(|q| is_qat[ti] && !q.tensors.is_empty()) {
                    Some(q) => encode_chunk(t, r, vals, enc, info.ty, q, out)?,
                    None => quantize_rows_into(info.ty, vals, row_len, enc).map_err(|e| ModelError::Tensor {
                        path: out.to_path_buf(),
                        tensor: t.name.clone(),
                        msg: e.to_string(),
                    })?,
                }
                w.write_all(enc).map_err(io)?;
                r += n;
            }
            pos += info.bytes;
            let padded = pad_to(pos, align);
            w.write_all(&vec![0u8; (padded - pos) as usize]).map_err(io)?;
            pos = padded;
            for seg in &t.segments {
                if let Segment::Hf { name, .. } = seg {
                    src.release(name);
                }
            }
        }
        Ok(())
    })?;
    let file_bytes = std::fs::metadata(out).map_err(|e| ModelError::io(out, e))?.len();
    let qat_tensors = is_qat.iter().filter(|&&q| q).count();
    Ok(GgufReport { path: out.to_path_buf(), arch, tensors: written, file_bytes, qat_tensors })
}

/// Exports the model directory `dir` (a medmoe or Qwen3 checkpoint, streamed from its memory map;
/// or an HF Dots1 export, loaded first) as the new GGUF file `out`.
pub fn export_gguf(dir: &Path, opts: &GgufOptions, out: &Path) -> Result<GgufReport> {
    atomicio::ensure_absent(out)?;
    let config_path = dir.join("config.json");
    if crate::export::is_dots1_config(&config_path) {
        let model = Qwen3::load(dir)?;
        let src = ModelSource::new(&model);
        return write_gguf(&src, &model.config, model.moe.as_ref(), opts, out);
    }
    let config = Qwen3Config::from_file(&config_path)?;
    let moe = MoeSpec::from_config(&config, &config_path)?;
    let src = CheckpointSource::open(dir, &config, moe.as_ref())?;
    write_gguf(&src, &config, moe.as_ref(), opts, out)
}
