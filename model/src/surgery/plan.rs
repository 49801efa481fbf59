//! Which dense FFN neurons go where: the shared expert takes the top-S neurons by importance,
//! the routed experts are built from the rest by a split strategy, and slots beyond the
//! remaining neurons are filled by overlap or re-initialisation.
//!
//! Pure functions over importance scores and gate/up rows; no weights are copied here.

use super::kmeans::balanced_kmeans;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// How the neurons left after the shared expert are divided among the routed experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitStrategy {
    /// Remaining neurons in descending importance, dealt round-robin, so every expert gets a
    /// similar importance profile.
    ImportanceSplit,
    /// Balanced k-means on the normalised `[gate_row, up_row]` vectors: functionally similar
    /// neurons share an expert.
    KMeans,
    /// A seeded random partition.
    Random,
}

/// How expert slots beyond the remaining neurons are filled (when `E * W > F - S`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillStrategy {
    /// Copy the neurons of other experts nearest to this expert's centroid.
    Overlap,
    /// Drop-Upcycling: new neurons drawn from the statistics of the original rows.
    DropUpcycle,
}

/// One slot of a routed expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// A dense neuron copied as is (gate row, up row, down column).
    Neuron(usize),
    /// A new neuron re-initialised from the dense FFN's weight statistics.
    Reinit,
}

/// The neuron assignment of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    /// Shared-expert neurons, most important first (`S` of them).
    pub shared: Vec<usize>,
    /// Slots of each routed expert (`E` experts of `W` slots).
    pub experts: Vec<Vec<Slot>>,
    /// Centroid of each expert's neurons in normalised gate/up space `[E][2D]` (router init).
    pub centroids: Vec<Vec<f32>>,
}

/// Widths of the conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widths {
    /// Dense FFN width F.
    pub dense: usize,
    /// Shared expert width S.
    pub shared: usize,
    /// Routed experts E.
    pub experts: usize,
    /// Routed expert width W.
    pub expert: usize,
}

/// Indices `0..n` sorted by descending score (ties: lower index first).
pub fn rank_desc(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// `rows [F, C]` normalised to unit L2 norm per row (zero rows stay zero).
pub fn normalised_rows(rows: &[f32], c: usize) -> Vec<f32> {
    let mut out = rows.to_vec();
    for r in out.chunks_mut(c) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|x| *x /= n);
        }
    }
    out
}

fn centroid(features: &[f32], c: usize, members: &[usize]) -> Vec<f32> {
    let mut m = vec![0f32; c];
    for &i in members {
        for (a, &b) in m.iter_mut().zip(&features[i * c..(i + 1) * c]) {
            *a += b;
        }
    }
    let n = members.len().max(1) as f32;
    m.iter_mut().for_each(|a| *a /= n);
    m
}

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Plans one layer. `importance [F]`; `features [F, C]` are the normalised gate/up rows
/// (used by k-means, overlap and router centroids). The caller has checked the widths fit
/// (`S <= F`, `S < F` when `E > 0`).
pub fn plan_layer(
    importance: &[f32],
    features: &[f32],
    c: usize,
    w: Widths,
    split: SplitStrategy,
    fill: FillStrategy,
    seed: u64,
) -> LayerPlan {
    let order = rank_desc(importance);
    let shared: Vec<usize> = order[..w.shared].to_vec();
    let rest: Vec<usize> = order[w.shared..].to_vec();
    // Each expert takes at most W neurons of its own; the rest (if E*W < F-S) are dropped,
    // least important first.
    let per_expert = (rest.len() / w.experts.max(1)).min(w.expert);
    let used = per_expert * w.experts;
    let mut groups: Vec<Vec<usize>> = match split {
        SplitStrategy::ImportanceSplit => {
            let mut g = vec![Vec::with_capacity(per_expert); w.experts];
            for (i, &n) in rest[..used].iter().enumerate() {
                g[i % w.experts].push(n);
            }
            g
        }
        SplitStrategy::Random => {
            let mut pool = rest[..used].to_vec();
            pool.shuffle(&mut StdRng::seed_from_u64(seed));
            pool.chunks(per_expert.max(1)).map(|c| c.to_vec()).take(w.experts).collect()
        }
        SplitStrategy::KMeans => {
            let pool = &rest[..used];
            let sub: Vec<f32> = pool.iter().flat_map(|&i| features[i * c..(i + 1) * c].iter().copied()).collect();
            let labels = balanced_kmeans(&sub, c, w.experts, per_expert, 10, seed);
            let mut g = vec![Vec::with_capacity(per_expert); w.experts];
            for (&n, &l) in pool.iter().zip(&labels) {
                g[l].push(n);
            }
            g
        }
    };
    groups.resize(w.experts, Vec::new());
    let centroids: Vec<Vec<f32>> = groups.iter().map(|g| centroid(features, c, g)).collect();
    let experts = groups
        .iter()
        .enumerate()
        .map(|(e, own)| {
            let mut slots: Vec<Slot> = own.iter().map(|&n| Slot::Neuron(n)).collect();
            let missing = w.expert - slots.len();
            match fill {
                FillStrategy::DropUpcycle => slots.extend(std::iter::repeat_n(Slot::Reinit, missing)),
                FillStrategy::Overlap => {
                    // Nearest neurons of the other experts to this expert's centroid.
                    let mut others: Vec<(f32, usize)> = rest[..used]
                        .iter()
                        .filter(|n| !own.contains(n))
                        .map(|&n| (sq_dist(&features[n * c..(n + 1) * c], &centroids[e]), n))
                        .collect();
                    others.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    let take = others.len().min(missing);
                    slots.extend(others[..take].iter().map(|&(_, n)| Slot::Neuron(n)));
                    slots.extend(std::iter::repeat_n(Slot::Reinit, missing - take));
                }
            }
            slots
        })
        .collect();
    LayerPlan { shared, experts, centroids }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels_cpu::check::rand_vec;

    fn widths(f: usize, s: usize, e: usize, w: usize) -> Widths {
        Widths { dense: f, shared: s, experts: e, expert: w }
    }

    #[test]
    fn shared_takes_the_most_important_and_experts_partition_the_rest_when_they_fit() {
        let (f, c) = (40, 6);
        let imp: Vec<f32> = rand_vec(f, 1).iter().map(|x| x.abs()).collect();
        let feats = normalised_rows(&rand_vec(f * c, 2), c);
        let order = rank_desc(&imp);
        for split in [SplitStrategy::ImportanceSplit, SplitStrategy::KMeans, SplitStrategy::Random] {
            let p = plan_layer(&imp, &feats, c, widths(f, 8, 4, 8), split, FillStrategy::Overlap, 3);
            assert_eq!(p.shared, order[..8].to_vec(), "{split:?}");
            let mut all: Vec<usize> = p.shared.clone();
            for e in &p.experts {
                assert_eq!(e.len(), 8);
                all.extend(e.iter().map(|s| match s {
                    Slot::Neuron(n) => *n,
                    Slot::Reinit => panic!("no reinit needed when the experts fit"),
                }));
            }
            all.sort();
            assert_eq!(all, (0..f).collect::<Vec<_>>(), "{split:?}: shared + experts partition the neurons");
        }
    }

    #[test]
    fn overfull_experts_are_filled_by_overlap_or_reinit() {
        let (f, c) = (20, 4);
        let imp: Vec<f32> = (0..f).map(|i| i as f32).collect();
        let feats = normalised_rows(&rand_vec(f * c, 5), c);
        // S 4 + 4 experts x 6 = 28 > 20: each expert owns 4 neurons and needs 2 more.
        let p =
            plan_layer(&imp, &feats, c, widths(f, 4, 4, 6), SplitStrategy::ImportanceSplit, FillStrategy::Overlap, 0);
        assert_eq!(p.shared, vec![19, 18, 17, 16]);
        for e in &p.experts {
            assert_eq!(e.len(), 6);
            let own: Vec<usize> = e[..4].iter().map(|s| if let Slot::Neuron(n) = s { *n } else { 99 }).collect();
            for s in &e[4..] {
                let Slot::Neuron(n) = s else { panic!("overlap copies neurons") };
                assert!(!own.contains(n) && *n < 16, "overlap neuron {n} comes from another expert");
            }
        }
        let p = plan_layer(&imp, &feats, c, widths(f, 4, 4, 6), SplitStrategy::Random, FillStrategy::DropUpcycle, 0);
        for e in &p.experts {
            assert_eq!(e.iter().filter(|s| **s == Slot::Reinit).count(), 2);
        }
    }

    #[test]
    fn importance_split_deals_round_robin() {
        let imp: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let feats = vec![0.0; 10];
        let p =
            plan_layer(&imp, &feats, 1, widths(10, 2, 2, 4), SplitStrategy::ImportanceSplit, FillStrategy::Overlap, 0);
        assert_eq!(p.experts[0], vec![Slot::Neuron(7), Slot::Neuron(5), Slot::Neuron(3), Slot::Neuron(1)]);
        assert_eq!(p.experts[1], vec![Slot::Neuron(6), Slot::Neuron(4), Slot::Neuron(2), Slot::Neuron(0)]);
    }
}
