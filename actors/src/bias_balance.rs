//! Aux-loss-free load balancing (DeepSeek-V3, "auxiliary-loss-free load balancing"): after each
//! optimiser step, every MoE layer's router bias moves against its load,
//! `b_i -= rate * sign(load_i - mean load)`, where `load_i` is the number of tokens whose top-1
//! choice was expert `i` over the step's micro-batches. The bias only enters the choice
//! (`argmax(score + b)`), never the expert weight or a gradient, so it steers tokens from busy to
//! idle experts without a loss term. Pure function; the trainer calls it.

/// Moves `bias[l][i]` by `-rate * sign(counts[l][i] - mean_i counts[l][i])` for every layer `l`
/// (`sign(0) = 0`: an expert exactly at the mean keeps its bias). Layers beyond the shorter of
/// the two lists, and layers whose lengths disagree, are left alone.
pub fn update_router_bias(bias: &mut [Vec<f32>], counts: &[Vec<usize>], rate: f32) {
    for (b, c) in bias.iter_mut().zip(counts) {
        if b.len() != c.len() || c.is_empty() {
            continue;
        }
        let total: usize = c.iter().sum();
        // Compare load_i * E with the total: exact in integers.
        let e = c.len();
        for (bi, &ci) in b.iter_mut().zip(c) {
            match (ci * e).cmp(&total) {
                std::cmp::Ordering::Greater => *bi -= rate,
                std::cmp::Ordering::Less => *bi += rate,
                std::cmp::Ordering::Equal => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_experts_lose_bias_idle_ones_gain_and_the_mean_stays() {
        let mut bias = vec![vec![0.0f32; 4], vec![0.5, 0.0, 0.0, 0.0]];
        // Layer 0: mean 10; layer 1: mean 2.5 (nobody exactly at it).
        let counts = vec![vec![25, 10, 5, 0], vec![10, 0, 0, 0]];
        update_router_bias(&mut bias, &counts, 1e-3);
        assert_eq!(bias[0], vec![-1e-3, 0.0, 1e-3, 1e-3]);
        assert_eq!(bias[1], vec![0.5 - 1e-3, 1e-3, 1e-3, 1e-3]);
        // Rate 0 and mismatched shapes change nothing.
        let before = bias.clone();
        update_router_bias(&mut bias, &counts, 0.0);
        update_router_bias(&mut bias, &[vec![1, 2, 3]], 1.0);
        assert_eq!(bias, before);
    }
}
