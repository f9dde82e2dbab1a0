//! `NonFinitePolicy::SkipStepOnDevice`: the NaN/Inf check kept on the device. On finite steps
//! it steps exactly as `SkipStep`; a step with a non-finite gradient leaves every weight and
//! moment as it was, and the host learns of it when it reads the count back.

mod common;

use burn::optim::GradientsParams;
use burn::prelude::*;
use common::*;
use ember::core::{EmberOptimizer, NonFinitePolicy, SharedBases, StateDtype};
use ember::dct::DctConfig;
use ember::fira::FiraConfig;
use ember::frugal::{FrugalConfig, FrugalProjection};
use ember::galore::GaloreConfig;

type Optim = EmberOptimizer<Tiny<B>, B>;

/// Every pipeline shape the engine runs: dense projector without residual (the GaLore family,
/// 8-bit moments too), Fira's residual, FRUGAL's dense random projector with signSGD, its
/// coordinate selection (the composed path) and its blockwise state-free steps, DCT.
fn optimizers(policy: NonFinitePolicy) -> Vec<(&'static str, Optim)> {
    let mlp = || vec!["mlp".to_string()];
    let frugal = |kind| {
        FrugalConfig::new()
            .with_proj_type(kind)
            .with_density(0.25)
            .with_update_gap(10)
            .with_seed(3)
            .with_targets(mlp())
            .with_non_finite(policy)
            .init::<B, Tiny<B>>()
    };
    vec![
        (
            "galore",
            GaloreConfig::new()
                .with_rank(4)
                .with_update_proj_gap(10)
                .with_weight_decay(0.01)
                .with_targets(mlp())
                .with_non_finite(policy)
                .init::<B, Tiny<B>>(),
        ),
        (
            "galore-8bit",
            GaloreConfig::new()
                .with_rank(4)
                .with_update_proj_gap(10)
                .with_state_dtype(StateDtype::Int8Blockwise)
                .with_min_8bit_size(0)
                .with_targets(mlp())
                .with_non_finite(policy)
                .init::<B, Tiny<B>>(),
        ),
        (
            "fira",
            FiraConfig::new()
                .with_rank(4)
                .with_update_proj_gap(10)
                .with_targets(mlp())
                .with_non_finite(policy)
                .init::<B, Tiny<B>>(),
        ),
        ("frugal-random", frugal(FrugalProjection::Random)),
        ("frugal-coordinates", frugal(FrugalProjection::Coordinates)),
        ("frugal-blocks", frugal(FrugalProjection::Blocks)),
        (
            "dct",
            DctConfig::new()
                .with_rank(4)
                .with_update_proj_gap(10)
                .with_targets(mlp())
                .with_non_finite(policy)
                .init::<B, Tiny<B>>(),
        ),
    ]
}

/// The moments (dequantized) and Fira's norm of every parameter, in module order.
fn states(optim: &Optim, model: &Tiny<B>) -> Vec<Vec<f32>> {
    let bases = SharedBases::new();
    let ids = [
        model.embed.id,
        model.mlp.up.weight.id,
        model.mlp.up.bias.as_ref().unwrap().id,
        model.mlp.down.weight.id,
        model.mlp.down.bias.as_ref().unwrap().id,
        model.gain.id,
    ];
    let mut out = vec![];
    for id in ids {
        let Some(s) = optim.param_state(id) else {
            out.push(vec![]);
            continue;
        };
        for (m, signed) in [(&s.moment_1, true), (&s.moment_2, false)] {
            out.push(m.to_f32(&bases, signed).into_data().to_vec().unwrap());
        }
        if let Some(z) = &s.residual_norm {
            out.push(z.clone().into_data().to_vec().unwrap());
        }
    }
    out
}

/// The gradients of step `k` with `poison` in one element of `mlp.down.weight`'s.
fn poisoned(model: &Tiny<B>, k: usize, poison: f32) -> GradientsParams {
    let l = loss(model, k);
    let mut grads = GradientsParams::from_grads(l.backward(), model);
    let id = model.mlp.down.weight.id;
    let g = grads.remove::<burn::backend::Flex, 2>(id).unwrap();
    let bad = Tensor::<burn::backend::Flex, 2>::from_floats([[poison]], &g.device());
    grads.register(id, g.slice_assign([2..3, 5..6], bad));
    grads
}

#[test]
fn finite_steps_equal_skip_step() {
    let on_host = optimizers(NonFinitePolicy::SkipStep);
    let on_device = optimizers(NonFinitePolicy::SkipStepOnDevice);
    for ((name, mut a), (_, mut b)) in on_host.into_iter().zip(on_device) {
        let device = Default::default();
        let (mut ma, mut mb) = (Tiny::<B>::new(&device), Tiny::<B>::new(&device));
        for k in 0..6 {
            ma = train_step(ma, &mut a, k, 1e-2).0;
            mb = train_step(mb, &mut b, k, 1e-2).0;
        }
        assert_eq!(flat(&ma), flat(&mb), "{name}: weights");
        assert_eq!(states(&a, &ma), states(&b, &mb), "{name}: states");
        assert_eq!(b.skipped_steps(), 0, "{name}");
        assert_eq!(a.host_checks(), 6, "{name}");
        // the first step fits the projectors (none in FRUGAL's blockwise mode)
        let first = usize::from(name != "frugal-blocks");
        assert_eq!(b.host_checks(), first, "{name}: steps checked on the host");
    }
}

#[test]
fn a_non_finite_step_changes_nothing_on_the_device() {
    for (poison, (name, mut optim)) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
        .into_iter()
        .cycle()
        .zip(optimizers(NonFinitePolicy::SkipStepOnDevice))
    {
        let device = Default::default();
        let mut model = Tiny::<B>::new(&device);
        // past the first step (which fits the projectors from the gradient, checked on the host)
        for k in 0..2 {
            model = train_step(model, &mut optim, k, 1e-2).0;
        }
        let (before, states_before) = (flat(&model), states(&optim, &model));
        let checks = optim.host_checks();
        let grads = poisoned(&model, 2, poison);
        let model = optim.try_step(1e-2, model, grads).unwrap();
        assert_eq!(optim.host_checks(), checks, "{name}: checked on the device");
        assert_eq!(flat(&model), before, "{name}: weights after {poison}");
        assert_eq!(states(&optim, &model), states_before, "{name}: states");
        assert_eq!(optim.skipped_steps(), 1, "{name}: the count read back");
        // training goes on from the same values
        let (model, _) = train_step(model, &mut optim, 3, 1e-2);
        assert!(flat(&model).iter().all(|x| x.is_finite()), "{name}");
        assert_ne!(flat(&model), before, "{name}: the next step moves");
    }
}

/// A step that fits projectors from its gradient (here the first) checks on the host, as
/// `SkipStep`: nothing changes, no state is made, the skip is counted at once.
#[test]
fn a_refresh_step_checks_on_the_host() {
    let (_, mut optim) = optimizers(NonFinitePolicy::SkipStepOnDevice)
        .into_iter()
        .next()
        .unwrap();
    let device = Default::default();
    let model = Tiny::<B>::new(&device);
    let before = flat(&model);
    let grads = poisoned(&model, 0, f32::NAN);
    let model = optim.try_step(1e-2, model, grads).unwrap();
    assert_eq!(flat(&model), before);
    assert_eq!((optim.skipped_steps(), optim.state_bytes()), (1, 0));
}

/// Skips on the device are counted once: a later step that checks on the host (a refresh)
/// reads them back and adds them to the count.
#[test]
fn device_skips_are_counted_once() {
    let mut optim = GaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(4)
        .with_targets(vec!["mlp".into()])
        .with_non_finite(NonFinitePolicy::SkipStepOnDevice)
        .init::<B, Tiny<B>>();
    let device = Default::default();
    let mut model = Tiny::<B>::new(&device);
    model = train_step(model, &mut optim, 0, 1e-2).0;
    for k in 1..3 {
        let grads = poisoned(&model, k, f32::NAN);
        model = optim.try_step(1e-2, model, grads).unwrap();
    }
    // step 3 is ordinary, step 4 refreshes (checks on the host and reads the count back)
    for k in 3..6 {
        model = train_step(model, &mut optim, k, 1e-2).0;
    }
    // steps 0 and 4 on the host
    assert_eq!(optim.host_checks(), 2);
    assert_eq!(optim.skipped_steps(), 2);
    assert!(flat(&model).iter().all(|x| x.is_finite()));
}

/// `NonFinitePolicy::Unchecked` steps exactly as `SkipStep` on finite gradients, never checks,
/// and lets a NaN through into the weights (as burn's and PyTorch's AdamW) — on an ordinary step
/// and on a step that fits projectors from the gradient, without a panic.
#[test]
fn unchecked_steps_do_not_look() {
    let checked = optimizers(NonFinitePolicy::SkipStep);
    let unchecked = optimizers(NonFinitePolicy::Unchecked);
    for ((name, mut a), (_, mut b)) in checked.into_iter().zip(unchecked) {
        let device = Default::default();
        let (mut ma, mut mb) = (Tiny::<B>::new(&device), Tiny::<B>::new(&device));
        for k in 0..3 {
            ma = train_step(ma, &mut a, k, 1e-2).0;
            mb = train_step(mb, &mut b, k, 1e-2).0;
        }
        assert_eq!(flat(&ma), flat(&mb), "{name}: weights");
        assert_eq!(b.host_checks(), 0, "{name}: checks");
        let grads = poisoned(&mb, 3, f32::NAN);
        let mb = b.try_step(1e-2, mb, grads).unwrap();
        assert!(
            flat(&mb).iter().any(|x| x.is_nan()),
            "{name}: the NaN went in"
        );
        assert_eq!(b.skipped_steps(), 0, "{name}");
    }
    // a NaN in the gradient a projector is fitted from (the first step): an error or NaN
    // weights, never a panic
    for (name, mut optim) in optimizers(NonFinitePolicy::Unchecked) {
        let model = Tiny::<B>::new(&Default::default());
        let grads = poisoned(&model, 0, f32::NAN);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            optim.try_step(1e-2, model, grads).map(|m| flat(&m))
        }));
        assert!(
            outcome.is_ok(),
            "{name}: panicked on a NaN gradient at a projector fit"
        );
    }
}

/// Fira's and FRUGAL's `R` computed before the step (`with_early_projection`, the default) or
/// inside each update: the same weights and states, bit for bit, over steps that refresh and
/// steps that do not; a NaN in `G` is still found (the check reads `G`, not `R`).
#[test]
fn early_projection_changes_nothing() {
    for policy in [NonFinitePolicy::SkipStep, NonFinitePolicy::SkipStepOnDevice] {
        let early = optimizers(policy);
        let late = optimizers(policy);
        for ((name, mut a), (_, b)) in early.into_iter().zip(late) {
            let mut b = b.with_early_projection(false);
            let device = Default::default();
            let (mut ma, mut mb) = (Tiny::<B>::new(&device), Tiny::<B>::new(&device));
            for k in 0..12 {
                ma = train_step(ma, &mut a, k, 1e-2).0;
                mb = train_step(mb, &mut b, k, 1e-2).0;
            }
            assert_eq!(flat(&ma), flat(&mb), "{name} {policy:?}: weights");
            assert_eq!(
                states(&a, &ma),
                states(&b, &mb),
                "{name} {policy:?}: states"
            );
            // a poisoned `G` after a non-refresh step: skipped by both
            let before = flat(&ma);
            let grads = poisoned(&ma, 12, f32::NAN);
            ma = burn::optim::Optimizer::step(&mut a, 1e-2, ma, grads);
            assert_eq!(a.skipped_steps(), 1, "{name} {policy:?}: skipped steps");
            assert_eq!(
                flat(&ma),
                before,
                "{name} {policy:?}: a NaN step changed the weights"
            );
        }
    }
}

/// Every parameter's step counters, in module order.
fn counters(optim: &Optim, model: &Tiny<B>) -> Vec<Option<(usize, usize, usize)>> {
    [
        model.embed.id,
        model.mlp.up.weight.id,
        model.mlp.down.weight.id,
        model.gain.id,
    ]
    .into_iter()
    .map(|id| {
        optim
            .param_state(id)
            .map(|s| (s.step, s.adam_step, s.refresh.refreshes))
    })
    .collect()
}

/// The host policies with their check deferred to the step's end (`with_deferred_check`, the
/// default on GPU backends; forced on here, on the CPU): the same outcome as the check before
/// the updates, bit for bit — weights, moments, step counters, the error naming the same
/// parameter (`Error`) or the skip counted (`SkipStep`) — over ordinary steps, a poisoned step
/// and the steps after it, a projector refresh among them.
#[test]
fn a_deferred_check_is_the_host_check() {
    for policy in [NonFinitePolicy::Error, NonFinitePolicy::SkipStep] {
        for ((name, a), (_, b)) in optimizers(policy).into_iter().zip(optimizers(policy)) {
            let mut a = a.with_deferred_check(false);
            let mut b = b.with_deferred_check(true);
            let device = Default::default();
            let (mut ma, mut mb) = (Tiny::<B>::new(&device), Tiny::<B>::new(&device));
            for k in 0..13 {
                if k == 4 {
                    let (ga, gb) = (poisoned(&ma, k, f32::NAN), poisoned(&mb, k, f32::NAN));
                    let ra = a.try_step(1e-2, ma.clone(), ga);
                    let rb = b.try_step(1e-2, mb.clone(), gb);
                    match (ra, rb) {
                        (Err(ea), Err(eb)) => {
                            assert_eq!(policy, NonFinitePolicy::Error, "{name}");
                            assert_eq!(ea.to_string(), eb.to_string(), "{name}: the error");
                            assert!(ea.to_string().contains("mlp.down.weight"), "{name}: {ea}");
                        }
                        (Ok(na), Ok(nb)) => {
                            assert_eq!(policy, NonFinitePolicy::SkipStep, "{name}");
                            assert_eq!(flat(&nb), flat(&mb), "{name}: a skip moved weights");
                            (ma, mb) = (na, nb);
                            assert_eq!(b.skipped_steps(), 1, "{name}: skips");
                        }
                        (ra, rb) => {
                            panic!("{name} {policy:?}: {:?} against {:?}", ra.err(), rb.err())
                        }
                    }
                } else {
                    ma = train_step(ma, &mut a, k, 1e-2).0;
                    mb = train_step(mb, &mut b, k, 1e-2).0;
                }
                assert_eq!(flat(&ma), flat(&mb), "{name} {policy:?} step {k}: weights");
                assert_eq!(
                    states(&a, &ma),
                    states(&b, &mb),
                    "{name} {policy:?} step {k}: states"
                );
                assert_eq!(
                    counters(&a, &ma),
                    counters(&b, &mb),
                    "{name} {policy:?} step {k}: counters"
                );
                assert_eq!(a.skipped_steps(), b.skipped_steps(), "{name} {policy:?}");
            }
            assert_eq!(
                a.host_checks(),
                b.host_checks(),
                "{name} {policy:?}: checks"
            );
        }
    }
}
