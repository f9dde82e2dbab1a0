//! Training parity of 8-bit state on `flex`: a small LLaMA trained 200 steps with GaLore-8bit
//! ends within 2% of GaLore-f32's loss, AdamW-8bit within 2% of AdamW (fixed seed, the same
//! data). Every moment is 8-bit here (`min_8bit_size = 0`), not only those of ≥ 4096 elements.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use ember::core::StateDtype;
use ember::recipe::{Method, Recipe};
use ember_bench::llama::LlamaShape;
use ember_bench::measure::tokens;

type B = Autodiff<Flex>;

fn shape() -> LlamaShape {
    LlamaShape {
        name: "parity".into(),
        hidden_size: 64,
        intermediate_size: 128,
        num_attention_heads: 2,
        num_hidden_layers: 2,
        vocab_size: 256,
        max_sequence_length: 64,
    }
}

/// Mean loss of the last 20 of `steps` steps.
fn train(method: Method, state: StateDtype, steps: usize) -> f32 {
    let device = Default::default();
    B::seed(&device, 7);
    let shape = shape();
    let mut model = shape.init::<B>(&device);
    let mut optim = Recipe::new(method)
        .with_rank(16)
        .with_gap(50)
        .with_state(state)
        .with_min_8bit_size(0)
        .build::<B, ember_bench::llama::Llama<B>>()
        .unwrap();
    let mut tail = vec![];
    for k in 0..steps {
        let batch = tokens::<B>(4, 32, shape.vocab_size, k, &device);
        let loss = model.loss(batch);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
        if k + 20 >= steps {
            tail.push(loss.into_scalar().elem::<f32>());
        }
    }
    let _ = model.valid();
    tail.iter().sum::<f32>() / tail.len() as f32
}

#[test]
fn eight_bit_state_trains_like_f32() {
    for method in [Method::Galore, Method::Adamw] {
        let f32_loss = train(method, StateDtype::F32, 200);
        let int8_loss = train(method, StateDtype::Int8Blockwise, 200);
        let rel = (int8_loss - f32_loss).abs() / f32_loss;
        println!(
            "{}: f32 state {f32_loss:.4}, 8-bit state {int8_loss:.4}, relative difference {:.2}%",
            method.name(),
            100.0 * rel
        );
        assert!(
            rel <= 0.02,
            "{}: 8-bit {int8_loss} vs f32 {f32_loss} ({:.2}%)",
            method.name(),
            100.0 * rel
        );
    }
}
