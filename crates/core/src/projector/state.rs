//! The fitted projector: its stored forms and the maps `down(G)` and `up(N)`.

use burn::prelude::*;
use burn::record::Record;
use ember_kernels::{Basis, EmberBackend};

use crate::dct::SharedBases;
use crate::error::EmberError;
use crate::state::tensor_bytes;

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
    /// `R = down(G)`. A dense projector (SVD factors, dequantized codes, gathered DCT columns)
    /// projects through [`Basis::down`], the one definition of the product; index selection and
    /// the two-sided projection are their own maps.
    pub fn down(&self, g: Tensor<B, 2>, bases: &SharedBases<B>) -> Tensor<B, 2> {
        match self {
            ProjectorState::Selected(sel) if !sel.dct => {
                g.select(if sel.left { 0 } else { 1 }, sel.indices.clone())
            }
            ProjectorState::Both(t) => B::projection_matmul(
                B::projection_matmul(t.left.clone().transpose(), g),
                t.right.clone().transpose(),
            ),
            ProjectorState::Identity(()) => g,
            dense => {
                let dtype = g.dtype();
                dense
                    .dense_basis(bases, dtype)
                    .expect("a dense projector")
                    .down(g)
            }
        }
    }

    /// `up(N)`, without any scale ([`Basis::up`] for a dense projector).
    pub fn up(&self, low: Tensor<B, 2>, bases: &SharedBases<B>) -> Tensor<B, 2> {
        match self {
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
            ProjectorState::Both(t) => {
                B::projection_matmul(B::projection_matmul(t.left.clone(), low), t.right.clone())
            }
            ProjectorState::Identity(()) => low,
            dense => {
                let dtype = low.dtype();
                dense
                    .dense_basis(bases, dtype)
                    .expect("a dense projector")
                    .up(low)
            }
        }
    }

    /// A dense projector (left, right, quantized, DCT columns) as the kernels' [`Basis`],
    /// materialized for products with a `dtype` operand (a factor stored in that dtype is kept
    /// in it, any other is widened to f32); `None` for index selection, two-sided and identity.
    pub fn dense_basis(
        &self,
        bases: &SharedBases<B>,
        dtype: burn::tensor::DType,
    ) -> Option<Basis<B>> {
        self.materialize_keeping(bases, Some(dtype)).basis()
    }

    /// The same projector as plain f32 factors, for one step's several uses: a quantized
    /// projector dequantized once, DCT columns gathered once, a bf16 projector widened once.
    /// f32 factors are returned as they are (cheap handle clones).
    pub fn materialize(&self, bases: &SharedBases<B>) -> ProjectorState<B> {
        self.materialize_keeping(bases, None)
    }

    /// [`materialize`](Self::materialize), except that dense factors stored in `keep` stay in
    /// it (a bf16 projector for a step whose products take bf16 as it is: no widening cast and
    /// no rounding back, the same values).
    pub fn materialize_keeping(
        &self,
        bases: &SharedBases<B>,
        keep: Option<burn::tensor::DType>,
    ) -> ProjectorState<B> {
        let f32 = |p: &Tensor<B, 2>| {
            if keep == Some(p.dtype()) {
                p.clone()
            } else {
                p.clone().cast(burn::tensor::DType::F32)
            }
        };
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
    /// A one-sided projector's factor as the kernels' [`Basis`] (`Left`: `P` m×r, `Right`: `P`
    /// r×n), as stored; `None` for the other forms ([`materialize`](Self::materialize) first
    /// turns quantized and DCT projectors into one-sided ones).
    pub fn basis(&self) -> Option<Basis<B>> {
        match self {
            ProjectorState::Left(p) => Some(Basis {
                p: p.clone(),
                left: true,
            }),
            ProjectorState::Right(p) => Some(Basis {
                p: p.clone(),
                left: false,
            }),
            _ => None,
        }
    }

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

/// Q-GaLore's stored projector: `values` (`rows × cols`, row-major) quantized asymmetrically to
/// `bits` bits per group of `group_size` elements (−1: a group per row), on `device`.
pub(super) fn quantized_state<B: Backend>(
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
