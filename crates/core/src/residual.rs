//! Residual rules: what happens to the part of the gradient the projection threw away.

use burn::prelude::*;
use ember_kernels::ResidualUpdate;
use serde::{Deserialize, Serialize};

/// What the engine does with the residual `G − up(R)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResidualRule {
    /// Thrown away (GaLore, Q-GaLore, DCT-AdamW).
    Discard,
    /// Fira: the residual `G − α·up(R)` is scaled per row/column by `φ = ‖N‖/(‖R‖ + 1e-8)`
    /// (norms along the low-rank shape's longer side), then the norm-growth limiter caps
    /// `‖Ψ‖` at `γ` times its previous value; applied with the Adam step size `η`.
    Fira {
        /// Norm-growth limit γ (1.01 in the official code).
        gamma: f64,
    },
    /// FRUGAL's state-free signSGD: `W ← W − lr·s·sign(G − up(R))`.
    SignSgd {
        /// `inactive_lr_scale` s.
        lr_scale: f64,
    },
    /// FRUGAL's state-free SGD: `W ← W − lr·s·(G − up(R))`.
    Sgd {
        /// `inactive_lr_scale` s.
        lr_scale: f64,
    },
}

/// What a residual rule adds to the update: `W ← W − term`.
pub struct ResidualTerm<B: Backend> {
    /// The term, already multiplied by its step size.
    pub term: Tensor<B, 2>,
    /// Fira's new `ζ = ‖Ψ‖` after limiting.
    pub norm: Option<Tensor<B, 1>>,
}

impl ResidualRule {
    /// Whether the rule uses the residual at all.
    pub fn is_discard(&self) -> bool {
        matches!(self, ResidualRule::Discard)
    }

    /// The rule as the kernels' [`ResidualUpdate`], at learning rate `lr`.
    pub fn to_update(&self, lr: f64) -> ResidualUpdate {
        match *self {
            ResidualRule::Discard => ResidualUpdate::None,
            ResidualRule::SignSgd { lr_scale } => ResidualUpdate::Sign {
                step: lr * lr_scale,
            },
            ResidualRule::Sgd { lr_scale } => ResidualUpdate::Sgd {
                step: lr * lr_scale,
            },
            ResidualRule::Fira { gamma } => ResidualUpdate::Fira { gamma },
        }
    }

    /// The residual term (the portable path, for projectors without a dense basis).
    ///
    /// * `g` — the full gradient; `up_r` — `up(R)` without scale; `scale` — α;
    /// * `r`, `n` — the low-rank gradient and its Adam-normalized version;
    /// * `eta` — the Adam step size, `lr` — the learning rate;
    /// * `prev_norm` — Fira's `ζ` of the previous step.
    #[allow(clippy::too_many_arguments)]
    pub fn term<B: Backend>(
        &self,
        g: Tensor<B, 2>,
        up_r: Tensor<B, 2>,
        scale: f64,
        r: &Tensor<B, 2>,
        n: &Tensor<B, 2>,
        eta: f64,
        lr: f64,
        prev_norm: Option<Tensor<B, 1>>,
    ) -> Option<ResidualTerm<B>> {
        ember_kernels::portable::residual_term(
            g,
            up_r,
            self.to_update(lr),
            scale,
            r,
            n,
            eta,
            prev_norm,
        )
        .map(|(term, norm)| ResidualTerm { term, norm })
    }

    /// Validates the configuration.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ResidualRule::Fira { gamma } if !(gamma.is_finite() && *gamma > 0.0) => Err(format!(
                "the norm-growth limit γ = {gamma} must be positive"
            )),
            _ => Ok(()),
        }
    }
}
