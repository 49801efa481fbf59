//! Token embedding lookup: `out[t] = table[ids[t]]`.
//!
//! Shapes: `ids` is `[N]`, `out`, `dout` are `[N, D]`, `table`, `dtable` are `[V, D]`.
//! The backward scatter-adds rows; rows are grouped by id so each table row is written by one
//! task, in ascending row order: the result is bit-identical to a sequential loop whatever the
//! number of threads.
use rayon::prelude::*;

/// Elements per parallel task.
const TASK_ELEMS: usize = 1 << 14;

/// `out[t, :] = table[ids[t], :]` for `out: [N, D]`, `ids: [N]`, `table: [V, D]`.
///
/// Panics if an id is not below `V` (callers validate ids; this is a programming error here).
pub fn embedding_forward(out: &mut [f32], ids: &[u32], table: &[f32], d: usize) {
    assert!(d > 0, "embedding: d must be positive");
    assert_eq!(out.len(), ids.len() * d, "embedding: out must be [N, D]");
    assert_eq!(table.len() % d, 0, "embedding: table must be [V, D]");
    let v = table.len() / d;
    let r = (TASK_ELEMS / d).max(1);
    out.par_chunks_mut(r * d).zip(ids.par_chunks(r)).for_each(|(out, ids)| {
        for (o, &id) in out.chunks_exact_mut(d).zip(ids) {
            let id = id as usize;
            assert!(id < v, "embedding: id {id} >= vocab {v}");
            o.copy_from_slice(&table[id * d..(id + 1) * d]);
        }
    });
}

/// `dtable[ids[t], :] += dout[t, :]` for every row `t`; repeated ids add up.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], d: usize) {
    assert!(d > 0, "embedding: d must be positive");
    assert_eq!(dout.len(), ids.len() * d, "embedding: dout must be [N, D]");
    assert_eq!(dtable.len() % d, 0, "embedding: dtable must be [V, D]");
    let v = dtable.len() / d;
    if ids.is_empty() {
        return;
    }
    // Row indices sorted by (id, row): each id's rows form one run, in ascending row order.
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_unstable_by_key(|&t| (ids[t as usize], t));
    // One (table row, run of row indices) per distinct id, carved out of dtable in ascending id order.
    let mut groups: Vec<(&mut [f32], &[u32])> = Vec::new();
    let mut rest: &mut [f32] = dtable;
    let mut next_id = 0usize; // id of rest's first row
    for run in order.chunk_by(|&a, &b| ids[a as usize] == ids[b as usize]) {
        let id = ids[run[0] as usize] as usize;
        assert!(id < v, "embedding: id {id} >= vocab {v}");
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((id - next_id) * d);
        let (row, tail) = tail.split_at_mut(d);
        groups.push((row, run));
        rest = tail;
        next_id = id + 1;
    }
    let min_len = (TASK_ELEMS / d).max(1);
    groups.par_iter_mut().with_min_len(min_len).for_each(|(row, run)| {
        for &t in run.iter() {
            let src = &dout[t as usize * d..(t as usize + 1) * d];
            for (a, &b) in row.iter_mut().zip(src) {
                *a += b;
            }
        }
    });
}

/// Reference lookup in f64: `out[t, :] = table[ids[t], :]`.
pub fn embedding_naive(ids: &[u32], table: &[f64], d: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(ids.len() * d);
    for &id in ids {
        out.extend_from_slice(&table[id as usize * d..(id as usize + 1) * d]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, assert_grad_matches_fd, dot64, finite_diff, rand_vec, to_f64};

    /// Deterministic ids in `0..v`, with many repeats when `v` is small.
    fn ids(n: usize, v: usize, seed: u64) -> Vec<u32> {
        rand_vec(n, seed).iter().map(|&x| (((x + 1.0) * 0.5 * v as f32) as usize).min(v - 1) as u32).collect()
    }

    #[test]
    fn forward_matches_naive_on_awkward_sizes() {
        for &(n, v, d) in &[(1, 1, 1), (37, 11, 75), (1031, 500, 75), (2048, 3001, 13)] {
            let table = rand_vec(v * d, 1);
            let id = ids(n, v, 2);
            let mut out = vec![0.0; n * d];
            embedding_forward(&mut out, &id, &table, d);
            let want: Vec<f32> = embedding_naive(&id, &to_f64(&table), d).iter().map(|&x| x as f32).collect();
            assert_close(&out, &want, 0.0, 0.0, &format!("embedding forward n={n} d={d}"));
        }
    }

    #[test]
    fn backward_matches_finite_differences_with_repeated_ids() {
        let (v, d) = (5, 3);
        let id = vec![3u32, 0, 3, 4, 3, 0];
        let table = rand_vec(v * d, 3);
        let r = rand_vec(id.len() * d, 4);
        let mut dtable = vec![0.0; v * d];
        embedding_backward(&mut dtable, &r, &id, d);
        let fd = finite_diff(|tv| dot64(&embedding_naive(&id, tv, d), &r), &to_f64(&table), 1e-5);
        assert_grad_matches_fd(&dtable, &fd, 1e-4, "embedding dtable");
        // Rows 1 and 2 are never looked up.
        assert!(dtable[d..3 * d].iter().all(|&x| x == 0.0));
    }

    /// The plain sequential scatter-add the parallel version must reproduce bit for bit.
    fn sequential(dtable: &mut [f32], dout: &[f32], ids: &[u32], d: usize) {
        for (t, &id) in ids.iter().enumerate() {
            for k in 0..d {
                dtable[id as usize * d + k] += dout[t * d + k];
            }
        }
    }

    #[test]
    fn backward_accumulates_and_matches_sequential_for_any_thread_count() {
        for &(n, v, d) in &[(1031, 17, 75), (2048, 3001, 13), (37, 1, 75)] {
            let id = ids(n, v, 5);
            let dout = rand_vec(n * d, 6);
            let init = rand_vec(v * d, 7);
            let mut want = init.clone();
            sequential(&mut want, &dout, &id, d);
            sequential(&mut want, &dout, &id, d);
            for k in [1, 2, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(k).build().unwrap();
                let got = pool.install(|| {
                    let mut g = init.clone();
                    embedding_backward(&mut g, &dout, &id, d);
                    embedding_backward(&mut g, &dout, &id, d);
                    g
                });
                assert_eq!(got, want, "embedding backward n={n} v={v} d={d} threads={k}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "vocab")]
    fn out_of_range_id_panics() {
        let mut dtable = vec![0.0; 4];
        embedding_backward(&mut dtable, &[1.0, 1.0], &[2], 2);
    }
}
