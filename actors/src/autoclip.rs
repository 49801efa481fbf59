//! AutoClip (Seetharaman et al., 2020): clip the gradient norm at a percentile of a rolling
//! window of recent gradient norms.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Rolling window of gradient norms (serialisable: it goes into checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoClip {
    /// Percentile (0-100) of the window used as the threshold.
    pub percentile: f32,
    /// Norms remembered.
    pub window: usize,
    /// The most recent finite norms, oldest first.
    pub history: VecDeque<f32>,
}

impl AutoClip {
    /// An empty window.
    pub fn new(percentile: f32, window: usize) -> Self {
        AutoClip { percentile, window: window.max(1), history: VecDeque::new() }
    }

    /// Records `norm` (finite norms only) and returns the clip threshold: the percentile of
    /// the window including `norm` (nearest rank). The caller scales the gradient by
    /// `threshold / norm` when `norm > threshold`.
    pub fn observe(&mut self, norm: f32) -> f32 {
        if norm.is_finite() {
            if self.history.len() == self.window {
                self.history.pop_front();
            }
            self.history.push_back(norm);
        }
        self.threshold()
    }

    /// Current threshold (infinite while the window is empty).
    pub fn threshold(&self) -> f32 {
        if self.history.is_empty() {
            return f32::INFINITY;
        }
        let mut v: Vec<f32> = self.history.iter().copied().collect();
        v.sort_by(f32::total_cmp);
        let rank = ((self.percentile / 100.0) * (v.len() - 1) as f32).round() as usize;
        v[rank.min(v.len() - 1)]
    }
}

/// Scale that clips `norm` at `threshold` (1 when below it).
pub fn clip_scale(norm: f32, threshold: f32) -> f32 {
    if norm > threshold && norm > 0.0 {
        threshold / norm
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_the_percentile_of_the_window() {
        let mut a = AutoClip::new(10.0, 11);
        for n in 1..=11 {
            a.observe(n as f32);
        }
        assert_eq!(a.threshold(), 2.0, "10th percentile of 1..=11 by nearest rank");
        a.observe(100.0);
        assert_eq!(a.history.len(), 11, "window keeps 11");
        assert_eq!(a.threshold(), 3.0, "oldest (1) dropped");
        a.observe(f32::NAN);
        assert_eq!(a.history.len(), 11, "non-finite norms are not remembered");
        assert!((clip_scale(10.0, 2.0) - 0.2).abs() < 1e-7);
        assert_eq!(clip_scale(1.0, 2.0), 1.0);
        assert_eq!(AutoClip::new(10.0, 5).threshold(), f32::INFINITY);
    }
}
