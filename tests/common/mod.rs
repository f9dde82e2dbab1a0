//! Shared pieces of the integration tests: a tiny model with targeted and non-targeted
//! parameters, deterministic data, and a training step.
#![allow(dead_code)]

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

pub type B = Autodiff<Flex>;

/// `y = mlp.down(relu(mlp.up(x + embed))) ⋅ gain`: `mlp.*.weight` are 2-D targets; biases,
/// `embed` (a 2-D parameter the tests exclude by pattern) and `gain` (1-D) stay on AdamW.
#[derive(Module, Debug)]
pub struct Tiny<B: Backend> {
    pub embed: Param<Tensor<B, 2>>,
    pub mlp: Mlp<B>,
    pub gain: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub up: Linear<B>,
    pub down: Linear<B>,
}

pub const D_IN: usize = 12;
pub const D_HIDDEN: usize = 16;
pub const D_OUT: usize = 8;
pub const BATCH: usize = 4;

/// Deterministic pseudo-random values in [-0.5, 0.5).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

pub fn tensor<B: Backend, const D: usize>(
    shape: [usize; D],
    seed: u64,
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed), shape), device)
}

impl<B: Backend> Tiny<B> {
    pub fn new(device: &B::Device) -> Self {
        let mut up = LinearConfig::new(D_IN, D_HIDDEN).init(device);
        let mut down = LinearConfig::new(D_HIDDEN, D_OUT).init(device);
        // deterministic weights, independent of burn's RNG
        up.weight = Param::from_tensor(tensor([D_IN, D_HIDDEN], 11, device));
        down.weight = Param::from_tensor(tensor([D_HIDDEN, D_OUT], 12, device));
        up.bias = Some(Param::from_tensor(tensor([D_HIDDEN], 14, device)));
        down.bias = Some(Param::from_tensor(tensor([D_OUT], 15, device)));
        Self {
            embed: Param::from_tensor(tensor([BATCH, D_IN], 13, device)),
            mlp: Mlp { up, down },
            gain: Param::from_tensor(Tensor::ones([D_OUT], device)),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = burn::tensor::activation::relu(self.mlp.up.forward(x + self.embed.val()));
        self.mlp.down.forward(h) * self.gain.val().unsqueeze()
    }
}

/// Data of step `k`: a fixed regression target plus a step-dependent input.
pub fn batch<B: Backend>(k: usize, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    (
        tensor([BATCH, D_IN], 1000 + k as u64, device),
        tensor([BATCH, D_OUT], 7, device),
    )
}

pub fn loss<B: Backend>(model: &Tiny<B>, k: usize) -> Tensor<B, 1> {
    let device = model.gain.val().device();
    let (x, y) = batch::<B>(k, &device);
    // data in the model's float type (bf16 models in tests/state.rs)
    let dtype = model.gain.val().dtype();
    (model.forward(x.cast(dtype)) - y.cast(dtype))
        .powi_scalar(2)
        .mean()
}

/// One training step through burn's `Optimizer` trait; returns the loss before the step.
pub fn train_step<B: AutodiffBackend, O: Optimizer<Tiny<B>, B>>(
    model: Tiny<B>,
    optim: &mut O,
    k: usize,
    lr: f64,
) -> (Tiny<B>, f32) {
    let l = loss(&model, k);
    let value = l.clone().into_scalar().elem::<f32>();
    let grads = GradientsParams::from_grads(l.backward(), &model);
    (optim.step(lr, model, grads), value)
}

/// All parameter values, flattened, in module order.
pub fn flat<B: Backend>(model: &Tiny<B>) -> Vec<f32> {
    let mut v: Vec<f32> = model.embed.val().into_data().to_vec().unwrap();
    for lin in [&model.mlp.up, &model.mlp.down] {
        v.extend(lin.weight.val().into_data().to_vec::<f32>().unwrap());
        v.extend(
            lin.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
    }
    v.extend(model.gain.val().into_data().to_vec::<f32>().unwrap());
    v
}
