//! The GGUF container (version 3), as `ggml/include/gguf.h` defines it: little-endian throughout.
//!
//! ```text
//! "GGUF" | u32 version = 3 | i64 n_tensors | i64 n_kv
//! n_kv    x (string key, u32 value type, value)          string = u64 length + UTF-8 bytes (no NUL)
//! n_tensors x (string name, u32 n_dims, i64 ne[n_dims], u32 ggml_type, u64 offset)
//! zero padding to the alignment (general.alignment, default 32)
//! data: each tensor at its offset (relative to the data section), padded to the alignment
//! ```
//! `ne[0]` is the row length (a torch `[out, in]` weight has `ne = [in, out]`); an array value is
//! `u32 element type + u64 count + elements`.

use kernels_cpu::quant::BlockType;
use std::io::{self, Write};

/// File magic.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The version we write and read.
pub const VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent (what we write).
pub const DEFAULT_ALIGNMENT: usize = 32;

/// Value type ids of the format.
pub mod vtype {
    /// u8
    pub const U8: u32 = 0;
    /// i8
    pub const I8: u32 = 1;
    /// u16
    pub const U16: u32 = 2;
    /// i16
    pub const I16: u32 = 3;
    /// u32
    pub const U32: u32 = 4;
    /// i32
    pub const I32: u32 = 5;
    /// f32
    pub const F32: u32 = 6;
    /// bool (one byte, 0 or 1)
    pub const BOOL: u32 = 7;
    /// string
    pub const STRING: u32 = 8;
    /// array
    pub const ARRAY: u32 = 9;
    /// u64
    pub const U64: u32 = 10;
    /// i64
    pub const I64: u32 = 11;
    /// f64
    pub const F64: u32 = 12;
}

/// One metadata value. Arrays hold scalars or strings (the format allows nested arrays; llama.cpp
/// reads none, and neither do we).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Unsigned integer stored in `bits` (8, 16, 32 or 64).
    Uint(u64, u8),
    /// Signed integer stored in `bits` (8, 16, 32 or 64).
    Int(i64, u8),
    /// f32
    F32(f32),
    /// f64
    F64(f64),
    /// bool
    Bool(bool),
    /// string
    Str(String),
    /// Array of strings.
    StrArray(Vec<String>),
    /// Array of i32.
    I32Array(Vec<i32>),
    /// Array of f32.
    F32Array(Vec<f32>),
    /// Array of other scalars, kept as their element type and raw values (read only).
    OtherArray(u32, u64),
}

impl MetaValue {
    /// A u32 value.
    pub fn u32(v: usize) -> Self {
        MetaValue::Uint(v as u64, 32)
    }

    /// The value as an unsigned integer (any integer width, non-negative), if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::Uint(v, _) => Some(v),
            MetaValue::Int(v, _) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as f64 (f32, f64 or an integer), if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::Uint(v, _) => Some(v as f64),
            MetaValue::Int(v, _) => Some(v as f64),
            _ => None,
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A short description for messages (`u32 7`, `string "qwen3"`, `array of 151936 strings`).
    pub fn describe(&self) -> String {
        match self {
            MetaValue::Uint(v, b) => format!("u{b} {v}"),
            MetaValue::Int(v, b) => format!("i{b} {v}"),
            MetaValue::F32(v) => format!("f32 {v}"),
            MetaValue::F64(v) => format!("f64 {v}"),
            MetaValue::Bool(v) => format!("bool {v}"),
            MetaValue::Str(s) => format!("string {s:?}"),
            MetaValue::StrArray(a) => format!("array of {} strings", a.len()),
            MetaValue::I32Array(a) => format!("array of {} i32", a.len()),
            MetaValue::F32Array(a) => format!("array of {} f32", a.len()),
            MetaValue::OtherArray(t, n) => format!("array of {n} values of type {t}"),
        }
    }
}

/// Writes a GGUF string.
pub fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn uint_type(bits: u8) -> u32 {
    match bits {
        8 => vtype::U8,
        16 => vtype::U16,
        64 => vtype::U64,
        _ => vtype::U32,
    }
}

fn int_type(bits: u8) -> u32 {
    match bits {
        8 => vtype::I8,
        16 => vtype::I16,
        64 => vtype::I64,
        _ => vtype::I32,
    }
}

fn write_uint(w: &mut impl Write, v: u64, bits: u8) -> io::Result<()> {
    let b = v.to_le_bytes();
    w.write_all(&b[..(bits as usize / 8).clamp(1, 8)])
}

/// Writes one key/value pair (key, type, value).
pub fn write_kv(w: &mut impl Write, key: &str, v: &MetaValue) -> io::Result<()> {
    write_str(w, key)?;
    match v {
        MetaValue::Uint(x, bits) => {
            w.write_all(&uint_type(*bits).to_le_bytes())?;
            write_uint(w, *x, *bits)
        }
        MetaValue::Int(x, bits) => {
            w.write_all(&int_type(*bits).to_le_bytes())?;
            write_uint(w, *x as u64, *bits)
        }
        MetaValue::F32(x) => {
            w.write_all(&vtype::F32.to_le_bytes())?;
            w.write_all(&x.to_le_bytes())
        }
        MetaValue::F64(x) => {
            w.write_all(&vtype::F64.to_le_bytes())?;
            w.write_all(&x.to_le_bytes())
        }
        MetaValue::Bool(x) => {
            w.write_all(&vtype::BOOL.to_le_bytes())?;
            w.write_all(&[*x as u8])
        }
        MetaValue::Str(s) => {
            w.write_all(&vtype::STRING.to_le_bytes())?;
            write_str(w, s)
        }
        MetaValue::StrArray(a) => {
            w.write_all(&vtype::ARRAY.to_le_bytes())?;
            w.write_all(&vtype::STRING.to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            a.iter().try_for_each(|s| write_str(w, s))
        }
        MetaValue::I32Array(a) => {
            w.write_all(&vtype::ARRAY.to_le_bytes())?;
            w.write_all(&vtype::I32.to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            a.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
        }
        MetaValue::F32Array(a) => {
            w.write_all(&vtype::ARRAY.to_le_bytes())?;
            w.write_all(&vtype::F32.to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            a.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
        }
        MetaValue::OtherArray(..) => Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot write an opaque array")),
    }
}

/// Bytes of a scalar value type, `None` for strings, arrays and unknown types.
pub fn scalar_size(t: u32) -> Option<usize> {
    match t {
        vtype::U8 | vtype::I8 | vtype::BOOL => Some(1),
        vtype::U16 | vtype::I16 => Some(2),
        vtype::U32 | vtype::I32 | vtype::F32 => Some(4),
        vtype::U64 | vtype::I64 | vtype::F64 => Some(8),
        _ => None,
    }
}

/// Writes one tensor info (name, dims, type, offset).
pub fn write_tensor_info(w: &mut impl Write, name: &str, ne: &[usize], ty: BlockType, offset: u64) -> io::Result<()> {
    write_str(w, name)?;
    w.write_all(&(ne.len() as u32).to_le_bytes())?;
    for &d in ne {
        w.write_all(&(d as i64).to_le_bytes())?;
    }
    w.write_all(&ty.ggml_type_id().to_le_bytes())?;
    w.write_all(&offset.to_le_bytes())
}

/// `n` rounded up to a multiple of `align`.
pub fn pad_to(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

/// Bytes of a tensor with dims `ne` stored as `ty`, `None` when `ne[0]` is not a whole number of
/// blocks or the size overflows.
pub fn tensor_bytes(ty: BlockType, ne: &[usize]) -> Option<u64> {
    let row = ty.row_bytes(*ne.first()?).ok()? as u64;
    ne[1..].iter().try_fold(row, |a, &d| a.checked_mul(d as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_encoding_matches_the_layout() {
        let mut b = Vec::new();
        write_kv(&mut b, "a", &MetaValue::u32(7)).unwrap();
        assert_eq!(b, [1, 0, 0, 0, 0, 0, 0, 0, b'a', 4, 0, 0, 0, 7, 0, 0, 0]);
        let mut b = Vec::new();
        write_kv(&mut b, "s", &MetaValue::StrArray(vec!["xy".into()])).unwrap();
        let mut want = vec![1, 0, 0, 0, 0, 0, 0, 0, b's', 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        want.extend([2, 0, 0, 0, 0, 0, 0, 0, b'x', b'y']);
        assert_eq!(b, want);
        assert_eq!(tensor_bytes(BlockType::Q8_0, &[64, 3]), Some(2 * 34 * 3));
        assert_eq!(tensor_bytes(BlockType::Q5_K, &[192, 3]), None);
        assert_eq!(pad_to(33, 32), 64);
    }
}
