//! Host sequences of the embedding kernels.

use super::{capped_grid, elementwise_dims, ensure};
use crate::launcher::{LaunchDims, LaunchError, Launcher};
use crate::simt::Dim3;

/// Checks `D > 0`, the `[N, D]` / `[V, D]` shapes and every id `< V`; returns `V`.
fn check(rows: usize, table: usize, ids: &[u32], d: usize, what: &str) -> Result<usize, LaunchError> {
    ensure(d > 0 && table.is_multiple_of(d) && rows == ids.len() * d, || {
        format!("{what}: shapes do not match N={} D={d}", ids.len())
    })?;
    let v = table / d;
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= v) {
        return Err(LaunchError::InvalidLaunch(format!("{what}: id {id} >= vocab {v}")));
    }
    Ok(v)
}

/// [`crate::kernels::embedding::embedding_forward`]: `out [N, D] = table[ids]` for `table` `[V, D]`.
pub fn embedding_forward<L: Launcher>(
    l: &L,
    out: &mut [f32],
    ids: &[u32],
    table: &[f32],
    d: usize,
) -> Result<(), LaunchError> {
    let v = check(out.len(), table.len(), ids, d, "embedding")?;
    let (n, len) = (ids.len(), out.len());
    if len == 0 {
        return Ok(());
    }
    let (im, tm, om) = (l.input(ids)?, l.input(table)?, l.output(out, false)?);
    // SAFETY: out holds N*D, ids N, table V*D elements; every id < V (checked).
    unsafe { l.embedding_forward(elementwise_dims(l, len), l.ptr(&om), l.ptr(&im), l.ptr(&tm), n, d, v) }?;
    l.read_back(&om, out)
}

/// [`crate::kernels::embedding::embedding_sort_ids`] then [`crate::kernels::embedding::embedding_backward`]: accumulates
/// `dtable[ids[t]] += dout[t]` (bit-identical to the sequential loop).
pub fn embedding_backward<L: Launcher>(
    l: &L,
    dtable: &mut [f32],
    dout: &[f32],
    ids: &[u32],
    d: usize,
) -> Result<(), LaunchError> {
    let v = check(dout.len(), dtable.len(), ids, d, "embedding backward")?;
    let n = ids.len();
    if n == 0 {
        return Ok(());
    }
    let block = l.block_threads();
    let (im, gm, dtm) = (l.input(ids)?, l.input(dout)?, l.output(dtable, true)?);
    let om = l.scratch::<u32>(n)?;
    let (i, ord) = (l.ptr(&im), l.ptr(&om));
    let dims = LaunchDims::linear(Dim3::x(n.div_ceil(block as usize) as u32), block);
    // SAFETY: ids and order hold N elements; one thread per id.
    unsafe { l.embedding_sort_ids(dims, ord, i, n) }?;
    let grid = Dim3::new(d.div_ceil(block as usize) as u32, capped_grid(l, n, 1).x, 1);
    // SAFETY: dtable holds V*D, dout N*D, ids/order N elements; every id < V (checked).
    unsafe { l.embedding_backward(LaunchDims::linear(grid, block), l.ptr(&dtm), l.ptr(&gm), i, ord, n, d, v) }?;
    l.read_back(&dtm, dtable)
}
