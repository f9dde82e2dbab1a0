//! The fused CubeCL kernels of `ember-kernels` against the portable path, on burn's `wgpu`
//! backend. In CI the device is lavapipe (Mesa's software Vulkan, `mesa-vulkan-drivers`, installed
//! by `.ci/run`), so kernels are checked for correctness without a GPU.
//!
//! Without a Vulkan driver the test prints why and skips, unless `EMBER_REQUIRE_WGPU` is set
//! (`.ci/run` sets it): then a missing driver is a failure, not a silent pass.

use burn::backend::wgpu::{CubeBackend, Wgpu, WgpuDevice, WgpuRuntime};
use ember_kernels::{selfcheck, EmberBackend};

/// burn's wgpu backend without operation fusion.
type Bare = CubeBackend<WgpuRuntime, f32, i32, u32>;
/// What `burn::backend::Wgpu` is with burn's default features (the dev-dependencies turn on
/// `fusion`): `Fusion<Bare>`, where each Ember op is a custom operation of the fusion stream.
type Fused = Wgpu;

fn vulkan_driver() -> Option<String> {
    let dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(dir) {
            if let Some(e) = entries.flatten().next() {
                return Some(e.path().display().to_string());
            }
        }
    }
    None
}

/// Points CubeCL's kernel caches at a fresh directory before the first kernel of this process
/// (once; both tests call it first).
fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = std::env::temp_dir().join(format!("ember-kernel-cache-{}", std::process::id()));
        let got = ember_kernels::cache::configure(Some(dir.clone())).unwrap();
        assert_eq!(got, dir);
        assert!(dir.is_dir());
        // the configuration is read once per process: a second call changes nothing, and says so
        let err = ember_kernels::cache::configure(None).err().unwrap();
        assert!(err.contains("already"), "{err}");
    });
}

/// Skips (with the reason) when there is no Vulkan driver, unless `EMBER_REQUIRE_WGPU` is set.
fn driver_or_skip(test: &str) -> bool {
    setup();
    if vulkan_driver().is_none() {
        let reason = "no Vulkan driver (no ICD file in /usr/share/vulkan/icd.d or \
                      /etc/vulkan/icd.d); install mesa-vulkan-drivers to run the wgpu kernel tests";
        assert!(
            std::env::var_os("EMBER_REQUIRE_WGPU").is_none(),
            "EMBER_REQUIRE_WGPU is set but {reason}"
        );
        println!("SKIPPED {test}: {reason}");
        return false;
    }
    true
}

#[test]
fn fused_kernels_equal_the_portable_path_on_wgpu() {
    if !driver_or_skip("fused_kernels_equal_the_portable_path_on_wgpu") {
        return;
    }
    assert!(<Bare as EmberBackend>::fused_kernels());
    let device = WgpuDevice::default();
    let checks = selfcheck::run_all::<Bare>(&device, 2026);
    let failed = selfcheck::report(&checks);
    assert_eq!(failed, 0, "{failed} kernel checks failed");
}

/// The same checks on `Fusion<Bare>`: the fused kernels, run as custom operations of burn's
/// fusion stream, against the portable path as burn's fuser runs it.
#[test]
fn fused_kernels_equal_the_portable_path_under_burn_fusion() {
    if !driver_or_skip("fused_kernels_equal_the_portable_path_under_burn_fusion") {
        return;
    }
    assert!(<Fused as EmberBackend>::fused_kernels());
    let device = WgpuDevice::default();
    let checks = selfcheck::run_all::<Fused>(&device, 2027);
    let failed = selfcheck::report(&checks);
    assert_eq!(failed, 0, "{failed} kernel checks failed under fusion");
}

mod common;

use burn::backend::{Autodiff, Flex};
use burn::optim::Optimizer;
use common::{flat, train_step, Tiny};
use ember::prelude::*;

/// Trains the tiny model `steps` steps on backend `A` and returns its weights.
fn train<A, O>(mut optim: O, device: &A::Device, steps: usize) -> Vec<f32>
where
    A: burn::tensor::backend::AutodiffBackend,
    O: Optimizer<Tiny<A>, A>,
{
    let mut model = Tiny::<A>::new(device);
    for k in 0..steps {
        model = train_step(model, &mut optim, k, 1e-2).0;
    }
    flat(&model)
}

/// The whole optimizer (engine + fused kernels) on burn's default wgpu backend (`Fusion<…>`)
/// against the same optimizer on flex (portable path): every method, 5 steps with a projector
/// refresh, the same weights.
#[test]
fn every_method_on_wgpu_equals_flex() {
    if !driver_or_skip("every_method_on_wgpu_equals_flex") {
        return;
    }
    type W = Autodiff<Fused>;
    type F = Autodiff<Flex>;
    let (dw, df) = (WgpuDevice::default(), Default::default());
    let t = || vec!["mlp".to_string()];
    macro_rules! both {
        ($name:expr, $cfg:expr) => {{
            let cfg = $cfg;
            let a = train::<W, _>(cfg.init::<W, Tiny<W>>(), &dw, 5);
            let b = train::<F, _>(cfg.init::<F, Tiny<F>>(), &df, 5);
            let err = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            println!("{:<10} wgpu vs flex: max |Δw| = {err:.2e}", $name);
            assert!(err < 1e-4, "{}: wgpu and flex differ by {err}", $name);
        }};
    }
    let gap = 3;
    // the exact SVD on both backends (by default a GPU backend refreshes with the device
    // projector: checked at the end)
    both!(
        "galore",
        GaloreConfig::new()
            .with_rank(4)
            .with_update_proj_gap(gap)
            .with_weight_decay(0.01)
            .with_targets(t())
            .with_host_svd(true)
    );
    both!(
        "fira",
        FiraConfig::new()
            .with_rank(4)
            .with_update_proj_gap(gap)
            .with_weight_decay(0.01)
            .with_targets(t())
            .with_host_svd(true)
    );
    // ρ = 0.125 keeps the subspace (rank 1–2) below the gradients' rank (the batch, 4): above it the
    // residual is rounding noise, and signSGD's sign of noise differs between any two backends
    both!(
        "frugal",
        FrugalConfig::new()
            .with_density(0.125)
            .with_update_gap(gap)
            .with_targets(t())
            .with_host_svd(true)
    );
    both!(
        "dct",
        DctConfig::new()
            .with_rank(4)
            .with_update_proj_gap(gap)
            .with_targets(t())
    );
    // 8-bit state end to end (every moment 8-bit): GaLore-8bit and AdamW-8bit through the fused
    // 8-bit kernel on wgpu
    both!(
        "galore-8bit",
        GaloreConfig::new()
            .with_rank(4)
            .with_update_proj_gap(gap)
            .with_targets(t())
            .with_state_dtype(StateDtype::Int8Blockwise)
            .with_state_block_size(16)
            .with_min_8bit_size(0)
            .with_host_svd(true)
    );
    both!(
        "qgalore",
        QGaloreConfig::new()
            .with_rank(4)
            .with_update_proj_gap(gap)
            .with_targets(t())
    );

    // the default on a GPU backend: the device projector (`ProjectorKind::AutoSvd`), the same
    // steps as asking for it; on flex the exact SVD (the conformance tests)
    let cfg = GaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(gap)
        .with_targets(t());
    let auto = train::<W, _>(cfg.init::<W, Tiny<W>>(), &dw, 5);
    let device = train::<W, _>(
        cfg.clone().with_device_projector(true).init::<W, Tiny<W>>(),
        &dw,
        5,
    );
    let host = train::<W, _>(cfg.clone().with_host_svd(true).init::<W, Tiny<W>>(), &dw, 5);
    assert_eq!(auto, device, "wgpu's default is the device projector");
    assert_ne!(auto, host, "the device projector is not the exact SVD");
    let flex_auto = train::<F, _>(cfg.init::<F, Tiny<F>>(), &df, 5);
    let flex_host = train::<F, _>(cfg.with_host_svd(true).init::<F, Tiny<F>>(), &df, 5);
    assert_eq!(flex_auto, flex_host, "flex's default is the exact SVD");
}

/// The LLaMA model (its linear layers through `ModelOps::dense`, attention through
/// `ModelOps::causal_attention`) trained four AdamW steps on wgpu, bare and under burn's fusion
/// (where Ember's products are custom operations inside the model's fusion stream): the losses
/// equal flex's within f32 rounding of the different summation orders.
#[test]
fn llama_trains_on_wgpu_bare_and_under_burn_fusion() {
    if !driver_or_skip("llama_trains_on_wgpu_bare_and_under_burn_fusion") {
        return;
    }
    use burn::backend::{Autodiff, Flex};
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use burn::tensor::backend::AutodiffBackend;
    use ember_llama::{LlamaShape, ModelOps, Tokens};

    fn losses<A: AutodiffBackend + ModelOps>(device: &A::Device) -> Vec<f32> {
        let shape = LlamaShape::pico();
        // the same initial weights on every backend: initialized on flex, carried as bytes
        let bytes = {
            let flex = Default::default();
            <Autodiff<Flex> as burn::tensor::backend::Backend>::seed(&flex, 3);
            let record = burn::module::Module::into_record(shape.init::<Autodiff<Flex>>(&flex));
            BinBytesRecorder::<FullPrecisionSettings>::default()
                .record(record, ())
                .expect("record")
        };
        let record = BinBytesRecorder::<FullPrecisionSettings>::default()
            .load(bytes, device)
            .expect("load");
        let mut model = burn::module::Module::load_record(shape.init::<A>(device), record);
        let mut optim = AdamWConfig::new().init();
        (0..4)
            .map(|step| {
                let tokens = Tokens::synthetic(2, 12, 64, step).tensor(device);
                let loss = model.loss(tokens);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(1e-2, model.clone(), grads);
                loss.into_scalar().elem::<f32>()
            })
            .collect()
    }
    use burn::tensor::ElementConversion;
    let device = WgpuDevice::default();
    let flex = losses::<Autodiff<Flex>>(&Default::default());
    let bare = losses::<Autodiff<Bare>>(&device);
    let fused = losses::<Autodiff<Fused>>(&device);
    println!("llama losses: flex {flex:?}, wgpu {bare:?}, wgpu under fusion {fused:?}");
    for (name, got) in [("wgpu", &bare), ("wgpu under fusion", &fused)] {
        for (a, b) in got.iter().zip(&flex) {
            assert!(
                (a - b).abs() <= 1e-3 * b.abs(),
                "{name}: {got:?} against flex {flex:?}"
            );
        }
    }
}
