//! # FRUGAL (Zmushko et al., 2025) for burn
//!
//! Each targeted parameter's gradient is split into a **state-full** part — a subspace of
//! density ρ updated by AdamW — and a **state-free** residual updated by signSGD (or SGD, or
//! nothing):
//!
//! ```text
//! W ← W·(1 − lr·λ)
//! R = down(G);  M, V ← Adam moments of R (reset with the step counter at every subspace update)
//! U = −lr·s_p · up( (M/(1−β₁ᵗ)) / (√V/√(1−β₂ᵗ) + ε) )
//! U −= lr·s_i · sign(G − up(R))      (sign_sgd; `sgd`: · (G − up(R)); `no`: nothing)
//! W ← W + U
//! ```
//!
//! The subspace is recomputed every `update_gap` steps from the first. Projection kinds
//! ([`FrugalProjection`]): `Svd` (top-r singular vectors, r = round(ρ·dim)), `Random` (seeded random
//! orthonormal columns), `RandPerm` (r seeded random coordinates, r = round(ρ·dim)),
//! `Coordinates` (⌊ρ·dim⌋ seeded random columns/rows), and `Blocks` (whole parameters, a
//! fraction ρ of them state-full with full AdamW, the rest state-free with **no** state,
//! re-drawn every `update_gap` steps — see `ember_core::blocks`).
//!
//! **Adam state at a subspace change** follows the official code: with `reset_statistics`
//! (default) `M`, `V` and the bias-correction counter are reset; without it they are kept in
//! place (not rotated). Blocks always start with fresh state when they become active.
//!
//! Seeded kinds draw from `(seed, parameter path, refresh count)` (blocks: `(seed, step/gap)`):
//! identical on every replica and after a resume.

use burn::config::Config;
use ember_core::residual::{Sgd, SignSgd};
use ember_core::{
    AdamFlavor, BlockSchedule, DecayTiming, EngineConfig, ProjectorKind, RankRule, RefreshPolicy,
    ResidualRule, StateStorage, SubspaceAdam,
};
pub use ember_core::{
    BlockOrder, EmberError, EmberOptimizer, NonFinitePolicy, ProjType, StateDtype, Targets,
};
use serde::{Deserialize, Serialize};

/// FRUGAL's `inactive_update_rule`: the state-free optimizer of the residual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InactiveRule {
    /// signSGD (default).
    SignSgd,
    /// Plain SGD.
    Sgd,
    /// No update of the residual.
    No,
}

/// FRUGAL's projection kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrugalProjection {
    /// Top singular vectors of the gradient.
    Svd,
    /// A seeded random orthonormal basis.
    Random,
    /// Seeded random coordinates, `round(ρ·dim)` of them.
    RandPerm,
    /// Seeded random columns (right side) or rows (left side), `⌊ρ·dim⌋` of them.
    Coordinates,
    /// Whole parameters, a fraction ρ of them state-full.
    Blocks,
}

/// Configuration of [FRUGAL](crate), with the official option names and defaults.
#[derive(Config, Debug)]
pub struct FrugalConfig {
    /// Density ρ: the fraction of each update that gets Adam state.
    #[config(default = 0.25)]
    pub density: f64,
    /// Steps between subspace updates.
    #[config(default = 200)]
    pub update_gap: usize,
    /// Reset `M`, `V` and the step counter at each subspace update.
    #[config(default = true)]
    pub reset_statistics: bool,
    /// The state-free rule.
    #[config(default = "InactiveRule::SignSgd")]
    pub inactive_update_rule: InactiveRule,
    /// Learning-rate multiplier of the state-free rule.
    #[config(default = 1.0)]
    pub inactive_lr_scale: f64,
    /// Learning-rate multiplier of the state-full (Adam) update.
    #[config(default = 1.0)]
    pub proj_params_lr_scale: f64,
    /// Side of the projection (`Std`, `ReverseStd`, `Left`, `Right`).
    #[config(default = "ProjType::Std")]
    pub proj_side: ProjType,
    /// Projection kind.
    #[config(default = "FrugalProjection::Svd")]
    pub proj_type: FrugalProjection,
    /// Block order of `Blocks`.
    #[config(default = "BlockOrder::Random")]
    pub block_order: BlockOrder,
    /// Seed of the random kinds.
    #[config(default = 0)]
    pub seed: u64,
    /// β₁.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// β₂.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// ε.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// λ, applied first: `W ← W·(1 − lr·λ)`.
    #[config(default = 0.01)]
    pub weight_decay: f64,
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
    /// `Svd` kind: refresh on the device (warm-started subspace iteration) instead of the exact
    /// SVD on the host.
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

impl FrugalConfig {
    fn inactive(&self) -> ResidualRule {
        match self.inactive_update_rule {
            InactiveRule::SignSgd => ResidualRule::SignSgd(SignSgd {
                lr_scale: self.inactive_lr_scale,
            }),
            InactiveRule::Sgd => ResidualRule::Sgd(Sgd {
                lr_scale: self.inactive_lr_scale,
            }),
            InactiveRule::No => ResidualRule::Discard,
        }
    }

    /// The pipeline of targeted parameters (for `Blocks`: the state-full AdamW of active ones).
    pub fn engine(&self) -> EngineConfig {
        let (projector, rank) = match self.proj_type {
            FrugalProjection::Svd if self.device_projector => (
                ProjectorKind::DeviceRange {
                    proj_type: self.proj_side,
                    power_iters: self.power_iters,
                },
                RankRule::Density(self.density),
            ),
            FrugalProjection::Svd if self.host_svd => (
                ProjectorKind::ExactSvd(self.proj_side),
                RankRule::Density(self.density),
            ),
            FrugalProjection::Svd => (
                ProjectorKind::AutoSvd(self.proj_side),
                RankRule::Density(self.density),
            ),
            FrugalProjection::Random => (
                ProjectorKind::RandomOrthogonal {
                    proj_type: self.proj_side,
                    seed: self.seed,
                },
                RankRule::Density(self.density),
            ),
            FrugalProjection::RandPerm => (
                ProjectorKind::RandomCoordinates {
                    proj_type: self.proj_side,
                    seed: self.seed,
                },
                RankRule::Density(self.density),
            ),
            FrugalProjection::Coordinates => (
                ProjectorKind::RandomCoordinates {
                    proj_type: self.proj_side,
                    seed: self.seed,
                },
                RankRule::DensityFloor(self.density),
            ),
            FrugalProjection::Blocks => (ProjectorKind::Identity, RankRule::Fixed(0)),
        };
        EngineConfig {
            rank,
            projector,
            refresh: RefreshPolicy::every(self.update_gap),
            adam: SubspaceAdam {
                beta_1: self.beta_1,
                beta_2: self.beta_2,
                epsilon: self.epsilon,
                bias_correction: true,
                flavor: AdamFlavor::Torch,
                reset_on_refresh: self.reset_statistics,
            },
            residual: self.inactive(),
            scale: self.proj_params_lr_scale,
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

    /// FRUGAL's AdamW for non-targeted parameters (and active blocks).
    pub fn dense_engine(&self) -> EngineConfig {
        EngineConfig {
            projector: ProjectorKind::Identity,
            rank: RankRule::Fixed(0),
            residual: ResidualRule::Discard,
            scale: 1.0,
            ..self.engine()
        }
    }
}

ember_core::impl_method_config!(FrugalConfig {
    fn check(&self) -> Result<(), EmberError> {
        if !(self.density > 0.0 && self.density <= 1.0) {
            return Err(EmberError::InvalidConfig(format!(
                "density ρ = {} must be in (0, 1]",
                self.density
            )));
        }
        if self.update_gap == 0 {
            return Err(EmberError::InvalidConfig(
                "update_gap must be at least 1".into(),
            ));
        }
        if self.proj_side == ProjType::Full {
            return Err(EmberError::InvalidConfig(
                "FRUGAL's proj_side is std, reverse_std, left or right".into(),
            ));
        }
        Ok(())
    }

    fn blocks(&self) -> Option<BlockSchedule> {
        (self.proj_type == FrugalProjection::Blocks).then(|| BlockSchedule {
            density: self.density,
            gap: self.update_gap,
            order: self.block_order,
            seed: self.seed,
            inactive: self.inactive(),
        })
    }
});
