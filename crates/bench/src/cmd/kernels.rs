//! `kernels`: every fused kernel against the portable path on a device, and GaLore and AdamW
//! steps on bf16 weights against the f32 step on the same values (devices with bf16).

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution};

use crate::Device;

pub fn run(device: Device, seed: u64) -> Result<(), String> {
    use burn::tensor::backend::Backend;
    use ember_kernels::{selfcheck, EmberBackend};
    let (failed, bf16) = on_device!(device, B => {
        type I = <B as AutodiffBackend>::InnerBackend;
        let dev = Default::default();
        println!(
            "backend {} — fused kernels: {}",
            <I as Backend>::name(&dev),
            <I as EmberBackend>::fused_kernels()
        );
        let failed = selfcheck::report(&selfcheck::run_all::<I>(&dev, seed));
        let bf16 = if <I as Backend>::supports_dtype(&dev, DType::BF16) {
            bf16_cases()
                .into_iter()
                .map(|(name, recipe, every_product)| {
                    let saved = ember_kernels::vendor_gemm_min_macs();
                    if every_product {
                        ember_kernels::set_vendor_gemm_min_macs(0);
                    }
                    let r = bf16_step::<B>(&dev, seed, &recipe);
                    ember_kernels::set_vendor_gemm_min_macs(saved);
                    (name, r)
                })
                .collect()
        } else {
            println!("bf16 steps: not run (this device has no bf16)");
            vec![]
        };
        (failed, bf16)
    });
    let mut bad = 0;
    for (name, r) in bf16 {
        let (err, mismatched, total) = r?;
        let ok = err <= 1e-2;
        bad += usize::from(!ok);
        println!(
            "bf16 step: {name} on 96x160 bf16 weights vs the f32 step on the same values: \
             relative error {err:.2e} (≤ 1e-2: {}); {mismatched} of {total} weights differ from \
             the f32 result rounded once to bf16",
            if ok { "ok" } else { "FAILED" }
        );
    }
    if failed > 0 || bad > 0 {
        return Err(format!(
            "{failed} kernel checks failed, {bad} bf16 steps out of tolerance"
        ));
    }
    Ok(())
}

/// The bf16 steps checked: (name, recipe, every product on the vendor's GEMM however small).
fn bf16_cases() -> Vec<(&'static str, ember::recipe::Recipe, bool)> {
    use ember::core::StateDtype;
    use ember::recipe::{Method, Recipe};
    let galore = || {
        Recipe::new(Method::Galore)
            .with_rank(8)
            .with_targets(vec!["weight".into()])
    };
    let adamw = Recipe::new(Method::Adamw);
    vec![
        ("GaLore (rank 8)", galore(), false),
        (
            "GaLore (rank 8), products on cuBLAS where built",
            galore(),
            true,
        ),
        ("AdamW", adamw.clone(), false),
        (
            "AdamW, 8-bit state",
            adamw
                .with_state(StateDtype::Int8Blockwise)
                .with_min_8bit_size(0),
            false,
        ),
    ]
}

#[derive(Module, Debug)]
struct One<B: Backend> {
    weight: Param<Tensor<B, 2>>,
}

/// One step of `recipe` on a bf16 weight and on the same values in f32 with the same gradient:
/// (max |bf16 result − f32 result| / max |f32 result|, weights whose bf16 result is not the f32
/// result rounded to bf16, weights).
fn bf16_step<B: AutodiffBackend>(
    device: &B::Device,
    seed: u64,
    recipe: &ember::recipe::Recipe,
) -> Result<(f32, usize, usize), String>
where
    B::InnerBackend: ember_core::EmberBackend,
{
    B::seed(device, seed);
    let shape = [96, 160];
    let round = |t: Tensor<B, 2>| t.cast(DType::BF16).cast(DType::F32);
    let w = round(Tensor::random(
        shape,
        Distribution::Normal(0.0, 1.0),
        device,
    ));
    let g = round(Tensor::random(
        shape,
        Distribution::Normal(0.0, 1.0),
        device,
    ));
    let step = |dtype: DType| -> Result<Vec<f32>, String> {
        let model = One {
            weight: Param::from_tensor(w.clone().cast(dtype)),
        };
        let mut grads = GradientsParams::new();
        grads.register::<B::InnerBackend, 2>(model.weight.id, g.clone().inner().cast(dtype));
        let mut optim = recipe.build::<B, One<B>>().map_err(|e| e.to_string())?;
        let model = optim
            .try_step(1e-2, model, grads)
            .map_err(|e| e.to_string())?;
        model
            .weight
            .val()
            .cast(DType::F32)
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))
    };
    let a = step(DType::BF16)?;
    let b = step(DType::F32)?;
    let scale = b.iter().fold(0f32, |s, x| s.max(x.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |e, (x, y)| e.max((x - y).abs()))
        / scale;
    let rounded = |x: f32| burn::tensor::bf16::from_f32(x).to_f32();
    let mismatched = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| **x != rounded(**y))
        .count();
    Ok((err, mismatched, a.len()))
}
