//! # GaLore-AdamW (Zhao et al., 2024) for burn
//!
//! Gradient Low-Rank Projection: for each targeted 2-D parameter `W` (m×n) with gradient `G`,
//! every `update_proj_gap` steps the top-`rank` singular vectors of `G` give a projector `P`;
//! Adam runs on `R = Pᵀ G` (or `G Pᵀ`, by orientation), and the update `α·P·N` is applied:
//!
//! ```text
//! R = down(G)                      M ← β₁M + (1−β₁)R,  V ← β₂V + (1−β₂)R²
//! N = M / (√V + ε)                 η = lr·√(1−β₂ᵗ)/(1−β₁ᵗ)
//! W ← W − η·α·up(N)                W ← W − lr·λ·W
//! ```
//!
//! exactly as galore-torch 1.0's `GaLoreAdamW` (moments kept across refreshes; ε before bias
//! correction; weight decay after the update). Parameters that are not targets get the same AdamW
//! without projection.
//!
//! ```no_run
//! # use burn::backend::{Autodiff, Flex};
//! # use burn::nn::{Linear, LinearConfig};
//! use ember_galore::GaloreConfig;
//! # type B = Autodiff<Flex>;
//! let optim = GaloreConfig::new()
//!     .with_rank(128)
//!     .with_targets(vec!["attn".into(), "mlp".into()]) // as the official scripts
//!     .init::<B, Linear<B>>();
//! ```
//!
//! **Rank larger than a targeted matrix:** an error naming the parameter and its shape at its
//! first step (galore-torch silently truncates; Ember refuses rather than run a different rank than
//! the one asked for). Exclude small matrices with `targets` instead.

use burn::config::Config;
use ember_core::{
    AdamFlavor, DecayTiming, EngineConfig, ProjectorKind, RankRule, RefreshPolicy, ResidualRule,
    StateStorage, SubspaceAdam,
};
pub use ember_core::{EmberError, EmberOptimizer, NonFinitePolicy, ProjType, StateDtype, Targets};

/// Configuration of [GaLore-AdamW](crate), with galore-torch's option names and defaults.
#[derive(Config, Debug)]
pub struct GaloreConfig {
    /// Rank `r` of the projection.
    #[config(default = 128)]
    pub rank: usize,
    /// Steps between projector refreshes (`T`).
    #[config(default = 50)]
    pub update_proj_gap: usize,
    /// α, multiplied into the back-projection.
    #[config(default = 0.25)]
    pub scale: f64,
    /// Side(s) of the projection.
    #[config(default = "ProjType::Std")]
    pub proj_type: ProjType,
    /// β₁.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// β₂.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// ε (added to √V before bias correction).
    #[config(default = 1e-6)]
    pub epsilon: f64,
    /// λ, decoupled weight decay applied after the update.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Adam bias correction (`correct_bias`).
    #[config(default = true)]
    pub correct_bias: bool,
    /// Module-path patterns of the targeted parameters (see [`Targets`]); empty: every 2-D
    /// parameter.
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
    /// Refresh the projector on the device (randomized subspace iteration warm-started from the
    /// previous projector) instead of the exact SVD on the host. Not bit-compatible with
    /// galore-torch (another basis of nearly the same subspace); no host copy of the gradient.
    #[config(default = false)]
    pub device_projector: bool,
    /// Refresh with the exact SVD on the host on every backend. Default (`false`): the exact SVD
    /// on CPU backends, the device projector on GPU backends (`ProjectorKind::AutoSvd`);
    /// `device_projector` forces the device projector everywhere.
    #[config(default = false)]
    pub host_svd: bool,
    /// Power iterations of the device projector per refresh.
    #[config(default = 1)]
    pub power_iters: usize,
}

impl GaloreConfig {
    fn adam(&self) -> SubspaceAdam {
        SubspaceAdam {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            bias_correction: self.correct_bias,
            flavor: AdamFlavor::Galore,
            reset_on_refresh: false,
        }
    }

    /// The pipeline for targeted parameters.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            rank: RankRule::Fixed(self.rank),
            projector: if self.device_projector {
                ProjectorKind::DeviceRange {
                    proj_type: self.proj_type,
                    power_iters: self.power_iters,
                }
            } else if self.host_svd {
                ProjectorKind::ExactSvd(self.proj_type)
            } else {
                ProjectorKind::AutoSvd(self.proj_type)
            },
            refresh: RefreshPolicy::every(self.update_proj_gap),
            adam: self.adam(),
            residual: ResidualRule::Discard,
            scale: self.scale,
            weight_decay: self.weight_decay,
            decay: DecayTiming::AfterUpdate,
            state: StateStorage {
                dtype: self.state_dtype,
                block_size: self.state_block_size,
                min_8bit_size: self.min_8bit_size,
                ..StateStorage::default()
            },
        }
    }

    /// The AdamW used for the other parameters (galore-torch's, same hyperparameters).
    pub fn dense_engine(&self) -> EngineConfig {
        EngineConfig {
            projector: ProjectorKind::Identity,
            scale: 1.0,
            ..self.engine()
        }
    }
}

ember_core::impl_method_config!(GaloreConfig {});
