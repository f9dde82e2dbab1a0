//! Q-GaLore: quantized projector memory, the lazy refresh rule, training next to GaLore.

mod common;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use common::*;
use ember::core::{EmberError, EmberOptimizer, ProjectorKind};
use ember::galore::GaloreConfig;
use ember::qgalore::QGaloreConfig;

#[derive(Module, Debug)]
struct Square<B: Backend> {
    w: Param<Tensor<B, 2>>,
}

fn drive(
    optim: &mut EmberOptimizer<Square<B>, B>,
    steps: usize,
    n: usize,
    drift: f32,
) -> Square<B> {
    let device = Default::default();
    let mut model = Square::<B> {
        w: Param::from_tensor(tensor([n, n], 1, &device)),
    };
    // a fixed low-rank gradient that drifts slowly: G_t = A·Bᵀ + drift·t·C
    let a = tensor::<burn::backend::Flex, 2>([n, 4], 2, &device);
    let b = tensor::<burn::backend::Flex, 2>([4, n], 3, &device);
    let c = tensor::<burn::backend::Flex, 2>([n, n], 4, &device);
    for t in 0..steps {
        let g = a.clone().matmul(b.clone()) + c.clone().mul_scalar(drift * t as f32);
        let mut grads = GradientsParams::new();
        grads.register(model.w.id, g);
        model = optim.step(1e-3, model, grads);
    }
    model
}

/// `docs/memory.md`, Q-GaLore: the INT4 projector takes 1/8 of the f32 projector's bytes plus
/// an f32 scale and zero per group (one group per row of `P` here), plus the host-side first
/// singular vector of the last refresh.
#[test]
fn int4_projector_is_an_eighth_of_f32_plus_scales() {
    let (n, r) = (256, 64);
    let mut q = QGaloreConfig::new()
        .with_rank(r)
        .with_update_proj_gap(10)
        .init::<B, Square<B>>();
    let model = drive(&mut q, 1, n, 0.0);
    let state = q.param_state(model.w.id).unwrap();
    let f32_projector = 4 * r * n;
    let int4 = state.projector.bytes();
    assert_eq!(int4, f32_projector / 8 + 8 * r); // packed codes + (scale, zero) per row of P
    assert!((int4 as f64) < 0.14 * f32_projector as f64);
    assert_eq!(state.bytes(), 4 * 2 * n * r + int4 + 4 * n);
    assert_eq!(
        q.target_engine().state_bytes_f32(n, n),
        state.bytes() - 4 * n
    );
    // the same model with GaLore holds the f32 projector
    let mut g = GaloreConfig::new()
        .with_rank(r)
        .with_update_proj_gap(10)
        .init::<B, Square<B>>();
    let model = drive(&mut g, 1, n, 0.0);
    assert_eq!(
        g.param_state(model.w.id).unwrap().projector.bytes(),
        f32_projector
    );
    // INT8 is a quarter
    let kind = ProjectorKind::QuantizedSvd {
        bits: 8,
        group_size: -1,
    };
    assert_eq!(kind.projector_bytes(n, n, r, 4), f32_projector / 4 + 8 * r);
}

/// On slowly drifting gradients the lazy rule lengthens the gap and skips refreshes GaLore does.
#[test]
fn lazy_rule_skips_refreshes_on_slowly_drifting_gradients() {
    let (steps, n) = (24, 24);
    let mut g = GaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(2)
        .init::<B, Square<B>>();
    let mg = drive(&mut g, steps, n, 1e-3);
    let galore_refreshes = g.param_state(mg.w.id).unwrap().refresh.refreshes;
    let mut q = QGaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(2)
        .with_queue_size(2)
        .with_cos_threshold(0.4)
        .init::<B, Square<B>>();
    let mq = drive(&mut q, steps, n, 1e-3);
    let state = &q.param_state(mq.w.id).unwrap().refresh;
    assert_eq!(galore_refreshes, steps / 2);
    assert!(
        state.refreshes < galore_refreshes,
        "{} vs {galore_refreshes}",
        state.refreshes
    );
    assert!(state.gap > 2, "gap {}", state.gap);
    assert!(
        state.queue.iter().all(|&c| c.abs() > 0.9),
        "{:?}",
        state.queue
    );
    // with a threshold above 1 the rule never fires: as many refreshes as GaLore
    let mut never = QGaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(2)
        .with_queue_size(2)
        .with_cos_threshold(2.0)
        .init::<B, Square<B>>();
    let mn = drive(&mut never, steps, n, 1e-3);
    assert_eq!(
        never.param_state(mn.w.id).unwrap().refresh.refreshes,
        galore_refreshes
    );
}

/// A small model trains with Q-GaLore (INT4 projector, lazy refresh) to within 10% of GaLore's
/// loss after the same steps.
#[test]
fn trains_within_ten_percent_of_galore() {
    let device = Default::default();
    let run = |mut optim: EmberOptimizer<Tiny<B>, B>| {
        let mut model = Tiny::<B>::new(&device);
        for k in 0..40 {
            model = train_step(model, &mut optim, k % 4, 2e-2).0;
        }
        loss(&model, 0).into_scalar() // final loss on a fixed batch
    };
    let galore = run(GaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(5)
        .with_targets(vec!["mlp".into()])
        .init());
    let qgalore = run(QGaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(5)
        .with_targets(vec!["mlp".into()])
        .init());
    let first = loss(&Tiny::<B>::new(&device), 0).into_scalar();
    assert!(
        galore < 0.7 * first,
        "GaLore did not train: {first} -> {galore}"
    );
    assert!(
        (qgalore - galore).abs() <= 0.1 * galore,
        "Q-GaLore {qgalore} vs GaLore {galore}"
    );
}

#[test]
fn bad_input() {
    let err = QGaloreConfig::new()
        .with_proj_bits(3)
        .try_init::<B, Square<B>>()
        .err()
        .unwrap();
    assert!(err.to_string().contains("proj_bits"));
    let err = QGaloreConfig::new()
        .with_queue_size(0)
        .try_init::<B, Square<B>>()
        .err()
        .unwrap();
    assert!(err.to_string().contains("queue_size"));
    // a group size that does not divide the projector: a clear error at the first step
    let mut q = QGaloreConfig::new()
        .with_rank(4)
        .with_proj_group_size(7)
        .init::<B, Square<B>>();
    let device = Default::default();
    let model = Square::<B> {
        w: Param::from_tensor(tensor([12, 12], 1, &device)),
    };
    let grads = GradientsParams::from_grads(model.w.val().sum().backward(), &model);
    let err = q.try_step(1e-3, model, grads).err().unwrap();
    assert!(
        matches!(err, EmberError::InvalidConfig(ref m) if m.contains("group size")),
        "{err}"
    );
}
