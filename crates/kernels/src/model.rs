//! The ops of a model's forward pass that Ember provides, as one trait of the backend:
//! [`causal_attention`] (whose backward pass recomputes the attention matrix, [`crate::attention`])
//! and [`dense`], the product `X·W` of a linear layer (whose products, forward and backward, run
//! on the projection product of [`EmberBackend`]: cuBLAS on CUDA, [`crate::dense`]).
//!
//! Plain backends compose them from burn's ops (and the backend's own products); under burn's
//! `Autodiff` each is one node with its own backward pass.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::EmberBackend;

/// The model-side ops of a backend (see the [module docs](self)).
pub trait ModelOps: Backend {
    /// `softmax(scale·QKᵀ + M)·V` (causal) for `q`, `k`, `v` of shape
    /// `[batch, heads, seq, head_dim]`.
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;

    /// `X·W` for `x` `[rows, in]` and `w` `[in, out]` of one dtype.
    fn dense(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `softmax(scale·QKᵀ + M)·V` (causal; `[batch, heads, seq, head_dim]`): see
/// [`crate::attention`].
pub fn causal_attention<B: ModelOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    wrap(B::causal_attention(unwrap(q), unwrap(k), unwrap(v), scale))
}

/// `X·W` (`[rows, in]·[in, out]`), the product of a linear layer: see [`crate::dense`].
///
/// # Panics
/// Where burn's `matmul` would: inner sizes that differ.
pub fn dense<B: ModelOps>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    let ([_, k], [k2, _]) = (x.dims(), w.dims());
    assert_eq!(k, k2, "dense: X is [_, {k}] but W is [{k2}, _]");
    wrap(B::dense(unwrap(x), unwrap(w)))
}

impl<B: EmberBackend> ModelOps for B {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        unwrap(crate::attention::composed(
            wrap::<B, 4>(q),
            wrap(k),
            wrap(v),
            scale,
        ))
    }

    fn dense(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        unwrap(B::projection_matmul(wrap(x), wrap(w)))
    }
}

impl<B: EmberBackend, C: CheckpointStrategy> ModelOps for Autodiff<B, C> {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        crate::attention::tracked::<B, C>(q, k, v, scale)
    }

    fn dense(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::dense::tracked::<B, C>(x, w)
    }
}

pub(crate) fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn unwrap<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}
