//! The inner optimizer: Adam on the low-rank gradient `R`.

use ember_kernels::AdamCoefficients;
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
    /// The kernel coefficients of Adam step `t` (from 1) and the step size `c` such that the
    /// parameter moves by `−c·N` (before α).
    pub fn coefficients(&self, t: usize, lr: f64) -> (AdamCoefficients, f64) {
        let (bc1, bc2) = if self.bias_correction {
            (
                1.0 - self.beta_1.powi(t as i32),
                1.0 - self.beta_2.powi(t as i32),
            )
        } else {
            (1.0, 1.0)
        };
        let (sqrt_v_divisor, epsilon, c) = match self.flavor {
            AdamFlavor::Galore => (1.0, self.epsilon, lr * bc2.sqrt() / bc1),
            AdamFlavor::Torch => (bc2.sqrt(), self.epsilon, lr / bc1),
            AdamFlavor::Dct => (1.0, self.epsilon * bc2.sqrt(), lr * bc2.sqrt() / bc1),
        };
        let coefficients = AdamCoefficients {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            sqrt_v_divisor,
            epsilon,
        };
        (coefficients, c)
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
