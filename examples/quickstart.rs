//! Trains a small burn MLP on a synthetic regression task with GaLore-AdamW on the CPU and prints
//! the loss and the optimizer-state bytes (measured from the tensors the optimizer holds) next to
//! what AdamW would hold.
//!
//! `cargo run --release --example quickstart`

use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use ember::galore::GaloreConfig;

type B = Autodiff<Flex>;

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    up: Linear<B>,
    down: Linear<B>,
    head: Linear<B>,
    act: Relu,
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.act.forward(self.up.forward(x));
        self.head.forward(self.act.forward(self.down.forward(h)))
    }
}

fn main() {
    B::seed(&Default::default(), 0);
    let device = Default::default();
    let (d_in, d_hidden, d_out, batch) = (256, 512, 16, 64);
    let mut model = Mlp::<B> {
        up: LinearConfig::new(d_in, d_hidden).init(&device),
        down: LinearConfig::new(d_hidden, d_in).init(&device),
        head: LinearConfig::new(d_in, d_out).init(&device),
        act: Relu::new(),
    };
    // a fixed random teacher to regress on
    let teacher = Tensor::<B, 2>::random([d_in, d_out], Distribution::Normal(0.0, 0.1), &device);

    // GaLore on the two big linears (module paths containing "up" or "down"); the head, the biases
    // and anything else on AdamW inside the same optimizer.
    let config = GaloreConfig::new()
        .with_rank(32)
        .with_update_proj_gap(50)
        .with_scale(0.25)
        .with_targets(vec!["up".into(), "down".into()]);
    let mut optim = config.init::<B, Mlp<B>>();
    for (path, _, shape, target) in optim.plan(&model) {
        println!(
            "{path:<14} {shape:?}  -> {}",
            if target { "GaLore" } else { "AdamW" }
        );
    }

    let params = model.num_params();
    for step in 0..=200 {
        let x = Tensor::<B, 2>::random([batch, d_in], Distribution::Normal(0.0, 1.0), &device);
        let y = x.clone().matmul(teacher.clone());
        let loss = (model.forward(x) - y).powi_scalar(2).mean();
        if step % 25 == 0 {
            println!(
                "step {step:>3}  loss {:.5}  optimizer state {} bytes measured (AdamW would hold 2·4·params = {} bytes)",
                loss.clone().into_scalar(),
                optim.state_bytes(),
                8 * params
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
}
