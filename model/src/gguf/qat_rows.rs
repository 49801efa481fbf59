//! GGUF rows of a QAT checkpoint: the tensors it fake-quantized are written from their trained
//! steps, mins and codes (kernels-cpu `fake_quant::encode_rows`), not re-quantized, so the file
//! decodes to exactly the weights the QAT model ran. Rows of zeros (the shared expert's padding)
//! go through the ordinary quantizer; rows never share a block, so the two mix freely.

use super::names::{PlannedTensor, Segment};
use crate::error::{ModelError, Result};
use crate::qat::state::QatState;
use kernels_cpu::quant::{quantize_rows_into, BlockType};
use std::path::Path;

/// The type QAT fixes for GGUF tensor `t` (None when no row of it was fake-quantized); an error
/// when only some of its HF tensors were, or a layout disagrees with the plan.
pub fn qat_type(t: &PlannedTensor, qat: &QatState, out: &Path) -> Result<Option<BlockType>> {
    let err = |msg: String| ModelError::Tensor { path: out.to_path_buf(), tensor: t.name.clone(), msg };
    let mut ty = None;
    let mut plain = None;
    for seg in &t.segments {
        let Segment::Hf { name, cols, .. } = seg else { continue };
        match qat.tensors.get(name) {
            None => plain = Some(name.clone()),
            Some(q) => {
                if q.dims.row_len != *cols || q.stored_row_len != t.row_len() {
                    return Err(err(format!(
                        "QAT layout of `{name}` (rows of {} stored as {}) does not match the model (rows of {cols} \
                         stored as {})",
                        q.dims.row_len,
                        q.stored_row_len,
                        t.row_len()
                    )));
                }
                if ty.is_some_and(|t| t != q.dims.ty) {
                    return Err(err(format!("QAT tensors of mixed formats in one GGUF tensor (`{name}`)")));
                }
                ty = Some(q.dims.ty);
            }
        }
    }
    if let (Some(ty), Some(p)) = (ty, &plain) {
        return Err(err(format!("`{p}` was not fake-quantized but other rows of this {ty} tensor were")));
    }
    Ok(ty)
}

/// Encodes rows `first..first + vals.len() / row_len` of `t` (values in `vals`, as gathered by the
/// writer) into `enc`: rows of fake-quantized tensors from their QAT parameters, others (zero
/// padding) by the reference quantizer.
pub fn encode_chunk(
    t: &PlannedTensor,
    first: usize,
    vals: &[f32],
    enc: &mut [u8],
    ty: BlockType,
    qat: &QatState,
    out: &Path,
) -> Result<()> {
    let err = |msg: String| ModelError::Tensor { path: out.to_path_buf(), tensor: t.name.clone(), msg };
    let row_len = t.row_len();
    let row_bytes = ty.row_bytes(row_len).map_err(|e| err(e.to_string()))?;
    for (k, (v, e)) in vals.chunks_exact(row_len).zip(enc.chunks_exact_mut(row_bytes)).enumerate() {
        let (seg, i) = row_origin(t, first + k);
        match seg {
            Some(Segment::Hf { name, first_row, cols, .. }) => {
                let q = qat.tensors.get(name).ok_or_else(|| err(format!("`{name}` has no QAT parameters")))?;
                q.encode_row(first_row + i, &v[..*cols], e).map_err(|x| err(x.to_string()))?;
            }
            _ => quantize_rows_into(ty, v, row_len, e).map_err(|x| err(x.to_string()))?,
        }
    }
    Ok(())
}

/// The segment row `r` of `t` comes from, and its index inside the segment.
fn row_origin(t: &PlannedTensor, r: usize) -> (Option<&Segment>, usize) {
    let mut start = 0;
    for seg in &t.segments {
        if r < start + seg.rows() {
            return (Some(seg), r - start);
        }
        start += seg.rows();
    }
    (None, 0)
}
