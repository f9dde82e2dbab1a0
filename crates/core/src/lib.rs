//! # ember-core: the subspace-optimizer engine
//!
//! One pipeline — projector, refresh policy, inner Adam, residual rule, apply — shared by every
//! Ember method (see [`engine`]). Method crates (`ember-galore`, …) choose the parts in a
//! `#[derive(Config)]` and call [`EmberOptimizer::new`]. Three parts are open to the caller's
//! own implementations: the projector's fit ([`FitProjector`], as
//! [`ProjectorKind::Custom`]), the refresh rule ([`refresh::RefreshRule`], as
//! [`RefreshPolicy::Custom`]) and the residual rule ([`ResidualPart`], as
//! [`ResidualRule::Custom`]).

#![warn(missing_docs)]

pub mod adam;
pub mod blocks;
pub mod chunked;
pub mod dct;
pub mod engine;
pub mod error;
pub mod groups;
pub mod layerwise;
pub mod method;
pub mod optimizer;
pub mod part;
pub mod projector;
pub mod qlinear;
pub mod quant;
pub mod range;
pub mod refresh;
pub mod residual;
pub mod rng;
pub mod state;
pub mod svd;
pub mod targets;
pub mod timing;

pub use adam::{AdamFlavor, SubspaceAdam};
pub use blocks::{BlockOrder, BlockSchedule};
pub use dct::SharedBases;
pub use ember_kernels::EmberBackend;
pub use engine::{DecayTiming, EngineConfig, Gradient, ParamState, RankRule, StepContext};
pub use error::EmberError;
pub use method::MethodConfig;

#[doc(hidden)]
pub use burn as __burn;
/// The projection kernels (`ember-kernels`): the backend extension trait and its implementations.
pub use ember_kernels as kernels;
pub use groups::{Clipping, Group};
pub use layerwise::{BlockModel, LayerwiseConfig, LayerwiseTrainer, Stage, StageEvent};
pub use optimizer::{
    Accumulated, EmberOptimizer, EmberRecord, EmberState, NonFinitePolicy, PlanEntry,
};
pub use projector::{FitContext, FitProjector, ProjType, ProjectorKind, ProjectorState, Side};
pub use qlinear::{quantized_grads, QLinear, QLinearConfig};
pub use refresh::{RefreshPolicy, RefreshState};
pub use residual::{ResidualPart, ResidualRule};
pub use state::{Moment, StateDtype, StateStorage};
pub use targets::Targets;
