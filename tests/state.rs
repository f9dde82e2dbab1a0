//! State storage (f32 / bf16 / blockwise 8-bit moments) and bf16 parameters, on `flex`.

mod common;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::DType;
use burn::tensor::Tolerance;
use common::{flat, loss, tensor, train_step, Tiny, B, D_HIDDEN, D_IN, D_OUT};
use ember::core::{Moment, StateDtype};
use ember::galore::GaloreConfig;
use ember::prelude::*;

/// GaLore with 8-bit state on every moment of the tiny model (blocks of 16, no f32 exemption).
fn galore8() -> GaloreConfig {
    GaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(3)
        .with_targets(vec!["mlp".into()])
        .with_state_dtype(StateDtype::Int8Blockwise)
        .with_state_block_size(16)
        .with_min_8bit_size(0)
}

#[test]
fn int8_moments_are_stored_in_eight_bits_and_train() {
    let device = Default::default();
    let mut optim = galore8().init::<B, Tiny<B>>();
    let mut model = Tiny::<B>::new(&device);
    let mut losses = vec![];
    for k in 0..30 {
        let (m, l) = train_step(model, &mut optim, k % 4, 2e-2);
        model = m;
        losses.push(l);
    }
    assert!(
        losses[29] < 0.5 * losses[0],
        "8-bit GaLore does not train: {losses:?}"
    );
    let up = optim.param_state(model.mlp.up.weight.id).unwrap();
    // mlp.up is 12×16 (m < n): left projector, moments 4×16 = 64 elements = 4 blocks of 16
    assert!(matches!(up.moment_1, Moment::Int8(_)));
    assert_eq!(up.moment_1.dims(), [4, 16]);
    assert_eq!(up.moment_1.bytes(), 64 + 4 * 4);
    // the dense projector is kept in bf16 with 8-bit state
    assert_eq!(up.projector.bytes(), 2 * D_IN * 4);
    // non-targeted parameters: AdamW-8bit
    assert!(matches!(
        optim.param_state(model.embed.id).unwrap().moment_2,
        Moment::Int8(_)
    ));
}

#[test]
fn small_moments_stay_f32_below_min_8bit_size() {
    let device = Default::default();
    let mut optim = galore8().with_min_8bit_size(65).init::<B, Tiny<B>>();
    let model = train_step(Tiny::<B>::new(&device), &mut optim, 0, 1e-2).0;
    // 64 elements < 65: f32; the 4×16 embedding's AdamW moments likewise
    let up = optim.param_state(model.mlp.up.weight.id).unwrap();
    assert!(matches!(up.moment_1, Moment::F32(_)));
    assert_eq!(up.moment_1.bytes(), 4 * 64);
}

/// Saving after k steps (8-bit moments, bf16 projectors, a refresh on the way) and resuming in
/// fresh objects gives bit-identical weights to never stopping.
#[test]
fn resume_with_int8_state_is_bit_exact() {
    for dtype in [StateDtype::Int8Blockwise, StateDtype::Bf16] {
        let device = Default::default();
        let dir = std::env::temp_dir().join(format!(
            "ember-state-resume-{}-{}",
            dtype.name(),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        let config = galore8().with_state_dtype(dtype);

        let mut straight = Tiny::<B>::new(&device);
        let mut optim = config.init::<B, Tiny<B>>();
        for k in 0..8 {
            straight = train_step(straight, &mut optim, k, 1e-2).0;
        }

        let mut first = Tiny::<B>::new(&device);
        let mut optim = config.init::<B, Tiny<B>>();
        for k in 0..4 {
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
        let mut optim = config
            .init::<B, Tiny<B>>()
            .load_record(recorder.load(dir.join("optim"), &device).unwrap());
        for k in 4..8 {
            resumed = train_step(resumed, &mut optim, k, 1e-2).0;
        }
        let (a, b) = (flat(&straight), flat(&resumed));
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{dtype:?}: resume is not bit-exact"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}

/// A checkpoint of f32 state is refused by an optimizer configured for 8-bit state.
#[test]
fn a_checkpoint_of_another_state_dtype_is_refused() {
    let device = Default::default();
    let mut optim = galore8()
        .with_state_dtype(StateDtype::F32)
        .init::<B, Tiny<B>>();
    let model = train_step(Tiny::<B>::new(&device), &mut optim, 0, 1e-2).0;
    let mut eight = galore8()
        .init::<B, Tiny<B>>()
        .load_record(optim.to_record());
    let grads = GradientsParams::from_grads(loss(&model, 1).backward(), &model);
    let err = eight.try_step(1e-2, model, grads).err().unwrap();
    assert!(
        matches!(err, EmberError::CheckpointMismatch { .. })
            && err.to_string().contains("Int8Blockwise"),
        "{err}"
    );
}

/// Casts every float parameter to `dtype` (keeping ids).
struct Cast(DType);

impl<B2: Backend> ModuleMapper<B2> for Cast {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B2, D>>) -> Param<Tensor<B2, D>> {
        let (id, t, mapper) = param.consume();
        let grad = t.is_require_grad();
        let mut t = t.set_require_grad(false).cast(self.0);
        if grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// A GaLore step on bf16 weights equals the f32 step on the same values within bf16 rounding
/// (relative error ≤ 1e-2), the result stays bf16, and the update is applied once in f32: the
/// bf16 result is the f32 result rounded.
#[test]
fn bf16_weights_step_like_f32_within_bf16_rounding() {
    let device = Default::default();
    for dtype in [StateDtype::F32, StateDtype::Int8Blockwise] {
        let config = galore8().with_state_dtype(dtype);
        // the same values in both models: bf16-representable f32
        let base = Tiny::<B>::new(&device)
            .map(&mut Cast(DType::BF16))
            .map(&mut Cast(DType::F32));
        let mut m32 = base.clone();
        let mut m16 = base.map(&mut Cast(DType::BF16));
        assert_eq!(m16.mlp.up.weight.val().dtype(), DType::BF16);
        let mut o32 = config.init::<B, Tiny<B>>();
        let mut o16 = config.init::<B, Tiny<B>>();
        for k in 0..4 {
            // one gradient for both: the bf16 model's, in f32 for the f32 model
            let grads16 = GradientsParams::from_grads(loss(&m16, k).backward(), &m16);
            let mut grads32 = GradientsParams::new();
            for (id, shape_2d) in [
                (m16.mlp.up.weight.id, true),
                (m16.mlp.down.weight.id, true),
                (m16.embed.id, true),
                (m16.gain.id, false),
            ] {
                if shape_2d {
                    let g = grads16
                        .get::<burn::backend::Flex, 2>(id)
                        .unwrap()
                        .cast(DType::F32);
                    grads32.register::<burn::backend::Flex, 2>(id, g);
                } else {
                    let g = grads16
                        .get::<burn::backend::Flex, 1>(id)
                        .unwrap()
                        .cast(DType::F32);
                    grads32.register::<burn::backend::Flex, 1>(id, g);
                }
            }
            for lin in [&m16.mlp.up, &m16.mlp.down] {
                let id = lin.bias.as_ref().unwrap().id;
                let g = grads16
                    .get::<burn::backend::Flex, 1>(id)
                    .unwrap()
                    .cast(DType::F32);
                grads32.register::<burn::backend::Flex, 1>(id, g);
            }
            m16 = o16.try_step(1e-2, m16, grads16).unwrap();
            m32 = o32.try_step(1e-2, m32, grads32).unwrap();
            assert_eq!(m16.mlp.down.weight.val().dtype(), DType::BF16);
            // compare step k's result: bf16(f32 step) vs the bf16 step, then continue both from
            // the bf16 values so that the comparison is one step's rounding, not a drift
            let a = flat(&m16.clone().map(&mut Cast(DType::F32)));
            let b = flat(&m32);
            // relative error ≤ 1e-2 against the largest weight
            let scale = b.iter().fold(0f32, |s, x| s.max(x.abs()));
            let data = |v: &[f32]| TensorData::new(v.to_vec(), [v.len()]);
            data(&a).assert_approx_eq::<f32>(&data(&b), Tolerance::absolute(1e-2 * scale));
            // the bf16 weights are the f32 step's weights rounded once
            let rounded = flat(
                &m32.clone()
                    .map(&mut Cast(DType::BF16))
                    .map(&mut Cast(DType::F32)),
            );
            assert_eq!(
                a, rounded,
                "{dtype:?} step {k}: not the f32 update rounded once"
            );
            m32 = m16.clone().map(&mut Cast(DType::F32));
        }
        let _ = (D_HIDDEN, D_OUT);
    }
}

/// A parameter of a dtype Ember cannot step (f64) is a clear error naming it and its dtype.
#[test]
fn an_unsupported_dtype_is_a_clear_error() {
    let device = Default::default();
    let model = Tiny::<B>::new(&device);
    let mut model = model;
    model.embed = Param::initialized(
        model.embed.id,
        tensor::<B, 2>([common::BATCH, D_IN], 3, &device)
            .cast(DType::F64)
            .require_grad(),
    );
    let mut optim = galore8().init::<B, Tiny<B>>();
    let l = model.embed.val().sum();
    let grads = GradientsParams::from_grads(l.backward(), &model);
    let err = optim.try_step(1e-2, model, grads).err().unwrap();
    assert!(
        matches!(err, EmberError::UnsupportedParameter { ref param, .. } if param == "embed")
            && err.to_string().contains("F64"),
        "{err}"
    );
}
