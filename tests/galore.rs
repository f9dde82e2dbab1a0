//! GaLore through burn's `Optimizer` trait: targets, save/resume, bad input.

mod common;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use common::*;
use ember::core::{EmberError, NonFinitePolicy};
use ember::galore::GaloreConfig;

fn config() -> GaloreConfig {
    GaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(2)
        .with_weight_decay(0.01)
        .with_targets(vec!["mlp".into()])
}

#[test]
fn targets_get_galore_and_the_rest_adamw() {
    let device = Default::default();
    let model = Tiny::<B>::new(&device);
    let mut optim = config().init::<B, Tiny<B>>();
    let plan = optim.plan(&model);
    let targets: Vec<&str> = plan.iter().filter(|p| p.3).map(|p| p.0.as_str()).collect();
    assert_eq!(targets, ["mlp.up.weight", "mlp.down.weight"]);

    let (model, _) = train_step(model, &mut optim, 0, 1e-2);
    // projected moments: up.weight is 12×16 (m < n → left projector, R is 4×16)
    let up = optim.param_state(model.mlp.up.weight.id).unwrap();
    assert_eq!(up.moment_1.dims(), [4, 16]);
    assert_eq!(up.projector.rank(), Some(4));
    // AdamW parameters keep full-size moments and no projector
    let emb = optim.param_state(model.embed.id).unwrap();
    assert_eq!(emb.moment_1.dims(), [BATCH, D_IN]);
    assert_eq!(emb.projector.rank(), None);
    let gain = optim.param_state(model.gain.id).unwrap();
    assert_eq!(gain.moment_1.dims(), [1, D_OUT]);

    // state bytes: the GaLore formula for targets, 2·numel·4 for the rest
    let galore = config().engine();
    let expected = galore.state_bytes(D_IN, D_HIDDEN)
        + galore.state_bytes(D_HIDDEN, D_OUT)
        + 8 * (BATCH * D_IN + D_HIDDEN + D_OUT + D_OUT);
    assert_eq!(optim.state_bytes(), expected);
}

#[test]
fn training_lowers_the_loss() {
    let device = Default::default();
    let mut model = Tiny::<B>::new(&device);
    let mut optim = config().init::<B, Tiny<B>>();
    let mut losses = vec![];
    for k in 0..30 {
        let (m, l) = train_step(model, &mut optim, k % 2, 2e-2);
        model = m;
        losses.push(l);
    }
    assert!(losses[29] < 0.5 * losses[0], "{losses:?}");
}

/// The device projector (subspace iteration, no host SVD) trains as well; its refreshes are
/// warm-started and its state has the exact projector's shapes.
#[test]
fn device_projector_trains() {
    let device = Default::default();
    let mut model = Tiny::<B>::new(&device);
    let mut optim = config().with_device_projector(true).init::<B, Tiny<B>>();
    let mut losses = vec![];
    for k in 0..30 {
        let (m, l) = train_step(model, &mut optim, k % 2, 2e-2);
        model = m;
        losses.push(l);
    }
    assert!(losses[29] < 0.5 * losses[0], "{losses:?}");
    let up = optim.param_state(model.mlp.up.weight.id).unwrap();
    assert_eq!((up.projector.rank(), up.refresh.refreshes), (Some(4), 15));
    let err = config()
        .with_device_projector(true)
        .with_proj_type(ember::core::ProjType::Full)
        .try_init::<B, Tiny<B>>()
        .err()
        .unwrap();
    assert!(err.to_string().contains("full"), "{err}");
}

/// Saving the optimizer record (and the model) after k steps and resuming in fresh objects gives
/// bit-identical weights to never stopping, across a projector refresh.
#[test]
fn save_and_resume_is_bit_exact() {
    let device = Default::default();
    let dir = std::env::temp_dir().join(format!("ember-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();

    let mut straight = Tiny::<B>::new(&device);
    let mut optim = config().init::<B, Tiny<B>>();
    for k in 0..7 {
        straight = train_step(straight, &mut optim, k, 1e-2).0;
    }

    let mut first = Tiny::<B>::new(&device);
    let mut optim = config().init::<B, Tiny<B>>();
    for k in 0..3 {
        first = train_step(first, &mut optim, k, 1e-2).0;
    }
    recorder
        .record(first.clone().into_record(), dir.join("model"))
        .unwrap();
    recorder
        .record(optim.to_record(), dir.join("optim"))
        .unwrap();
    drop((first, optim));

    let mut resumed =
        Tiny::<B>::new(&device).load_record(recorder.load(dir.join("model"), &device).unwrap());
    let mut optim = config()
        .init::<B, Tiny<B>>()
        .load_record(recorder.load(dir.join("optim"), &device).unwrap());
    for k in 3..7 {
        resumed = train_step(resumed, &mut optim, k, 1e-2).0;
    }
    let (a, b) = (flat(&straight), flat(&resumed));
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "resume is not bit-exact"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn rank_zero_is_rejected_at_init() {
    let err = config()
        .with_rank(0)
        .try_init::<B, Tiny<B>>()
        .err()
        .unwrap();
    assert!(matches!(err, EmberError::InvalidConfig(_)), "{err}");
    let err = config()
        .with_update_proj_gap(0)
        .try_init::<B, Tiny<B>>()
        .err()
        .unwrap();
    assert!(err.to_string().contains("update_proj_gap"), "{err}");
}

#[test]
fn rank_larger_than_a_target_names_the_parameter_and_shape() {
    let device = Default::default();
    let model = Tiny::<B>::new(&device);
    let mut optim = config().with_rank(9).init::<B, Tiny<B>>(); // down.weight is 16×8
    let l = loss(&model, 0);
    let grads = GradientsParams::from_grads(l.backward(), &model);
    let err = optim.try_step(1e-2, model, grads).err().unwrap();
    assert_eq!(
        err,
        EmberError::InvalidRank {
            param: "mlp.down.weight".into(),
            shape: vec![16, 8],
            rank: 9
        }
    );
    assert!(err.to_string().contains("mlp.down.weight") && err.to_string().contains("[16, 8]"));
    assert_eq!(optim.state_bytes(), 0, "no state was created");
}

fn grads_with(model: &Tiny<B>, poison: f32) -> GradientsParams {
    let l = loss(model, 0);
    let mut grads = GradientsParams::from_grads(l.backward(), model);
    let g = grads
        .remove::<burn::backend::Flex, 2>(model.mlp.down.weight.id)
        .unwrap();
    let mask = g
        .zeros_like()
        .slice([0..1, 0..1])
        .add_scalar(1.0)
        .pad((0, 7, 0, 15), 0.0)
        .bool();
    grads.register(model.mlp.down.weight.id, g.mask_fill(mask, poison));
    grads
}

#[test]
fn non_finite_gradients_are_an_error_and_change_nothing() {
    let device = Default::default();
    let mut optim = config().init::<B, Tiny<B>>();
    let model = train_step(Tiny::<B>::new(&device), &mut optim, 0, 1e-2).0;
    let before = flat(&model);
    let record_before = format!(
        "{:?}",
        optim
            .param_state(model.mlp.down.weight.id)
            .unwrap()
            .moment_1
            .to_f32(&ember::core::SharedBases::new(), true)
            .to_data()
    );
    for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let grads = grads_with(&model, poison);
        let err = optim.try_step(1e-2, model.clone(), grads).err().unwrap();
        assert_eq!(
            err,
            EmberError::NonFiniteGradient {
                param: "mlp.down.weight".into()
            }
        );
    }
    assert_eq!(flat(&model), before);
    let record_after = format!(
        "{:?}",
        optim
            .param_state(model.mlp.down.weight.id)
            .unwrap()
            .moment_1
            .to_f32(&ember::core::SharedBases::new(), true)
            .to_data()
    );
    assert_eq!(record_before, record_after);

    // the documented alternative: skip the step
    let mut optim = config()
        .with_non_finite(NonFinitePolicy::SkipStep)
        .init::<B, Tiny<B>>();
    let model2 = optim
        .try_step(1e-2, model.clone(), grads_with(&model, f32::NAN))
        .unwrap();
    assert_eq!(flat(&model2), before);
    assert_eq!((optim.skipped_steps(), optim.state_bytes()), (1, 0));
}

#[derive(Module, Debug)]
struct Odd<B: Backend> {
    empty: Param<Tensor<B, 2>>,
    row: Param<Tensor<B, 2>>,
}

/// An empty parameter is left alone (no state); a 1×n target works at rank 1 and is refused
/// above it.
#[test]
fn empty_and_single_row_parameters() {
    let device = Default::default();
    let model = Odd::<B> {
        empty: Param::from_tensor(Tensor::zeros([0, 5], &device)),
        row: Param::from_tensor(tensor([1, 6], 3, &device)),
    };
    let step = |rank: usize, model: Odd<B>| {
        let mut optim = GaloreConfig::new().with_rank(rank).init::<B, Odd<B>>();
        let l = (model.row.val().sum() + model.empty.val().sum()).powi_scalar(2);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        optim
            .try_step(1e-2, model, grads)
            .map(|m| (m, optim.state_bytes()))
    };
    let (after, bytes) = step(1, model.clone()).unwrap();
    assert_eq!(after.empty.val().dims(), [0, 5]);
    assert_ne!(
        after.row.val().into_data().to_vec::<f32>().unwrap(),
        model.row.val().into_data().to_vec::<f32>().unwrap()
    );
    // 1×6 at rank 1, m < n: left projector 1×1, moments 1×6
    assert_eq!(bytes, 4 * (1 + 2 * 6));
    let err = step(2, model).err().unwrap();
    assert!(
        matches!(err, EmberError::InvalidRank { ref param, .. } if param == "row"),
        "{err}"
    );
}

/// A checkpoint made with another rank, or for another model shape, is refused with a clear
/// error at the next step instead of failing inside a matmul.
#[test]
fn mismatched_checkpoints_are_refused() {
    let device = Default::default();
    let mut optim = config().init::<B, Tiny<B>>();
    let model = train_step(Tiny::<B>::new(&device), &mut optim, 0, 1e-2).0;
    let record = optim.to_record();

    let mut other_rank = config()
        .with_rank(3)
        .init::<B, Tiny<B>>()
        .load_record(record.clone());
    let l = loss(&model, 1);
    let grads = GradientsParams::from_grads(l.backward(), &model);
    let err = other_rank
        .try_step(1e-2, model.clone(), grads)
        .err()
        .unwrap();
    assert!(
        matches!(err, EmberError::CheckpointMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("rank"), "{err}");

    // same ids, different shapes: a model whose `embed` is wider
    let mut wide = model.clone();
    wide.embed = Param::initialized(
        model.embed.id,
        tensor([BATCH + 1, D_IN], 5, &device).require_grad(),
    );
    let mut same = config().init::<B, Tiny<B>>().load_record(record);
    let l = wide.embed.val().sum();
    let grads = GradientsParams::from_grads(l.backward(), &wide);
    let err = same.try_step(1e-2, wide, grads).err().unwrap();
    assert!(
        matches!(err, EmberError::CheckpointMismatch { ref param, .. } if param == "embed"),
        "{err}"
    );
}

/// burn's `Optimizer::step` cannot return an error: under the `Learner` a non-finite gradient
/// skips the step (counted, logged) instead of panicking, whatever the policy; `try_step`
/// returns the error.
#[test]
fn optimizer_trait_step_skips_non_finite_gradients() {
    let device = Default::default();
    let model = Tiny::<B>::new(&device);
    let before = flat(&model);
    let mut optim = config().init::<B, Tiny<B>>();
    let grads = grads_with(&model, f32::NAN);
    let model = Optimizer::step(&mut optim, 1e-2, model, grads);
    assert_eq!(flat(&model), before);
    assert_eq!(optim.skipped_steps(), 1);
    assert_eq!(optim.steps(), 0);
    assert!(optim.param_state(model.mlp.down.weight.id).is_none());
    // and training goes on with finite gradients
    let model = train_step(model, &mut optim, 0, 1e-2).0;
    assert_ne!(flat(&model), before);
    assert_eq!(optim.steps(), 1);
}

/// Other bad input still panics in `Optimizer::step`, with the error's message.
#[test]
#[should_panic(expected = "ember optimizer step failed")]
fn optimizer_trait_step_panics_on_bad_input() {
    let device = Default::default();
    let model = Tiny::<B>::new(&device);
    let mut optim = config().with_rank(100).init::<B, Tiny<B>>();
    let l = loss(&model, 0);
    let grads = GradientsParams::from_grads(l.backward(), &model);
    let _ = Optimizer::step(&mut optim, 1e-2, model, grads);
}

/// A gradient whose shape is not its parameter's, and a bad learning rate, are clear errors.
#[test]
fn wrong_gradient_shapes_and_learning_rates_are_errors() {
    let device = Default::default();
    let model = Tiny::<B>::new(&device);
    let mut optim = config().init::<B, Tiny<B>>();
    let mut grads = GradientsParams::new();
    // mlp.up.weight is 12×16: a 16×12 gradient
    grads.register::<burn::backend::Flex, 2>(
        model.mlp.up.weight.id,
        tensor([D_HIDDEN, D_IN], 3, &device),
    );
    let err = optim.try_step(1e-2, model.clone(), grads).err().unwrap();
    assert_eq!(
        err,
        EmberError::GradientShape {
            param: "mlp.up.weight".into(),
            param_shape: vec![D_IN, D_HIDDEN],
            grad_shape: vec![D_HIDDEN, D_IN],
        }
    );
    for lr in [-1e-3, f64::NAN, f64::INFINITY] {
        let l = loss(&model, 0);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        let err = optim.try_step(lr, model.clone(), grads).err().unwrap();
        assert!(
            matches!(err, EmberError::InvalidConfig(ref m) if m.contains("learning rate")),
            "{err}"
        );
    }
}

/// A target pattern (or id) that selects no parameter is an error at the first step, naming it,
/// instead of every parameter silently falling back to AdamW; `init_with_targets` adds to the
/// config's patterns, so `init()` and `init_with_targets(Targets::default())` agree.
#[test]
fn targets_that_select_nothing_are_an_error() {
    let device = Default::default();
    let model = Tiny::<B>::new(&device);
    let mut optim = config()
        .with_targets(vec!["mlp".into(), "atn".into()])
        .init::<B, Tiny<B>>();
    let grads = GradientsParams::from_grads(loss(&model, 0).backward(), &model);
    let err = optim.try_step(1e-2, model.clone(), grads).err().unwrap();
    assert!(
        matches!(err, EmberError::InvalidConfig(ref m) if m.contains("`atn`") && m.contains("look like `mlp.")),
        "{err}"
    );
    // the same config through init_with_targets: the patterns still apply
    let mut optim = config()
        .init_with_targets::<B, Tiny<B>>(ember::core::Targets::default().with_ids([model.embed.id]))
        .unwrap();
    let model = train_step(model, &mut optim, 0, 1e-2).0;
    let plan = optim.plan(&model);
    let targeted: Vec<&str> = plan.iter().filter(|p| p.3).map(|p| p.0.as_str()).collect();
    assert_eq!(targeted, ["embed", "mlp.up.weight", "mlp.down.weight"]);
}
