//! Refresh policies: when a parameter's projector is recomputed.
//!
//! A policy is a part of the engine, [`RefreshRule`]: when a refresh is due after the first one,
//! and what the policy learns from each fresh projector. Three rules are built in — [`Every`]
//! (GaLore, Fira, FRUGAL), [`AtOneThenEvery`] (DCT-AdamW) and [`Adaptive`] (Q-GaLore's lazy
//! rule) — and [`RefreshPolicy`] names them in an [`EngineConfig`](crate::EngineConfig) (what a
//! config serializes); any other rule plugs in as [`RefreshPolicy::Custom`] without touching them.

use std::fmt;
use std::sync::Arc;

use burn::record::Record;
use serde::{Deserialize, Serialize};

/// When a parameter's projector is recomputed. `k` is the parameter's step count *before* this
/// step (0 on its first step) and `t = k + 1`; the first step always fits a projector.
pub trait RefreshRule: fmt::Debug + Send + Sync {
    /// The gap a fresh parameter starts with (≥ 1).
    fn initial_gap(&self) -> usize;

    /// Whether the projector is recomputed at step `k`, once it was fitted at least once
    /// (`state.refreshes ≥ 1`; `state.gap` is the parameter's current gap).
    fn is_due_after_first(&self, k: usize, state: &RefreshState) -> bool;

    /// Learns from a fresh projector's first basis vector (`None` where the projector has no
    /// dense first vector). Default: nothing.
    fn observe(&self, _state: &mut RefreshState, _first: Option<Vec<f32>>) {}

    /// Validates the configuration. Default: a positive initial gap.
    fn validate(&self) -> Result<(), String> {
        if self.initial_gap() == 0 {
            return Err("update_proj_gap must be at least 1".into());
        }
        Ok(())
    }
}

/// GaLore's rule: refresh when `k % gap == 0` (t = 1, 1+gap, 1+2·gap, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Every {
    /// `update_proj_gap`.
    pub gap: usize,
}

impl RefreshRule for Every {
    fn initial_gap(&self) -> usize {
        self.gap
    }
    fn is_due_after_first(&self, k: usize, state: &RefreshState) -> bool {
        k.is_multiple_of(state.gap)
    }
}

/// DCT-AdamW's rule: at `t = 1` and whenever `t % gap == 0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtOneThenEvery {
    /// `update_proj_gap`.
    pub gap: usize,
}

impl RefreshRule for AtOneThenEvery {
    fn initial_gap(&self) -> usize {
        self.gap
    }
    fn is_due_after_first(&self, k: usize, state: &RefreshState) -> bool {
        (k + 1).is_multiple_of(state.gap)
    }
}

/// Q-GaLore's lazy, layer-adaptive rule: refresh when `k % gap == 0` with the layer's *current*
/// gap; after each refresh the cosine similarity of the new and the previous projector's first
/// singular vector joins a queue of `queue_size`; when the queue is full and its mean is
/// `≥ cos_threshold`, the layer's gap becomes `⌊gap·gamma⌋`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adaptive {
    /// Initial `update_proj_gap`.
    pub gap: usize,
    /// `cos_threshold`.
    pub cos_threshold: f64,
    /// `gamma_proj`.
    pub gamma: f64,
    /// `queue_size`.
    pub queue_size: usize,
}

impl RefreshRule for Adaptive {
    fn initial_gap(&self) -> usize {
        self.gap
    }

    fn is_due_after_first(&self, k: usize, state: &RefreshState) -> bool {
        k.is_multiple_of(state.gap)
    }

    fn observe(&self, state: &mut RefreshState, first: Option<Vec<f32>>) {
        let Some(first) = first else { return };
        if !state.last_first_vector.is_empty() && state.last_first_vector.len() == first.len() {
            let dot: f64 = first
                .iter()
                .zip(&state.last_first_vector)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let cos = (dot / (norm(&first) * norm(&state.last_first_vector)).max(1e-8)) as f32;
            if state.queue.len() == self.queue_size {
                state.queue.remove(0);
            }
            state.queue.push(cos);
            let mean = state.queue.iter().map(|&c| c as f64).sum::<f64>() / self.queue_size as f64;
            if state.queue.len() == self.queue_size && mean >= self.cos_threshold {
                state.gap = ((state.gap as f64 * self.gamma).floor() as usize).max(1);
            }
        }
        state.last_first_vector = first;
    }

    fn validate(&self) -> Result<(), String> {
        if self.gap == 0 {
            return Err("update_proj_gap must be at least 1".into());
        }
        if self.queue_size == 0 {
            return Err("queue_size must be at least 1".into());
        }
        if !(self.gamma.is_finite() && self.gamma >= 1.0) {
            return Err(format!("gamma_proj = {} must be ≥ 1", self.gamma));
        }
        Ok(())
    }
}

/// The refresh rule of an engine: one of the built-in rules by name (what a config serializes),
/// or any other [`RefreshRule`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RefreshPolicy {
    /// [`Every`]: GaLore's rule.
    Every(Every),
    /// [`AtOneThenEvery`]: DCT-AdamW's rule.
    AtOneThenEvery(AtOneThenEvery),
    /// [`Adaptive`]: Q-GaLore's lazy rule.
    Adaptive(Adaptive),
    /// A rule of the caller's. A config holding one does not serialize (serde reports the
    /// variant as skipped); the per-parameter [`RefreshState`] does, as for every rule.
    #[serde(skip)]
    Custom(Arc<dyn RefreshRule>),
}

impl PartialEq for RefreshPolicy {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Every(a), Self::Every(b)) => a == b,
            (Self::AtOneThenEvery(a), Self::AtOneThenEvery(b)) => a == b,
            (Self::Adaptive(a), Self::Adaptive(b)) => a == b,
            (Self::Custom(a), Self::Custom(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
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
    /// The rule itself.
    pub fn rule(&self) -> &dyn RefreshRule {
        match self {
            RefreshPolicy::Every(r) => r,
            RefreshPolicy::AtOneThenEvery(r) => r,
            RefreshPolicy::Adaptive(r) => r,
            RefreshPolicy::Custom(r) => r.as_ref(),
        }
    }

    /// GaLore's rule with `gap`.
    pub fn every(gap: usize) -> Self {
        RefreshPolicy::Every(Every { gap })
    }

    /// The gap a fresh parameter starts with.
    pub fn initial_gap(&self) -> usize {
        self.rule().initial_gap()
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

    /// Whether the projector is recomputed at the step whose pre-increment count is `k`: always
    /// before the first fit, then as the rule says.
    pub fn is_due(&self, k: usize, state: &RefreshState) -> bool {
        state.refreshes == 0 || self.rule().is_due_after_first(k, state)
    }

    /// Records a fresh projector's first vector (Q-GaLore's rule; the others ignore it).
    pub fn observe(&self, state: &mut RefreshState, first: Option<Vec<f32>>) {
        self.rule().observe(state, first)
    }

    /// Validates the configuration.
    pub fn validate(&self) -> Result<(), String> {
        self.rule().validate()
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
            let policy = RefreshPolicy::Adaptive(Adaptive {
                gap: 10,
                cos_threshold: threshold,
                gamma: 2.0,
                queue_size: 3,
            });
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
        let policy = RefreshPolicy::Adaptive(Adaptive {
            gap: 4,
            cos_threshold: 0.5,
            gamma: 1.5,
            queue_size: 2,
        });
        let mut state = policy.init_state();
        for v in [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]] {
            policy.observe(&mut state, Some(v.to_vec()));
        }
        assert_eq!(state.queue, vec![1.0, 0.0]);
        assert_eq!(state.gap, 6);
    }
}
