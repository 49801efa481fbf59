//! Memory-mapped, validated reading of safetensors files and HF sharded checkpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::{
    byte_len, decode_f32, decode_i64, FileDType, TensorInfo, INDEX_FILE_NAME, MAX_HEADER_BYTES,
    OTHER_SAFETENSORS_DTYPES, SINGLE_FILE_NAME,
};
use crate::error::{ModelError, Result};

/// A checkpoint opened for reading: one `.safetensors` file or the shards of an HF sharded checkpoint, each
/// memory-mapped. All headers are validated by [`SafetensorsReader::open`]; tensor bytes are borrowed from the mappings.
///
/// The files must not be modified or truncated while the checkpoint is open (as with any memory map; a
/// truncated file would fault on access).
pub struct SafetensorsReader {
    /// What was opened (a file or a directory); names the checkpoint in [`ModelError::MissingTensor`].
    root: PathBuf,
    files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    first_metadata: Option<HashMap<String, String>>,
    tensors: BTreeMap<String, Entry>,
    total_bytes: u64,
}

/// A tensor's info plus its absolute byte range in its file's mapping.
struct Entry {
    info: TensorInfo,
    start: usize,
    end: usize,
}

impl fmt::Debug for SafetensorsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsReader")
            .field("root", &self.root)
            .field("files", &self.files)
            .field("tensors", &self.tensors.len())
            .field("total_bytes", &self.total_bytes)
            .finish()
    }
}

impl SafetensorsReader {
    /// Opens `path`: a directory holding `model.safetensors.index.json` (sharded) or `model.safetensors`, a path to
    /// one `.safetensors` file, or a path to an index `.json` file.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
        if meta.is_dir() {
            let index = path.join(INDEX_FILE_NAME);
            let single = path.join(SINGLE_FILE_NAME);
            if index.is_file() {
                Self::open_sharded(path, &index)
            } else if single.is_file() {
                Self::open_single(path, &single)
            } else {
                Err(ModelError::Safetensors {
                    path: path.to_path_buf(),
                    msg: format!("directory holds neither {INDEX_FILE_NAME} nor {SINGLE_FILE_NAME}"),
                })
            }
        } else if path.extension().is_some_and(|e| e == "json") {
            let dir = path.parent().unwrap_or(Path::new("."));
            Self::open_sharded(path, path).map(|mut c| {
                c.root = dir.to_path_buf();
                c
            })
        } else {
            Self::open_single(path, path)
        }
    }

    fn open_single(root: &Path, file: &Path) -> Result<Self> {
        let parsed = parse_file(file)?;
        let mut tensors = BTreeMap::new();
        let mut total_bytes = 0u64;
        for t in parsed.tensors {
            total_bytes += (t.end - t.start) as u64;
            tensors.insert(
                t.name,
                Entry { info: TensorInfo { dtype: t.dtype, shape: t.shape, file: 0 }, start: t.start, end: t.end },
            );
        }
        Ok(SafetensorsReader {
            root: root.to_path_buf(),
            files: vec![file.to_path_buf()],
            maps: vec![parsed.map],
            first_metadata: parsed.metadata,
            tensors,
            total_bytes,
        })
    }

    fn open_sharded(root: &Path, index: &Path) -> Result<Self> {
        let dir = index.parent().unwrap_or(Path::new("."));
        let index_name = file_name(index);
        let idx_err = |msg: String| ModelError::Safetensors { path: index.to_path_buf(), msg };
        let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
        if text.trim().is_empty() {
            return Err(idx_err("index file is empty".into()));
        }
        let top: OrderedObject =
            serde_json::from_str(&text).map_err(|e| idx_err(format!("index is not a valid JSON object: {e}")))?;
        let wm_value = top
            .0
            .into_iter()
            .find(|(k, _)| k == "weight_map")
            .map(|(_, v)| v)
            .ok_or_else(|| idx_err("index has no `weight_map`".into()))?;
        let weight_map: OrderedObject = OrderedObject::deserialize(wm_value)
            .map_err(|e| idx_err(format!("`weight_map` is not a JSON object: {e}")))?;

        // tensor name -> shard file name, checked for duplicates and bad values.
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for (tensor, v) in weight_map.0 {
            let Value::String(shard) = v else {
                return Err(ModelError::Tensor {
                    path: index.to_path_buf(),
                    tensor,
                    msg: "weight_map value is not a file name string".into(),
                });
            };
            let p = Path::new(&shard);
            let plain = !shard.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
            if !plain {
                return Err(ModelError::Tensor {
                    path: index.to_path_buf(),
                    tensor,
                    msg: format!("shard name {shard:?} must be a relative path inside the checkpoint directory"),
                });
            }
            if wanted.contains_key(&tensor) {
                return Err(ModelError::Tensor {
                    path: index.to_path_buf(),
                    tensor,
                    msg: "listed twice in weight_map".into(),
                });
            }
            wanted.insert(tensor, shard);
        }

        let shard_names: BTreeSet<&str> = wanted.values().map(String::as_str).collect();
        let mut files = Vec::with_capacity(shard_names.len());
        let mut maps = Vec::with_capacity(shard_names.len());
        let mut first_metadata = None;
        let mut tensors: BTreeMap<String, Entry> = BTreeMap::new();
        let mut total_bytes = 0u64;
        for (file_idx, shard) in shard_names.iter().enumerate() {
            let shard_path = dir.join(shard);
            if !shard_path.is_file() {
                let example =
                    wanted.iter().find(|(_, s)| s.as_str() == *shard).map(|(t, _)| t.as_str()).unwrap_or_default();
                return Err(idx_err(format!(
                    "weight_map names shard `{shard}` (for tensor `{example}` and maybe others), \
                     which does not exist at {}",
                    shard_path.display()
                )));
            }
            let parsed = parse_file(&shard_path)?;
            for t in parsed.tensors {
                if let Some(prev) = tensors.get(&t.name) {
                    let other = files.get(prev.info.file).map(|p: &PathBuf| file_name(p)).unwrap_or_default();
                    return Err(ModelError::Tensor {
                        path: shard_path,
                        tensor: t.name,
                        msg: format!("also present in shard `{other}`; a tensor must be in one shard only"),
                    });
                }
                match wanted.get(&t.name) {
                    Some(s) if s == shard => {}
                    Some(s) => {
                        return Err(ModelError::Tensor {
                            path: shard_path,
                            tensor: t.name,
                            msg: format!("present in this shard but {index_name} places it in `{s}`"),
                        })
                    }
                    None => {
                        return Err(ModelError::Tensor {
                            path: shard_path,
                            tensor: t.name,
                            msg: format!("present in this shard but not listed in {index_name}"),
                        })
                    }
                }
                total_bytes += (t.end - t.start) as u64;
                tensors.insert(
                    t.name,
                    Entry {
                        info: TensorInfo { dtype: t.dtype, shape: t.shape, file: file_idx },
                        start: t.start,
                        end: t.end,
                    },
                );
            }
            if file_idx == 0 {
                first_metadata = parsed.metadata;
            }
            files.push(shard_path);
            maps.push(parsed.map);
        }
        for (tensor, shard) in &wanted {
            if !tensors.contains_key(tensor) {
                return Err(ModelError::Tensor {
                    path: dir.join(shard),
                    tensor: tensor.clone(),
                    msg: format!("listed in {index_name} but missing from this shard"),
                });
            }
        }
        Ok(SafetensorsReader { root: root.to_path_buf(), files, maps, first_metadata, tensors, total_bytes })
    }

    /// The path that was opened (a file, or the checkpoint directory).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The `.safetensors` files of the checkpoint (shards in name order).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// dtype, shape and file of a tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|e| &e.info)
    }

    /// The file holding a tensor.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        let e = self.tensors.get(name)?;
        self.files.get(e.info.file).map(PathBuf::as_path)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.root.clone(), tensor: name.to_string() })
    }

    /// The tensor's little-endian bytes, borrowed from the memory map (no copy).
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let e = self.entry(name)?;
        self.maps.get(e.info.file).and_then(|m| m.get(e.start..e.end)).ok_or_else(|| ModelError::Tensor {
            path: self.files.get(e.info.file).cloned().unwrap_or_default(),
            tensor: name.to_string(),
            msg: "byte range outside the mapped file".into(),
        })
    }

    /// Drops the resident pages of tensor `name` (a hint: a streaming reader that is done with a
    /// tensor keeps its memory down; the pages are read back from the file if touched again).
    pub fn release(&self, name: &str) {
        if let Some((map, e)) = self.tensors.get(name).and_then(|e| Some((self.maps.get(e.info.file)?, e))) {
            // SAFETY: the mapping is a read-only private file mapping: MADV_DONTNEED only drops pages,
            // which later reads fault back in from the unchanged file, so no borrowed bytes change.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, e.start, e.end - e.start) };
        }
    }

    /// The tensor as f32 values; F32, F16 and BF16 convert exactly, other dtypes are a [`ModelError::Tensor`].
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let bytes = self.bytes(name)?;
        let dtype = self.entry(name)?.info.dtype;
        decode_f32(bytes, dtype).ok_or_else(|| self.dtype_err(name, dtype, "f32", "F32, F16 or BF16"))
    }

    /// The tensor as i64 values; I64, I32 and U32 are accepted, other dtypes are a [`ModelError::Tensor`].
    pub fn read_i64(&self, name: &str) -> Result<Vec<i64>> {
        let bytes = self.bytes(name)?;
        let dtype = self.entry(name)?.info.dtype;
        decode_i64(bytes, dtype).ok_or_else(|| self.dtype_err(name, dtype, "i64", "I64, I32 or U32"))
    }

    fn dtype_err(&self, name: &str, dtype: FileDType, to: &str, accepted: &str) -> ModelError {
        ModelError::Tensor {
            path: self.path_of(name).map(Path::to_path_buf).unwrap_or_default(),
            tensor: name.to_string(),
            msg: format!("dtype {dtype} cannot be read as {to} (expected {accepted})"),
        }
    }

    /// The `__metadata__` map of the first file, if it has one.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.first_metadata.as_ref()
    }

    /// Sum of all tensors' byte sizes (what an HF index calls `total_size`).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// A JSON object with its keys in file order and duplicates kept (serde_json's `Map` would drop them).
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<OrderedObject, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = a.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// One validated tensor of a file, with absolute byte offsets into the mapping.
struct RawTensor {
    name: String,
    dtype: FileDType,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A mapped file with a validated header.
struct ParsedFile {
    map: Mmap,
    metadata: Option<HashMap<String, String>>,
    tensors: Vec<RawTensor>,
}

/// Maps `path` and validates its header against the file size.
fn parse_file(path: &Path) -> Result<ParsedFile> {
    let file_err = |msg: String| ModelError::Safetensors { path: path.to_path_buf(), msg };
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if len == 0 {
        return Err(file_err("file is empty, not a safetensors file".into()));
    }
    if len < 8 {
        return Err(file_err(format!("file is {len} bytes, shorter than the 8-byte header length (truncated?)")));
    }
    // SAFETY: the mapping is read-only and lives as long as the SafetensorsReader. Like every memory-mapped reader we rely
    // on the file not being modified or truncated while it is open (documented on `SafetensorsReader`).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let (len_bytes, rest) = map.split_at_checked(8).ok_or_else(|| file_err("file shrank while opening".into()))?;
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(n8);
    let body = rest.len() as u64;
    if n > MAX_HEADER_BYTES {
        return Err(file_err(format!(
            "header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit (not a safetensors file, or corrupt)"
        )));
    }
    if n > body {
        return Err(file_err(format!(
            "header length {n} is beyond the end of the file ({body} bytes after the length field; truncated?)"
        )));
    }
    let n = n as usize; // <= MAX_HEADER_BYTES, fits
    let (header, data) = rest.split_at(n);
    let header = std::str::from_utf8(header).map_err(|e| file_err(format!("header is not valid UTF-8: {e}")))?;
    if header.trim().is_empty() {
        return Err(file_err("header is empty".into()));
    }
    let obj: OrderedObject =
        serde_json::from_str(header).map_err(|e| file_err(format!("header is not a valid JSON object: {e}")))?;

    let data_start = 8 + n;
    let data_len = data.len();
    let mut metadata = None;
    let mut seen = BTreeSet::new();
    let mut tensors = Vec::with_capacity(obj.0.len());
    for (name, v) in obj.0 {
        if name == "__metadata__" {
            if metadata.is_some() {
                return Err(file_err("`__metadata__` appears twice in the header".into()));
            }
            metadata = Some(parse_metadata(path, v)?);
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(ModelError::Tensor {
                path: path.to_path_buf(),
                tensor: name,
                msg: "appears twice in the header".into(),
            });
        }
        let (dtype, shape, s, e) = parse_tensor_entry(v).map_err(|msg| ModelError::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            msg,
        })?;
        let t_err = |msg: String| ModelError::Tensor { path: path.to_path_buf(), tensor: name.clone(), msg };
        if e < s {
            return Err(t_err(format!("data_offsets [{s}, {e}] are reversed")));
        }
        if e > data_len as u64 {
            return Err(t_err(format!(
                "data_offsets [{s}, {e}] extend past the end of the data section ({data_len} bytes; file truncated?)"
            )));
        }
        let (s, e) = (s as usize, e as usize); // <= data_len
        let need = byte_len(dtype, &shape)
            .ok_or_else(|| t_err(format!("shape {shape:?} is too large (byte size overflows)")))?;
        if need != e - s {
            return Err(t_err(format!(
                "dtype {dtype} with shape {shape:?} needs {need} bytes but data_offsets [{s}, {e}] span {}",
                e - s
            )));
        }
        tensors.push(RawTensor { name, dtype, shape, start: s, end: e });
    }

    // The tensors must tile the data section exactly.
    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    let mut covered = 0usize;
    let mut prev: Option<&RawTensor> = None;
    for t in &tensors {
        let t_err = |msg: String| ModelError::Tensor { path: path.to_path_buf(), tensor: t.name.clone(), msg };
        if t.start < covered {
            let p = prev.map(|p| (p.name.as_str(), p.start, p.end)).unwrap_or(("", 0, 0));
            return Err(t_err(format!(
                "data_offsets [{}, {}] overlap tensor `{}` at [{}, {}]",
                t.start, t.end, p.0, p.1, p.2
            )));
        }
        if t.start > covered {
            let after = prev.map(|p| format!(" after tensor `{}`", p.name)).unwrap_or_default();
            return Err(t_err(format!(
                "data_offsets [{}, {}] leave a gap: data bytes [{covered}, {}){after} belong to no tensor",
                t.start, t.end, t.start
            )));
        }
        covered = t.end;
        prev = Some(t);
    }
    if covered != data_len {
        return Err(file_err(format!(
            "data section is {data_len} bytes but the tensors cover only {covered}: {} trailing bytes belong to no tensor",
            data_len - covered
        )));
    }
    for t in &mut tensors {
        t.start += data_start;
        t.end += data_start;
    }
    Ok(ParsedFile { map, metadata, tensors })
}

fn parse_metadata(path: &Path, v: Value) -> Result<HashMap<String, String>> {
    let Value::Object(m) = v else {
        return Err(ModelError::Safetensors {
            path: path.to_path_buf(),
            msg: "`__metadata__` is not a JSON object".into(),
        });
    };
    m.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(ModelError::Safetensors {
                path: path.to_path_buf(),
                msg: format!("`__metadata__` value of `{k}` is not a string"),
            }),
        })
        .collect()
}

/// Parses `{"dtype": .., "shape": [..], "data_offsets": [s, e]}` (offsets relative to the data section).
fn parse_tensor_entry(v: Value) -> std::result::Result<(FileDType, Vec<usize>, u64, u64), String> {
    let Value::Object(m) = v else {
        return Err("header entry is not a JSON object".into());
    };
    let dtype = match m.get("dtype") {
        Some(Value::String(s)) => match FileDType::parse(s) {
            Some(d) => d,
            None if OTHER_SAFETENSORS_DTYPES.contains(&s.as_str()) => {
                return Err(format!("dtype {s} is not supported by medmoe"))
            }
            None => return Err(format!("unknown dtype {s:?}")),
        },
        Some(_) => return Err("`dtype` is not a string".into()),
        None => return Err("header entry has no `dtype`".into()),
    };
    let shape = match m.get("shape") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("`shape` {} is not a list of non-negative integers", Value::Array(a.clone())))?,
        Some(_) => return Err("`shape` is not a list".into()),
        None => return Err("header entry has no `shape`".into()),
    };
    let offsets = match m.get("data_offsets") {
        Some(Value::Array(a)) if a.len() == 2 => a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>(),
        Some(_) => None,
        None => return Err("header entry has no `data_offsets`".into()),
    };
    match offsets.as_deref() {
        Some(&[s, e]) => Ok((dtype, shape, s, e)),
        _ => Err(format!(
            "`data_offsets` {} is not a pair of non-negative integers",
            m.get("data_offsets").cloned().unwrap_or_default()
        )),
    }
}
