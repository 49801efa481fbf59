//! Block codecs of the GGUF / ggml weight formats, byte-identical to llama.cpp.
//!
//! A row of `row_len` f32 values is stored as `row_len / block_size` blocks of `block_bytes` each
//! ([`BlockType`]); rows never share a block. [`quantize_rows`] encodes exactly as llama.cpp's
//! reference quantizers (`quantize_row_*_ref`, what `ggml_quantize_chunk` runs without an
//! importance matrix): the same scale searches, the same f32 operation order, and the same rounding
//! at every step — `nearest_int` (add 12582912, round half to even, reproduced bit for bit in
//! [`k_search::nearest_int`]) in the K-quants, `roundf` (half away from zero) in Q8_0, truncating
//! casts after `+ 0.5` / `+ 8.5` / `+ 16.5` in Q4_0 / Q5_0 / Q5_1. [`dequantize_rows`] is
//! bit-identical to ggml's `dequantize_row_*` (and gguf-py's numpy dequantizers). F16 and BF16
//! convert exactly as ggml does ([`half`]). `kernels-cpu/tests/quant.rs` checks all of this against
//! bytes written by llama.cpp itself (fixtures from `tools/gen_quant_fixtures.py`).
//!
//! Streaming: [`quantize_rows_into`] / [`dequantize_rows_into`] work on any whole number of rows
//! into a caller buffer, so a tensor can be converted a chunk of rows at a time. Rows are
//! independent, so the rayon split over rows cannot change a byte: results are identical for
//! every thread count and chunking.
//!
//! Lengths come from files and configs, so they are checked and reported as [`QuantError`]s.
//!
//! Files: `half.rs` (F16/BF16), `legacy.rs` (32-element blocks Q4_0, Q5_0, Q5_1, Q8_0),
//! `k_quants.rs` (256-element super-blocks Q4_K, Q5_K, Q6_K), `k_search.rs` (their scale searches
//! `make_qkx2_quants` / `make_qx_quants`, one sub-block at a time, as in C), `k_lanes.rs` (the same
//! searches on all sub-blocks of a super-block at once, in SIMD lanes: what the quantizers run).

pub mod half;
mod k_lanes;
pub mod k_quants;
pub mod k_search;
pub mod legacy;

use rayon::prelude::*;

/// A GGUF tensor element format this module can encode and decode (variants use ggml's names).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockType {
    /// IEEE f32, stored as is.
    F32,
    /// IEEE half, round to nearest even (ggml's `GGML_FP32_TO_FP16`).
    F16,
    /// bfloat16, round to nearest even, NaN kept quiet (ggml's `ggml_compute_fp32_to_bf16`).
    BF16,
    /// 32 values: f16 scale + 32 x i8 (`d = amax/127`, `roundf`). 8.5 bits per weight.
    Q8_0,
    /// 32 values: f16 scale + 32 x 5 bits, symmetric (`d = max/-16`). 5.5 bits per weight.
    Q5_0,
    /// 32 values: f16 scale + f16 min + 32 x 5 bits (`d = (max-min)/31`). 6 bits per weight.
    Q5_1,
    /// 32 values: f16 scale + 32 x 4 bits, symmetric (`d = max/-8`). 4.5 bits per weight.
    Q4_0,
    /// 256 values: f16 d, f16 dmin, 8 x (6-bit scale, 6-bit min), 256 x 4 bits. 4.5 bits per weight.
    Q4_K,
    /// 256 values: f16 d, f16 dmin, 8 x (6-bit scale, 6-bit min), 256 x 5 bits. 5.5 bits per weight.
    Q5_K,
    /// 256 values: 256 x 6 bits, 16 x i8 scales, f16 d (last). 6.5625 bits per weight.
    Q6_K,
}

impl BlockType {
    /// Every type, in GGML type id order.
    pub const ALL: [BlockType; 10] = [
        BlockType::F32,
        BlockType::F16,
        BlockType::Q4_0,
        BlockType::Q5_0,
        BlockType::Q5_1,
        BlockType::Q8_0,
        BlockType::Q4_K,
        BlockType::Q5_K,
        BlockType::Q6_K,
        BlockType::BF16,
    ];

    /// Values per block.
    pub const fn block_size(self) -> usize {
        match self {
            BlockType::F32 | BlockType::F16 | BlockType::BF16 => 1,
            BlockType::Q8_0 | BlockType::Q5_0 | BlockType::Q5_1 | BlockType::Q4_0 => 32,
            BlockType::Q4_K | BlockType::Q5_K | BlockType::Q6_K => k_quants::QK_K,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            BlockType::F32 => 4,
            BlockType::F16 | BlockType::BF16 => 2,
            BlockType::Q8_0 => legacy::Q8_0_BYTES,
            BlockType::Q5_0 => legacy::Q5_0_BYTES,
            BlockType::Q5_1 => legacy::Q5_1_BYTES,
            BlockType::Q4_0 => legacy::Q4_0_BYTES,
            BlockType::Q4_K => k_quants::Q4_K_BYTES,
            BlockType::Q5_K => k_quants::Q5_K_BYTES,
            BlockType::Q6_K => k_quants::Q6_K_BYTES,
        }
    }

    /// The `ggml_type` id written in GGUF tensor infos.
    pub const fn ggml_type_id(self) -> u32 {
        match self {
            BlockType::F32 => 0,
            BlockType::F16 => 1,
            BlockType::Q4_0 => 2,
            BlockType::Q5_0 => 6,
            BlockType::Q5_1 => 7,
            BlockType::Q8_0 => 8,
            BlockType::Q4_K => 12,
            BlockType::Q5_K => 13,
            BlockType::Q6_K => 14,
            BlockType::BF16 => 30,
        }
    }

    /// The type with this `ggml_type` id, if this module implements it.
    pub fn from_ggml_type_id(id: u32) -> Option<BlockType> {
        BlockType::ALL.into_iter().find(|t| t.ggml_type_id() == id)
    }

    /// ggml's name of the type (`"Q5_K"`, `"BF16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            BlockType::F32 => "F32",
            BlockType::F16 => "F16",
            BlockType::BF16 => "BF16",
            BlockType::Q8_0 => "Q8_0",
            BlockType::Q5_0 => "Q5_0",
            BlockType::Q5_1 => "Q5_1",
            BlockType::Q4_0 => "Q4_0",
            BlockType::Q4_K => "Q4_K",
            BlockType::Q5_K => "Q5_K",
            BlockType::Q6_K => "Q6_K",
        }
    }

    /// The type named `name`, ignoring ASCII case (`"q5_k"` and `"Q5_K"` both work).
    pub fn from_name(name: &str) -> Option<BlockType> {
        BlockType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Storage bits per value (block bytes * 8 / block size).
    pub fn bits_per_weight(self) -> f64 {
        (self.block_bytes() * 8) as f64 / self.block_size() as f64
    }

    /// Bytes of one row of `row_len` values, or why such a row cannot be stored in this type.
    pub fn row_bytes(self, row_len: usize) -> Result<usize, QuantError> {
        if row_len == 0 || !row_len.is_multiple_of(self.block_size()) {
            return Err(QuantError::RowLength { ty: self, row_len, block_size: self.block_size() });
        }
        Ok(row_len / self.block_size() * self.block_bytes())
    }
}

impl std::fmt::Display for BlockType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What is wrong with the lengths handed to a codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The row length is zero or not a multiple of the type's block size.
    #[error("{ty}: row length {row_len} is not a positive multiple of the block size {block_size}")]
    RowLength {
        /// The block type.
        ty: BlockType,
        /// The offending row length (values).
        row_len: usize,
        /// Values per block of `ty`.
        block_size: usize,
    },
    /// The f32 input (or output) is not a whole number of rows.
    #[error("{ty}: {len} values are not a whole number of rows of {row_len}")]
    ValueLength {
        /// The block type.
        ty: BlockType,
        /// Length of the f32 slice.
        len: usize,
        /// Values per row.
        row_len: usize,
    },
    /// The encoded bytes are not a whole number of rows.
    #[error("{ty}: {len} bytes are not a whole number of rows of {row_bytes} bytes (rows of {row_len} values)")]
    ByteLength {
        /// The block type.
        ty: BlockType,
        /// Length of the byte slice.
        len: usize,
        /// Bytes per row.
        row_bytes: usize,
        /// Values per row.
        row_len: usize,
    },
    /// The output buffer does not match the input's row count.
    #[error("{ty}: output holds {got} {unit}, {rows} rows of {row_len} values need {expected}")]
    OutputLength {
        /// The block type.
        ty: BlockType,
        /// Rows in the input.
        rows: usize,
        /// Values per row.
        row_len: usize,
        /// Required output length.
        expected: usize,
        /// Given output length.
        got: usize,
        /// `"bytes"` or `"values"`.
        unit: &'static str,
    },
}

/// Values per rayon task: enough work to amortise a task, small enough to balance 2-16 threads.
const VALUES_PER_TASK: usize = 1 << 14;

fn rows_per_task(row_len: usize) -> usize {
    (VALUES_PER_TASK / row_len).max(1)
}

/// Encodes `src` (rows of `row_len` values) as `ty`; returns `rows * ty.row_bytes(row_len)` bytes.
pub fn quantize_rows(ty: BlockType, src: &[f32], row_len: usize) -> Result<Vec<u8>, QuantError> {
    let row_bytes = ty.row_bytes(row_len)?;
    let rows = whole_rows(ty, src.len(), row_len)?;
    let mut dst = vec![0u8; rows * row_bytes];
    quantize_rows_into(ty, src, row_len, &mut dst)?;
    Ok(dst)
}

/// Encodes `src` (any whole number of rows of `row_len` values) into `dst`, which must hold
/// exactly `rows * ty.row_bytes(row_len)` bytes. The streaming form of [`quantize_rows`].
pub fn quantize_rows_into(ty: BlockType, src: &[f32], row_len: usize, dst: &mut [u8]) -> Result<(), QuantError> {
    let row_bytes = ty.row_bytes(row_len)?;
    let rows = whole_rows(ty, src.len(), row_len)?;
    check_output(ty, rows, row_len, rows * row_bytes, dst.len(), "bytes")?;
    let per_task = rows_per_task(row_len);
    dst.par_chunks_mut(per_task * row_bytes).zip(src.par_chunks(per_task * row_len)).for_each(|(d, s)| {
        for (drow, srow) in d.chunks_exact_mut(row_bytes).zip(s.chunks_exact(row_len)) {
            quantize_row(ty, srow, drow);
        }
    });
    Ok(())
}

/// Decodes `bytes` (rows of `row_len` values stored as `ty`) to f32.
pub fn dequantize_rows(ty: BlockType, bytes: &[u8], row_len: usize) -> Result<Vec<f32>, QuantError> {
    let row_bytes = ty.row_bytes(row_len)?;
    let rows = whole_byte_rows(ty, bytes.len(), row_bytes, row_len)?;
    let mut dst = vec![0f32; rows * row_len];
    dequantize_rows_into(ty, bytes, row_len, &mut dst)?;
    Ok(dst)
}

/// Decodes `bytes` (any whole number of rows) into `dst`, which must hold exactly `rows * row_len`
/// values. The streaming form of [`dequantize_rows`].
pub fn dequantize_rows_into(ty: BlockType, bytes: &[u8], row_len: usize, dst: &mut [f32]) -> Result<(), QuantError> {
    let row_bytes = ty.row_bytes(row_len)?;
    let rows = whole_byte_rows(ty, bytes.len(), row_bytes, row_len)?;
    check_output(ty, rows, row_len, rows * row_len, dst.len(), "values")?;
    let per_task = rows_per_task(row_len);
    dst.par_chunks_mut(per_task * row_len).zip(bytes.par_chunks(per_task * row_bytes)).for_each(|(d, s)| {
        for (drow, srow) in d.chunks_exact_mut(row_len).zip(s.chunks_exact(row_bytes)) {
            dequantize_row(ty, srow, drow);
        }
    });
    Ok(())
}

fn whole_rows(ty: BlockType, len: usize, row_len: usize) -> Result<usize, QuantError> {
    if !len.is_multiple_of(row_len) {
        return Err(QuantError::ValueLength { ty, len, row_len });
    }
    Ok(len / row_len)
}

fn whole_byte_rows(ty: BlockType, len: usize, row_bytes: usize, row_len: usize) -> Result<usize, QuantError> {
    if !len.is_multiple_of(row_bytes) {
        return Err(QuantError::ByteLength { ty, len, row_bytes, row_len });
    }
    Ok(len / row_bytes)
}

fn check_output(
    ty: BlockType,
    rows: usize,
    row_len: usize,
    expected: usize,
    got: usize,
    unit: &'static str,
) -> Result<(), QuantError> {
    if expected != got {
        return Err(QuantError::OutputLength { ty, rows, row_len, expected, got, unit });
    }
    Ok(())
}

/// Encodes one row: `src.len()` is a multiple of the block size, `dst` holds its blocks exactly.
fn quantize_row(ty: BlockType, src: &[f32], dst: &mut [u8]) {
    match ty {
        BlockType::F32 => {
            for (d, &x) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&x.to_le_bytes());
            }
        }
        BlockType::F16 => {
            for (d, &x) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::f32_to_f16(x).to_le_bytes());
            }
        }
        BlockType::BF16 => {
            for (d, &x) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::f32_to_bf16(x).to_le_bytes());
            }
        }
        BlockType::Q8_0 => blocks(src, dst, legacy::quantize_block_q8_0),
        BlockType::Q5_0 => blocks(src, dst, legacy::quantize_block_q5_0),
        BlockType::Q5_1 => blocks(src, dst, legacy::quantize_block_q5_1),
        BlockType::Q4_0 => blocks(src, dst, legacy::quantize_block_q4_0),
        BlockType::Q4_K => blocks(src, dst, k_quants::quantize_block_q4_k),
        BlockType::Q5_K => blocks(src, dst, k_quants::quantize_block_q5_k),
        BlockType::Q6_K => blocks(src, dst, k_quants::quantize_block_q6_k),
    }
}

/// Decodes one row: `src` holds whole blocks, `dst` their values exactly.
fn dequantize_row(ty: BlockType, src: &[u8], dst: &mut [f32]) {
    match ty {
        BlockType::F32 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        BlockType::F16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = half::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        BlockType::BF16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = half::bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        BlockType::Q8_0 => blocks(src, dst, legacy::dequantize_block_q8_0),
        BlockType::Q5_0 => blocks(src, dst, legacy::dequantize_block_q5_0),
        BlockType::Q5_1 => blocks(src, dst, legacy::dequantize_block_q5_1),
        BlockType::Q4_0 => blocks(src, dst, legacy::dequantize_block_q4_0),
        BlockType::Q4_K => blocks(src, dst, k_quants::dequantize_block_q4_k),
        BlockType::Q5_K => blocks(src, dst, k_quants::dequantize_block_q5_k),
        BlockType::Q6_K => blocks(src, dst, k_quants::dequantize_block_q6_k),
    }
}

/// Applies a fixed-size block function to every block of a row (sizes come from the array types).
fn blocks<A: Copy, B, const N: usize, const M: usize>(src: &[A], dst: &mut [B], f: fn(&[A; N], &mut [B; M])) {
    for (s, d) in src.chunks_exact(N).zip(dst.chunks_exact_mut(M)) {
        let s: &[A; N] = s.try_into().expect("chunks_exact yields N elements");
        let d: &mut [B; M] = d.try_into().expect("chunks_exact_mut yields M elements");
        f(s, d);
    }
}
