//! Parts of the caller's — a projector fit and a residual rule — plugged into an optimizer
//! through its engine config, on `flex` (`ember::core::projector::FitProjector`,
//! `ember::core::residual::ResidualPart`).

mod common;

use burn::backend::Flex;
use burn::prelude::*;
use common::*;
use ember::core::kernels::portable::ResidualInputs;
use ember::core::projector::{FitContext, FitProjector, ProjType, ProjectorState};
use ember::core::residual::{ResidualPart, Sgd};
use ember::core::{
    EmberOptimizer, EngineConfig, NonFinitePolicy, ProjectorKind, ResidualRule, SharedBases, Side,
    Targets,
};
use ember::galore::GaloreConfig;

/// The exact SVD's basis, fitted through the part's interface; records what it was given.
#[derive(Debug, Default)]
struct Svd {
    seen: std::sync::Mutex<Vec<(usize, Side, bool, usize)>>,
}

impl FitProjector<Flex> for Svd {
    fn fit(&self, g: &Tensor<Flex, 2>, ctx: FitContext<Flex>) -> Result<Tensor<Flex, 2>, String> {
        self.seen
            .lock()
            .unwrap()
            .push((ctx.rank, ctx.side, ctx.previous.is_some(), ctx.refreshes));
        let state = ProjectorKind::ExactSvd(ProjType::Std)
            .fit(g, ctx.rank, &SharedBases::new(), ctx.salt, ctx.refreshes)
            .map_err(|e| e.to_string())?;
        match state {
            ProjectorState::Left(p) | ProjectorState::Right(p) => Ok(p),
            other => Err(format!("not a one-sided basis: {other:?}")),
        }
    }
}

/// Returns a basis of one rank too many.
#[derive(Debug)]
struct TooWide;

impl FitProjector<Flex> for TooWide {
    fn fit(&self, g: &Tensor<Flex, 2>, ctx: FitContext<Flex>) -> Result<Tensor<Flex, 2>, String> {
        let [m, _] = g.dims();
        Ok(Tensor::zeros([m, ctx.rank + 1], &g.device()))
    }
}

/// FRUGAL's SGD on the residual, written out.
#[derive(Debug)]
struct MySgd(f64);

impl ResidualPart<Flex> for MySgd {
    fn term(&self, x: ResidualInputs<Flex>, lr: f64) -> (Tensor<Flex, 2>, Option<Tensor<Flex, 1>>) {
        (x.g.sub(x.up_r).mul_scalar(lr * self.0), None)
    }
}

fn optimizer(target: EngineConfig) -> Result<EmberOptimizer<Tiny<B>, B>, String> {
    let dense = GaloreConfig::new().dense_engine();
    EmberOptimizer::new(
        target,
        dense,
        Targets::patterns(["mlp"]),
        NonFinitePolicy::Error,
    )
    .map_err(|e| e.to_string())
}

fn train(target: EngineConfig, steps: usize) -> Result<Vec<f32>, String> {
    let mut optim = optimizer(target)?;
    let mut model = Tiny::<B>::new(&Default::default());
    for k in 0..steps {
        let l = loss(&model, k);
        let grads = burn::optim::GradientsParams::from_grads(l.backward(), &model);
        model = optim
            .try_step(1e-2, model, grads)
            .map_err(|e| e.to_string())?;
    }
    Ok(flat(&model))
}

/// GaLore with the exact SVD as a part of the caller's trains the same weights as GaLore's own
/// exact SVD, bit for bit, over refreshes (gap 2) and both sides (`mlp.up` 12×16 on the left,
/// `mlp.down` 16×8 on the right); the fit gets the rank, the side, the previous basis from the
/// second fit on, and the count of earlier fits.
#[test]
fn a_custom_projector_trains_as_the_built_in_one() {
    let galore = GaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(2)
        .with_host_svd(true)
        .engine();
    let svd = Svd::default();
    let seen = std::sync::Arc::new(svd);
    #[derive(Debug)]
    struct Shared(std::sync::Arc<Svd>);
    impl FitProjector<Flex> for Shared {
        fn fit(
            &self,
            g: &Tensor<Flex, 2>,
            ctx: FitContext<Flex>,
        ) -> Result<Tensor<Flex, 2>, String> {
            self.0.fit(g, ctx)
        }
    }
    let custom = EngineConfig {
        projector: ProjectorKind::custom::<Flex, _>("svd", ProjType::Std, Shared(seen.clone())),
        ..galore.clone()
    };
    let a = train(galore, 5).unwrap();
    let b = train(custom, 5).unwrap();
    assert_eq!(a, b);
    // three fits (steps 0, 2, 4) of each of the two matrices, in module order
    let seen = seen.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "{seen:?}");
    for (k, (rank, _, warm, refreshes)) in seen.iter().enumerate() {
        assert_eq!((*rank, *warm, *refreshes), (4, k >= 2, k / 2), "{seen:?}");
    }
    assert_eq!(seen[0].1, Side::Left);
    assert_eq!(seen[1].1, Side::Right);
}

/// A residual rule of the caller's trains as the built-in one it writes out (FRUGAL's SGD on the
/// residual of a GaLore pipeline), bit for bit.
#[test]
fn a_custom_residual_rule_trains_as_the_built_in_one() {
    let galore = GaloreConfig::new()
        .with_rank(4)
        .with_update_proj_gap(2)
        .with_host_svd(true)
        .engine();
    let built_in = EngineConfig {
        residual: ResidualRule::Sgd(Sgd { lr_scale: 0.3 }),
        ..galore.clone()
    };
    let custom = EngineConfig {
        residual: ResidualRule::custom::<Flex, _>("sgd", MySgd(0.3)).unwrap(),
        ..galore
    };
    assert_eq!(train(built_in, 4).unwrap(), train(custom, 4).unwrap());
}

/// Parts built wrong are errors of the step or of the config, with the reason: a basis of the
/// wrong shape (the step), a part built for the autodiff backend instead of the inner one (the
/// optimizer's construction, before any step), a two-sided custom projector (the config).
#[test]
fn parts_built_wrong_are_clear_errors() {
    let galore = GaloreConfig::new()
        .with_rank(4)
        .with_host_svd(true)
        .engine();
    let wide = EngineConfig {
        projector: ProjectorKind::custom::<Flex, _>("too wide", ProjType::Std, TooWide),
        ..galore.clone()
    };
    let err = train(wide, 1).unwrap_err();
    assert!(
        err.contains("`too wide` returned a basis of shape"),
        "{err}"
    );

    #[derive(Debug)]
    struct Outer;
    impl FitProjector<B> for Outer {
        fn fit(&self, g: &Tensor<B, 2>, _: FitContext<B>) -> Result<Tensor<B, 2>, String> {
            Ok(g.clone())
        }
    }
    let outer = EngineConfig {
        projector: ProjectorKind::custom::<B, _>("outer", ProjType::Std, Outer),
        ..galore.clone()
    };
    let err = optimizer(outer).err().expect("refused");
    assert!(err.contains("built for the backend"), "{err}");

    let full = EngineConfig {
        projector: ProjectorKind::custom::<Flex, _>("svd", ProjType::Full, Svd::default()),
        ..galore
    };
    assert!(full.validate().is_err());
}
