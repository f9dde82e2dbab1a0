//! Conformance with the official implementations: every `*.safetensors` case in
//! `$EMBER_REFERENCE_DIR` (default `tests/data/reference`) is replayed step by step.
//!
//! A case passes when after every step `max|ours − ref| ≤ 1e-5 · max(1, max|ref|)`.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use ember::core::{EmberOptimizer, ProjType};
use ember::dct::DctConfig;
use ember::fira::FiraConfig;
use ember::frugal::{FrugalConfig, FrugalProjection, InactiveRule};
use ember::galore::GaloreConfig;
use ember::qgalore::QGaloreConfig;
use safetensors::SafeTensors;
use serde_json::Value;

type B = Autodiff<Flex>;

#[derive(Module, Debug)]
struct Single<B: Backend> {
    w: Param<Tensor<B, 2>>,
}

const TOLERANCE: f32 = 1e-5;

fn proj_type(s: &str) -> Result<ProjType, String> {
    Ok(match s {
        "std" => ProjType::Std,
        "reverse_std" => ProjType::ReverseStd,
        "left" => ProjType::Left,
        "right" => ProjType::Right,
        "full" => ProjType::Full,
        other => return Err(format!("unknown proj_type {other}")),
    })
}

fn f(c: &Value, key: &str) -> f64 {
    c[key]
        .as_f64()
        .unwrap_or_else(|| panic!("config key {key} missing"))
}

fn u(c: &Value, key: &str) -> usize {
    c[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config key {key} missing")) as usize
}

/// Our optimizer for a case, or why it cannot be built (a failure).
fn build(method: &str, c: &Value) -> Result<EmberOptimizer<Single<B>, B>, String> {
    let betas = c["betas"].as_array().expect("betas");
    match method {
        "galore_adamw" => Ok(GaloreConfig::new()
            .with_rank(u(c, "rank"))
            .with_update_proj_gap(u(c, "update_proj_gap"))
            .with_scale(f(c, "scale"))
            .with_proj_type(proj_type(c["proj_type"].as_str().unwrap())?)
            .with_beta_1(betas[0].as_f64().unwrap())
            .with_beta_2(betas[1].as_f64().unwrap())
            .with_epsilon(f(c, "eps"))
            .with_weight_decay(f(c, "weight_decay"))
            .with_correct_bias(c["correct_bias"].as_bool().unwrap_or(true))
            .try_init()
            .map_err(|e| e.to_string())?),
        "fira_adamw" => Ok(FiraConfig::new()
            .with_rank(u(c, "rank"))
            .with_update_proj_gap(u(c, "update_proj_gap"))
            .with_alpha(f(c, "alpha"))
            .with_proj_type(proj_type(c["proj_type"].as_str().unwrap())?)
            .with_beta_1(betas[0].as_f64().unwrap())
            .with_beta_2(betas[1].as_f64().unwrap())
            .with_epsilon(f(c, "eps"))
            .with_weight_decay(f(c, "weight_decay"))
            .with_correct_bias(c["correct_bias"].as_bool().unwrap_or(true))
            .try_init()
            .map_err(|e| e.to_string())?),
        "dct_adamw" => {
            if c["proj"].as_str() != Some("dct") || c["sim_type"].as_str() != Some("matmul") {
                return Err(format!(
                    "DCT case with proj={} sim_type={}",
                    c["proj"], c["sim_type"]
                ));
            }
            if c["ell_norm"].as_i64() != Some(1) {
                return Err(format!("DCT case with ell_norm={}", c["ell_norm"]));
            }
            Ok(DctConfig::new()
                .with_rank(u(c, "rank"))
                .with_update_proj_gap(u(c, "update_proj_gap"))
                .with_beta_1(betas[0].as_f64().unwrap())
                .with_beta_2(betas[1].as_f64().unwrap())
                .with_epsilon(f(c, "eps"))
                .with_weight_decay(f(c, "weight_decay"))
                .with_rotate_subspace(c["rotate_subspace"].as_bool().unwrap_or(false))
                .try_init()
                .map_err(|e| e.to_string())?)
        }
        "frugal" => {
            if c["proj_type"].as_str() != Some("svd") {
                return Err(format!("FRUGAL case with proj_type={}", c["proj_type"]));
            }
            let rule = match c["inactive_update_rule"].as_str() {
                Some("sign_sgd") => InactiveRule::SignSgd,
                Some("sgd") => InactiveRule::Sgd,
                Some("no") => InactiveRule::No,
                other => return Err(format!("inactive_update_rule {other:?}")),
            };
            Ok(FrugalConfig::new()
                .with_density(f(c, "density"))
                .with_update_gap(u(c, "update_gap"))
                .with_reset_statistics(c["reset_statistics"].as_bool().unwrap())
                .with_inactive_update_rule(rule)
                .with_inactive_lr_scale(f(c, "inactive_lr_scale"))
                .with_proj_params_lr_scale(f(c, "proj_params_lr_scale"))
                .with_proj_side(proj_type(c["proj_side"].as_str().unwrap())?)
                .with_proj_type(FrugalProjection::Svd)
                .with_beta_1(betas[0].as_f64().unwrap())
                .with_beta_2(betas[1].as_f64().unwrap())
                .with_epsilon(f(c, "eps"))
                .with_weight_decay(f(c, "weight_decay"))
                .try_init()
                .map_err(|e| e.to_string())?)
        }
        "qgalore_adamw" => {
            if c["proj_type"].as_str() != Some("std") {
                return Err(format!("Q-GaLore case with proj_type={}", c["proj_type"]));
            }
            Ok(QGaloreConfig::new()
                .with_rank(u(c, "rank"))
                .with_update_proj_gap(u(c, "update_proj_gap"))
                .with_scale(f(c, "scale"))
                .with_proj_quant(c["proj_quant"].as_bool().unwrap_or(true))
                .with_proj_bits(u(c, "proj_bits") as u32)
                .with_proj_group_size(c["proj_group_size"].as_i64().unwrap())
                .with_cos_threshold(f(c, "cos_threshold"))
                .with_gamma_proj(f(c, "gamma_proj"))
                .with_queue_size(u(c, "queue_size"))
                .with_beta_1(betas[0].as_f64().unwrap())
                .with_beta_2(betas[1].as_f64().unwrap())
                .with_epsilon(f(c, "eps"))
                .with_weight_decay(f(c, "weight_decay"))
                .with_correct_bias(c["correct_bias"].as_bool().unwrap_or(true))
                .try_init()
                .map_err(|e| e.to_string())?)
        }
        other => Err(format!("method `{other}` is not implemented yet")),
    }
}

fn tensor(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let view = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("tensor {name} missing"));
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, view.shape().to_vec())
}

enum Outcome {
    Pass(f32),
    Fail(f32, usize),
    /// A case this test cannot build an optimizer for (unknown method, a configuration the
    /// method refuses): a failure, never a skip — a regression in a config must not hide.
    Unbuildable(String),
}

fn run_case(path: &Path) -> (String, String, Outcome) {
    let bytes = std::fs::read(path).expect("read case");
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
    let meta = meta.metadata().clone().expect("__metadata__");
    let method = meta["method"].clone();
    let case = path.file_stem().unwrap().to_string_lossy().to_string();
    let config: Value = serde_json::from_str(&meta["config"]).expect("config json");
    let steps: usize = meta["steps"].parse().expect("steps");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");

    let mut optim = match build(&method, &config) {
        Ok(o) => o,
        Err(reason) => return (method, case, Outcome::Unbuildable(reason)),
    };
    let lr = f(&config, "lr");
    let device = Default::default();
    let (w0, shape) = tensor(&st, "w0");
    let mut model = Single::<B> {
        w: Param::from_tensor(Tensor::from_data(
            TensorData::new(w0, shape.clone()),
            &device,
        )),
    };
    let mut worst = 0f32;
    for k in 0..steps {
        let (g, gshape) = tensor(&st, &format!("grad.{k}"));
        let mut grads = GradientsParams::new();
        grads.register::<Flex, 2>(
            model.w.id,
            Tensor::from_data(TensorData::new(g, gshape), &device),
        );
        model = optim.step(lr, model, grads);
        let (want, _) = tensor(&st, &format!("w.{}", k + 1));
        let ours: Vec<f32> = model.w.val().into_data().to_vec().unwrap();
        let scale = want.iter().fold(1f32, |a, &b| a.max(b.abs()));
        let err = ours
            .iter()
            .zip(&want)
            .fold(0f32, |a, (&x, &y)| a.max((x - y).abs()))
            / scale;
        worst = worst.max(err);
        if err.is_nan() || err > TOLERANCE {
            return (method, case, Outcome::Fail(err, k + 1));
        }
    }
    (method, case, Outcome::Pass(worst))
}

fn reference_dir() -> PathBuf {
    std::env::var_os("EMBER_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference"))
}

#[test]
fn conformance_with_official_implementations() {
    let dir = reference_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    cases.sort();
    let (mut passed, mut failed) = (0, 0);
    for path in &cases {
        let (method, case, outcome) = run_case(path);
        match outcome {
            Outcome::Pass(e) => {
                passed += 1;
                println!("{method:<14} {case:<45} worst {e:.2e}  pass");
            }
            Outcome::Fail(e, step) => {
                failed += 1;
                println!("{method:<14} {case:<45} worst {e:.2e}  FAIL (step {step})");
            }
            Outcome::Unbuildable(reason) => {
                failed += 1;
                println!("{method:<14} {case:<45} FAIL (cannot build the optimizer: {reason})");
            }
        }
    }
    println!("conformance: {passed} passed, {failed} failed");
    assert!(
        passed > 0,
        "no conformance case ran (directory {})",
        dir.display()
    );
    assert_eq!(failed, 0, "{failed} conformance case(s) failed");
}

/// A case of an unknown method, or whose configuration the method refuses, is a failure of the
/// harness (not a skip).
#[test]
fn an_unbuildable_case_is_a_failure() {
    use std::collections::HashMap;
    let dir = std::env::temp_dir().join(format!("ember-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (method, config) in [
        ("sgd", r#"{"betas": [0.9, 0.999], "lr": 0.01}"#),
        (
            "galore_adamw",
            r#"{"betas": [0.9, 0.999], "lr": 0.01, "rank": 0, "update_proj_gap": 1, "scale": 1.0, "proj_type": "std", "eps": 1e-6, "weight_decay": 0.0}"#,
        ),
    ] {
        let w0: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &w0).unwrap();
        let meta: HashMap<String, String> = [
            ("method".to_string(), method.to_string()),
            ("config".to_string(), config.to_string()),
            ("steps".to_string(), "0".to_string()),
        ]
        .into_iter()
        .collect();
        let path = dir.join(format!("{method}.safetensors"));
        safetensors::serialize_to_file([("w0", view)], Some(meta), &path).unwrap();
        let (_, _, outcome) = run_case(&path);
        assert!(
            matches!(outcome, Outcome::Unbuildable(_)),
            "{method}: an unbuildable case must fail"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}
