//! The SwiGLU gate as one op: `Z = silu(G)·U` (`silu(g) = g·σ(g)`), LLaMA's MLP between its
//! `gate`/`up` and `down` products. Its backward pass, in f32:
//!
//! ```text
//! dU = dZ·silu(G)        dG = dZ·U·σ(G)·(1 + G·(1 − σ(G)))
//! ```
//!
//! Composed from burn's ops the forward pass is three kernels (σ, two products) and its backward
//! about eight, and autodiff keeps `σ(G)` besides `G` and `U`; as one op the CubeCL backends run
//! one kernel each way ([`EmberBackend::swiglu`]/[`EmberBackend::swiglu_backward`]) and the backward
//! keeps `G` and `U` only. The fused kernel rounds `silu(G)` to the inputs' dtype before the
//! product, as PyTorch's `act_fn(gate) * up` does in bf16.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor};

use crate::model::{unwrap, wrap};
use crate::EmberBackend;

/// The portable forward pass: `silu(G)·U` of burn's ops.
pub fn composed<B: Backend>(g: Tensor<B, 2>, u: Tensor<B, 2>) -> Tensor<B, 2> {
    silu(g) * u
}

/// The portable backward pass (see the [module docs](self)): `(dG, dU)` in the inputs' dtypes.
pub fn composed_backward<B: Backend>(
    g: Tensor<B, 2>,
    u: Tensor<B, 2>,
    dz: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (g_dtype, u_dtype) = (g.dtype(), u.dtype());
    let (g, u, dz) = (g.cast(DType::F32), u.cast(DType::F32), dz.cast(DType::F32));
    let s = sigmoid(g.clone());
    let du = dz.clone() * g.clone() * s.clone();
    let dg = dz * u * s.clone() * (g * (s.neg() + 1.0) + 1.0);
    (dg.cast(g_dtype), du.cast(u_dtype))
}

/// The backward node: keeps `G` and `U`.
#[derive(Debug)]
struct SwigluBackward;

impl<B: EmberBackend> Backward<B, 2> for SwigluBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_g, node_u] = ops.parents;
        let dz = wrap::<B, 2>(grads.consume::<B>(&ops.node));
        let (g, u) = ops.state;
        let (dg, du) = B::swiglu_backward(wrap(g), wrap(u), dz);
        if let Some(node) = node_g {
            grads.register::<B>(node.id, unwrap(dg));
        }
        if let Some(node) = node_u {
            grads.register::<B>(node.id, unwrap(du));
        }
    }
}

/// The op under `Autodiff`: the inner backend's gate, with the backward node above.
pub(crate) fn tracked<B: EmberBackend, C: CheckpointStrategy>(
    g: FloatTensor<Autodiff<B, C>>,
    u: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let forward = |g, u| unwrap(B::swiglu(wrap(g), wrap(u)));
    match SwigluBackward
        .prepare::<C>([g.node.clone(), u.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = forward(g.primitive.clone(), u.primitive.clone());
            prep.finish((g.primitive, u.primitive), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(g.primitive, u.primitive)),
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::model::swiglu;

    type A = Autodiff<Flex>;

    /// The op's output and gradients equal burn's `silu(G)·U` differentiated by autodiff.
    #[test]
    fn gradients_equal_the_composition() {
        let device = Default::default();
        let make = || Tensor::<Flex, 2>::random([5, 9], Distribution::Normal(0.0, 3.0), &device);
        let (g, u, c) = (make(), make(), make());
        let run = |ours: bool| {
            let g = Tensor::<A, 2>::from_inner(g.clone()).require_grad();
            let u = Tensor::<A, 2>::from_inner(u.clone()).require_grad();
            let z = if ours {
                swiglu(g.clone(), u.clone())
            } else {
                super::composed(g.clone(), u.clone())
            };
            let grads = (z.clone() * Tensor::from_inner(c.clone())).sum().backward();
            (
                z.inner().into_data(),
                g.grad(&grads).expect("dG").into_data(),
                u.grad(&grads).expect("dU").into_data(),
            )
        };
        let (z1, dg1, du1) = run(true);
        let (z2, dg2, du2) = run(false);
        let tol = Tolerance::<f32>::absolute(1e-5);
        z1.assert_approx_eq::<f32>(&z2, tol);
        dg1.assert_approx_eq::<f32>(&dg2, tol);
        du1.assert_approx_eq::<f32>(&du2, tol);
    }
}
