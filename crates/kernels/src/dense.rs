//! The product of a linear layer, `Y = X·W` (`X`: `[rows, in]`, `W`: `[in, out]`), with its
//! backward pass on the backend's projection product ([`EmberBackend::projection_matmul`]):
//!
//! ```text
//! dX = dY·Wᵀ        dW = Xᵀ·dY
//! ```
//!
//! On CUDA all three products are cuBLAS GEMMs on burn's buffers (`Wᵀ` and `Xᵀ` read in place as
//! transposed operands): bf16 operands on bf16 tensor cores with f32 accumulation, f32 ones on
//! TF32 tensor cores — the precision of burn's own matmul there — where burn's matmul reached
//! 35–90 TFLOP/s at LLaMA's shapes (`docs/perf-notes.md`). Elsewhere (and with
//! `EMBER_CUBLAS=off`, or under [`crate::vendor_gemm_min_macs`]) the products are burn's matmul,
//! and the op is burn's `matmul` with its own backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use crate::model::{unwrap, wrap};
use crate::EmberBackend;

/// The backward node: keeps `X` where `W` needs a gradient and `W` where `X` does.
#[derive(Debug)]
struct DenseBackward;

impl<B: EmberBackend> Backward<B, 2> for DenseBackward {
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = wrap::<B, 2>(grads.consume::<B>(&ops.node));
        let (x, w) = ops.state;
        match (node_x.zip(w), node_w.zip(x)) {
            // both: one ordering window for the two products on CUDA
            (Some((nx, w)), Some((nw, x))) => {
                let (dx, dw) = B::projection_matmul_pair(
                    (dy.clone(), wrap::<B, 2>(w).transpose()),
                    (wrap::<B, 2>(x).transpose(), dy),
                );
                grads.register::<B>(nx.id, unwrap(dx));
                grads.register::<B>(nw.id, unwrap(dw));
            }
            (Some((nx, w)), None) => {
                let dx = B::projection_matmul(dy, wrap::<B, 2>(w).transpose());
                grads.register::<B>(nx.id, unwrap(dx));
            }
            (None, Some((nw, x))) => {
                let dw = B::projection_matmul(wrap::<B, 2>(x).transpose(), dy);
                grads.register::<B>(nw.id, unwrap(dw));
            }
            (None, None) => {}
        }
    }
}

/// The op under `Autodiff`: the inner backend's product, with the backward node above.
pub(crate) fn tracked<B: EmberBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    w: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
    let product = |x, w| unwrap(B::projection_matmul(wrap(x), wrap(w)));
    match DenseBackward
        .prepare::<C>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = (
                w_tracked.then(|| x.primitive.clone()),
                x_tracked.then(|| w.primitive.clone()),
            );
            prep.finish(state, product(x.primitive, w.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(product(x.primitive, w.primitive)),
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::model::dense;

    type A = Autodiff<Flex>;

    /// The op's product and gradients equal burn's `matmul` under autodiff.
    #[test]
    fn gradients_equal_burns_matmul() {
        let device = Default::default();
        let make =
            |s: [usize; 2]| Tensor::<Flex, 2>::random(s, Distribution::Normal(0.0, 1.0), &device);
        let (x, w, c) = (make([7, 5]), make([5, 3]), make([7, 3]));
        let run = |ours: bool, track_x: bool| {
            let x = Tensor::<A, 2>::from_inner(x.clone());
            let x = if track_x { x.require_grad() } else { x };
            let w = Tensor::<A, 2>::from_inner(w.clone()).require_grad();
            let y = if ours {
                dense(x.clone(), w.clone())
            } else {
                x.clone().matmul(w.clone())
            };
            // a loss that weighs every output differently
            let grads = (y.clone() * Tensor::from_inner(c.clone())).sum().backward();
            let dx = x.grad(&grads).map(|g| g.into_data());
            (
                y.inner().into_data(),
                dx,
                w.grad(&grads).expect("dW").into_data(),
            )
        };
        let tol = Tolerance::<f32>::absolute(1e-5);
        for track_x in [true, false] {
            let (y1, dx1, dw1) = run(true, track_x);
            let (y2, dx2, dw2) = run(false, track_x);
            y1.assert_approx_eq::<f32>(&y2, tol);
            dw1.assert_approx_eq::<f32>(&dw2, tol);
            assert_eq!(dx1.is_some(), track_x);
            if let (Some(a), Some(b)) = (dx1, dx2) {
                a.assert_approx_eq::<f32>(&b, tol);
            }
        }
    }

    /// Inner sizes that differ are a clear error, not a kernel fault.
    #[test]
    #[should_panic(expected = "dense: X is [_, 5] but W is [4, _]")]
    fn mismatched_inner_sizes_panic_clearly() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::zeros([2, 5], &device);
        let w = Tensor::<Flex, 2>::zeros([4, 3], &device);
        let _ = dense(x, w);
    }
}
