//! The inner optimizer: Adam on the low-rank gradient `R`.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Where ε and the bias corrections go: the official packages differ, and the reference cases
/// depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdamFlavor {
    /// galore-torch / fira / q-galore: `N = M / (√V + ε)`, step `lr·√(1−β₂ᵗ)/(1−β₁ᵗ)`.
    Galore,
    /// torch.optim.AdamW / FRUGAL / burn: `N = M / (√V/√(1−β₂ᵗ) + ε)`, step `lr/(1−β₁ᵗ)`.
    Torch,
    /// DCT-AdamW: `N = M / (ε·√(1−β₂ᵗ) + √V)`, step `lr·√(1−β₂ᵗ)/(1−β₁ᵗ)`.
    Dct,
}

/// Adam in the subspace: moments `M, V` of `R`'s shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubspaceAdam {
    /// β₁.
    pub beta_1: f64,
    /// β₂.
    pub beta_2: f64,
    /// ε.
    pub epsilon: f64,
    /// Apply bias correction (`correct_bias`).
    pub bias_correction: bool,
    /// Arithmetic of the official package being followed.
    pub flavor: AdamFlavor,
    /// Reset `M`, `V` and the bias-correction counter when the projector is recomputed
    /// (FRUGAL's `reset_statistics`); GaLore keeps them (a known quirk reproduced on purpose).
    pub reset_on_refresh: bool,
}

impl SubspaceAdam {
    /// Updates the moments with `r` at Adam step `t` (from 1) and returns `(N, c)`: the
    /// normalized update and the coefficient such that the parameter moves by `−c·N`
    /// (before any scale and the learning rate's sign).
    pub fn update<B: Backend>(
        &self,
        r: Tensor<B, 2>,
        m: Tensor<B, 2>,
        v: Tensor<B, 2>,
        t: usize,
        lr: f64,
    ) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>, f64) {
        let m = m
            .mul_scalar(self.beta_1)
            .add(r.clone().mul_scalar(1.0 - self.beta_1));
        let v = v
            .mul_scalar(self.beta_2)
            .add(r.clone().mul(r).mul_scalar(1.0 - self.beta_2));
        let (bc1, bc2) = if self.bias_correction {
            (
                1.0 - self.beta_1.powi(t as i32),
                1.0 - self.beta_2.powi(t as i32),
            )
        } else {
            (1.0, 1.0)
        };
        let (n, c) = match self.flavor {
            AdamFlavor::Galore => (
                m.clone().div(v.clone().sqrt().add_scalar(self.epsilon)),
                lr * bc2.sqrt() / bc1,
            ),
            AdamFlavor::Torch => (
                m.clone().div(
                    v.clone()
                        .sqrt()
                        .div_scalar(bc2.sqrt())
                        .add_scalar(self.epsilon),
                ),
                lr / bc1,
            ),
            AdamFlavor::Dct => (
                m.clone()
                    .div(v.clone().sqrt().add_scalar(self.epsilon * bc2.sqrt())),
                lr * bc2.sqrt() / bc1,
            ),
        };
        (n, m, v, c)
    }

    /// Validates the configuration.
    pub fn validate(&self) -> Result<(), String> {
        for (name, b) in [("beta_1", self.beta_1), ("beta_2", self.beta_2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(format!("{name} = {b} must be in [0, 1)"));
            }
        }
        if self.epsilon.is_nan() || self.epsilon < 0.0 {
            return Err(format!("epsilon = {} must be ≥ 0", self.epsilon));
        }
        Ok(())
    }
}
