//! Projectors: the part of the engine that picks the subspace `P` and maps between `G` (m×n) and
//! the low-rank gradient `R`.
//!
//! | side    | `P`          | `R = down(G)`      | `up(N)`        |
//! |---------|--------------|--------------------|----------------|
//! | left    | `Uᵣ` (m×r)   | `Pᵀ·G` (r×n)       | `P·N`          |
//! | right   | `Vhᵣ` (r×n)  | `G·Pᵀ` (m×r)       | `N·P`          |
//! | both    | `Uᵣ`, `Vhᵣ`  | `Uᵣᵀ·G·Vhᵣᵀ` (r×r) | `Uᵣ·N·Vhᵣ`     |
//! | identity| —            | `G`                | `N`            |
//!
//! The DCT projector is a left or right projector whose `P` is `r` columns of the shared DCT basis
//! `Q` ([`crate::dct`]); its state holds only their indices.

//!
//! A projector of the caller's plugs in as [`ProjectorKind::Custom`]: its fit ([`FitProjector`])
//! returns a dense one-sided `P`, which the engine then stores, projects with and back-projects
//! with as it does the exact SVD's (the fused kernels and cuBLAS included).
//!
//! Files: this one — the kinds ([`ProjectorKind`], [`ProjType`]), the caller's fit
//! ([`FitProjector`]) and the shapes and bytes they imply; `fit.rs` — computing a fresh projector
//! from a gradient (host SVD, device subspace iteration, DCT selection, random kinds, the
//! caller's); `state.rs` — the fitted projector ([`ProjectorState`]) and the two maps `down`/`up`.

use std::sync::Arc;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::EmberError;
use crate::part::BackendPart;

mod fit;
mod state;

pub use crate::state::tensor_bytes;
pub use state::{ProjectorState, QuantizedProjector, Selection, TwoSided};

/// GaLore's `proj_type`: which side of `W` the projector acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProjType {
    /// Project the larger dimension away: right projector if `m ≥ n`, else left (default).
    Std,
    /// The opposite of `Std`: left projector if `m ≥ n`, else right.
    ReverseStd,
    /// Always the left projector `Uᵣ`.
    Left,
    /// Always the right projector `Vhᵣ`.
    Right,
    /// Both sides: `R = Uᵣᵀ G Vhᵣᵀ` (r×r).
    Full,
}

/// The side a projector acts on for one parameter, once `ProjType` met its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    /// `P` is m×r.
    Left,
    /// `P` is r×n.
    Right,
    /// Both `Uᵣ` and `Vhᵣ`.
    Both,
}

impl ProjType {
    /// The side used for an `m × n` parameter (galore-torch's rule).
    pub fn side(self, m: usize, n: usize) -> Side {
        match self {
            ProjType::Std if m >= n => Side::Right,
            ProjType::Std => Side::Left,
            ProjType::ReverseStd if m >= n => Side::Left,
            ProjType::ReverseStd => Side::Right,
            ProjType::Left => Side::Left,
            ProjType::Right => Side::Right,
            ProjType::Full => Side::Both,
        }
    }
}

/// What a projector fit of the caller's is given besides the gradient.
#[derive(Debug, Clone)]
pub struct FitContext<B: Backend> {
    /// The rank `r` of the basis to return.
    pub rank: usize,
    /// The side it acts on (`Left` or `Right`; the kind's `ProjType` met the gradient's shape).
    pub side: Side,
    /// The previous `P` of this parameter (f32, the shape this fit returns), for a warm start.
    pub previous: Option<Tensor<B, 2>>,
    /// Identifies the parameter (random draws from `(salt, refreshes)` repeat on resume).
    pub salt: u64,
    /// How many times this parameter's projector was fitted before.
    pub refreshes: usize,
}

/// A projector fit of the caller's on backend `B` ([`ProjectorKind::custom`]): a dense
/// one-sided basis of the gradient's subspace.
pub trait FitProjector<B: Backend>: std::fmt::Debug + Send + Sync {
    /// `P` for the gradient `g` (m×n, in the gradient's dtype): `m × r` with orthonormal columns
    /// on the left (`R = Pᵀ·G`, `up(N) = P·N`), `r × n` with orthonormal rows on the right
    /// (`R = G·Pᵀ`, `up(N) = N·P`). An error message fails the step with it.
    fn fit(&self, g: &Tensor<B, 2>, ctx: FitContext<B>) -> Result<Tensor<B, 2>, String>;
}

/// A projector of the caller's, held for one backend, with the side rule it acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomProjector {
    /// Which side of each parameter it acts on (`Full` is not supported).
    pub proj_type: ProjType,
    part: BackendPart,
}

impl CustomProjector {
    /// The fit on `B`, or an error if it was built for another backend.
    pub fn part<B: Backend>(&self) -> Result<&dyn FitProjector<B>, EmberError> {
        self.part
            .get::<B, Arc<dyn FitProjector<B>>>()
            .map(|p| p.as_ref())
    }

    /// The name it was given.
    pub fn name(&self) -> &str {
        self.part.name()
    }
}

/// Which projector an engine uses: a named, swappable part of the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProjectorKind {
    /// Exact top-r SVD of the gradient on the host (`faer`, in f64, factors rounded to f32),
    /// sign-normalized.
    ExactSvd(ProjType),
    /// No projection: the subspace is the whole space (plain Adam; also the fallback for
    /// non-targeted parameters).
    Identity,
    /// DCT-AdamW's SVD-free projector: the `r` columns of the orthonormal DCT-II basis of the
    /// projected dimension with the largest ℓ₁ alignment scores with the gradient
    /// (`‖(G·Q)[:, j]‖₁` for the right side, `‖(Qᵀ·G)[j, :]‖₁` for the left side), in descending
    /// score order. The side follows the `ProjType` (`Full` is not supported).
    Dct(ProjType),
    /// FRUGAL's `random`: a random matrix with orthonormal columns (Gaussian, then QR), drawn
    /// from `(seed, parameter, refresh count)` at each refresh.
    RandomOrthogonal {
        /// Side.
        proj_type: ProjType,
        /// Seed.
        seed: u64,
    },
    /// The default of GaLore, Fira and FRUGAL's SVD projection: the exact SVD on CPU backends
    /// (flex, ndarray: what the conformance tests check), the device projector
    /// ([`DeviceRange`](Self::DeviceRange), one power iteration per refresh) on GPU backends,
    /// where an exact SVD would copy every gradient to the host (minutes per refresh for
    /// LLaMA-7B). Two-sided (`full`) projection takes the exact SVD everywhere.
    AutoSvd(ProjType),
    /// Q-GaLore's projector: exact SVD (orientation `std`; or fitted on the device, `device`), then stored quantized
    /// asymmetrically to `bits` bits per group of `group_size` elements of the flattened `P`
    /// (−1: per row of `P`), packed `32/bits` codes per `i32`; dequantized at every use.
    QuantizedSvd {
        /// 4 or 8.
        bits: u32,
        /// Elements per quantization group, or −1 for one group per row of `P`.
        group_size: i64,
        /// Fit `P` on the device ([`crate::range::fit`], warm-started from the dequantized
        /// previous projector) instead of the exact SVD on the host; the first singular vector
        /// of the lazy rule is then the top singular vector of `G` inside the fitted subspace
        /// (power iteration on the device). `P` goes to the host only to be quantized.
        device: bool,
        /// Power iterations per refresh of the device fit.
        power_iters: usize,
    },
    /// The device-side projector ([`crate::range`]): subspace iteration warm-started from the
    /// previous projector (a seeded Gaussian start the first time, with 2 extra iterations),
    /// Newton–Schulz orthonormalization; no host copy of the gradient. Usable by every SVD-based
    /// method in place of `ExactSvd` (`Full` is not supported).
    DeviceRange {
        /// Side.
        proj_type: ProjType,
        /// Power iterations per refresh (warm start).
        power_iters: usize,
    },
    /// FRUGAL's `randperm` / coordinates: `r` random coordinates (columns for the right side,
    /// rows for the left side) of `G`, drawn from `(seed, parameter, refresh count)`; `down`
    /// gathers them, `up` scatters into zeros.
    RandomCoordinates {
        /// Side.
        proj_type: ProjType,
        /// Seed.
        seed: u64,
    },
    /// A projector of the caller's ([`ProjectorKind::custom`]): a dense one-sided basis fitted by
    /// its [`FitProjector`] at each refresh, then used as the exact SVD's is. A config holding
    /// one does not serialize (serde reports the variant as skipped); the fitted `P` in the
    /// parameter's record does.
    #[serde(skip)]
    Custom(CustomProjector),
}

impl ProjectorKind {
    /// A projector of the caller's for the backend `B` (the optimizer's inner backend: `Flex` for
    /// an optimizer of `Autodiff<Flex>`) acting on the side `proj_type` gives each parameter.
    pub fn custom<B: Backend, P: FitProjector<B> + 'static>(
        name: impl Into<String>,
        proj_type: ProjType,
        fit: P,
    ) -> Self {
        let fit: Arc<dyn FitProjector<B>> = Arc::new(fit);
        ProjectorKind::Custom(CustomProjector {
            proj_type,
            part: BackendPart::new::<B, _>(name, fit),
        })
    }

    /// The shape of `R = down(G)` for an `m × n` parameter at rank `r`.
    pub fn low_rank_shape(&self, m: usize, n: usize, r: usize) -> [usize; 2] {
        match self {
            ProjectorKind::Identity => [m, n],
            ProjectorKind::ExactSvd(t)
            | ProjectorKind::AutoSvd(t)
            | ProjectorKind::Dct(t)
            | ProjectorKind::RandomOrthogonal { proj_type: t, .. }
            | ProjectorKind::RandomCoordinates { proj_type: t, .. }
            | ProjectorKind::DeviceRange { proj_type: t, .. }
            | ProjectorKind::Custom(CustomProjector { proj_type: t, .. }) => match t.side(m, n) {
                Side::Left => [r, n],
                Side::Right => [m, r],
                Side::Both => [r, r],
            },
            ProjectorKind::QuantizedSvd { .. } => match ProjType::Std.side(m, n) {
                Side::Left => [r, n],
                _ => [m, r],
            },
        }
    }

    /// The side of an `m × n` parameter this projector acts on (None: identity).
    pub fn side(&self, m: usize, n: usize) -> Option<Side> {
        match self {
            ProjectorKind::Identity => None,
            ProjectorKind::ExactSvd(t)
            | ProjectorKind::AutoSvd(t)
            | ProjectorKind::Dct(t)
            | ProjectorKind::RandomOrthogonal { proj_type: t, .. }
            | ProjectorKind::RandomCoordinates { proj_type: t, .. }
            | ProjectorKind::DeviceRange { proj_type: t, .. }
            | ProjectorKind::Custom(CustomProjector { proj_type: t, .. }) => Some(t.side(m, n)),
            ProjectorKind::QuantizedSvd { .. } => Some(ProjType::Std.side(m, n)),
        }
    }

    /// Bytes of the projector state for an `m × n` parameter at rank `r` (f32 matrices; DCT:
    /// `r` indices of `index_bytes` each, the shared basis not included).
    pub fn projector_bytes(&self, m: usize, n: usize, r: usize, index_bytes: usize) -> usize {
        match self {
            ProjectorKind::Dct(_) | ProjectorKind::RandomCoordinates { .. } => r * index_bytes,
            ProjectorKind::QuantizedSvd {
                bits, group_size, ..
            } => {
                // packed codes (whole i32 words) + an f32 scale and zero per group
                let (rows, cols) = match ProjType::Std.side(m, n) {
                    Side::Left => (m, r),
                    _ => (r, n),
                };
                let numel = rows * cols;
                let group = if *group_size < 0 {
                    cols
                } else {
                    *group_size as usize
                };
                let per = 32 / *bits as usize;
                4 * numel.div_ceil(per) + 8 * (numel / group.max(1))
            }
            _ => 4 * self.projector_elements(m, n, r),
        }
    }

    /// Elements of the projector for an `m × n` parameter at rank `r`.
    pub fn projector_elements(&self, m: usize, n: usize, r: usize) -> usize {
        match self {
            ProjectorKind::Identity => 0,
            ProjectorKind::Dct(_) | ProjectorKind::RandomCoordinates { .. } => r,
            ProjectorKind::ExactSvd(t)
            | ProjectorKind::AutoSvd(t)
            | ProjectorKind::RandomOrthogonal { proj_type: t, .. }
            | ProjectorKind::DeviceRange { proj_type: t, .. }
            | ProjectorKind::Custom(CustomProjector { proj_type: t, .. }) => match t.side(m, n) {
                Side::Left => m * r,
                Side::Right => r * n,
                Side::Both => m * r + r * n,
            },
            ProjectorKind::QuantizedSvd { .. } => match ProjType::Std.side(m, n) {
                Side::Left => m * r,
                _ => r * n,
            },
        }
    }
}
