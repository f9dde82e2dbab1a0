//! Rotary position embedding as one op, with the move of the heads axis that attention needs:
//! `rotary_heads(X)` takes a projection's output viewed as `[batch, seq, heads, head_dim]` and
//! returns `[batch, heads, seq, head_dim]`, each pair `(x₂ᵢ, x₂ᵢ₊₁)` of a head at position `t`
//! rotated by the angle `t·θᵢ` (burn's `RotaryEncoding` table `freq_complex[t, j] = (cos, sin)`,
//! its interleaved-pairs convention):
//!
//! ```text
//! y₂ᵢ = x₂ᵢ·cos − x₂ᵢ₊₁·sin        y₂ᵢ₊₁ = x₂ᵢ₊₁·cos + x₂ᵢ·sin
//! ```
//!
//! computed in f32 and rounded once to `X`'s dtype. A rotation's transpose is its inverse, so the
//! backward pass is the same op with `sin → −sin`, moving the heads axis back:
//! `dX = rotary⁻¹(dYᵀ)`. Composed from burn's ops (a cast, a copy of the strided view, a
//! `[2, 4]` sign table uploaded on every call, a batched product, a product with the table, a
//! sum and a cast back) the forward pass is about ten kernels and its backward about twelve; as
//! one op the CubeCL backends run one kernel each way ([`EmberBackend::rotary`]), reading the
//! strided view in place and writing the contiguous layout the next op reads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor};

use crate::model::{unwrap, wrap};
use crate::EmberBackend;

/// The portable rotation of `x` (any 4-D layout; positions along `seq_axis`, 1 or 2, pairs along
/// the last axis) by `freq` (`[max_seq, head_dim, 2]`, burn's `freq_complex`): burn's
/// `RotaryEncoding::forward` in f32 (with the transposed sign table where `inverse`), the result
/// in `x`'s dtype and logical shape.
pub fn composed<B: Backend>(
    x: Tensor<B, 4>,
    freq: Tensor<B, 3>,
    seq_axis: usize,
    inverse: bool,
) -> Tensor<B, 4> {
    let x = if seq_axis == 1 { x.swap_dims(1, 2) } else { x };
    let [a, b, t, d] = x.dims();
    let dtype = x.dtype();
    let sign = if inverse {
        [[1.0, 0.0, 0.0, -1.0], [0.0, 1.0, 1.0, 0.0]]
    } else {
        [[1.0, 0.0, 0.0, 1.0], [0.0, -1.0, 1.0, 0.0]]
    };
    let sign = Tensor::<B, 2>::from_floats(sign, &x.device());
    let rotated: Tensor<B, 4> = x
        .cast(DType::F32)
        .reshape([a * b, t, d / 2, 2])
        .matmul(sign.unsqueeze())
        .reshape([a * b, t, d, 2])
        * freq.cast(DType::F32).narrow(0, 0, t).unsqueeze();
    let out = rotated.sum_dim(3).reshape([a, b, t, d]).cast(dtype);
    if seq_axis == 1 {
        out.swap_dims(1, 2)
    } else {
        out
    }
}

/// The forward op of the inner backend: `[b, t, h, d]` → rotated `[b, h, t, d]`.
pub(crate) fn heads<B: EmberBackend>(x: FloatTensor<B>, freq: FloatTensor<B>) -> FloatTensor<B> {
    unwrap(B::rotary(
        wrap::<B, 4>(x).swap_dims(1, 2),
        wrap(freq),
        2,
        false,
    ))
}

/// The backward node: keeps the table.
#[derive(Debug)]
struct RotaryBackward;

impl<B: EmberBackend> Backward<B, 1> for RotaryBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = wrap::<B, 4>(grads.consume::<B>(&ops.node));
        if let Some(node) = node {
            let dx = B::rotary(dy.swap_dims(1, 2), wrap(ops.state), 1, true);
            grads.register::<B>(node.id, unwrap(dx));
        }
    }
}

/// The op under `Autodiff`: the inner backend's rotation, with the backward node above (the table
/// is a constant: no gradient).
pub(crate) fn tracked<B: EmberBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    freq: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let freq = freq.primitive;
    match RotaryBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = heads::<B>(x.primitive, freq.clone());
            prep.finish(freq, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(heads::<B>(x.primitive, freq)),
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::RotaryEncodingConfig;
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::model::rotary_heads;

    type A = Autodiff<Flex>;

    /// The op equals burn's `RotaryEncoding` on the heads-first view, and its gradient equals
    /// autodiff's through burn's composition.
    #[test]
    fn equals_burns_rotary_encoding_and_its_gradient() {
        let device = Default::default();
        let (b, t, h, d) = (2, 5, 3, 8);
        let x = Tensor::<Flex, 4>::random([b, t, h, d], Distribution::Normal(0.0, 1.0), &device);
        let c = Tensor::<Flex, 4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
        let rope = RotaryEncodingConfig::new(16, d).init::<A>(&device);
        let run = |ours: bool| {
            let x = Tensor::<A, 4>::from_inner(x.clone()).require_grad();
            let y = if ours {
                rotary_heads(x.clone(), rope.freq_complex.clone())
            } else {
                rope.forward(x.clone().swap_dims(1, 2))
            };
            let grads = (y.clone() * Tensor::from_inner(c.clone())).sum().backward();
            (
                y.inner().into_data(),
                x.grad(&grads).expect("dX").into_data(),
            )
        };
        let (y1, dx1) = run(true);
        let (y2, dx2) = run(false);
        let tol = Tolerance::<f32>::absolute(1e-5);
        y1.assert_approx_eq::<f32>(&y2, tol);
        dx1.assert_approx_eq::<f32>(&dx2, tol);
    }
}
