//! The ops of a model's forward pass that Ember provides, as one trait of the backend:
//! [`causal_attention`] (whose backward pass recomputes the attention matrix, [`crate::attention`]),
//! [`dense`], the product `X·W` of a linear layer (whose products, forward and backward, run
//! on the projection product of [`EmberBackend`]: cuBLAS on CUDA, [`crate::dense`]), and the
//! element-wise layers of a LLaMA block, each one kernel each way on the CubeCL backends:
//! [`rms_norm`] ([`crate::norm`]), [`rotary_heads`] ([`crate::rotary`]) and [`swiglu`]
//! ([`crate::swiglu`]).
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

    /// RMSNorm of the rows of `x` `[rows, cols]` scaled by `gamma` `[cols]`.
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self>;

    /// `silu(G)·U` for `g`, `u` of one shape `[rows, cols]`.
    fn swiglu(g: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The rotary embedding of `x` `[batch, seq, heads, head_dim]` by the table `freq`
    /// (`[max_seq, head_dim, 2]`), as `[batch, heads, seq, head_dim]`.
    fn rotary_heads(x: FloatTensor<Self>, freq: FloatTensor<Self>) -> FloatTensor<Self>;
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

/// RMSNorm of the rows of `x` (`[rows, cols]`) scaled by `gamma` (`[cols]`): see [`crate::norm`].
///
/// # Panics
/// Where `gamma` does not have one value per column.
pub fn rms_norm<B: ModelOps>(x: Tensor<B, 2>, gamma: Tensor<B, 1>, epsilon: f64) -> Tensor<B, 2> {
    let ([_, cols], [n]) = (x.dims(), gamma.dims());
    assert_eq!(
        cols, n,
        "rms_norm: X has {cols} columns but γ has {n} values"
    );
    wrap(B::rms_norm(unwrap(x), unwrap(gamma), epsilon))
}

/// `silu(G)·U` (one shape): see [`crate::swiglu`].
///
/// # Panics
/// Where the shapes differ.
pub fn swiglu<B: ModelOps>(g: Tensor<B, 2>, u: Tensor<B, 2>) -> Tensor<B, 2> {
    assert_eq!(
        g.dims(),
        u.dims(),
        "swiglu: G is {:?} but U is {:?}",
        g.dims(),
        u.dims()
    );
    wrap(B::swiglu(unwrap(g), unwrap(u)))
}

/// The rotary embedding of `x` (`[batch, seq, heads, head_dim]`) by burn's table `freq`
/// (`RotaryEncoding::freq_complex`, `[max_seq, head_dim, 2]`), returned heads first
/// (`[batch, heads, seq, head_dim]`): see [`crate::rotary`].
///
/// # Panics
/// Where the table is shorter than the sequence, or its head size is not `x`'s (even) one.
pub fn rotary_heads<B: ModelOps>(x: Tensor<B, 4>, freq: Tensor<B, 3>) -> Tensor<B, 4> {
    let ([_, t, _, d], [max_seq, fd, two]) = (x.dims(), freq.dims());
    assert!(
        t <= max_seq && fd == d && two == 2 && d % 2 == 0,
        "rotary_heads: X is [_, {t}, _, {d}] but the table is [{max_seq}, {fd}, {two}] \
         (it needs at least {t} positions of an even head size {d})"
    );
    wrap(B::rotary_heads(unwrap(x), unwrap(freq)))
}

impl<B: EmberBackend> ModelOps for B {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        unwrap(crate::attention::forward(
            wrap::<B, 4>(q),
            wrap(k),
            wrap(v),
            scale,
        ))
    }

    fn dense(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        unwrap(B::projection_matmul(wrap(x), wrap(w)))
    }

    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self> {
        unwrap(B::rms_norm(wrap(x), wrap(gamma), epsilon))
    }

    fn swiglu(g: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        unwrap(B::swiglu(wrap(g), wrap(u)))
    }

    fn rotary_heads(x: FloatTensor<Self>, freq: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::rotary::heads::<B>(x, freq)
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

    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self> {
        crate::norm::tracked::<B, C>(x, gamma, epsilon)
    }

    fn swiglu(g: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::swiglu::tracked::<B, C>(g, u)
    }

    fn rotary_heads(x: FloatTensor<Self>, freq: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::rotary::tracked::<B, C>(x, freq)
    }
}

pub(crate) fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn unwrap<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}
