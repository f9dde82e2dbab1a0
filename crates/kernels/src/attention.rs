//! Causal self-attention whose backward pass recomputes the attention matrix.
//!
//! `O = P·V` with `P = softmax(s·QKᵀ + M)` (`M`: −10⁹ above the diagonal, the causal mask;
//! `s` the scale, `1/√d` in LLaMA). Composed from burn's ops under autodiff, the step keeps about
//! 4.5 matrices of `P`'s size per block for the backward pass (the scores, `exp`, the softmax,
//! the mask): `heads × seq²` values each, per sequence — at LLaMA-1B with 4×256 tokens 1.8 GB of
//! the 4.1 GB of activations, and it grows with the square of the sequence. As one op the
//! backward keeps only `Q`, `K`, `V` (which the projections' backward holds anyway) and
//! recomputes `P` from them, one block at a time:
//!
//! ```text
//! dV = Pᵀ·dO        dP = dO·Vᵀ        dS = s·P ∘ (dP − rowsum(dP ∘ P))
//! dQ = dS·K         dK = dSᵀ·Q
//! ```
//!
//! (`rowsum(dP ∘ P) = rowsum(dO ∘ O)`, the softmax's Jacobian applied row by row.) The cost is
//! one more `QKᵀ` product and softmax per block in the backward pass.
//!
//! The softmax and its gradient are backend ops ([`EmberBackend::causal_softmax`],
//! [`EmberBackend::causal_softmax_backward`]): on the CubeCL backends one kernel each, a row
//! per cube, in f32 inside (burn's composition — a mask built per call, the scaling, `mask_fill`,
//! and the softmax's max, subtraction, `exp`, sum and division — is about eight launches forward
//! and five backward, each writing a `heads × seq²` temporary); the portable path is that
//! composition ([`composed_softmax`], [`composed_softmax_backward`]).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, Tensor};

use crate::model::{unwrap, wrap};
use crate::EmberBackend;

/// burn's causal softmax of scores `s` (`[batch, heads, queries, keys]`): `softmax(scale·S + M)`
/// over the last axis, `M` = −10⁹ where key `j` > query `i`, in `s`'s dtype.
pub fn composed_softmax<B: Backend>(s: Tensor<B, 4>, scale: f64) -> Tensor<B, 4> {
    let [b, h, t, tk] = s.dims();
    let mask = Tensor::<B, 2, Bool>::tril_mask([t, tk], 0, &s.device())
        .unsqueeze::<4>()
        .expand([b, h, t, tk]);
    softmax(s.mul_scalar(scale).mask_fill(mask, -1e9), 3)
}

/// The gradient of [`composed_softmax`]'s scores: `scale·P ∘ (dP − rowsum(dP ∘ P))`.
pub fn composed_softmax_backward<B: Backend>(
    p: Tensor<B, 4>,
    dp: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    let row = (dp.clone() * p.clone()).sum_dim(3);
    (p * (dp - row)).mul_scalar(scale)
}

/// `P = softmax(scale·QKᵀ + M)`, `[batch, heads, seq_q, seq_k]`, in `q`'s dtype (the backend's
/// [`EmberBackend::causal_softmax`]).
pub fn probabilities<B: EmberBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    B::causal_softmax(q.matmul(k.swap_dims(2, 3)), scale)
}

/// burn's composition of the whole attention (the reference of the tests and kernel checks).
pub fn composed<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    composed_softmax(q.matmul(k.swap_dims(2, 3)), scale).matmul(v)
}

/// The attention of plain (not autodiff) backends: the backend's softmax between the products.
pub(crate) fn forward<B: EmberBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    probabilities(q, k, scale).matmul(v)
}

/// The backward node: keeps `Q`, `K`, `V` and the scale.
#[derive(Debug)]
struct RecomputedAttention;

impl<B: EmberBackend> Backward<B, 3> for RecomputedAttention {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_o = wrap::<B, 4>(grads.consume::<B>(&ops.node));
        let (q, k, v, scale) = ops.state;
        let (q, k, v) = (wrap::<B, 4>(q), wrap::<B, 4>(k), wrap::<B, 4>(v));
        let p = probabilities(q.clone(), k.clone(), scale);
        if let Some(node) = node_v {
            let dv = p.clone().swap_dims(2, 3).matmul(d_o.clone());
            grads.register::<B>(node.id, unwrap(dv));
        }
        if node_q.is_none() && node_k.is_none() {
            return;
        }
        let dp = d_o.matmul(v.swap_dims(2, 3));
        let ds = B::causal_softmax_backward(p, dp, scale);
        if let Some(node) = node_q {
            let dq = ds.clone().matmul(k);
            grads.register::<B>(node.id, unwrap(dq));
        }
        if let Some(node) = node_k {
            let dk = ds.swap_dims(2, 3).matmul(q);
            grads.register::<B>(node.id, unwrap(dk));
        }
    }
}

/// The op under `Autodiff`: the inner backend's attention, with the recomputing backward node.
pub(crate) fn tracked<B: EmberBackend, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
    scale: f64,
) -> FloatTensor<Autodiff<B, C>> {
    let run = |q, k, v| unwrap(forward::<B>(wrap(q), wrap(k), wrap(v), scale));
    match RecomputedAttention
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = run(
                q.primitive.clone(),
                k.primitive.clone(),
                v.primitive.clone(),
            );
            prep.finish((q.primitive, k.primitive, v.primitive, scale), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(run(q.primitive, k.primitive, v.primitive)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::causal_attention;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tolerance};

    type A = Autodiff<Flex>;

    /// The op's forward and gradients equal burn's autodiff of the composition.
    #[test]
    fn gradients_equal_the_composition() {
        let device = Default::default();
        let shape = [2, 3, 7, 5];
        let scale = 1.0 / 5f64.sqrt();
        let make = || Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v, w) = (make(), make(), make(), make());
        let run = |fused: bool| {
            let q = Tensor::<A, 4>::from_inner(q.clone()).require_grad();
            let k = Tensor::<A, 4>::from_inner(k.clone()).require_grad();
            let v = Tensor::<A, 4>::from_inner(v.clone()).require_grad();
            let o = if fused {
                causal_attention(q.clone(), k.clone(), v.clone(), scale)
            } else {
                composed(q.clone(), k.clone(), v.clone(), scale)
            };
            // a loss that weighs every output differently
            let loss = (o.clone() * Tensor::from_inner(w.clone())).sum();
            let grads = loss.backward();
            let g = |t: &Tensor<A, 4>| t.grad(&grads).expect("a gradient").into_data();
            (o.inner().into_data(), g(&q), g(&k), g(&v))
        };
        let (o1, q1, k1, v1) = run(true);
        let (o2, q2, k2, v2) = run(false);
        let tol = Tolerance::<f32>::absolute(1e-5);
        o1.assert_approx_eq::<f32>(&o2, tol);
        q1.assert_approx_eq::<f32>(&q2, tol);
        k1.assert_approx_eq::<f32>(&k2, tol);
        v1.assert_approx_eq::<f32>(&v2, tol);
        // the mask: the first query attends to the first key only
        let o = o1.to_vec::<f32>().unwrap();
        let v0 = v.clone().into_data().to_vec::<f32>().unwrap();
        assert!((o[0] - v0[0]).abs() < 1e-6 && (o[4] - v0[4]).abs() < 1e-6);
    }

    /// Without a tracked input the op is the plain composition.
    #[test]
    fn untracked_inputs_need_no_state() {
        let device = Default::default();
        let make = || Tensor::<A, 4>::random([1, 2, 4, 3], Distribution::Default, &device);
        let (q, k, v) = (make(), make(), make());
        let o = causal_attention(q.clone(), k.clone(), v.clone(), 0.5);
        let want = composed(q.inner(), k.inner(), v.inner(), 0.5);
        o.inner()
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-6));
    }
}
