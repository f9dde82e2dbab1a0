//! # Ember: memory-efficient optimizers for burn
//!
//! GaLore-class optimizers as drop-in burn optimizers. Each method lives in its own crate and is
//! re-exported here:
//!
//! * [`galore`] — GaLore-AdamW (gradient low-rank projection).
//! * [`fira`] — Fira (GaLore + norm-scaled full-rank residual, norm-growth limiter).
//! * [`dct`] — DCT-AdamW (SVD-free projection on a shared DCT basis).
//! * [`frugal`] — FRUGAL (state-full subspace + state-free residual).
//! * [`qgalore`] — Q-GaLore (quantized projector, lazy subspace updates).
//!
//! The shared engine is [`core`]; the fused GPU kernels are in [`kernels`] (the backend
//! extension trait [`EmberBackend`](kernels::EmberBackend), implemented for `flex`, burn's CubeCL
//! backends (`cuda`, `wgpu`: fused) and burn's fusion backend).

pub use ember_core as core;
pub use ember_dct as dct;
pub use ember_fira as fira;
pub use ember_frugal as frugal;
pub use ember_galore as galore;
pub use ember_kernels as kernels;
pub use ember_qgalore as qgalore;

pub mod groups;
pub mod recipe;

/// The configs and the optimizer type, for `use ember::prelude::*`.
pub mod prelude {
    pub use crate::core::{
        EmberError, EmberOptimizer, NonFinitePolicy, ProjType, StateDtype, Targets,
    };
    pub use crate::dct::DctConfig;
    pub use crate::fira::FiraConfig;
    pub use crate::frugal::FrugalConfig;
    pub use crate::galore::GaloreConfig;
    pub use crate::kernels::EmberBackend;
    pub use crate::qgalore::QGaloreConfig;
}
