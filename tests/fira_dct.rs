//! Fira and DCT-AdamW through burn's `Optimizer`: state and memory, odd sizes, resume, bad input.

mod common;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use common::*;
use ember::core::{EmberError, EmberOptimizer};
use ember::dct::DctConfig;
use ember::fira::FiraConfig;

#[derive(Module, Debug)]
struct Three<B: Backend> {
    a: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 2>>,
    c: Param<Tensor<B, 2>>,
}

fn three(device: &burn::backend::flex::FlexDevice) -> Three<B> {
    Three {
        a: Param::from_tensor(tensor([10, 6], 1, device)), // right side, basis 6
        b: Param::from_tensor(tensor([6, 14], 2, device)), // left side, basis 6 (shared with a)
        c: Param::from_tensor(tensor([9, 7], 3, device)),  // right side, basis 7
    }
}

fn step3(
    model: Three<B>,
    optim: &mut EmberOptimizer<Three<B>, B>,
    k: usize,
) -> Result<Three<B>, EmberError> {
    let x = tensor::<B, 2>([6, 10], 50 + k as u64, &model.a.val().device());
    let l = x.clone().matmul(model.a.val()).sum()
        + model.b.val().powi_scalar(2).sum()
        + model.c.val().sin().sum();
    let grads = GradientsParams::from_grads(l.backward(), &model);
    optim.try_step(1e-2, model, grads)
}

/// `docs/memory.md`, DCT: per target `2·r·hi·4` (moments) + `4·r` (int32 indices); one f32
/// basis per distinct projected size, shared.
#[test]
fn dct_state_is_indices_plus_moments_and_one_basis_per_size() {
    let device = Default::default();
    let r = 3;
    let mut optim = DctConfig::new().with_rank(r).init::<B, Three<B>>();
    let model = step3(three(&device), &mut optim, 0).unwrap();
    let per = |m: usize, n: usize| 2 * r * m.max(n) * 4 + 4 * r;
    for (p, (m, n)) in [(&model.a, (10, 6)), (&model.b, (6, 14)), (&model.c, (9, 7))] {
        assert_eq!(optim.param_state(p.id).unwrap().bytes(), per(m, n));
    }
    assert_eq!(optim.shared_bases().sizes(), vec![6, 7]);
    assert_eq!(optim.shared_bases().bytes(), 4 * (6 * 6 + 7 * 7));
    assert_eq!(
        optim.state_bytes(),
        per(10, 6) + per(6, 14) + per(9, 7) + 4 * (6 * 6 + 7 * 7)
    );
    // clones of the optimizer share the bases, and stepping again builds none
    let mut again = optim.clone();
    step3(model, &mut again, 1).unwrap();
    assert_eq!(optim.shared_bases().sizes(), vec![6, 7]);
}

#[derive(Module, Debug)]
struct Slim<B: Backend> {
    row: Param<Tensor<B, 2>>,
    col: Param<Tensor<B, 2>>,
}

/// A DCT basis of size 1 (a 1×n or n×1 matrix at rank 1) works and moves the weights.
#[test]
fn dct_of_size_one_works() {
    let device = Default::default();
    let model = Slim::<B> {
        row: Param::from_tensor(tensor([1, 5], 1, &device)),
        col: Param::from_tensor(tensor([5, 1], 2, &device)),
    };
    let before = (model.row.val().into_data(), model.col.val().into_data());
    let mut optim = DctConfig::new().with_rank(1).init::<B, Slim<B>>();
    let l = model.row.val().powi_scalar(2).sum() + model.col.val().powi_scalar(2).sum();
    let grads = GradientsParams::from_grads(l.backward(), &model);
    let model = optim.try_step(1e-2, model, grads).unwrap();
    assert_eq!(optim.shared_bases().sizes(), vec![1]);
    for (after, before) in [(model.row.val(), before.0), (model.col.val(), before.1)] {
        let a: Vec<f32> = after.into_data().to_vec().unwrap();
        let b: Vec<f32> = before.to_vec().unwrap();
        assert!(a.iter().all(|x| x.is_finite()));
        assert_ne!(a, b);
    }
}

#[test]
fn dct_bad_input() {
    let device = Default::default();
    // rank above the projected size (a is 10×6: right side, basis 6)
    let mut optim = DctConfig::new().with_rank(7).init::<B, Three<B>>();
    let err = step3(three(&device), &mut optim, 0).err().unwrap();
    assert_eq!(
        err,
        EmberError::InvalidRank {
            param: "a".into(),
            shape: vec![10, 6],
            rank: 7
        }
    );
    let err = DctConfig::new()
        .with_rotate_subspace(true)
        .try_init::<B, Three<B>>()
        .err()
        .unwrap();
    assert!(err.to_string().contains("rotate_subspace"));
    let err = DctConfig::new()
        .with_rank(0)
        .try_init::<B, Three<B>>()
        .err()
        .unwrap();
    assert!(matches!(err, EmberError::InvalidConfig(_)));
    // matrices with a dimension ≥ max_shape stay on AdamW (full-size moments, no indices)
    let mut optim = DctConfig::new()
        .with_rank(2)
        .with_max_shape(10)
        .init::<B, Three<B>>();
    let model = step3(three(&device), &mut optim, 0).unwrap();
    assert_eq!(
        optim.param_state(model.a.id).unwrap().moment_1.dims(),
        [10, 6]
    );
    assert_eq!(
        optim.param_state(model.b.id).unwrap().moment_1.dims(),
        [6, 14]
    );
    assert_eq!(
        optim.param_state(model.c.id).unwrap().moment_1.dims(),
        [9, 2]
    );
}

fn fira() -> FiraConfig {
    FiraConfig::new()
        .with_rank(4)
        .with_update_proj_gap(2)
        .with_weight_decay(0.01)
        .with_targets(vec!["mlp".into()])
}

/// Fira's limiter memory ζ is part of the state: present after the first step, saved, and a
/// resumed run is bit-identical (the limiter acts from the second step on).
#[test]
fn fira_limiter_state_survives_save_and_resume() {
    let device = Default::default();
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let dir = std::env::temp_dir().join(format!("ember-fira-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut straight = Tiny::<B>::new(&device);
    let mut optim = fira().init::<B, Tiny<B>>();
    for k in 0..6 {
        straight = train_step(straight, &mut optim, k, 1e-2).0;
    }

    let mut first = Tiny::<B>::new(&device);
    let mut optim = fira().init::<B, Tiny<B>>();
    for k in 0..3 {
        first = train_step(first, &mut optim, k, 1e-2).0;
    }
    let zeta = optim
        .param_state(first.mlp.up.weight.id)
        .unwrap()
        .residual_norm
        .clone();
    assert!(zeta.is_some(), "Fira keeps ζ for targets");
    assert!(optim
        .param_state(first.embed.id)
        .unwrap()
        .residual_norm
        .is_none());
    // bytes: GaLore's plus one f32 for ζ
    let engine = fira().engine();
    assert_eq!(
        optim.param_state(first.mlp.up.weight.id).unwrap().bytes(),
        engine.state_bytes(D_IN, D_HIDDEN)
    );
    recorder
        .record(first.into_record(), dir.join("model"))
        .unwrap();
    recorder
        .record(optim.to_record(), dir.join("optim"))
        .unwrap();
    let mut resumed =
        Tiny::<B>::new(&device).load_record(recorder.load(dir.join("model"), &device).unwrap());
    let mut optim = fira()
        .init::<B, Tiny<B>>()
        .load_record(recorder.load(dir.join("optim"), &device).unwrap());
    for k in 3..6 {
        resumed = train_step(resumed, &mut optim, k, 1e-2).0;
    }
    let bits = |m: &Tiny<B>| flat(m).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&straight), bits(&resumed));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fira_bad_input() {
    let device = Default::default();
    let err = fira()
        .with_gamma(0.0)
        .try_init::<B, Tiny<B>>()
        .err()
        .unwrap();
    assert!(err.to_string().contains("γ"), "{err}");
    let model = Tiny::<B>::new(&device);
    let mut optim = fira().with_rank(13).init::<B, Tiny<B>>(); // up.weight is 12×16
    let l = loss(&model, 0);
    let grads = GradientsParams::from_grads(l.backward(), &model);
    let err = optim.try_step(1e-2, model.clone(), grads).err().unwrap();
    assert!(
        matches!(err, EmberError::InvalidRank { ref param, .. } if param == "mlp.up.weight"),
        "{err}"
    );
    // NaN gradient: error naming the parameter, nothing changed
    let mut optim = fira().init::<B, Tiny<B>>();
    let mut grads = GradientsParams::from_grads(loss(&model, 0).backward(), &model);
    let g = grads
        .remove::<burn::backend::Flex, 2>(model.mlp.up.weight.id)
        .unwrap();
    grads.register(model.mlp.up.weight.id, g.mul_scalar(f32::NAN));
    let err = optim.try_step(1e-2, model, grads).err().unwrap();
    assert_eq!(
        err,
        EmberError::NonFiniteGradient {
            param: "mlp.up.weight".into()
        }
    );
    assert_eq!(optim.state_bytes(), 0);
}

/// The device projector is an option of every SVD-based method: Fira and FRUGAL train with it.
#[test]
fn device_projector_in_fira_and_frugal() {
    let device = Default::default();
    let frugal = ember::frugal::FrugalConfig::new()
        .with_density(0.5)
        .with_update_gap(2)
        .with_device_projector(true)
        .with_targets(vec!["mlp".into()]);
    for mut optim in [
        fira().with_device_projector(true).init::<B, Tiny<B>>(),
        frugal.init::<B, Tiny<B>>(),
    ] {
        let mut model = Tiny::<B>::new(&device);
        let first = loss(&model, 0).into_scalar();
        for k in 0..30 {
            model = train_step(model, &mut optim, k % 2, 2e-2).0;
        }
        let last = loss(&model, 0).into_scalar();
        assert!(last < 0.5 * first, "{first} -> {last}");
    }
}

#[test]
fn frugal_device_projector_is_used() {
    let c = ember::frugal::FrugalConfig::new().with_device_projector(true);
    assert!(matches!(
        c.engine().projector,
        ember::core::ProjectorKind::DeviceRange { .. }
    ));
    let c = fira().with_device_projector(true);
    assert!(matches!(
        c.engine().projector,
        ember::core::ProjectorKind::DeviceRange { .. }
    ));
}
