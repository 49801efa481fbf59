//! Balanced k-means: `k` clusters of exactly `size` points each.
//!
//! Lloyd iterations where the assignment step is a greedy capacity-constrained matching:
//! all (point, cluster) pairs by ascending distance, each point taking its nearest cluster
//! that still has room. Deterministic for a seed.

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;

/// Labels in `0..k` for the `points [n, c]` (`n = k * size`), every label used `size` times.
pub fn balanced_kmeans(points: &[f32], c: usize, k: usize, size: usize, iters: usize, seed: u64) -> Vec<usize> {
    let n = points.len() / c.max(1);
    assert_eq!(n, k * size, "balanced_kmeans: {n} points are not {k} clusters of {size}");
    if n == 0 {
        return Vec::new();
    }
    let row = |i: usize| &points[i * c..(i + 1) * c];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut centroids: Vec<Vec<f32>> = sample(&mut rng, n, k).iter().map(|i| row(i).to_vec()).collect();
    let mut labels = vec![0usize; n];
    for _ in 0..iters.max(1) {
        let mut pairs: Vec<(f32, u32, u32)> = Vec::with_capacity(n * k);
        for i in 0..n {
            for (j, cen) in centroids.iter().enumerate() {
                let d: f32 = row(i).iter().zip(cen).map(|(a, b)| (a - b) * (a - b)).sum();
                pairs.push((d, i as u32, j as u32));
            }
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut room = vec![size; k];
        let mut done = vec![false; n];
        let mut new_labels = vec![0usize; n];
        for (_, i, j) in pairs {
            let (i, j) = (i as usize, j as usize);
            if !done[i] && room[j] > 0 {
                done[i] = true;
                room[j] -= 1;
                new_labels[i] = j;
            }
        }
        let converged = new_labels == labels;
        labels = new_labels;
        for (j, cen) in centroids.iter_mut().enumerate() {
            cen.iter_mut().for_each(|x| *x = 0.0);
            for i in (0..n).filter(|&i| labels[i] == j) {
                for (a, &b) in cen.iter_mut().zip(row(i)) {
                    *a += b / size as f32;
                }
            }
        }
        if converged {
            break;
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_balanced_and_separate_well_separated_groups() {
        // Three tight groups of 4 points far apart: balanced k-means must recover them.
        let mut pts = Vec::new();
        for g in 0..3 {
            for i in 0..4 {
                pts.extend([g as f32 * 10.0 + i as f32 * 0.01, -(g as f32) * 10.0]);
            }
        }
        let labels = balanced_kmeans(&pts, 2, 3, 4, 10, 7);
        for g in 0..3 {
            let l = labels[g * 4];
            assert!(labels[g * 4..g * 4 + 4].iter().all(|&x| x == l), "group {g} split: {labels:?}");
        }
        let mut counts = [0; 3];
        labels.iter().for_each(|&l| counts[l] += 1);
        assert_eq!(counts, [4, 4, 4]);
    }
}
