//! # DCT-AdamW: SVD-free low-rank projection on a fixed DCT basis (ista-daslab-optimizers)
//!
//! Instead of an SVD, the projector keeps `r` columns of the orthonormal DCT-II basis `Q` of the
//! projected dimension — the ones best aligned with the gradient — and stores only their indices.
//! One `Q` per distinct size is built once and shared by every parameter of that size.
//!
//! ```text
//! right side (m ≥ n): S = G·Q, scores = ‖S[:, j]‖₁;  left side: S = Qᵀ·G, scores = ‖S[j, :]‖₁
//! idx = top-r scores (descending), refreshed at t = 1 and whenever t % update_proj_gap == 0
//! W ← W·(1 − lr·λ)
//! R = S[:, idx] (or S[idx, :]),  M, V ← Adam moments of R
//! W ← W − lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · up(M / (ε·√(1−β₂ᵗ) + √V))
//! ```
//!
//! Matrices with a dimension ≥ `max_shape` and tensors that are not 2-D get AdamW. Moments keep
//! their slots across a refresh. Differences from upstream: the step counter is per parameter
//! (upstream: global; they differ only for parameters that miss gradients on some steps), one
//! basis per size instead of the first parameter's, and `rotate_subspace` / error feedback are
//! not implemented (`rotate_subspace = true` is refused by `try_init`).

use burn::config::Config;
use ember_core::{
    AdamFlavor, DecayTiming, EngineConfig, ProjectorKind, RankRule, RefreshPolicy, ResidualRule,
    StateStorage, SubspaceAdam,
};
pub use ember_core::{EmberError, EmberOptimizer, NonFinitePolicy, ProjType, StateDtype, Targets};

/// Configuration of [DCT-AdamW](crate), with the official option names and defaults.
#[derive(Config, Debug)]
pub struct DctConfig {
    /// Number of basis columns kept.
    #[config(default = 128)]
    pub rank: usize,
    /// Refresh at t = 1 and when `t % update_proj_gap == 0` (1: every step).
    #[config(default = 1)]
    pub update_proj_gap: usize,
    /// β₁.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// β₂.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// ε (multiplied by √(1−β₂ᵗ)).
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// λ, applied before the update: `W ← W·(1 − lr·λ)`.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Matrices with a dimension ≥ this stay on AdamW.
    #[config(default = 32000)]
    pub max_shape: usize,
    /// Side of the projection (`Std`: right if m ≥ n, else left).
    #[config(default = "ProjType::Std")]
    pub proj_type: ProjType,
    /// Rotate the moments into the new subspace at a refresh (not implemented: must be false).
    #[config(default = false)]
    pub rotate_subspace: bool,
    /// Module-path patterns of the targeted parameters; empty: every 2-D parameter.
    #[config(default = "Vec::new()")]
    pub targets: Vec<String>,
    /// How the moments (and dense projectors) are stored: f32 (default), bf16, or blockwise 8-bit
    /// (`StateDtype::Int8Blockwise`: GaLore-8bit / AdamW-8bit, see `ember_core::state`).
    #[config(default = "StateDtype::F32")]
    pub state_dtype: StateDtype,
    /// Elements per block of 8-bit state (one f32 absmax each; a multiple of 4).
    #[config(default = 256)]
    pub state_block_size: usize,
    /// With 8-bit state, moments of fewer elements stay f32 (bitsandbytes' `min_8bit_size`).
    #[config(default = 4096)]
    pub min_8bit_size: usize,
    /// What a step does on NaN/Inf gradients.
    #[config(default = "NonFinitePolicy::Error")]
    pub non_finite: NonFinitePolicy,
}

impl DctConfig {
    /// The pipeline for targeted parameters.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            rank: RankRule::Fixed(self.rank),
            projector: ProjectorKind::Dct(self.proj_type),
            refresh: RefreshPolicy::AtOneThenEvery(ember_core::refresh::AtOneThenEvery {
                gap: self.update_proj_gap,
            }),
            adam: SubspaceAdam {
                beta_1: self.beta_1,
                beta_2: self.beta_2,
                epsilon: self.epsilon,
                bias_correction: true,
                flavor: AdamFlavor::Dct,
                reset_on_refresh: false,
            },
            residual: ResidualRule::Discard,
            scale: 1.0,
            weight_decay: self.weight_decay,
            decay: DecayTiming::BeforeUpdate,
            state: StateStorage {
                dtype: self.state_dtype,
                block_size: self.state_block_size,
                min_8bit_size: self.min_8bit_size,
                ..StateStorage::default()
            },
        }
    }

    /// The AdamW of the other parameters.
    pub fn dense_engine(&self) -> EngineConfig {
        EngineConfig {
            projector: ProjectorKind::Identity,
            ..self.engine()
        }
    }
}

ember_core::impl_method_config!(DctConfig {
    fn check(&self) -> Result<(), EmberError> {
        if self.rotate_subspace {
            return Err(EmberError::InvalidConfig(
                "rotate_subspace is not implemented in Ember's DCT-AdamW".into(),
            ));
        }
        Ok(())
    }

    fn restrict(&self, targets: Targets) -> Targets {
        targets.with_max_dim(self.max_shape)
    }
});
