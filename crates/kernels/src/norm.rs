//! RMSNorm as one op: `Y = (X·r)·γ` with `r = 1/√(mean(X²) + ε)` per row, `r` in f32. The fused
//! kernel computes `X·r` in f32 and rounds it to the input's dtype before scaling by `γ` (HF
//! transformers' `LlamaRMSNorm`); the portable path is burn's `RmsNorm` (`X / rms` in the input's
//! dtype) — the same in f32 up to rounding. Its backward pass, with `N = X·r`, in f32:
//!
//! ```text
//! dγ = Σ_rows dY ∘ N        dX = r·(dY∘γ − N·mean(dY∘γ∘N))
//! ```
//!
//! Composed from burn's ops (burn's `RmsNorm`) the forward pass is about nine kernels and its
//! backward through autodiff about twenty, each keeping a row-sized temporary; as one op the
//! CubeCL backends run one kernel forward and two backward
//! ([`EmberBackend::rms_norm`]/[`EmberBackend::rms_norm_backward`]), and the backward keeps only
//! `X` and `γ`.

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

/// The portable forward pass: burn's `RmsNorm` on rows `[rows, cols]` (`r` in f32, `X·r` and the
/// scaling in `X`'s dtype).
pub fn composed<B: Backend>(x: Tensor<B, 2>, gamma: Tensor<B, 1>, epsilon: f64) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let rms = (x.clone().cast(DType::F32).square().mean_dim(1) + epsilon).sqrt();
    (x / rms.cast(dtype)) * gamma.unsqueeze()
}

/// The portable backward pass (see the [module docs](self)): `(dX, dγ)` in the dtypes of `X`
/// and `γ`, computed in f32.
pub fn composed_backward<B: Backend>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    dy: Tensor<B, 2>,
    epsilon: f64,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let (x_dtype, g_dtype) = (x.dtype(), gamma.dtype());
    let cols = x.dims()[1] as f64;
    let x = x.cast(DType::F32);
    let dy = dy.cast(DType::F32);
    let r = (x.clone().square().mean_dim(1) + epsilon).sqrt().recip();
    let n = x * r.clone();
    let dgamma = (dy.clone() * n.clone()).sum_dim(0).squeeze_dim::<1>(0);
    let dn = dy * gamma.cast(DType::F32).unsqueeze();
    let mean = (dn.clone() * n.clone()).sum_dim(1).div_scalar(cols);
    let dx = (dn - n * mean) * r;
    (dx.cast(x_dtype), dgamma.cast(g_dtype))
}

/// The backward node: keeps `X`, `γ` and `ε`.
#[derive(Debug)]
struct RmsNormBackward;

impl<B: EmberBackend> Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma] = ops.parents;
        let dy = wrap::<B, 2>(grads.consume::<B>(&ops.node));
        let (x, gamma, epsilon) = ops.state;
        let (dx, dgamma) = B::rms_norm_backward(wrap(x), wrap(gamma), dy, epsilon);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, unwrap(dx));
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, unwrap(dgamma));
        }
    }
}

/// The op under `Autodiff`: the inner backend's RMSNorm, with the backward node above.
pub(crate) fn tracked<B: EmberBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    epsilon: f64,
) -> FloatTensor<Autodiff<B, C>> {
    let forward = |x, gamma| unwrap(B::rms_norm(wrap(x), wrap(gamma), epsilon));
    match RmsNormBackward
        .prepare::<C>([x.node.clone(), gamma.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = forward(x.primitive.clone(), gamma.primitive.clone());
            prep.finish((x.primitive, gamma.primitive, epsilon), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, gamma.primitive)),
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::model::rms_norm;

    type A = Autodiff<Flex>;

    /// The op's output and gradients equal burn's `RmsNorm` differentiated by autodiff.
    #[test]
    fn gradients_equal_burns_rms_norm() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::random([7, 12], Distribution::Normal(0.0, 2.0), &device);
        let gamma = Tensor::<Flex, 1>::random([12], Distribution::Normal(1.0, 0.5), &device);
        let c = Tensor::<Flex, 2>::random([7, 12], Distribution::Normal(0.0, 1.0), &device);
        let run = |ours: bool| {
            let x = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
            let gamma = Tensor::<A, 1>::from_inner(gamma.clone()).require_grad();
            let y = if ours {
                rms_norm(x.clone(), gamma.clone(), 1e-5)
            } else {
                super::composed(x.clone(), gamma.clone(), 1e-5)
            };
            let grads = (y.clone() * Tensor::from_inner(c.clone())).sum().backward();
            (
                y.inner().into_data(),
                x.grad(&grads).expect("dX").into_data(),
                gamma.grad(&grads).expect("dγ").into_data(),
            )
        };
        let (y1, dx1, dg1) = run(true);
        let (y2, dx2, dg2) = run(false);
        let tol = Tolerance::<f32>::absolute(1e-5);
        y1.assert_approx_eq::<f32>(&y2, tol);
        dx1.assert_approx_eq::<f32>(&dx2, tol);
        dg1.assert_approx_eq::<f32>(&dg2, tol);
    }
}
