//! Zero-filled (and scaled-copy) output and gradient buffers, filled by every thread of the
//! rayon pool.
//!
//! Each op of a training step allocates its output and each backward its gradient buffers;
//! `vec![0.0; n]` zero-fills them on the calling thread while the other threads wait, which
//! was ~6% of a tiny-dense step (about 400 MB per step). Large buffers are zeroed here in
//! parallel chunks instead; small ones stay serial.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Buffers below this many floats are zeroed on the calling thread (hand-off costs more).
const PAR_MIN: usize = 1 << 16;
/// Floats per parallel chunk.
const CHUNK: usize = 1 << 15;

/// A vector of `n` zeros.
pub fn zeroed(n: usize) -> Vec<f32> {
    if n < PAR_MIN || rayon::current_num_threads() == 1 {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(CHUNK).for_each(|c| {
        for x in c {
            x.write(0.0);
        }
    });
    // SAFETY: every one of the first n elements was written just above.
    unsafe { v.set_len(n) };
    v
}

/// A new vector `scale * src`, written by every thread for large inputs (no zero fill first).
pub fn scaled_copy(src: &[f32], scale: f32) -> Vec<f32> {
    let n = src.len();
    let mut v = Vec::with_capacity(n);
    let fill = |(d, s): (&mut [std::mem::MaybeUninit<f32>], &[f32])| {
        for (d, &s) in d.iter_mut().zip(s) {
            d.write(s * scale);
        }
    };
    if n < PAR_MIN || rayon::current_num_threads() == 1 {
        fill((&mut v.spare_capacity_mut()[..n], src));
    } else {
        v.spare_capacity_mut()[..n].par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(fill);
    }
    // SAFETY: every one of the first n elements was written just above.
    unsafe { v.set_len(n) };
    v
}

/// Columns `start..start + width` of the row-major `src [N, cols]` as a new `[N, width]`
/// vector, written once by every thread (no zero fill first).
pub fn copy_cols(src: &[f32], cols: usize, start: usize, width: usize) -> Vec<f32> {
    assert!(cols > 0 && start + width <= cols && src.len().is_multiple_of(cols), "copy_cols: shapes");
    let n = src.len() / cols * width;
    let mut out = Vec::with_capacity(n);
    if let Some(rows) = CHUNK.checked_div(width) {
        let rows = rows.max(1);
        out.spare_capacity_mut()[..n].par_chunks_mut(rows * width).zip(src.par_chunks(rows * cols)).for_each(
            |(d, s)| {
                for (d, s) in d.chunks_mut(width).zip(s.chunks(cols)) {
                    for (d, &x) in d.iter_mut().zip(&s[start..start + width]) {
                        d.write(x);
                    }
                }
            },
        );
    }
    // SAFETY: the row chunks cover all n elements and each one was written above.
    unsafe { out.set_len(n) };
    out
}

/// Backward of [`copy_cols`]: `dst[:, start..start + width] += src [N, width]` for the row-major
/// `dst [N, cols]` (`width` = `src.len() / N`).
pub fn add_cols(dst: &mut [f32], src: &[f32], cols: usize, start: usize) {
    assert!(cols > 0 && dst.len().is_multiple_of(cols), "add_cols: dst is not [N, cols]");
    let rows = dst.len() / cols;
    let width = src.len().checked_div(rows).unwrap_or(0);
    assert!(src.len() == rows * width && start + width <= cols, "add_cols: shapes");
    if width == 0 {
        return;
    }
    dst.par_chunks_mut(cols).zip(src.par_chunks(width)).for_each(|(d, s)| {
        for (d, &s) in d[start..start + width].iter_mut().zip(s) {
            *d += s;
        }
    });
}

/// A stretch of an output being assembled: a part to copy into it, or a gap to zero (`None`).
type Piece<'a> = (&'a mut [MaybeUninit<f32>], Option<&'a [f32]>);

/// A new vector of `len` floats holding each `(offset, src)` part at
/// `offset..offset + src.len()` and zeros elsewhere: every element written once, by every
/// thread (no zero fill under the parts). Panics if a part lies outside `len` or two overlap.
pub fn assemble(len: usize, parts: &[(usize, &[f32])]) -> Vec<f32> {
    let mut order: Vec<&(usize, &[f32])> = parts.iter().filter(|(_, s)| !s.is_empty()).collect();
    order.sort_by_key(|(offset, _)| *offset);
    let mut out = Vec::with_capacity(len);
    // Pieces covering 0..len in order: a part to copy, or a gap to zero (None).
    let mut pieces: Vec<Piece> = Vec::with_capacity(2 * order.len() + 1);
    let (mut rest, mut at) = (&mut out.spare_capacity_mut()[..len], 0usize);
    for &&(offset, src) in &order {
        assert!(offset >= at, "assemble: parts overlap at {offset}");
        assert!(offset + src.len() <= len, "assemble: part at {offset} (len {}) outside {len}", src.len());
        let (gap, tail) = std::mem::take(&mut rest).split_at_mut(offset - at);
        let (piece, tail) = tail.split_at_mut(src.len());
        pieces.push((gap, None));
        pieces.push((piece, Some(src)));
        rest = tail;
        at = offset + src.len();
    }
    pieces.push((rest, None));
    // Large pieces are split further so one big part does not leave a thread idle.
    pieces.into_par_iter().for_each(|(d, s)| match s {
        Some(s) => d.par_chunks_mut(CHUNK).zip(s.par_chunks(CHUNK)).for_each(|(d, s)| {
            d.iter_mut().zip(s).for_each(|(d, &x)| {
                d.write(x);
            })
        }),
        None => d.par_chunks_mut(CHUNK).for_each(|d| {
            d.iter_mut().for_each(|d| {
                d.write(0.0);
            })
        }),
    });
    // SAFETY: the pieces cover 0..len exactly and each element was written above.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assemble_places_disjoint_parts_zeroes_the_rest_and_rejects_overlaps() {
        let (a, b) = ([1f32, 2.0], [3f32, 4.0, 5.0]);
        assert_eq!(assemble(10, &[(6, &b), (1, &a), (9, &[])]), [0., 1., 2., 0., 0., 0., 3., 4., 5., 0.]);
        assert_eq!(assemble(5, &[(0, &a), (2, &b)]), [1., 2., 3., 4., 5.]);
        assert_eq!(assemble(3, &[]), [0.; 3]);
        assert!(assemble(0, &[]).is_empty());
        let big: Vec<f32> = (0..PAR_MIN + 7).map(|i| i as f32).collect();
        let got = assemble(PAR_MIN + 20, &[(13, &big)]);
        assert!(got[..13].iter().chain(&got[13 + big.len()..]).all(|x| x.to_bits() == 0));
        assert_eq!(&got[13..13 + big.len()], &big[..]);
        assert!(std::panic::catch_unwind(|| assemble(10, &[(1, &a), (2, &b)])).is_err(), "overlap");
        assert!(std::panic::catch_unwind(|| assemble(10, &[(8, &b)])).is_err(), "outside");
    }

    #[test]
    fn copy_cols_copies_the_column_range_of_every_row() {
        for (rows, cols, start, width) in [(3, 5, 1, 2), (1000, 384, 320, 64), (7, 4, 0, 4), (2, 3, 3, 0)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let want: Vec<f32> = src.chunks(cols).flat_map(|r| r[start..start + width].to_vec()).collect();
            assert_eq!(copy_cols(&src, cols, start, width), want, "{rows}x{cols} [{start}..+{width}]");
        }
    }

    #[test]
    fn zeroed_is_all_zero_at_every_size() {
        for n in [0, 1, PAR_MIN - 1, PAR_MIN, PAR_MIN + CHUNK + 3] {
            let v = zeroed(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|x| x.to_bits() == 0), "n = {n}");
        }
    }

    #[test]
    fn scaled_copy_matches_a_scalar_loop_at_every_size() {
        for n in [0, 5, PAR_MIN + CHUNK + 3] {
            let src: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 11.0).collect();
            let got = scaled_copy(&src, -1.5);
            let want: Vec<f32> = src.iter().map(|&x| x * -1.5).collect();
            assert_eq!(got, want, "n = {n}");
        }
    }
}
