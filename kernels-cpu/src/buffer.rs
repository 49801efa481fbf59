//! Zero-filled (and scaled-copy) output and gradient buffers, filled by every thread of the
//! rayon pool.
//!
//! Each op of a training step allocates its output and each backward its gradient buffers;
//! `vec![0.0; n]` zero-fills them on the calling thread while the other threads wait, which
//! was ~6% of a tiny-dense step (about 400 MB per step). Large buffers are zeroed here in
//! parallel chunks instead; small ones stay serial.

use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;

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
