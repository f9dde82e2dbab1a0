//! Refresh policies: when a parameter's projector is recomputed.

use burn::prelude::*;
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
}

/// Per-parameter refresh bookkeeping, saved in the record.
#[derive(Record, Clone, Debug)]
pub struct RefreshState<B: Backend> {
    /// The current gap (Q-GaLore lengthens it; the others keep the configured one).
    pub gap: usize,
    /// How many times the projector was computed for this parameter.
    pub refreshes: usize,
    /// Cosine similarities of consecutive first singular vectors (Q-GaLore's queue).
    pub queue: Vec<f32>,
    /// The first basis vector of the last projector (Q-GaLore).
    pub last_first_vector: Option<Tensor<B, 1>>,
}

impl RefreshPolicy {
    /// The gap a fresh parameter starts with.
    pub fn initial_gap(&self) -> usize {
        match self {
            RefreshPolicy::Every { gap } | RefreshPolicy::AtOneThenEvery { gap } => *gap,
        }
    }

    /// A fresh state.
    pub fn init_state<B: Backend>(&self) -> RefreshState<B> {
        RefreshState {
            gap: self.initial_gap(),
            refreshes: 0,
            queue: Vec::new(),
            last_first_vector: None,
        }
    }

    /// Whether the projector is recomputed at the step whose pre-increment count is `k`.
    pub fn is_due<B: Backend>(&self, k: usize, state: &RefreshState<B>) -> bool {
        if state.refreshes == 0 {
            return true;
        }
        match self {
            RefreshPolicy::Every { .. } => k.is_multiple_of(state.gap),
            RefreshPolicy::AtOneThenEvery { .. } => (k + 1).is_multiple_of(state.gap),
        }
    }

    /// Validates the configuration.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_gap() == 0 {
            return Err("update_proj_gap must be at least 1".into());
        }
        Ok(())
    }
}
