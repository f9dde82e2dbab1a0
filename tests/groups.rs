//! Parameter groups and gradient clipping (`ember::groups`), on `flex`.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::grad_clipping::GradientClipping;
use burn::module::{Module, Param, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Tolerance;
use common::tensor;
use ember::core::{Clipping, EmberError, EmberOptimizer};
use ember::dct::DctConfig;
use ember::fira::FiraConfig;
use ember::groups::{ClippingSpec, GroupSpec, GroupsConfig};
use ember::recipe::{Method, Recipe};

type B = Autodiff<Flex>;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    embed: Param<Tensor<B, 2>>,
    attn: Linear<B>,
    mlp: Linear<B>,
    norm: Norm<B>,
}

#[derive(Module, Debug)]
struct Norm<B: Backend> {
    gamma: Param<Tensor<B, 1>>,
}

impl Net<B> {
    fn new() -> Self {
        let device = Default::default();
        let mut attn = LinearConfig::new(16, 16).init(&device);
        let mut mlp = LinearConfig::new(16, 24).init(&device);
        attn.weight = Param::from_tensor(tensor([16, 16], 21, &device));
        attn.bias = Some(Param::from_tensor(tensor([16], 22, &device)));
        mlp.weight = Param::from_tensor(tensor([16, 24], 23, &device));
        mlp.bias = Some(Param::from_tensor(tensor([24], 24, &device)));
        Self {
            embed: Param::from_tensor(tensor([10, 16], 25, &device)),
            attn,
            mlp,
            norm: Norm {
                gamma: Param::from_tensor(Tensor::ones([16], &device)),
            },
        }
    }

    /// (id, flattened values) of every parameter, in module order.
    fn params(&self) -> Vec<(&'static str, ParamId, Vec<f32>)> {
        let v2 = |p: &Param<Tensor<B, 2>>| p.val().into_data().to_vec::<f32>().unwrap();
        let v1 = |p: &Param<Tensor<B, 1>>| p.val().into_data().to_vec::<f32>().unwrap();
        let b = |l: &Linear<B>| l.bias.as_ref().unwrap().clone();
        vec![
            ("embed", self.embed.id, v2(&self.embed)),
            ("attn.weight", self.attn.weight.id, v2(&self.attn.weight)),
            ("attn.bias", b(&self.attn).id, v1(&b(&self.attn))),
            ("mlp.weight", self.mlp.weight.id, v2(&self.mlp.weight)),
            ("mlp.bias", b(&self.mlp).id, v1(&b(&self.mlp))),
            ("norm.gamma", self.norm.gamma.id, v1(&self.norm.gamma)),
        ]
    }

    /// Deterministic gradients of step `k` for every parameter (the same for every optimizer).
    fn grads(&self, k: u64) -> GradientsParams {
        let device = Default::default();
        let mut g = GradientsParams::new();
        let seed = 1000 * (k + 1);
        g.register::<Flex, 2>(self.embed.id, tensor([10, 16], seed + 1, &device));
        g.register::<Flex, 2>(self.attn.weight.id, tensor([16, 16], seed + 2, &device));
        g.register::<Flex, 1>(
            self.attn.bias.as_ref().unwrap().id,
            tensor([16], seed + 3, &device),
        );
        g.register::<Flex, 2>(self.mlp.weight.id, tensor([16, 24], seed + 4, &device));
        g.register::<Flex, 1>(
            self.mlp.bias.as_ref().unwrap().id,
            tensor([24], seed + 5, &device),
        );
        g.register::<Flex, 1>(self.norm.gamma.id, tensor([16], seed + 6, &device));
        g
    }
}

fn mixed() -> GroupsConfig {
    GroupsConfig::new()
        .with_group(
            GroupSpec::new("mlp", Method::Fira, &["mlp"])
                .with_rank(4)
                .with_update_proj_gap(3),
        )
        .with_group(
            GroupSpec::new("attn", Method::Dct, &["attn"])
                .with_rank(4)
                .with_update_proj_gap(3),
        )
}

fn run(
    optim: &mut EmberOptimizer<Net<B>, B>,
    mut model: Net<B>,
    steps: std::ops::Range<u64>,
) -> Net<B> {
    for k in steps {
        let g = model.grads(k);
        model = optim.try_step(1e-2, model, g).unwrap();
    }
    model
}

/// Fira on the MLP, DCT on attention, AdamW elsewhere in one optimizer equals, parameter by
/// parameter, the three single-method optimizers on the same gradients (bit-exact).
#[test]
fn a_mixed_optimizer_equals_the_single_method_optimizers() {
    let mut optim = mixed().build::<B, Net<B>>().unwrap();
    let got = run(&mut optim, Net::new(), 0..8).params();

    let mut fira = FiraConfig::new()
        .with_rank(4)
        .with_update_proj_gap(3)
        .with_targets(vec!["mlp".into()])
        .init::<B, Net<B>>();
    let by_fira = run(&mut fira, Net::new(), 0..8).params();
    let mut dct = DctConfig::new()
        .with_rank(4)
        .with_update_proj_gap(3)
        .with_targets(vec!["attn".into()])
        .init::<B, Net<B>>();
    let by_dct = run(&mut dct, Net::new(), 0..8).params();
    let mut adamw = Recipe::new(Method::Adamw).build::<B, Net<B>>().unwrap();
    let by_adamw = run(&mut adamw, Net::new(), 0..8).params();

    let initial = Net::new().params();
    for (k, (name, _, values)) in got.iter().enumerate() {
        let want = if name.starts_with("mlp") {
            &by_fira[k].2
        } else if name.starts_with("attn") {
            &by_dct[k].2
        } else {
            &by_adamw[k].2
        };
        assert_eq!(
            values, want,
            "{name} differs from its single-method optimizer"
        );
        assert_ne!(values, &initial[k].2, "{name} did not move");
    }
    // the separate optimizers really differ on the parameters they do not own (the comparison
    // above is not vacuous)
    assert_ne!(by_fira[3].2, by_adamw[3].2);
    assert_ne!(by_dct[1].2, by_adamw[1].2);
}

#[test]
fn a_mixed_optimizer_resumes_bit_exact() {
    let mut straight = mixed().build::<B, Net<B>>().unwrap();
    let want = run(&mut straight, Net::new(), 0..8).params();

    let mut first = mixed().build::<B, Net<B>>().unwrap();
    let half = run(&mut first, Net::new(), 0..4);
    let record = first.to_record();
    let mut resumed = mixed()
        .build::<B, Net<B>>()
        .unwrap()
        .load_record(record.clone());
    let got = run(&mut resumed, half.clone(), 4..8).params();
    for ((name, _, a), (_, _, b)) in got.iter().zip(&want) {
        assert_eq!(a, b, "{name} after resuming");
    }

    // another layout (the MLP group's rank changed) is refused
    let other = GroupsConfig::new()
        .with_group(
            GroupSpec::new("mlp", Method::Fira, &["mlp"])
                .with_rank(2)
                .with_update_proj_gap(3),
        )
        .with_group(
            GroupSpec::new("attn", Method::Dct, &["attn"])
                .with_rank(4)
                .with_update_proj_gap(3),
        );
    let mut wrong = other.build::<B, Net<B>>().unwrap().load_record(record);
    let g = half.grads(4);
    let err = wrong.try_step(1e-2, half, g).unwrap_err();
    assert!(
        matches!(err, EmberError::CheckpointMismatch { .. }),
        "{err}"
    );
}

/// Per-group weight decay and learning-rate multiplier: a group with `lr_scale` 0 does not move,
/// one with weight decay shrinks toward 0 beyond the one without.
#[test]
fn per_group_lr_scale_and_weight_decay() {
    let frozen = GroupsConfig::new()
        .with_group(GroupSpec::new("frozen", Method::Adamw, &[":1d"]).with_lr_scale(0.0));
    let mut optim = frozen.build::<B, Net<B>>().unwrap();
    let before = Net::new().params();
    let after = run(&mut optim, Net::new(), 0..3).params();
    for ((name, _, a), (_, _, b)) in after.iter().zip(&before) {
        let one_d = name.ends_with("bias") || name.ends_with("gamma");
        assert_eq!(
            a == b,
            one_d,
            "{name}: lr_scale 0 freezes the 1-D parameters only"
        );
    }

    let decay = |wd: f64| {
        let mut o = GroupsConfig::new()
            .with_default(GroupSpec {
                weight_decay: Some(wd),
                ..GroupSpec::default()
            })
            .build::<B, Net<B>>()
            .unwrap();
        let p = run(&mut o, Net::new(), 0..3).params();
        p[0].2.iter().map(|x| x * x).sum::<f32>()
    };
    assert!(decay(0.5) < decay(0.0));
}

/// The plan names each parameter's group; the first matching group wins.
#[test]
fn plan_names_each_parameters_group() {
    let groups = mixed().with_group(GroupSpec::new("no-decay", Method::Adamw, &[":1d"]));
    let optim = groups.build::<B, Net<B>>().unwrap();
    let plan = optim.plan_groups(&Net::new());
    let group = |path: &str| {
        plan.iter()
            .find(|e| e.path == path)
            .map(|e| e.group.clone())
            .unwrap()
    };
    assert_eq!(group("mlp.weight"), "mlp");
    assert_eq!(group("mlp.bias"), "mlp", "first match wins");
    assert_eq!(group("attn.weight"), "attn");
    assert_eq!(group("norm.gamma"), "no-decay");
    assert_eq!(group("embed"), "default");
}

/// Clipping equals burn's `GradientClipping` on the same gradients (per tensor), and the global
/// norm equals its definition.
#[test]
fn clipping_equals_burns() {
    let device = Default::default();
    let grads: Vec<Tensor<Flex, 2>> = (0..3)
        .map(|k| tensor::<Flex, 2>([6, 5], 50 + k, &device).mul_scalar(3.0))
        .collect();
    for (ours, burns) in [
        (Clipping::Value(0.4), GradientClipping::Value(0.4)),
        (Clipping::Norm(1.5), GradientClipping::Norm(1.5)),
    ] {
        let got = ours.apply(grads.clone());
        for (g, want) in got.into_iter().zip(&grads) {
            let want = burns.clip_gradient(want.clone());
            g.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::rel_abs(1e-6, 1e-12));
        }
    }
    // global: every gradient scaled by v / ‖(G₁, G₂, G₃)‖
    let all: Vec<f32> = grads
        .iter()
        .flat_map(|g| g.clone().into_data().to_vec::<f32>().unwrap())
        .collect();
    let norm = all.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 2.0, "the test must clip");
    let got: Vec<f32> = Clipping::GlobalNorm(2.0)
        .apply(grads)
        .into_iter()
        .flat_map(|g| g.into_data().to_vec::<f32>().unwrap())
        .collect();
    let want: Vec<f32> = all
        .iter()
        .map(|b| (*b as f64 * 2.0 / (norm + 1e-6)) as f32)
        .collect();
    TensorData::new(got, [all.len()]).assert_approx_eq::<f32>(
        &TensorData::new(want, [all.len()]),
        Tolerance::rel_abs(1e-6, 1e-12),
    );
}

/// Clipping inside the optimizer: a step with clipped gradients equals a step of the unclipped
/// optimizer on gradients clipped by burn.
#[test]
fn the_optimizer_clips_before_the_update() {
    let config = mixed().with_clipping(Some(ClippingSpec::Norm(0.5)));
    let mut clipped = config.build::<B, Net<B>>().unwrap();
    let got = run(&mut clipped, Net::new(), 0..2).params();

    let mut plain = mixed().build::<B, Net<B>>().unwrap();
    let mut model = Net::new();
    for k in 0..2 {
        let mut g = model.grads(k);
        let mut out = GradientsParams::new();
        for (name, id, _) in model.params() {
            let clip = GradientClipping::Norm(0.5);
            if name.ends_with("bias") || name.ends_with("gamma") {
                let t = g.remove::<Flex, 1>(id).unwrap();
                out.register::<Flex, 1>(id, clip.clip_gradient(t));
            } else {
                let t = g.remove::<Flex, 2>(id).unwrap();
                out.register::<Flex, 2>(id, clip.clip_gradient(t));
            }
        }
        model = plain.try_step(1e-2, model, out).unwrap();
    }
    for ((name, _, a), (_, _, b)) in got.iter().zip(&model.params()) {
        let data = |v: &[f32]| TensorData::new(v.to_vec(), [v.len()]);
        eprintln!("{name}"); // shown with a failure: the last name is the parameter that differs
        data(a).assert_approx_eq::<f32>(&data(b), Tolerance::rel_abs(1e-6, 1e-6));
    }
}

/// Bad input: each is a clear error naming the group.
#[test]
fn bad_groups_are_clear_errors() {
    let err = |c: GroupsConfig| c.build::<B, Net<B>>().err().expect("an error");
    let e = err(GroupsConfig::new()
        .with_group(GroupSpec::new("attn", Method::Galore, &["attn"]).with_density(0.25)));
    assert!(e.contains("group `attn`") && e.contains("density"), "{e}");
    let e = err(GroupsConfig::new()
        .with_group(GroupSpec::new("emb", Method::Adamw, &["embed"]).with_rank(8)));
    assert!(e.contains("group `emb`") && e.contains("rank"), "{e}");
    let e = err(GroupsConfig::new().with_group(GroupSpec::new("none", Method::Galore, &[])));
    assert!(
        e.contains("group `none`") && e.contains("empty selector"),
        "{e}"
    );
    let e = err(GroupsConfig::new()
        .with_group(GroupSpec::new("a", Method::Galore, &["attn"]))
        .with_group(GroupSpec::new("b", Method::Fira, &["attn"])));
    assert!(e.contains("group `b`") && e.contains("group `a`"), "{e}");
    let e = err(GroupsConfig::new().with_group(GroupSpec::new("p", Method::Galore, &[":vector"])));
    assert!(e.contains("group `p`") && e.contains(":vector"), "{e}");

    let e = GroupsConfig::from_json(
        r#"{"groups": [{"name": "x", "params": ["attn"], "method": "sgd"}]}"#,
    )
    .unwrap()
    .build::<B, Net<B>>()
    .err()
    .unwrap();
    assert!(
        e.contains("group `x`") && e.contains("unknown optimizer `sgd`"),
        "{e}"
    );
    let e =
        GroupsConfig::from_json(r#"{"groups": [{"name": "x", "params": ["attn"], "rnak": 4}]}"#)
            .unwrap_err();
    assert!(e.contains("rnak"), "{e}");

    // a group that selects nothing (every parameter taken by the ones before it) is an error at
    // the first step
    let mut shadowed = GroupsConfig::new()
        .with_group(GroupSpec::new(
            "all",
            Method::Adamw,
            &["weight", "bias", "embed", "gamma"],
        ))
        .with_group(GroupSpec::new("late", Method::Galore, &["attn"]))
        .build::<B, Net<B>>()
        .unwrap();
    let model = Net::new();
    let g = model.grads(0);
    let e = shadowed.try_step(1e-2, model, g).unwrap_err().to_string();
    assert!(e.contains("late"), "{e}");
}

/// A groups file parses into the same optimizer as the builder.
#[test]
fn a_groups_file_is_the_builder() {
    let json = r#"{
        "groups": [
            {"name": "mlp", "params": ["mlp"], "method": "fira", "rank": 4, "update_proj_gap": 3},
            {"name": "attn", "params": ["attn"], "method": "dct", "rank": 4, "update_proj_gap": 3}
        ],
        "clipping": {"global_norm": 1.0}
    }"#;
    let parsed = GroupsConfig::from_json(json).unwrap();
    assert_eq!(
        parsed,
        mixed().with_clipping(Some(ClippingSpec::GlobalNorm(1.0)))
    );
}
