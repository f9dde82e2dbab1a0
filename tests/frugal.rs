//! FRUGAL: seeded reproducibility, resume, memory per projection kind, identities, bad input.

mod common;

use burn::module::{Module, Param};
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::Tolerance;
use common::*;
use ember::core::{EmberError, EmberOptimizer};
use ember::frugal::{BlockOrder, FrugalConfig, FrugalProjection, InactiveRule};

const KINDS: [FrugalProjection; 5] = [
    FrugalProjection::Svd,
    FrugalProjection::Random,
    FrugalProjection::RandPerm,
    FrugalProjection::Coordinates,
    FrugalProjection::Blocks,
];

fn config(kind: FrugalProjection, density: f64) -> FrugalConfig {
    FrugalConfig::new()
        .with_proj_type(kind)
        .with_density(density)
        .with_update_gap(2)
        .with_seed(42)
        .with_targets(vec!["mlp".into()])
}

fn run(
    optim: &mut EmberOptimizer<Tiny<B>, B>,
    mut model: Tiny<B>,
    steps: std::ops::Range<usize>,
) -> Tiny<B> {
    for k in steps {
        model = train_step(model, optim, k, 1e-2).0;
    }
    model
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn seeded_kinds_are_reproducible_and_seed_dependent() {
    let device = Default::default();
    for kind in KINDS {
        let a = run(
            &mut config(kind, 0.25).init(),
            Tiny::<B>::new(&device),
            0..6,
        );
        let b = run(
            &mut config(kind, 0.25).init(),
            Tiny::<B>::new(&device),
            0..6,
        );
        assert_eq!(
            bits(&flat(&a)),
            bits(&flat(&b)),
            "{kind:?} not reproducible"
        );
        if kind != FrugalProjection::Svd {
            let c = run(
                &mut config(kind, 0.25).with_seed(7).init(),
                Tiny::<B>::new(&device),
                0..6,
            );
            assert_ne!(
                bits(&flat(&a)),
                bits(&flat(&c)),
                "{kind:?} ignores its seed"
            );
        }
    }
}

/// Save after 3 steps (mid-gap, and across subspace re-draws and block re-selections), resume in
/// fresh objects: bit-identical to never stopping, for every kind.
#[test]
fn resume_is_bit_exact_for_every_kind() {
    let device = Default::default();
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let dir = std::env::temp_dir().join(format!("ember-frugal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for kind in KINDS {
        let straight = run(&mut config(kind, 0.5).init(), Tiny::<B>::new(&device), 0..7);

        let mut optim = config(kind, 0.5).init();
        let first = run(&mut optim, Tiny::<B>::new(&device), 0..3);
        recorder
            .record(first.into_record(), dir.join("model"))
            .unwrap();
        recorder
            .record(optim.to_record(), dir.join("optim"))
            .unwrap();
        let model =
            Tiny::<B>::new(&device).load_record(recorder.load(dir.join("model"), &device).unwrap());
        let mut optim = config(kind, 0.5)
            .init()
            .load_record(recorder.load(dir.join("optim"), &device).unwrap());
        let resumed = run(&mut optim, model, 3..7);
        assert_eq!(bits(&flat(&straight)), bits(&flat(&resumed)), "{kind:?}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// `docs/memory.md`, FRUGAL: per targeted m×n parameter with projected dimension d
/// (n for the right side, m for the left) and rank r:
/// svd/random: 4·(2·r·(other dim) + r·d); randperm/coordinates: 4·2·r·(other dim) + 4·r;
/// blocks: 8·m·n when active, 0 when state-free. Non-targets: 8·numel.
fn formula(kind: FrugalProjection, density: f64, m: usize, n: usize, active: bool) -> usize {
    let left = m < n; // std side
    let (d, other) = if left { (m, n) } else { (n, m) };
    let r = match kind {
        FrugalProjection::Coordinates => (density * d as f64).floor() as usize,
        _ => (density * d as f64).round_ties_even() as usize,
    };
    match kind {
        FrugalProjection::Svd | FrugalProjection::Random => 4 * (2 * r * other + r * d),
        FrugalProjection::RandPerm | FrugalProjection::Coordinates => 4 * 2 * r * other + 4 * r,
        FrugalProjection::Blocks => {
            if active {
                8 * m * n
            } else {
                0
            }
        }
    }
}

#[test]
fn measured_state_matches_the_memory_formula() {
    let device = Default::default();
    let non_targets = 8 * (BATCH * D_IN + D_HIDDEN + D_OUT + D_OUT);
    for density in [0.25, 0.5] {
        for kind in KINDS {
            let mut optim = config(kind, density).init();
            let model = run(&mut optim, Tiny::<B>::new(&device), 0..1);
            let up = optim.param_state(model.mlp.up.weight.id);
            let down = optim.param_state(model.mlp.down.weight.id);
            let got_up = up.map(|s| s.bytes()).unwrap_or(0);
            let got_down = down.map(|s| s.bytes()).unwrap_or(0);
            let (up_active, down_active) = (up.is_some(), down.is_some());
            if kind == FrugalProjection::Blocks {
                // 2 targets: round(0.25·2) = 0 → clamped to 1; round(0.5·2) = 1
                assert_eq!(
                    up_active as usize + down_active as usize,
                    1,
                    "{kind:?} ρ={density}"
                );
            }
            assert_eq!(
                got_up,
                formula(kind, density, D_IN, D_HIDDEN, up_active),
                "{kind:?} ρ={density} up"
            );
            assert_eq!(
                got_down,
                formula(kind, density, D_HIDDEN, D_OUT, down_active),
                "{kind:?} ρ={density} down"
            );
            assert_eq!(optim.state_bytes(), got_up + got_down + non_targets);
        }
    }
}

/// With ρ = 1, coordinates (every column, in a random order) and blocks (every parameter active)
/// are both AdamW with its state reset every `update_gap` steps.
#[test]
fn density_one_coordinates_and_blocks_are_adamw_with_periodic_reset() {
    let device = Default::default();
    let c = run(
        &mut config(FrugalProjection::Coordinates, 1.0).init(),
        Tiny::<B>::new(&device),
        0..5,
    );
    let b = run(
        &mut config(FrugalProjection::Blocks, 1.0).init(),
        Tiny::<B>::new(&device),
        0..5,
    );
    let (c, b) = (flat(&c), flat(&b));
    let data = |v: &[f32]| TensorData::new(v.to_vec(), [v.len()]);
    data(&c).assert_approx_eq::<f32>(&data(&b), Tolerance::absolute(1e-6));
    // and they differ from plain AdamW without resets (the reset is real)
    let plain = run(
        &mut config(FrugalProjection::Blocks, 1.0)
            .with_update_gap(1000)
            .init(),
        Tiny::<B>::new(&device),
        0..5,
    );
    let d = flat(&plain)
        .iter()
        .zip(&b)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(d > 1e-6);
}

#[test]
fn state_free_blocks_hold_no_state_and_follow_sign_sgd() {
    let device = Default::default();
    let mut optim = config(FrugalProjection::Blocks, 0.5)
        .with_block_order(BlockOrder::Ascending)
        .with_weight_decay(0.0)
        .init();
    let model = Tiny::<B>::new(&device);
    let before: Vec<f32> = model.mlp.down.weight.val().into_data().to_vec().unwrap();
    let l = loss(&model, 0);
    let g: Vec<f32> = model
        .mlp
        .down
        .weight
        .grad(&l.backward())
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let model = train_step(model, &mut optim, 0, 1e-2).0;
    // ascending, epoch 0: up.weight active, down.weight state-free
    assert!(optim.param_state(model.mlp.up.weight.id).is_some());
    assert!(optim.param_state(model.mlp.down.weight.id).is_none());
    let after: Vec<f32> = model.mlp.down.weight.val().into_data().to_vec().unwrap();
    for i in 0..after.len() {
        let sign = if g[i] > 0.0 {
            1.0
        } else if g[i] < 0.0 {
            -1.0
        } else {
            0.0
        };
        assert!((after[i] - (before[i] - 1e-2 * sign)).abs() < 1e-7);
    }
}

#[test]
fn bad_input_is_refused_clearly() {
    for density in [0.0, -0.5, 1.5, f64::NAN] {
        let err = config(FrugalProjection::Svd, density)
            .try_init::<B, Tiny<B>>()
            .err()
            .unwrap();
        assert!(err.to_string().contains("density"), "{err}");
    }
    let err = config(FrugalProjection::Blocks, 0.5)
        .with_update_gap(0)
        .try_init::<B, Tiny<B>>()
        .err()
        .unwrap();
    assert!(
        matches!(err, EmberError::InvalidConfig(ref m) if m.contains("update_gap")),
        "{err}"
    );
    // a density too small for a matrix: rank 0 is an InvalidRank error naming the parameter
    let device = Default::default();
    let mut optim = config(FrugalProjection::Svd, 0.01).init();
    let model = Tiny::<B>::new(&device);
    let l = loss(&model, 0);
    let grads = burn::optim::GradientsParams::from_grads(l.backward(), &model);
    let err = optim.try_step(1e-2, model, grads).err().unwrap();
    assert!(
        matches!(err, EmberError::InvalidRank { rank: 0, .. }),
        "{err}"
    );
}

#[derive(Module, Debug)]
struct One<B: Backend> {
    w: Param<Tensor<B, 2>>,
}

/// A single parameter in blockwise mode: `round(ρ·1)` may be 0; Ember keeps one block active
/// (documented in `ember_core::blocks`), so the parameter is trained by AdamW, never left alone.
#[test]
fn blockwise_with_a_single_parameter_keeps_it_active() {
    let device = Default::default();
    let mut model = One::<B> {
        w: Param::from_tensor(tensor([3, 4], 1, &device)),
    };
    let mut optim = FrugalConfig::new()
        .with_proj_type(FrugalProjection::Blocks)
        .with_density(0.25)
        .with_inactive_update_rule(InactiveRule::No)
        .init::<B, One<B>>();
    for _ in 0..3 {
        let l = model.w.val().powi_scalar(2).sum();
        let grads = burn::optim::GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    assert_eq!(optim.state_bytes(), 8 * 12);
}
