//! # Q-GaLore (Zhang et al., 2024) for burn
//!
//! GaLore with (1) the projector stored **quantized** — asymmetric min/max per group, `proj_bits`
//! bits (INT4 by default, as in the paper), packed `32/bits` codes per word and dequantized at
//! every use — and (2) **lazy, layer-adaptive subspace updates**: after each refresh the cosine
//! similarity between the new and the previous projector's first singular vector joins a queue of
//! `queue_size`; when the queue is full and its mean is ≥ `cos_threshold`, that layer's
//! `update_proj_gap` is multiplied by `gamma_proj`. Each parameter's refresh count and current gap
//! are in its state (`ParamState::refresh`).
//!
//! (3) **INT8 weights with stochastic rounding**: replace the targeted `Linear` layers by
//! [`QLinear`] (weights stored as packed 8-bit codes plus a scale and zero point per group) and
//! build the gradients with [`quantized_grads`] instead of `GradientsParams::from_grads`. The
//! optimizer dequantizes, updates in f32 and rounds back stochastically, seeded by `seed`
//! (see [`ember_core::qlinear`]). Layers left as `Linear` keep f32 weights (the mode the
//! reference vectors use).
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::module::Module;
//! use burn::optim::Optimizer;
//! use burn::prelude::*;
//! use ember_qgalore::{quantized_grads, QGaloreConfig, QLinear, QLinearConfig};
//!
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let mut layer: QLinear<B> = QLinearConfig::new(64, 32).with_group_size(16).init(&device);
//! let mut optim = QGaloreConfig::new().with_rank(8).with_seed(7).init();
//! let x = Tensor::<B, 2>::ones([4, 64], &device);
//! for _ in 0..3 {
//!     let loss = layer.forward(x.clone()).powi_scalar(2).mean();
//!     let grads = quantized_grads(loss.backward(), &layer);
//!     layer = optim.step(1e-3, layer, grads);
//! }
//! assert_eq!(layer.weight_bytes(), 64 * 32 + 8 * 64 * 2); // ¼ of f32 + (scale, zero) per group
//! ```
//!
//! The Adam arithmetic is galore-torch's (the official optimizer wraps bitsandbytes' 8-bit Adam;
//! Ember's moments are f32).

use burn::config::Config;
pub use ember_core::{
    quantized_grads, EmberError, EmberOptimizer, NonFinitePolicy, QLinear, QLinearConfig,
    StateDtype, Targets,
};
use ember_core::{
    AdamFlavor, DecayTiming, EngineConfig, ProjType, ProjectorKind, RankRule, RefreshPolicy,
    ResidualRule, StateStorage, SubspaceAdam,
};

/// Configuration of [Q-GaLore](crate), with the official option names.
#[derive(Config, Debug)]
pub struct QGaloreConfig {
    /// Rank `r`.
    #[config(default = 128)]
    pub rank: usize,
    /// Initial steps between projector refreshes.
    #[config(default = 200)]
    pub update_proj_gap: usize,
    /// α.
    #[config(default = 0.25)]
    pub scale: f64,
    /// Store the projector quantized.
    #[config(default = true)]
    pub proj_quant: bool,
    /// Bits of the quantized projector (4 or 8).
    #[config(default = 4)]
    pub proj_bits: u32,
    /// Elements per quantization group of the flattened projector; −1: one group per row.
    #[config(default = -1)]
    pub proj_group_size: i64,
    /// Lengthen a layer's gap when the mean cosine similarity of its queue reaches this.
    #[config(default = 0.4)]
    pub cos_threshold: f64,
    /// Gap multiplier.
    #[config(default = 2.0)]
    pub gamma_proj: f64,
    /// Cosine-similarity queue length.
    #[config(default = 5)]
    pub queue_size: usize,
    /// β₁.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// β₂.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// ε.
    #[config(default = 1e-6)]
    pub epsilon: f64,
    /// λ (after the update).
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Adam bias correction.
    #[config(default = true)]
    pub correct_bias: bool,
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
    /// Seed of the stochastic rounding of INT8 weights ([`QLinear`] layers).
    #[config(default = 0)]
    pub seed: u64,
    /// Fit the projector on the device (randomized subspace iteration warm-started from the
    /// dequantized previous projector; the lazy rule's first vector by power iteration inside
    /// it) instead of the exact SVD on the host; then quantized as usual. Not bit-compatible with
    /// q-galore-torch (another basis of nearly the same subspace).
    #[config(default = false)]
    pub device_projector: bool,
}

impl QGaloreConfig {
    /// The pipeline for targeted parameters.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            rank: RankRule::Fixed(self.rank),
            projector: if self.proj_quant {
                ProjectorKind::QuantizedSvd {
                    bits: self.proj_bits,
                    group_size: self.proj_group_size,
                    device: self.device_projector,
                    power_iters: 1,
                }
            } else {
                ProjectorKind::ExactSvd(ProjType::Std)
            },
            refresh: RefreshPolicy::Adaptive(ember_core::refresh::Adaptive {
                gap: self.update_proj_gap,
                cos_threshold: self.cos_threshold,
                gamma: self.gamma_proj,
                queue_size: self.queue_size,
            }),
            adam: SubspaceAdam {
                beta_1: self.beta_1,
                beta_2: self.beta_2,
                epsilon: self.epsilon,
                bias_correction: self.correct_bias,
                flavor: AdamFlavor::Galore,
                reset_on_refresh: false,
            },
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

    /// The AdamW of the other parameters.
    pub fn dense_engine(&self) -> EngineConfig {
        EngineConfig {
            projector: ProjectorKind::Identity,
            scale: 1.0,
            ..self.engine()
        }
    }
}

ember_core::impl_method_config!(QGaloreConfig {
    fn rounding_seed(&self) -> u64 {
        self.seed
    }

    fn check(&self) -> Result<(), EmberError> {
        if self.proj_quant && !matches!(self.proj_bits, 4 | 8) {
            return Err(EmberError::InvalidConfig(format!(
                "proj_bits = {} (4 or 8 are supported)",
                self.proj_bits
            )));
        }
        if self.proj_group_size == 0 || self.proj_group_size < -1 {
            return Err(EmberError::InvalidConfig(format!(
                "proj_group_size = {} (a positive size, or −1 for one group per row)",
                self.proj_group_size
            )));
        }
        Ok(())
    }
});
