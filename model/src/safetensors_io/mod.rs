//! Safetensors I/O: memory-mapped reading of one `.safetensors` file or an HF sharded checkpoint, and atomic
//! writing of single files and (optionally sharded) checkpoint directories.
//!
//! The file format (<https://github.com/huggingface/safetensors>): an 8-byte little-endian header length `N`,
//! `N` bytes of JSON header `{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [s, e]}}`
//! padded with spaces to a multiple of 8, then the data section; `[s, e)` are offsets into the data section,
//! which the tensors must cover exactly, without gaps or overlaps. Tensor bytes are little-endian, row-major.
//!
//! Reading validates the whole header up front ([`SafetensorsReader::open`]) and reports every problem as a typed
//! [`ModelError`] naming the file and the tensor; tensor bytes are then borrowed from the mapping, never copied.
//! Writing puts tensors in name order (the reference implementation orders by dtype first, then name; both are
//! valid files) and is atomic: `<path>.tmp` is written, fsynced and renamed.

mod read;
mod stream_write;
mod write;

use std::borrow::Cow;
use std::fmt;

use crate::error::{ModelError, Result};

pub use read::SafetensorsReader;
pub use stream_write::{write_checkpoint_streaming, TensorSpec, DEFAULT_MAX_SHARD_BYTES};
pub use write::{write_checkpoint_dir, write_safetensors};

/// File name of a single-file HF checkpoint inside a model directory.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";
/// File name of the index of a sharded HF checkpoint inside a model directory.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";
/// Largest header accepted, as in the reference implementation (100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Element type of a stored tensor (the subset of safetensors dtypes medmoe uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileDType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the high half of an f32).
    BF16,
    /// Signed 64-bit integer.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned byte.
    U8,
    /// Boolean, one byte.
    BOOL,
}

impl FileDType {
    /// All supported dtypes.
    pub const ALL: [FileDType; 8] = [
        FileDType::F32,
        FileDType::F16,
        FileDType::BF16,
        FileDType::I64,
        FileDType::I32,
        FileDType::U32,
        FileDType::U8,
        FileDType::BOOL,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FileDType::F32 | FileDType::I32 | FileDType::U32 => 4,
            FileDType::F16 | FileDType::BF16 => 2,
            FileDType::I64 => 8,
            FileDType::U8 | FileDType::BOOL => 1,
        }
    }

    /// The safetensors spelling: `"F32"`, `"F16"`, `"BF16"`, `"I64"`, `"I32"`, `"U32"`, `"U8"`, `"BOOL"`.
    pub fn name(self) -> &'static str {
        match self {
            FileDType::F32 => "F32",
            FileDType::F16 => "F16",
            FileDType::BF16 => "BF16",
            FileDType::I64 => "I64",
            FileDType::I32 => "I32",
            FileDType::U32 => "U32",
            FileDType::U8 => "U8",
            FileDType::BOOL => "BOOL",
        }
    }

    /// Parses the safetensors spelling (exact, case-sensitive, as the format requires).
    pub fn parse(s: &str) -> Option<Self> {
        FileDType::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for FileDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// dtypes the safetensors format defines that medmoe does not read (for a clearer error message).
const OTHER_SAFETENSORS_DTYPES: [&str; 8] = ["F64", "U64", "I16", "U16", "I8", "F8_E4M3", "F8_E5M2", "F8_E8M0"];

/// What the checkpoint says about one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: FileDType,
    /// Shape, outermost dimension first (row-major).
    pub shape: Vec<usize>,
    /// Index into [`SafetensorsReader::files`] of the file holding the tensor.
    pub file: usize,
}

impl TensorInfo {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One tensor to write: its bytes must be little-endian, row-major, `numel * dtype.size()` long.
#[derive(Clone, Debug)]
pub struct TensorToWrite<'a> {
    /// Tensor name (must be unique and not `__metadata__`).
    pub name: String,
    /// Element type.
    pub dtype: FileDType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian element bytes, borrowed (e.g. from a [`SafetensorsReader`]) or owned.
    pub data: Cow<'a, [u8]>,
}

impl<'a> TensorToWrite<'a> {
    /// An F32/F16/BF16 tensor from f32 values (see [`f32_to_bytes`] for the rounding).
    pub fn from_f32(name: impl Into<String>, dtype: FileDType, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        Ok(TensorToWrite { name: name.into(), dtype, shape, data: Cow::Owned(f32_to_bytes(values, dtype)?) })
    }
}

/// Encodes f32 values as little-endian F32, BF16 or F16 bytes. BF16 and F16 round to nearest, ties to even
/// (NaN stays NaN, overflow gives infinity). Other dtypes are [`ModelError::Invalid`].
pub fn f32_to_bytes(values: &[f32], dtype: FileDType) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    match dtype {
        FileDType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        FileDType::BF16 => {
            values.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes()))
        }
        FileDType::F16 => {
            values.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes()))
        }
        other => {
            return Err(ModelError::Invalid(format!("cannot encode f32 values as {other}; expected F32, BF16 or F16")))
        }
    }
    Ok(out)
}

/// Decodes little-endian F32/F16/BF16 bytes exactly; `None` for other dtypes.
/// The caller guarantees `bytes.len()` is a multiple of the element size.
fn decode_f32(bytes: &[u8], dtype: FileDType) -> Option<Vec<f32>> {
    match dtype {
        FileDType::F32 => Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        FileDType::F16 => Some(
            bytes.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        ),
        FileDType::BF16 => Some(
            bytes.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        ),
        _ => None,
    }
}

/// Decodes little-endian I64/I32/U32 bytes; `None` for other dtypes.
fn decode_i64(bytes: &[u8], dtype: FileDType) -> Option<Vec<i64>> {
    match dtype {
        FileDType::I64 => Some(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        FileDType::I32 => {
            Some(bytes.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect())
        }
        FileDType::U32 => {
            Some(bytes.chunks_exact(4).map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect())
        }
        _ => None,
    }
}

/// `product(shape) * dtype.size()`, `None` on overflow.
fn byte_len(dtype: FileDType, shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?.checked_mul(dtype.size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_round_trip() {
        for d in FileDType::ALL {
            assert_eq!(FileDType::parse(d.name()), Some(d));
            assert_eq!(d.to_string(), d.name());
        }
        assert_eq!(FileDType::parse("f32"), None);
        assert_eq!(FileDType::parse("F64"), None);
        assert_eq!(FileDType::BF16.size(), 2);
        assert_eq!(FileDType::I64.size(), 8);
        assert_eq!(FileDType::BOOL.size(), 1);
    }

    #[test]
    fn f32_encoding_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (1.0).
        let halfway = f32::from_bits(0x3F80_8000);
        let above = f32::from_bits(0x3F80_8001);
        let odd_halfway = f32::from_bits(0x3F81_8000); // lsb of bf16 is 1: rounds up
        let b = f32_to_bytes(&[halfway, above, odd_halfway], FileDType::BF16).unwrap();
        assert_eq!(b, vec![0x80, 0x3F, 0x81, 0x3F, 0x82, 0x3F]);
        let h = f32_to_bytes(&[1.0, 65520.0, -2.0], FileDType::F16).unwrap();
        assert_eq!(h, vec![0x00, 0x3C, 0x00, 0x7C, 0x00, 0xC0]);
        assert!(f32_to_bytes(&[1.0], FileDType::I32).is_err());
    }

    #[test]
    fn decoding_is_exact() {
        let vals = [0.0f32, -1.5, 3.140625, f32::INFINITY, 1e-3];
        for d in [FileDType::F32, FileDType::BF16, FileDType::F16] {
            let bytes = f32_to_bytes(&vals, d).unwrap();
            let back = decode_f32(&bytes, d).unwrap();
            let again = f32_to_bytes(&back, d).unwrap();
            assert_eq!(bytes, again, "{d}");
        }
        let b = f32_to_bytes(&vals, FileDType::F32).unwrap();
        assert_eq!(decode_f32(&b, FileDType::F32).unwrap(), vals);
        let ints: Vec<u8> = (-2i32..2).flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode_i64(&ints, FileDType::I32).unwrap(), vec![-2, -1, 0, 1]);
        assert_eq!(decode_i64(&ints, FileDType::U32).unwrap()[0], 0xFFFF_FFFE);
        assert!(decode_i64(&ints, FileDType::F32).is_none());
    }
}
