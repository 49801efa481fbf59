//! Memory-mapped, validated reading of a GGUF file ([`super::format`]).
//!
//! [`GgufFile::open`] checks the whole header before anything else reads the file: magic and
//! version, every length against the bytes left (so a garbage count cannot make us allocate or read
//! past the end), value types, the alignment, and per tensor: dims, a type we decode, a row length
//! that is a whole number of blocks, an aligned offset, and data that lies inside the file without
//! overlapping another tensor. Every problem is a [`ModelError`] naming the file and the field or
//! tensor. Tensor bytes are then borrowed from the mapping.

use super::format::{pad_to, scalar_size, tensor_bytes, vtype, MetaValue, DEFAULT_ALIGNMENT, MAGIC, VERSION};
use crate::error::{ModelError, Result};
use kernels_cpu::quant::{dequantize_rows, BlockType};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    /// Name.
    pub name: String,
    /// ggml dims, row length first.
    pub ne: Vec<usize>,
    /// Element format.
    pub ty: BlockType,
    /// Offset of its data from the start of the file.
    pub start: usize,
    /// Bytes of data.
    pub bytes: usize,
}

impl GgufTensor {
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.ne.iter().product()
    }
}

/// An open, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensors in file order.
    pub tensors: Vec<GgufTensor>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

/// Reads values off the mapped bytes, with errors naming the file and the field being read.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, field: &str, msg: String) -> ModelError {
        ModelError::Gguf { path: self.path.to_path_buf(), field: field.to_string(), msg }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.err(
                field,
                format!("needs {n} bytes at offset {}, the file has {} left (truncated?)", self.pos, self.left()),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A count of items of at least `min_item` bytes each, checked against the bytes left.
    fn count(&mut self, field: &str, min_item: usize) -> Result<usize> {
        let n = self.u64(field)?;
        if n > (self.left() / min_item.max(1)) as u64 {
            return Err(self
                .err(field, format!("count {n} cannot fit in the {} bytes left (garbage or truncated)", self.left())));
        }
        Ok(n as usize)
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let n = self.count(field, 1)?;
        let b = self.take(n, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(field, "string is not valid UTF-8".into()))
    }

    fn scalar(&mut self, t: u32, field: &str) -> Result<MetaValue> {
        let size = scalar_size(t).ok_or_else(|| self.err(field, format!("unknown value type {t}")))?;
        let b = self.take(size, field)?;
        let mut x = [0u8; 8];
        x[..size].copy_from_slice(b);
        let u = u64::from_le_bytes(x);
        Ok(match t {
            vtype::U8 | vtype::U16 | vtype::U32 | vtype::U64 => MetaValue::Uint(u, (size * 8) as u8),
            vtype::I8 => MetaValue::Int(u as u8 as i8 as i64, 8),
            vtype::I16 => MetaValue::Int(u as u16 as i16 as i64, 16),
            vtype::I32 => MetaValue::Int(u as u32 as i32 as i64, 32),
            vtype::I64 => MetaValue::Int(u as i64, 64),
            vtype::F32 => MetaValue::F32(f32::from_bits(u as u32)),
            vtype::F64 => MetaValue::F64(f64::from_bits(u)),
            _ => match b[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                v => return Err(self.err(field, format!("bool byte is {v}, not 0 or 1"))),
            },
        })
    }

    fn value(&mut self, field: &str) -> Result<MetaValue> {
        let t = self.u32(field)?;
        match t {
            vtype::STRING => Ok(MetaValue::Str(self.string(field)?)),
            vtype::ARRAY => {
                let et = self.u32(field)?;
                match et {
                    vtype::STRING => {
                        let n = self.count(field, 8)?;
                        (0..n).map(|_| self.string(field)).collect::<Result<_>>().map(MetaValue::StrArray)
                    }
                    vtype::ARRAY => Err(self.err(field, "nested arrays are not supported".into())),
                    _ => {
                        let size = scalar_size(et)
                            .ok_or_else(|| self.err(field, format!("unknown array element type {et}")))?;
                        let n = self.count(field, size)?;
                        let b = self.take(n * size, field)?;
                        Ok(match et {
                            vtype::I32 => MetaValue::I32Array(
                                b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                            ),
                            vtype::F32 => MetaValue::F32Array(
                                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                            ),
                            _ => MetaValue::OtherArray(et, n as u64),
                        })
                    }
                }
            }
            _ => self.scalar(t, field),
        }
    }
}

impl GgufFile {
    /// Opens and validates `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let bad = |field: &str, msg: String| ModelError::Gguf { path: path.to_path_buf(), field: field.into(), msg };
        if len < 24 {
            return Err(bad("header", format!("file is {len} bytes, shorter than a GGUF header (24 bytes)")));
        }
        // SAFETY: the mapping is read-only and lives as long as the GgufFile; like every memory-mapped
        // reader we rely on the file not being modified or truncated while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let mut c = Cursor { buf: &map, pos: 0, path };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(bad("magic", format!("{magic:?} is not \"GGUF\" (not a GGUF file)")));
        }
        let version = c.u32("version")?;
        if version != VERSION {
            return Err(bad("version", format!("{version}: only GGUF version {VERSION} is supported")));
        }
        // A tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes, a key/value 8 + 4 + 1.
        let n_tensors = c.count("n_tensors", 32)?;
        let n_kv = c.count("n_kv", 13)?;
        let mut metadata = Vec::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&format!("key #{i}"))?;
            let value = c.value(&key)?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => return Err(bad("general.alignment", format!("{} is not a power of two", v.describe()))),
            },
        };
        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor info #{i} name"))?;
            let tbad = |msg: String| ModelError::Tensor { path: path.to_path_buf(), tensor: name.clone(), msg };
            let n_dims = c.u32(&format!("tensor `{name}` n_dims"))? as usize;
            if !(1..=4).contains(&n_dims) {
                return Err(tbad(format!("{n_dims} dims (expected 1 to 4)")));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = c.u64(&format!("tensor `{name}` ne"))? as i64;
                if d <= 0 || d > 1 << 40 {
                    return Err(tbad(format!("dimension {d} is out of range")));
                }
                ne.push(d as usize);
            }
            let type_id = c.u32(&format!("tensor `{name}` type"))?;
            let ty = BlockType::from_ggml_type_id(type_id)
                .ok_or_else(|| tbad(format!("ggml type {type_id} is not one we decode (F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_K, Q5_K, Q6_K)")))?;
            let offset = c.u64(&format!("tensor `{name}` offset"))?;
            let bytes = tensor_bytes(ty, &ne).ok_or_else(|| {
                tbad(format!("dims {ne:?} do not fit type {ty} (row length must be a multiple of {})", ty.block_size()))
            })?;
            if !offset.is_multiple_of(alignment as u64) {
                return Err(tbad(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            infos.push((name, ne, ty, offset, bytes));
        }
        let data_start = pad_to(c.pos as u64, alignment as u64);
        let mut tensors: Vec<GgufTensor> = Vec::with_capacity(n_tensors);
        let mut by_name = HashMap::with_capacity(n_tensors);
        for (name, ne, ty, offset, bytes) in infos {
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(bytes));
            if end.is_none_or(|e| e > len) {
                return Err(ModelError::Tensor {
                    path: path.to_path_buf(),
                    tensor: name,
                    msg: format!(
                        "data ({bytes} bytes at offset {offset} of the data section) runs past the end of the {len}-byte file (truncated?)"
                    ),
                });
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(ModelError::Tensor { path: path.to_path_buf(), tensor: name, msg: "appears twice".into() });
            }
            tensors.push(GgufTensor { name, ne, ty, start: start.unwrap_or(0) as usize, bytes: bytes as usize });
        }
        let mut ranges: Vec<(usize, usize, &str)> =
            tensors.iter().map(|t| (t.start, t.start + t.bytes, t.name.as_str())).collect();
        ranges.sort();
        if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(ModelError::Tensor {
                path: path.to_path_buf(),
                tensor: w[1].2.to_string(),
                msg: format!("data overlaps tensor `{}`", w[0].2),
            });
        }
        Ok(GgufFile { path: path.to_path_buf(), map, metadata, tensors, by_name })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of `t` (borrowed from the mapping).
    pub fn data(&self, t: &GgufTensor) -> &[u8] {
        &self.map[t.start..t.start + t.bytes]
    }

    /// Tensor `name` decoded to f32 (rows of `ne[0]` values).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        dequantize_rows(t.ty, self.data(t), t.ne[0]).map_err(|e| ModelError::Tensor {
            path: self.path.clone(),
            tensor: name.into(),
            msg: e.to_string(),
        })
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes as u64).sum()
    }
}
