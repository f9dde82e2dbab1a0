//! Every Ember method by name, with the settings a training script varies: what `ember-bench`
//! and `examples/pretrain` build their optimizers from.
//!
//! ```
//! use ember::recipe::{Method, Recipe};
//! # type B = burn::backend::Autodiff<burn::backend::Flex>;
//! # type M = burn::nn::Linear<B>;
//! let optim = Recipe::new(Method::parse("galore").unwrap())
//!     .with_rank(64)
//!     .build::<B, M>()
//!     .unwrap();
//! ```

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::core::{EmberOptimizer, NonFinitePolicy, StateDtype, Targets};

/// The optimizers Ember implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// AdamW on every parameter (galore-torch's AdamW arithmetic).
    Adamw,
    /// GaLore-AdamW.
    Galore,
    /// Fira.
    Fira,
    /// FRUGAL (SVD projection, density ρ).
    Frugal,
    /// DCT-AdamW.
    Dct,
    /// Q-GaLore (INT4 projector, one group per row; lazy refresh).
    Qgalore,
}

impl Method {
    /// Every implemented method, in report order.
    pub const ALL: [Method; 6] = [
        Method::Adamw,
        Method::Galore,
        Method::Fira,
        Method::Frugal,
        Method::Dct,
        Method::Qgalore,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Adamw => "adamw",
            Method::Galore => "galore",
            Method::Fira => "fira",
            Method::Frugal => "frugal",
            Method::Dct => "dct",
            Method::Qgalore => "qgalore",
        }
    }

    /// The method of a lower-case name.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown optimizer `{name}`: one of {}",
                    Self::ALL.map(|m| m.name()).join(", ")
                )
            })
    }

    /// Whether the method has a rank (GaLore, Fira, DCT, Q-GaLore).
    pub fn has_rank(self) -> bool {
        matches!(
            self,
            Method::Galore | Method::Fira | Method::Dct | Method::Qgalore
        )
    }

    /// Whether the method has an update scale α (GaLore, Fira, Q-GaLore).
    pub fn has_scale(self) -> bool {
        matches!(self, Method::Galore | Method::Fira | Method::Qgalore)
    }

    /// Whether the method can refresh its projector on the device (`device_projector`:
    /// GaLore, Fira, FRUGAL's SVD projection, Q-GaLore's before quantization); DCT selects
    /// columns of a fixed basis, AdamW has no projector.
    pub fn has_device_projector(self) -> bool {
        matches!(
            self,
            Method::Galore | Method::Fira | Method::Frugal | Method::Qgalore
        )
    }
}

/// A method and the settings that training scripts vary; every other option is the method's
/// default (the official package's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// The method.
    pub method: Method,
    /// Rank (GaLore, Fira, DCT, Q-GaLore).
    pub rank: usize,
    /// FRUGAL's density ρ.
    pub density: f64,
    /// Steps between projector refreshes.
    pub gap: usize,
    /// α of GaLore, Fira and Q-GaLore (`None`: the method's default).
    pub scale: Option<f64>,
    /// How the optimizer state is stored.
    pub state: StateDtype,
    /// Module-path patterns of the targeted parameters (empty: every 2-D parameter).
    pub targets: Vec<String>,
    /// With 8-bit state, moments of fewer elements stay f32.
    pub min_8bit_size: usize,
    /// Elements per block of 8-bit state.
    pub state_block_size: usize,
    /// What a step does on NaN/Inf gradients.
    pub non_finite: NonFinitePolicy,
    /// Refresh projectors on the device (randomized subspace iteration) instead of the exact SVD
    /// on the host (methods with [`Method::has_device_projector`]).
    pub device_projector: bool,
    /// Refresh with the exact SVD on the host on every backend (GaLore, Fira, FRUGAL; default:
    /// exact on CPU backends, the device projector on GPU backends).
    pub host_svd: bool,
}

impl Recipe {
    /// `method` with rank 128, density 0.25, refresh gap 200, f32 state, targets `attn` and
    /// `mlp` (the official scripts' rule).
    pub fn new(method: Method) -> Self {
        Self {
            method,
            rank: 128,
            density: 0.25,
            gap: 200,
            scale: None,
            state: StateDtype::F32,
            targets: vec!["attn".into(), "mlp".into()],
            min_8bit_size: 4096,
            state_block_size: 256,
            non_finite: NonFinitePolicy::Error,
            device_projector: false,
            host_svd: false,
        }
    }

    /// Sets the rank.
    pub fn with_rank(mut self, rank: usize) -> Self {
        self.rank = rank;
        self
    }

    /// Sets FRUGAL's density.
    pub fn with_density(mut self, density: f64) -> Self {
        self.density = density;
        self
    }

    /// Sets the refresh gap.
    pub fn with_gap(mut self, gap: usize) -> Self {
        self.gap = gap;
        self
    }

    /// Sets α (GaLore, Fira, Q-GaLore; the other methods refuse one at `build`).
    pub fn with_scale(mut self, scale: Option<f64>) -> Self {
        self.scale = scale;
        self
    }

    /// Sets the state storage.
    pub fn with_state(mut self, state: StateDtype) -> Self {
        self.state = state;
        self
    }

    /// Sets the target patterns.
    pub fn with_targets(mut self, targets: Vec<String>) -> Self {
        self.targets = targets;
        self
    }

    /// Sets the smallest moment kept in 8 bits.
    pub fn with_min_8bit_size(mut self, n: usize) -> Self {
        self.min_8bit_size = n;
        self
    }

    /// Sets the non-finite policy.
    pub fn with_non_finite(mut self, policy: NonFinitePolicy) -> Self {
        self.non_finite = policy;
        self
    }

    /// Sets where projectors are refreshed (`true`: on the device).
    pub fn with_device_projector(mut self, on: bool) -> Self {
        self.device_projector = on;
        self
    }

    /// Sets the exact SVD on the host on every backend.
    pub fn with_host_svd(mut self, on: bool) -> Self {
        self.host_svd = on;
        self
    }

    /// Builds the optimizer, or says which setting does not fit the method.
    pub fn build<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
    ) -> Result<EmberOptimizer<M, B>, String> {
        if self.scale.is_some() && !self.method.has_scale() {
            return Err(format!(
                "{} has no scale α option (GaLore, Fira and Q-GaLore do)",
                self.method.name()
            ));
        }
        if self.device_projector && !self.method.has_device_projector() {
            return Err(format!(
                "{} has no device projector (GaLore, Fira, FRUGAL and Q-GaLore do)",
                self.method.name()
            ));
        }
        let dp = self.device_projector;
        let host = self.host_svd;
        let targets = self.targets.clone();
        let (state, block, min8, nf) = (
            self.state,
            self.state_block_size,
            self.min_8bit_size,
            self.non_finite,
        );
        match self.method {
            Method::Adamw => {
                let c = crate::galore::GaloreConfig::new()
                    .with_state_dtype(state)
                    .with_state_block_size(block)
                    .with_min_8bit_size(min8)
                    .with_non_finite(nf);
                EmberOptimizer::new(c.dense_engine(), c.dense_engine(), Targets::none(), nf)
            }
            Method::Galore => {
                let c = crate::galore::GaloreConfig::new();
                let a = self.scale.unwrap_or(c.scale);
                c.with_scale(a)
                    .with_rank(self.rank)
                    .with_update_proj_gap(self.gap)
                    .with_targets(targets)
                    .with_state_dtype(state)
                    .with_state_block_size(block)
                    .with_min_8bit_size(min8)
                    .with_non_finite(nf)
                    .with_device_projector(dp)
                    .with_host_svd(host)
                    .try_init()
            }
            Method::Fira => {
                let c = crate::fira::FiraConfig::new();
                let a = self.scale.unwrap_or(c.alpha);
                c.with_alpha(a)
                    .with_rank(self.rank)
                    .with_update_proj_gap(self.gap)
                    .with_targets(targets)
                    .with_state_dtype(state)
                    .with_state_block_size(block)
                    .with_min_8bit_size(min8)
                    .with_non_finite(nf)
                    .with_device_projector(dp)
                    .try_init()
            }
            Method::Frugal => crate::frugal::FrugalConfig::new()
                .with_density(self.density)
                .with_update_gap(self.gap)
                .with_targets(targets)
                .with_state_dtype(state)
                .with_state_block_size(block)
                .with_min_8bit_size(min8)
                .with_non_finite(nf)
                .with_device_projector(dp)
                .try_init(),
            Method::Qgalore => {
                let c = crate::qgalore::QGaloreConfig::new();
                let a = self.scale.unwrap_or(c.scale);
                c.with_scale(a)
                    .with_rank(self.rank)
                    .with_update_proj_gap(self.gap)
                    .with_targets(targets)
                    .with_state_dtype(state)
                    .with_state_block_size(block)
                    .with_min_8bit_size(min8)
                    .with_non_finite(nf)
                    .with_device_projector(dp)
                    .try_init()
            }
            Method::Dct => crate::dct::DctConfig::new()
                .with_rank(self.rank)
                .with_update_proj_gap(self.gap)
                .with_targets(targets)
                .with_state_dtype(state)
                .with_state_block_size(block)
                .with_min_8bit_size(min8)
                .with_non_finite(nf)
                .try_init(),
        }
        .map_err(|e| e.to_string())
    }
}
