//! Host helpers of the embedding kernels.

use super::{capped_grid, ensure, rd, wr, SIM_BLOCK};
use crate::kernels::embedding;
use crate::sim::{launch, SimError};
use crate::simt::Dim3;

/// Checks `D > 0`, the `[N, D]` / `[V, D]` shapes and every id `< V`; returns `V`.
fn check(rows: usize, table: usize, ids: &[u32], d: usize, what: &str) -> Result<usize, SimError> {
    ensure(d > 0 && table.is_multiple_of(d) && rows == ids.len() * d, || {
        format!("{what}: shapes do not match N={} D={d}", ids.len())
    })?;
    let v = table / d;
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= v) {
        return Err(SimError::InvalidLaunch(format!("{what}: id {id} >= vocab {v}")));
    }
    Ok(v)
}

/// [`embedding::embedding_forward`]: `out [N, D] = table[ids]` for `table` `[V, D]`.
pub fn embedding_forward(out: &mut [f32], ids: &[u32], table: &[f32], d: usize) -> Result<(), SimError> {
    let v = check(out.len(), table.len(), ids, d, "embedding")?;
    let (n, len) = (ids.len(), out.len());
    if len == 0 {
        return Ok(());
    }
    let (o, i, tb) = (wr(out), rd(ids), rd(table));
    launch(capped_grid(len, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        embedding::embedding_forward(ctx, o, i, tb, n, d, v)
    })
}

/// [`embedding::embedding_sort_ids`] then [`embedding::embedding_backward`]: accumulates
/// `dtable[ids[t]] += dout[t]` (bit-identical to the sequential loop).
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], d: usize) -> Result<(), SimError> {
    let v = check(dout.len(), dtable.len(), ids, d, "embedding backward")?;
    let n = ids.len();
    if n == 0 {
        return Ok(());
    }
    let mut order = vec![u32::MAX; n];
    let (o, i) = (wr(&mut order), rd(ids));
    launch(Dim3::x(n.div_ceil(SIM_BLOCK as usize) as u32), Dim3::x(SIM_BLOCK), 0, |ctx| {
        embedding::embedding_sort_ids(ctx, o, i, n)
    })?;
    let (dt, g, ord) = (wr(dtable), rd(dout), rd(&order));
    let grid = Dim3::new(d.div_ceil(SIM_BLOCK as usize) as u32, capped_grid(n, 1).x, 1);
    launch(grid, Dim3::x(SIM_BLOCK), 0, |ctx| embedding::embedding_backward(ctx, dt, g, i, ord, n, d, v))
}
