//! Per-layer expert specialization by domain (the probe of moe-upcycle's
//! `analyze_specialization`): from the routing of held-out documents whose domain is known, per
//! layer the share of each domain's tokens that each expert takes, and how much the expert a
//! token goes to says about its domain.
//!
//! The contrast score is the mutual information between domain and expert with every domain
//! weighted equally (so the largest domain does not dominate): `I = H(mean_d s_d) - mean_d
//! H(s_d)` in bits, `s_d` the expert shares of domain `d` (the generalised Jensen-Shannon
//! divergence of the domains' routing distributions). It is 0 when every domain routes alike and
//! `log2 K` (K domains) when no two domains share an expert; `normalised` divides by `log2 K`.
//! A finite sample overstates it a little, so [`shuffled_baseline`] recomputes it with the
//! documents' domain labels permuted (sizes kept): the score a routing unrelated to the domain
//! would get from the same documents.

use data::rng::mix64;

/// Routing counts of one document: `[layers][experts]` tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct DocRouting {
    /// Index of the document's domain.
    pub domain: usize,
    /// Tokens per layer and expert `[L][E]`.
    pub counts: Vec<Vec<u64>>,
}

/// Per-layer shares and scores.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerSpecialization {
    /// `[K][E]`: share of domain `d`'s tokens routed to expert `e` (rows sum to 1; zeros for a
    /// domain without tokens).
    pub share: Vec<Vec<f64>>,
    /// Balanced mutual information between domain and expert, bits.
    pub mi_bits: f64,
    /// `mi_bits / log2 K` (0 with fewer than two domains).
    pub normalised: f64,
}

fn entropy_bits(p: &[f64]) -> f64 {
    -p.iter().filter(|&&x| x > 0.0).map(|&x| x * x.log2()).sum::<f64>()
}

/// Per-layer specialization of `docs` over `domains` domains, `layers` layers and `experts`
/// experts; domains without tokens are left out of the score.
pub fn specialization(docs: &[DocRouting], domains: usize, layers: usize, experts: usize) -> Vec<LayerSpecialization> {
    (0..layers)
        .map(|l| {
            let mut counts = vec![vec![0u64; experts]; domains];
            for d in docs {
                for (c, &n) in counts[d.domain].iter_mut().zip(&d.counts[l]) {
                    *c += n;
                }
            }
            let share: Vec<Vec<f64>> = counts
                .iter()
                .map(|row| {
                    let t: u64 = row.iter().sum();
                    row.iter().map(|&n| if t == 0 { 0.0 } else { n as f64 / t as f64 }).collect()
                })
                .collect();
            let present: Vec<&Vec<f64>> =
                share.iter().zip(&counts).filter(|(_, c)| c.iter().sum::<u64>() > 0).map(|(s, _)| s).collect();
            let k = present.len();
            let (mi_bits, normalised) = if k < 2 {
                (0.0, 0.0)
            } else {
                let mean: Vec<f64> =
                    (0..experts).map(|e| present.iter().map(|s| s[e]).sum::<f64>() / k as f64).collect();
                let within = present.iter().map(|s| entropy_bits(s)).sum::<f64>() / k as f64;
                let mi = (entropy_bits(&mean) - within).max(0.0);
                (mi, mi / (k as f64).log2())
            };
            LayerSpecialization { share, mi_bits, normalised }
        })
        .collect()
}

/// The per-layer score (`mi_bits`) with the documents' domain labels permuted (a seeded
/// Fisher-Yates shuffle on [`mix64`], domain sizes kept), averaged over `rounds` shuffles: the score of the same
/// documents with routing unrelated to the domain.
pub fn shuffled_baseline(
    docs: &[DocRouting],
    domains: usize,
    layers: usize,
    experts: usize,
    rounds: usize,
    seed: u64,
) -> Vec<f64> {
    let mut total = vec![0.0; layers];
    let rounds = rounds.max(1);
    for round in 0..rounds as u64 {
        let mut labels: Vec<usize> = docs.iter().map(|d| d.domain).collect();
        for i in (1..labels.len()).rev() {
            let j = (mix64(seed ^ mix64(round) ^ mix64(i as u64 + (1 << 40))) % (i as u64 + 1)) as usize;
            labels.swap(i, j);
        }
        let shuffled: Vec<DocRouting> =
            docs.iter().zip(labels).map(|(d, domain)| DocRouting { domain, counts: d.counts.clone() }).collect();
        for (t, l) in total.iter_mut().zip(specialization(&shuffled, domains, layers, experts)) {
            *t += l.mi_bits;
        }
    }
    total.iter().map(|t| t / rounds as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(domain: usize, counts: &[u64]) -> DocRouting {
        DocRouting { domain, counts: vec![counts.to_vec()] }
    }

    #[test]
    fn disjoint_routing_scores_log2_k_and_identical_routing_zero() {
        // Two domains, each on its own expert: 1 bit, normalised 1.
        let docs = [doc(0, &[10, 0, 0]), doc(1, &[0, 7, 0]), doc(0, &[5, 0, 0])];
        let s = specialization(&docs, 2, 1, 3);
        assert!((s[0].mi_bits - 1.0).abs() < 1e-12, "{s:?}");
        assert!((s[0].normalised - 1.0).abs() < 1e-12);
        assert_eq!(s[0].share, vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]);
        // The same distribution in both domains (different sizes): 0.
        let docs = [doc(0, &[2, 2, 4]), doc(1, &[10, 10, 20])];
        let s = specialization(&docs, 2, 1, 3);
        assert!(s[0].mi_bits.abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn the_score_matches_a_hand_computed_jensen_shannon_value() {
        // Shares (0.5, 0.5) and (1, 0): mean (0.75, 0.25), H = 0.811278; within (1 + 0) / 2.
        let docs = [doc(0, &[1, 1]), doc(1, &[4, 0])];
        let s = specialization(&docs, 2, 1, 2);
        let h = -(0.75f64 * 0.75f64.log2() + 0.25 * 0.25f64.log2());
        assert!((s[0].mi_bits - (h - 0.5)).abs() < 1e-12, "{} vs {}", s[0].mi_bits, h - 0.5);
        // A domain without documents is left out (one domain left: no score).
        let s = specialization(&docs[..1], 3, 1, 2);
        assert_eq!((s[0].mi_bits, s[0].normalised), (0.0, 0.0));
    }

    #[test]
    fn shuffling_the_labels_removes_a_real_specialization() {
        let docs: Vec<DocRouting> =
            (0..200).map(|i| if i % 2 == 0 { doc(0, &[9, 1]) } else { doc(1, &[1, 9]) }).collect();
        let real = specialization(&docs, 2, 1, 2)[0].mi_bits;
        let base = shuffled_baseline(&docs, 2, 1, 2, 4, 7)[0];
        assert!(real > 0.5 && base < 0.05, "real {real}, shuffled {base}");
    }
}
