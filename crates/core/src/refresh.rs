//! Refresh policies: when a parameter's projector is recomputed.

use burn::record::Record;
use serde::{Deserialize, Serialize};

/// When the projector is (re)computed. `k` is the parameter's step count *before* this step
/// (0 on its first step) and `t = k + 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RefreshPolicy {
    /// GaLore's rule: when `k % gap == 0` (t = 1, 1+gap, 1+2·gap, …).
    Every {
        /// `update_proj_gap`.
        gap: usize,
    },
    /// DCT-AdamW's rule: at `t = 1` and whenever `t % gap == 0`.
    AtOneThenEvery {
        /// `update_proj_gap`.
        gap: usize,
    },
    /// Q-GaLore's lazy, layer-adaptive rule: refresh when `k % gap == 0` with the layer's
    /// *current* gap; after each refresh the cosine similarity of the new and the previous
    /// projector's first singular vector joins a queue of `queue_size`; when the queue is full
    /// and its mean is ≥ `cos_threshold`, the layer's gap becomes `⌊gap·gamma⌋`.
    Adaptive {
        /// Initial `update_proj_gap`.
        gap: usize,
        /// `cos_threshold`.
        cos_threshold: f64,
        /// `gamma_proj`.
        gamma: f64,
        /// `queue_size`.
        queue_size: usize,
    },
}

/// Per-parameter refresh bookkeeping, saved in the record.
#[derive(Record, Clone, Debug)]
pub struct RefreshState {
    /// The current gap (Q-GaLore lengthens it; the others keep the configured one).
    pub gap: usize,
    /// How many times the projector was computed for this parameter.
    pub refreshes: usize,
    /// Cosine similarities of consecutive first singular vectors (Q-GaLore's queue).
    pub queue: Vec<f32>,
    /// The first basis vector of the last float projector (Q-GaLore), kept on the host.
    pub last_first_vector: Vec<f32>,
}

impl RefreshPolicy {
    /// The gap a fresh parameter starts with.
    pub fn initial_gap(&self) -> usize {
        match self {
            RefreshPolicy::Every { gap }
            | RefreshPolicy::AtOneThenEvery { gap }
            | RefreshPolicy::Adaptive { gap, .. } => *gap,
        }
    }

    /// A fresh state.
    pub fn init_state(&self) -> RefreshState {
        RefreshState {
            gap: self.initial_gap(),
            refreshes: 0,
            queue: Vec::new(),
            last_first_vector: Vec::new(),
        }
    }

    /// Whether the projector is recomputed at the step whose pre-increment count is `k`.
    pub fn is_due(&self, k: usize, state: &RefreshState) -> bool {
        if state.refreshes == 0 {
            return true;
        }
        match self {
            RefreshPolicy::Every { .. } | RefreshPolicy::Adaptive { .. } => {
                k.is_multiple_of(state.gap)
            }
            RefreshPolicy::AtOneThenEvery { .. } => (k + 1).is_multiple_of(state.gap),
        }
    }

    /// Records a fresh projector's first vector (Q-GaLore's rule; the others ignore it).
    pub fn observe(&self, state: &mut RefreshState, first: Option<Vec<f32>>) {
        let RefreshPolicy::Adaptive {
            cos_threshold,
            gamma,
            queue_size,
            ..
        } = self
        else {
            return;
        };
        let Some(first) = first else { return };
        if !state.last_first_vector.is_empty() && state.last_first_vector.len() == first.len() {
            let dot: f64 = first
                .iter()
                .zip(&state.last_first_vector)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let na: f64 = first
                .iter()
                .map(|a| (*a as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let nb: f64 = state
                .last_first_vector
                .iter()
                .map(|a| (*a as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let cos = (dot / (na * nb).max(1e-8)) as f32;
            if state.queue.len() == *queue_size {
                state.queue.remove(0);
            }
            state.queue.push(cos);
            let mean = state.queue.iter().map(|&c| c as f64).sum::<f64>() / *queue_size as f64;
            if state.queue.len() == *queue_size && mean >= *cos_threshold {
                state.gap = ((state.gap as f64 * gamma).floor() as usize).max(1);
            }
        }
        state.last_first_vector = first;
    }

    /// Validates the configuration.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_gap() == 0 {
            return Err("update_proj_gap must be at least 1".into());
        }
        if let RefreshPolicy::Adaptive {
            gamma, queue_size, ..
        } = self
        {
            if *queue_size == 0 {
                return Err("queue_size must be at least 1".into());
            }
            if !(gamma.is_finite() && *gamma >= 1.0) {
                return Err(format!("gamma_proj = {gamma} must be ≥ 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors at angle `k·θ` in a plane: consecutive cosines are exactly `cos θ`.
    fn rotating(k: usize, theta: f64) -> Vec<f32> {
        let a = k as f64 * theta;
        vec![a.cos() as f32, a.sin() as f32, 0.0]
    }

    /// Q-GaLore's lazy rule where the cosine decides: with consecutive first vectors at cosine
    /// 0.8, a threshold of 0.79 lengthens the gap once the queue is full (and again at each later
    /// refresh), 0.81 never does; the queue's mean is compared with `≥`.
    #[test]
    fn the_cosine_decides_the_gap() {
        let theta = 0.8f64.acos();
        for (threshold, lengthens) in [(0.79, true), (0.81, false)] {
            let policy = RefreshPolicy::Adaptive {
                gap: 10,
                cos_threshold: threshold,
                gamma: 2.0,
                queue_size: 3,
            };
            let mut state = policy.init_state();
            let mut gaps = vec![];
            for k in 0..6 {
                policy.observe(&mut state, Some(rotating(k, theta)));
                gaps.push(state.gap);
            }
            for c in &state.queue {
                assert!((c - 0.8).abs() < 1e-6, "{:?}", state.queue);
            }
            if lengthens {
                // the queue is full after the 4th vector (3 cosines): 10 → 20 → 40 → 80
                assert_eq!(gaps, [10, 10, 10, 20, 40, 80], "threshold {threshold}");
            } else {
                assert_eq!(gaps, [10; 6], "threshold {threshold}");
            }
        }
        // a mean exactly at the threshold counts (≥), with cosines of one and zero
        let policy = RefreshPolicy::Adaptive {
            gap: 4,
            cos_threshold: 0.5,
            gamma: 1.5,
            queue_size: 2,
        };
        let mut state = policy.init_state();
        for v in [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]] {
            policy.observe(&mut state, Some(v.to_vec()));
        }
        assert_eq!(state.queue, vec![1.0, 0.0]);
        assert_eq!(state.gap, 6);
    }
}
