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

use burn::prelude::*;
use burn::record::Record;
use ember_kernels::EmberBackend;
use serde::{Deserialize, Serialize};

use crate::dct::SharedBases;
use crate::error::EmberError;
use crate::rng::SplitMix64;
use crate::svd::truncated_svd;

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
}

/// A projector stored quantized (Q-GaLore).
#[derive(Record, Clone, Debug)]
pub struct QuantizedProjector<B: Backend> {
    /// Packed codes.
    pub packed: Tensor<B, 1, Int>,
    /// One scale per group.
    pub scales: Tensor<B, 1>,
    /// One zero point per group.
    pub zeros: Tensor<B, 1>,
    /// Rows of `P`.
    pub rows: usize,
    /// Columns of `P`.
    pub cols: usize,
    /// Bits per code.
    pub bits: u32,
    /// Elements per group.
    pub group: usize,
    /// Left projector (`P` is m×r) or right (`P` is r×n).
    pub left: bool,
}

impl<B: EmberBackend> QuantizedProjector<B> {
    /// `P̂ = scale·(q − zero)`.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        B::dequantize_packed(
            self.packed.clone(),
            self.scales.clone(),
            self.zeros.clone(),
            self.bits,
            self.group,
            self.rows,
            self.cols,
        )
    }
}

/// `r` columns of a shared basis, by index.
#[derive(Record, Clone, Debug)]
pub struct Selection<B: Backend> {
    /// Column indices into the basis, in descending score order.
    pub indices: Tensor<B, 1, Int>,
    /// Left side (`R = Q[:, idx]ᵀ·G`) or right side (`R = G·Q[:, idx]`).
    pub left: bool,
    /// Size of the basis.
    pub size: usize,
    /// The basis is the DCT (`true`) or the identity (coordinates, `false`).
    pub dct: bool,
}

/// Both factors of a two-sided projector.
#[derive(Record, Clone, Debug)]
pub struct TwoSided<B: Backend> {
    /// `Uᵣ`, m×r.
    pub left: Tensor<B, 2>,
    /// `Vhᵣ`, r×n.
    pub right: Tensor<B, 2>,
}

/// The projector of one parameter, as saved in the optimizer record.
#[derive(Record, Clone, Debug)]
pub enum ProjectorState<B: Backend> {
    /// `P = Uᵣ` (m×r).
    Left(Tensor<B, 2>),
    /// `P = Vhᵣ` (r×n).
    Right(Tensor<B, 2>),
    /// `Uᵣ` and `Vhᵣ`.
    Both(TwoSided<B>),
    /// No projection.
    Identity(()),
    /// Columns of a shared DCT basis.
    Selected(Selection<B>),
    /// A quantized left or right projector.
    Quantized(QuantizedProjector<B>),
}

impl<B: EmberBackend> ProjectorState<B> {
    /// `R = down(G)`.
    pub fn down(&self, g: Tensor<B, 2>, bases: &SharedBases<B>) -> Tensor<B, 2> {
        match self {
            ProjectorState::Quantized(q) if q.left => q.dequantize().transpose().matmul(g),
            ProjectorState::Quantized(q) => g.matmul(q.dequantize().transpose()),
            ProjectorState::Selected(sel) if !sel.dct => {
                g.select(if sel.left { 0 } else { 1 }, sel.indices.clone())
            }
            ProjectorState::Selected(sel) => {
                let p = sel.columns(bases, &g.device());
                if sel.left {
                    p.transpose().matmul(g)
                } else {
                    g.matmul(p)
                }
            }
            ProjectorState::Left(p) => p.clone().transpose().matmul(g),
            ProjectorState::Right(p) => g.matmul(p.clone().transpose()),
            ProjectorState::Both(t) => t
                .left
                .clone()
                .transpose()
                .matmul(g)
                .matmul(t.right.clone().transpose()),
            ProjectorState::Identity(()) => g,
        }
    }

    /// `up(N)`, without any scale.
    pub fn up(&self, low: Tensor<B, 2>, bases: &SharedBases<B>) -> Tensor<B, 2> {
        match self {
            ProjectorState::Quantized(q) if q.left => q.dequantize().matmul(low),
            ProjectorState::Quantized(q) => low.matmul(q.dequantize()),
            ProjectorState::Selected(sel) if !sel.dct => {
                let [a, b] = low.dims();
                let (dim, shape) = if sel.left {
                    (0, [sel.size, b])
                } else {
                    (1, [a, sel.size])
                };
                Tensor::zeros(shape, &low.device()).select_assign(
                    dim,
                    sel.indices.clone(),
                    low,
                    burn::tensor::IndexingUpdateOp::Add,
                )
            }
            ProjectorState::Selected(sel) => {
                let p = sel.columns(bases, &low.device());
                if sel.left {
                    p.matmul(low)
                } else {
                    low.matmul(p.transpose())
                }
            }
            ProjectorState::Left(p) => p.clone().matmul(low),
            ProjectorState::Right(p) => low.matmul(p.clone()),
            ProjectorState::Both(t) => t.left.clone().matmul(low).matmul(t.right.clone()),
            ProjectorState::Identity(()) => low,
        }
    }

    /// The same projector as plain f32 factors, for one step's several uses: a quantized
    /// projector dequantized once, DCT columns gathered once, a bf16 projector widened once.
    /// f32 factors are returned as they are (cheap handle clones).
    pub fn materialize(&self, bases: &SharedBases<B>) -> ProjectorState<B> {
        let f32 = |p: &Tensor<B, 2>| p.clone().cast(burn::tensor::DType::F32);
        match self {
            ProjectorState::Left(p) => ProjectorState::Left(f32(p)),
            ProjectorState::Right(p) => ProjectorState::Right(f32(p)),
            ProjectorState::Both(t) => ProjectorState::Both(TwoSided {
                left: f32(&t.left),
                right: f32(&t.right),
            }),
            ProjectorState::Quantized(q) if q.left => ProjectorState::Left(q.dequantize()),
            ProjectorState::Quantized(q) => ProjectorState::Right(q.dequantize()),
            ProjectorState::Selected(sel) if sel.dct => {
                let p = sel.columns(bases, &sel.indices.device());
                if sel.left {
                    ProjectorState::Left(p)
                } else {
                    ProjectorState::Right(p.transpose())
                }
            }
            other => other.clone(),
        }
    }
}

impl<B: Backend> ProjectorState<B> {
    /// The projector with its dense factors stored as `dtype` (the state storage's projector
    /// dtype); indices and quantized codes are unchanged.
    pub fn stored_as(self, dtype: burn::tensor::DType) -> Self {
        match self {
            ProjectorState::Left(p) => ProjectorState::Left(p.cast(dtype)),
            ProjectorState::Right(p) => ProjectorState::Right(p.cast(dtype)),
            ProjectorState::Both(t) => ProjectorState::Both(TwoSided {
                left: t.left.cast(dtype),
                right: t.right.cast(dtype),
            }),
            other => other,
        }
    }

    /// Bytes held by the projector's tensors.
    pub fn bytes(&self) -> usize {
        match self {
            ProjectorState::Left(p) | ProjectorState::Right(p) => tensor_bytes(p),
            ProjectorState::Both(t) => tensor_bytes(&t.left) + tensor_bytes(&t.right),
            ProjectorState::Identity(()) => 0,
            ProjectorState::Selected(sel) => tensor_bytes(&sel.indices),
            ProjectorState::Quantized(q) => {
                tensor_bytes(&q.packed) + tensor_bytes(&q.scales) + tensor_bytes(&q.zeros)
            }
        }
    }

    /// The rank `r` of the subspace (None for the identity).
    pub fn rank(&self) -> Option<usize> {
        match self {
            ProjectorState::Left(p) => Some(p.dims()[1]),
            ProjectorState::Right(p) => Some(p.dims()[0]),
            ProjectorState::Both(t) => Some(t.left.dims()[1]),
            ProjectorState::Identity(()) => None,
            ProjectorState::Selected(sel) => Some(sel.indices.dims()[0]),
            ProjectorState::Quantized(q) => Some(if q.left { q.cols } else { q.rows }),
        }
    }

    /// The first basis vector (first column of a left projector, first row of a right one),
    /// used by Q-GaLore's lazy refresh rule.
    pub fn first_vector(&self) -> Option<Tensor<B, 1>> {
        match self {
            ProjectorState::Left(p) => Some(p.clone().slice([0..p.dims()[0], 0..1]).flatten(0, 1)),
            ProjectorState::Right(p) => Some(p.clone().slice([0..1, 0..p.dims()[1]]).flatten(0, 1)),
            ProjectorState::Both(t) => {
                let p = &t.left;
                Some(p.clone().slice([0..p.dims()[0], 0..1]).flatten(0, 1))
            }
            ProjectorState::Identity(())
            | ProjectorState::Selected(_)
            | ProjectorState::Quantized(_) => None,
        }
    }
}

impl<B: Backend> Selection<B> {
    /// `Q[:, idx]`: the selected basis columns (s×r).
    pub fn columns(&self, bases: &SharedBases<B>, device: &B::Device) -> Tensor<B, 2> {
        bases.get(self.size, device).select(1, self.indices.clone())
    }

    /// Moves the indices to `device`.
    pub fn to_device(mut self, device: &B::Device) -> Self {
        self.indices = self.indices.to_device(device);
        self
    }
}

impl<B: Backend> ProjectorState<B> {
    /// Moves every tensor to `device`.
    pub fn to_device(self, device: &B::Device) -> Self {
        match self {
            ProjectorState::Left(p) => ProjectorState::Left(p.to_device(device)),
            ProjectorState::Right(p) => ProjectorState::Right(p.to_device(device)),
            ProjectorState::Both(t) => ProjectorState::Both(TwoSided {
                left: t.left.to_device(device),
                right: t.right.to_device(device),
            }),
            ProjectorState::Identity(()) => ProjectorState::Identity(()),
            ProjectorState::Selected(sel) => ProjectorState::Selected(sel.to_device(device)),
            ProjectorState::Quantized(mut q) => {
                q.packed = q.packed.to_device(device);
                q.scales = q.scales.to_device(device);
                q.zeros = q.zeros.to_device(device);
                ProjectorState::Quantized(q)
            }
        }
    }
}

/// `(left side?, size of the projected dimension)` of a one-sided projector (`Full` is treated as
/// left; callers that cannot do two-sided reject it in `EngineConfig::validate`).
fn one_side(proj_type: ProjType, [m, n]: [usize; 2]) -> (bool, usize) {
    let left = matches!(proj_type.side(m, n), Side::Left | Side::Both);
    (left, if left { m } else { n })
}

/// Bytes of a tensor's elements.
pub fn tensor_bytes<B: Backend, const D: usize, K: burn::tensor::BasicOps<B>>(
    t: &Tensor<B, D, K>,
) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

impl ProjectorKind {
    /// Computes a fresh projector of rank `rank` from the gradient `g` (m×n). Random kinds draw
    /// from `(seed, salt, refreshes)`: `salt` identifies the parameter, `refreshes` counts its
    /// earlier refreshes, so a resumed run draws the same subspaces.
    pub fn fit<B: EmberBackend>(
        &self,
        g: &Tensor<B, 2>,
        rank: usize,
        bases: &SharedBases<B>,
        salt: u64,
        refreshes: usize,
    ) -> Result<ProjectorState<B>, EmberError> {
        self.fit_with_first(g, rank, bases, salt, refreshes)
            .map(|f| f.0)
    }

    /// [`fit`](Self::fit), also returning the float projector's first basis vector (first row
    /// of a right projector, first column of a left one) for SVD projectors: Q-GaLore's lazy
    /// refresh rule compares it across refreshes.
    pub fn fit_with_first<B: EmberBackend>(
        &self,
        g: &Tensor<B, 2>,
        rank: usize,
        bases: &SharedBases<B>,
        salt: u64,
        refreshes: usize,
    ) -> Result<(ProjectorState<B>, Option<Vec<f32>>), EmberError> {
        self.fit_warm(g, rank, bases, salt, refreshes, None)
    }

    /// [`fit_with_first`](Self::fit_with_first), with the previous projector for projectors that
    /// warm-start from it (`DeviceRange`).
    pub fn fit_warm<B: EmberBackend>(
        &self,
        g: &Tensor<B, 2>,
        rank: usize,
        bases: &SharedBases<B>,
        salt: u64,
        refreshes: usize,
        prev: Option<&ProjectorState<B>>,
    ) -> Result<(ProjectorState<B>, Option<Vec<f32>>), EmberError> {
        if let ProjectorKind::DeviceRange {
            proj_type,
            power_iters,
        } = self
        {
            let [m, n] = g.dims();
            let left = match proj_type.side(m, n) {
                Side::Left => true,
                Side::Right => false,
                Side::Both => {
                    return Err(EmberError::InvalidConfig(
                        "the device projector has no two-sided (`full`) mode".into(),
                    ))
                }
            };
            let dim = if left { m } else { n };
            let warm = match prev {
                Some(ProjectorState::Left(p)) if left && p.dims() == [m, rank] => {
                    Some(p.clone().cast(burn::tensor::DType::F32))
                }
                Some(ProjectorState::Right(p)) if !left && p.dims() == [rank, n] => {
                    Some(p.clone().cast(burn::tensor::DType::F32).transpose())
                }
                _ => None,
            };
            let device = g.device();
            let gaussian = |stream: u64| {
                let mut rng = match stream {
                    0 => SplitMix64::new(0x5eed, &[salt, refreshes as u64]),
                    k => SplitMix64::new(0x5eed, &[salt, refreshes as u64, k]),
                };
                let v: Vec<f32> = (0..dim * rank).map(|_| rng.normal() as f32).collect();
                Tensor::from_data(TensorData::new(v, [dim, rank]), &device)
            };
            let p = crate::range::fit(g, warm, gaussian, left, *power_iters);
            return Ok((
                if left {
                    ProjectorState::Left(p)
                } else {
                    ProjectorState::Right(p)
                },
                None,
            ));
        }
        if let ProjectorKind::AutoSvd(t) = self {
            let kind = if *t != ProjType::Full && !crate::dct::is_host_backend::<B>(&g.device()) {
                ProjectorKind::DeviceRange {
                    proj_type: *t,
                    power_iters: 1,
                }
            } else {
                ProjectorKind::ExactSvd(*t)
            };
            return kind.fit_warm(g, rank, bases, salt, refreshes, prev);
        }
        if let ProjectorKind::QuantizedSvd {
            bits,
            group_size,
            device: true,
            power_iters,
        } = self
        {
            let [m, n] = g.dims();
            let left = ProjType::Std.side(m, n) == Side::Left;
            let dim = if left { m } else { n };
            let warm = match prev {
                Some(ProjectorState::Quantized(q)) if q.left == left => {
                    let p = q.dequantize();
                    let p = if left { p } else { p.transpose() };
                    (p.dims() == [dim, rank]).then_some(p)
                }
                _ => None,
            };
            let device = g.device();
            let gaussian = |stream: u64| {
                let mut rng = SplitMix64::new(0x5eed, &[salt, refreshes as u64, stream]);
                let v: Vec<f32> = (0..dim * rank).map(|_| rng.normal() as f32).collect();
                Tensor::from_data(TensorData::new(v, [dim, rank]), &device)
            };
            let g32 = g.clone().cast(burn::tensor::DType::F32);
            let p = crate::range::fit(&g32, warm, gaussian, left, *power_iters);
            let first = crate::range::top_vector(&g32, &p, left, 30);
            let (rows, cols) = if left { (m, rank) } else { (rank, n) };
            let data = p.into_data().convert::<f32>();
            let values = data
                .as_slice::<f32>()
                .map_err(|e| EmberError::Internal(format!("projector to host: {e:?}")))?;
            let state = quantized_state(values, rows, cols, *bits, *group_size, left, &device)?;
            return Ok((state, Some(first)));
        }
        if let ProjectorKind::ExactSvd(_) | ProjectorKind::QuantizedSvd { .. } = self {
            return self.fit_svd(g, rank);
        }
        let state = match self {
            ProjectorKind::Identity => Ok(ProjectorState::Identity(())),
            ProjectorKind::Dct(proj_type) => {
                let [m, n] = g.dims();
                let left = match proj_type.side(m, n) {
                    Side::Left => true,
                    Side::Right => false,
                    Side::Both => {
                        return Err(EmberError::InvalidConfig(
                            "the DCT projector has no two-sided (`full`) mode".into(),
                        ))
                    }
                };
                let size = if left { m } else { n };
                let indices = if crate::dct::is_host_backend::<B>(&g.device()) {
                    // CPU backends: FFT scoring on the host beats the dense product at every
                    // size measured (docs/perf-notes.md)
                    let data = g.clone().into_data().convert::<f32>();
                    let values = data
                        .as_slice::<f32>()
                        .map_err(|e| EmberError::Internal(format!("gradient to host: {e:?}")))?;
                    let idx = crate::dct::top_r(&crate::dct::fft_scores(values, m, n, left), rank);
                    Tensor::from_data(TensorData::new(idx, [rank]), &g.device())
                } else {
                    let q = bases.get(size, &g.device());
                    // scores: ℓ1 norm of each column of G·Q (right) or row of Qᵀ·G (left)
                    B::dct_scores(g.clone(), q, left)
                        .topk_with_indices(rank, 0)
                        .1
                };
                Ok(ProjectorState::Selected(Selection {
                    indices,
                    left,
                    size,
                    dct: true,
                }))
            }
            ProjectorKind::RandomCoordinates { proj_type, seed } => {
                let (left, size) = one_side(*proj_type, g.dims());
                let mut rng = SplitMix64::new(*seed, &[salt, refreshes as u64]);
                let idx: Vec<i32> = rng
                    .sample(size, rank)
                    .into_iter()
                    .map(|i| i as i32)
                    .collect();
                let indices = Tensor::from_data(TensorData::new(idx, [rank]), &g.device());
                Ok(ProjectorState::Selected(Selection {
                    indices,
                    left,
                    size,
                    dct: false,
                }))
            }
            ProjectorKind::RandomOrthogonal { proj_type, seed } => {
                let (left, size) = one_side(*proj_type, g.dims());
                let mut rng = SplitMix64::new(*seed, &[salt, refreshes as u64]);
                let gauss = faer::Mat::<f64>::from_fn(size, rank, |_, _| rng.normal());
                let q = gauss.qr().compute_thin_Q();
                let device = g.device();
                Ok(if left {
                    let v: Vec<f32> = (0..size * rank)
                        .map(|k| q[(k / rank, k % rank)] as f32)
                        .collect();
                    ProjectorState::Left(Tensor::from_data(
                        TensorData::new(v, [size, rank]),
                        &device,
                    ))
                } else {
                    let v: Vec<f32> = (0..rank * size)
                        .map(|k| q[(k % size, k / size)] as f32)
                        .collect();
                    ProjectorState::Right(Tensor::from_data(
                        TensorData::new(v, [rank, size]),
                        &device,
                    ))
                })
            }
            ProjectorKind::ExactSvd(_)
            | ProjectorKind::AutoSvd(_)
            | ProjectorKind::QuantizedSvd { .. }
            | ProjectorKind::DeviceRange { .. } => {
                unreachable!("fitted above")
            }
        }?;
        Ok((state, None))
    }

    fn fit_svd<B: Backend>(
        &self,
        g: &Tensor<B, 2>,
        rank: usize,
    ) -> Result<(ProjectorState<B>, Option<Vec<f32>>), EmberError> {
        let [m, n] = g.dims();
        let device = g.device();
        let data = g.clone().into_data().convert::<f32>();
        let values = data
            .as_slice::<f32>()
            .map_err(|e| EmberError::Internal(format!("gradient to host: {e:?}")))?;
        let svd = truncated_svd(values, m, n, rank)?;
        let side = match self {
            ProjectorKind::ExactSvd(t) => t.side(m, n),
            _ => ProjType::Std.side(m, n),
        };
        let first: Vec<f32> = match side {
            Side::Left | Side::Both => (0..m).map(|i| svd.u[i * rank]).collect(),
            Side::Right => svd.vt[..n].to_vec(),
        };
        let left = || Tensor::<B, 2>::from_data(TensorData::new(svd.u.clone(), [m, rank]), &device);
        let right =
            || Tensor::<B, 2>::from_data(TensorData::new(svd.vt.clone(), [rank, n]), &device);
        let state = match (self, side) {
            (
                ProjectorKind::QuantizedSvd {
                    bits, group_size, ..
                },
                side,
            ) => {
                let (values, rows, cols) = match side {
                    Side::Left => (&svd.u, m, rank),
                    _ => (&svd.vt, rank, n),
                };
                quantized_state(
                    values,
                    rows,
                    cols,
                    *bits,
                    *group_size,
                    side == Side::Left,
                    &device,
                )?
            }
            (_, Side::Left) => ProjectorState::Left(left()),
            (_, Side::Right) => ProjectorState::Right(right()),
            (_, Side::Both) => ProjectorState::Both(TwoSided {
                left: left(),
                right: right(),
            }),
        };
        Ok((state, Some(first)))
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
            | ProjectorKind::DeviceRange { proj_type: t, .. } => match t.side(m, n) {
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
            | ProjectorKind::DeviceRange { proj_type: t, .. } => Some(t.side(m, n)),
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
            | ProjectorKind::DeviceRange { proj_type: t, .. } => match t.side(m, n) {
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

/// Q-GaLore's stored projector: `values` (`rows × cols`, row-major) quantized asymmetrically to
/// `bits` bits per group of `group_size` elements (−1: a group per row), on `device`.
fn quantized_state<B: Backend>(
    values: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    group_size: i64,
    left: bool,
    device: &B::Device,
) -> Result<ProjectorState<B>, EmberError> {
    let group = if group_size < 0 {
        cols
    } else {
        group_size as usize
    };
    if group == 0 || !(rows * cols).is_multiple_of(group) {
        return Err(EmberError::InvalidConfig(format!(
            "quantization group size {group_size} does not divide the {rows}x{cols} projector"
        )));
    }
    let q = crate::quant::quantize(values, group, bits);
    let g = q.scales.len();
    Ok(ProjectorState::Quantized(QuantizedProjector {
        packed: Tensor::from_data(TensorData::new(q.packed.clone(), [q.packed.len()]), device),
        scales: Tensor::from_data(TensorData::new(q.scales, [g]), device),
        zeros: Tensor::from_data(TensorData::new(q.zeros, [g]), device),
        rows,
        cols,
        bits,
        group,
        left,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use burn::backend::Flex;

    type B = Flex;

    /// `G` with singular values `0.8^i` and a little noise.
    fn decaying(m: usize, n: usize, seed: u64) -> Tensor<B, 2> {
        let mut rng = SplitMix64::new(seed, &[]);
        let k = m.min(n);
        let mut gauss = |rows: usize, cols: usize| {
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
            Tensor::<B, 2>::from_data(TensorData::new(v, [rows, cols]), &Default::default())
        };
        let u = crate::range::orthonormalize(gauss(m, k), 60);
        let v = crate::range::orthonormalize(gauss(n, k), 60);
        let noise = gauss(m, n).mul_scalar(1e-4);
        let s: Vec<f32> = (0..k).map(|i| 0.8f32.powi(i as i32)).collect();
        let s = Tensor::<B, 1>::from_data(TensorData::new(s, [k]), &Default::default());
        u.mul(s.unsqueeze()).matmul(v.transpose()) + noise
    }

    /// Q-GaLore's projector fitted on the device captures nearly the energy of the exact SVD's
    /// (both quantized to INT4), on both sides, and its first vector is the exact first singular
    /// vector up to sign; a warm refresh from the dequantized projector keeps it.
    #[test]
    fn device_quantized_projector_matches_the_exact_one() {
        let bases = SharedBases::<B>::new();
        for (m, n, r) in [(48, 96, 8), (96, 64, 8)] {
            let g = decaying(m, n, 3);
            let energy = |state: &ProjectorState<B>| -> f64 {
                let low = state.down(g.clone(), &bases);
                low.powi_scalar(2).sum().into_scalar() as f64
            };
            let kind = |device| ProjectorKind::QuantizedSvd {
                bits: 4,
                group_size: -1,
                device,
                power_iters: 1,
            };
            let (exact, exact_first) = kind(false).fit_with_first(&g, r, &bases, 1, 0).unwrap();
            let (dev, dev_first) = kind(true).fit_with_first(&g, r, &bases, 1, 0).unwrap();
            assert!(matches!(dev, ProjectorState::Quantized(_)));
            let ratio = energy(&dev) / energy(&exact);
            assert!(ratio > 0.98, "{m}x{n}: device/exact energy {ratio}");
            let (a, b) = (exact_first.unwrap(), dev_first.unwrap());
            let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let norms: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt()
                * b.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                (dot / norms).abs() > 0.99,
                "{m}x{n}: first vectors {}",
                dot / norms
            );
            // warm refresh on a slightly changed gradient
            let g2 = g.clone() + decaying(m, n, 4).mul_scalar(0.05);
            let (warm, _) = kind(true)
                .fit_warm(&g2, r, &bases, 1, 1, Some(&dev))
                .unwrap();
            let (exact2, _) = kind(false).fit_with_first(&g2, r, &bases, 1, 1).unwrap();
            let e = |s: &ProjectorState<B>| {
                s.down(g2.clone(), &bases)
                    .powi_scalar(2)
                    .sum()
                    .into_scalar() as f64
            };
            assert!(
                e(&warm) / e(&exact2) > 0.97,
                "{m}x{n}: warm {}",
                e(&warm) / e(&exact2)
            );
        }
    }
}
