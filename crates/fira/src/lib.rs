//! # Fira (Chen et al., 2024) for burn
//!
//! GaLore's low-rank Adam step plus the full-rank residual that GaLore throws away, scaled by the
//! ratio Adam applied in the subspace, and a norm-growth limiter:
//!
//! ```text
//! R = down(G), N = M/(√V+ε)                          (GaLore's subspace Adam, η its step size)
//! φ = ‖N‖ / (‖R‖ + 1e-8)   per row (m ≥ r) or per column (r×n) of the low-rank shape
//! Ψ = (G − α·up(R)) · φ
//! l = max(‖Ψ‖ / (ζ + 1e-8), γ) / γ,  Ψ ← Ψ / l,  ζ ← ‖Ψ‖      (from the second step on)
//! W ← W − η·(α·up(N) + Ψ),  W ← W − lr·λ·W
//! ```
//!
//! as fira 1.0.2's `AdamW` computes it (the residual subtracts the **α-scaled** back-projection).
//! `ζ` lives on the device in the optimizer state and is saved with it.

use burn::config::Config;
use ember_core::{
    AdamFlavor, DecayTiming, EngineConfig, ProjectorKind, RankRule, RefreshPolicy, ResidualRule,
    StateStorage, SubspaceAdam,
};
pub use ember_core::{EmberError, EmberOptimizer, NonFinitePolicy, ProjType, StateDtype, Targets};

/// Configuration of [Fira](crate), with fira's option names and defaults.
#[derive(Config, Debug)]
pub struct FiraConfig {
    /// Rank `r` of the projection.
    #[config(default = 128)]
    pub rank: usize,
    /// Steps between projector refreshes.
    #[config(default = 200)]
    pub update_proj_gap: usize,
    /// α, multiplied into the back-projection (also inside the residual).
    #[config(default = 0.25)]
    pub alpha: f64,
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
    /// Adam bias correction.
    #[config(default = true)]
    pub correct_bias: bool,
    /// Norm-growth limit γ (hard-coded 1.01 upstream).
    #[config(default = 1.01)]
    pub gamma: f64,
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
    /// Refresh the projector on the device (warm-started subspace iteration) instead of the exact
    /// SVD on the host; not bit-compatible with fira.
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

impl FiraConfig {
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
            adam: SubspaceAdam {
                beta_1: self.beta_1,
                beta_2: self.beta_2,
                epsilon: self.epsilon,
                bias_correction: self.correct_bias,
                flavor: AdamFlavor::Galore,
                reset_on_refresh: false,
            },
            residual: ResidualRule::fira(self.gamma),
            scale: self.alpha,
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

    /// The AdamW of the other parameters (no projection, no residual).
    pub fn dense_engine(&self) -> EngineConfig {
        EngineConfig {
            projector: ProjectorKind::Identity,
            residual: ResidualRule::Discard,
            scale: 1.0,
            ..self.engine()
        }
    }
}

ember_core::impl_method_config!(FiraConfig {});
