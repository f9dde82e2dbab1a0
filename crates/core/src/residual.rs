//! Residual rules: what happens to the part of the gradient the projection threw away.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// What the engine does with `G − up(R)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResidualRule {
    /// Thrown away (GaLore, Q-GaLore, DCT-AdamW).
    Discard,
}

/// Inputs a residual rule may use.
pub struct ResidualInputs<B: Backend> {
    /// The full gradient `G`.
    pub grad: Tensor<B, 2>,
    /// `up(R)`, unscaled.
    pub up_low_rank: Tensor<B, 2>,
}

impl ResidualRule {
    /// Whether the rule needs `up(R)` (so the engine can skip a matmul).
    pub fn needs_inputs(&self) -> bool {
        !matches!(self, ResidualRule::Discard)
    }
}
