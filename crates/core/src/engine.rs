//! The subspace-optimizer pipeline shared by every Ember method.
//!
//! For a 2-D parameter `W` (m×n) with gradient `G`, one step is
//!
//! 1. **decay first** (FRUGAL, DCT): `W ← W·(1 − lr·λ)`;
//! 2. **refresh**: if the [`RefreshPolicy`] says so, the [`ProjectorKind`] computes `P` from `G`;
//! 3. **project**: `R = down(G)`;
//! 4. **inner Adam** ([`SubspaceAdam`]): `M ← β₁M + (1−β₁)R`, `V ← β₂V + (1−β₂)R²`,
//!    `N` = normalized update, `c` = step size with bias correction;
//! 5. **back-project**: `ΔW = α·up(N)`;
//! 6. **residual** ([`ResidualRule`]): what to do with `G − up(R)`;
//! 7. **apply**: `W ← W − c·ΔW − residual term`; **decay after** (GaLore family):
//!    `W ← W − lr·λ·W`.
//!
//! Methods differ only in the parts they choose ([`EngineConfig`]). A non-targeted parameter goes
//! through the same pipeline with the [`ProjectorKind::Identity`] projector and `α = 1`, which is
//! exactly the AdamW of the method's package.

use burn::prelude::*;
use burn::record::Record;
use serde::{Deserialize, Serialize};

use crate::adam::SubspaceAdam;
use crate::error::EmberError;
use crate::projector::{tensor_bytes, ProjectorKind, ProjectorState};
use crate::refresh::{RefreshPolicy, RefreshState};
use crate::residual::ResidualRule;

/// When weight decay is applied relative to the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecayTiming {
    /// `W ← W − lr·λ·W` after the update, on the updated `W` (galore-torch, fira, q-galore).
    AfterUpdate,
    /// `W ← W·(1 − lr·λ)` before the update (torch AdamW, FRUGAL, DCT-AdamW).
    BeforeUpdate,
}

/// The parts of one pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Subspace rank `r`.
    pub rank: usize,
    /// Which projector.
    pub projector: ProjectorKind,
    /// When it is refreshed.
    pub refresh: RefreshPolicy,
    /// The inner Adam.
    pub adam: SubspaceAdam,
    /// The residual rule.
    pub residual: ResidualRule,
    /// α, multiplied into the back-projection.
    pub scale: f64,
    /// λ.
    pub weight_decay: f64,
    /// When λ is applied.
    pub decay: DecayTiming,
}

/// Everything the optimizer keeps for one parameter: a burn [`Record`].
#[derive(Record, Clone, Debug)]
pub struct ParamState<B: Backend> {
    /// Shape of the parameter this state belongs to (checked when a checkpoint is loaded).
    pub shape: Vec<usize>,
    /// Steps taken by this parameter.
    pub step: usize,
    /// Steps since the moments were last (re)set: the bias-correction counter.
    pub adam_step: usize,
    /// First moment, of the low-rank shape.
    pub moment_1: Tensor<B, 2>,
    /// Second moment, of the low-rank shape.
    pub moment_2: Tensor<B, 2>,
    /// The projector.
    pub projector: ProjectorState<B>,
    /// Refresh bookkeeping.
    pub refresh: RefreshState<B>,
}

impl<B: Backend> ParamState<B> {
    /// Bytes held on the device for this parameter (moments + projector + refresh vectors).
    pub fn bytes(&self) -> usize {
        tensor_bytes(&self.moment_1)
            + tensor_bytes(&self.moment_2)
            + self.projector.bytes()
            + self
                .refresh
                .last_first_vector
                .as_ref()
                .map(tensor_bytes)
                .unwrap_or(0)
    }

    /// Moves every tensor to `device`.
    pub fn to_device(mut self, device: &B::Device) -> Self {
        self.moment_1 = self.moment_1.to_device(device);
        self.moment_2 = self.moment_2.to_device(device);
        self.projector = match self.projector {
            ProjectorState::Left(p) => ProjectorState::Left(p.to_device(device)),
            ProjectorState::Right(p) => ProjectorState::Right(p.to_device(device)),
            ProjectorState::Both(mut t) => {
                t.left = t.left.to_device(device);
                t.right = t.right.to_device(device);
                ProjectorState::Both(t)
            }
            ProjectorState::Identity(()) => ProjectorState::Identity(()),
        };
        self.refresh.last_first_vector =
            self.refresh.last_first_vector.map(|v| v.to_device(device));
        self
    }
}

impl EngineConfig {
    /// Checks the configuration values (not the parameter shapes).
    pub fn validate(&self) -> Result<(), EmberError> {
        let bad = EmberError::InvalidConfig;
        if self.projector != ProjectorKind::Identity && self.rank == 0 {
            return Err(bad("rank must be at least 1".into()));
        }
        self.refresh.validate().map_err(bad)?;
        self.adam.validate().map_err(bad)?;
        if !self.scale.is_finite() {
            return Err(bad(format!("scale = {} must be finite", self.scale)));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(bad(format!(
                "weight_decay = {} must be ≥ 0",
                self.weight_decay
            )));
        }
        Ok(())
    }

    /// Checks that this pipeline can run on a parameter of `shape` (and, if given, that a loaded
    /// state belongs to it).
    pub fn check_param<B: Backend>(
        &self,
        name: &str,
        shape: &[usize],
        state: Option<&ParamState<B>>,
    ) -> Result<(), EmberError> {
        if self.projector != ProjectorKind::Identity {
            if shape.len() != 2 {
                return Err(EmberError::UnsupportedParameter {
                    param: name.into(),
                    reason: format!("a projected parameter must be 2-D, got shape {shape:?}"),
                });
            }
            if self.rank == 0 || self.rank > shape[0].min(shape[1]) {
                return Err(EmberError::InvalidRank {
                    param: name.into(),
                    shape: shape.to_vec(),
                    rank: self.rank,
                });
            }
        }
        if let Some(state) = state {
            if state.shape != shape {
                return Err(EmberError::CheckpointMismatch {
                    param: name.into(),
                    reason: format!(
                        "state for shape {:?}, parameter has shape {shape:?}",
                        state.shape
                    ),
                });
            }
            let expected = match self.projector {
                ProjectorKind::Identity => None,
                _ => Some(self.rank),
            };
            if state.projector.rank() != expected {
                return Err(EmberError::CheckpointMismatch {
                    param: name.into(),
                    reason: format!(
                        "state has rank {:?}, the optimizer is configured for rank {:?}",
                        state.projector.rank(),
                        expected
                    ),
                });
            }
            let [m, n] = [shape[0], shape.get(1).copied().unwrap_or(1)];
            let low = match self.projector {
                ProjectorKind::Identity => state.moment_1.dims(),
                ref p => p.low_rank_shape(m, n, self.rank),
            };
            if state.moment_1.dims() != low || state.moment_2.dims() != low {
                return Err(EmberError::CheckpointMismatch {
                    param: name.into(),
                    reason: format!(
                        "moments of shape {:?}, the configuration needs {low:?}",
                        state.moment_1.dims()
                    ),
                });
            }
        }
        Ok(())
    }

    /// One step of the pipeline for a 2-D view `w` of a parameter with gradient `g`.
    ///
    /// `name` is used in errors only. The caller checks shapes with [`check_param`](Self::check_param)
    /// and finiteness of `g` beforehand.
    pub fn step<B: Backend>(
        &self,
        lr: f64,
        w: Tensor<B, 2>,
        g: Tensor<B, 2>,
        state: Option<ParamState<B>>,
        shape: &[usize],
    ) -> Result<(Tensor<B, 2>, ParamState<B>), EmberError> {
        let decay = lr * self.weight_decay;
        let mut w = w;
        if self.decay == DecayTiming::BeforeUpdate && decay != 0.0 {
            w = w.mul_scalar(1.0 - decay);
        }

        let (mut step, mut adam_step, mut moments, mut projector, mut refresh) = match state {
            Some(s) => (
                s.step,
                s.adam_step,
                Some((s.moment_1, s.moment_2)),
                Some(s.projector),
                s.refresh,
            ),
            None => (0, 0, None, None, self.refresh.init_state()),
        };

        // refresh
        let k = step;
        if projector.is_none() || self.refresh.is_due(k, &refresh) {
            let fresh = self.projector.fit(&g, self.rank)?;
            refresh.refreshes += 1;
            if self.adam.reset_on_refresh && moments.is_some() {
                moments = None;
                adam_step = 0;
            }
            projector = Some(fresh);
        }
        let projector = projector.expect("projector set above");

        // project + inner Adam
        let r = projector.down(g);
        let (m, v) = match moments {
            Some(mv) => mv,
            None => (r.zeros_like(), r.zeros_like()),
        };
        step += 1;
        adam_step += 1;
        let (n, m, v, c) = self.adam.update(r, m, v, adam_step, lr);

        // back-project and apply
        let mut delta = projector.up(n);
        if self.scale != 1.0 {
            delta = delta.mul_scalar(self.scale);
        }
        match self.residual {
            ResidualRule::Discard => {}
        }
        w = w.sub(delta.mul_scalar(c));
        if self.decay == DecayTiming::AfterUpdate && decay != 0.0 {
            w = w.clone().sub(w.mul_scalar(decay));
        }

        Ok((
            w,
            ParamState {
                shape: shape.to_vec(),
                step,
                adam_step,
                moment_1: m,
                moment_2: v,
                projector,
                refresh,
            },
        ))
    }

    /// Bytes of optimizer state this pipeline holds for an `m × n` parameter with f32 state
    /// (moments + projector), i.e. what [`ParamState::bytes`] reports once the parameter stepped.
    pub fn state_bytes_f32(&self, m: usize, n: usize) -> usize {
        let [a, b] = self.projector.low_rank_shape(m, n, self.rank);
        4 * (2 * a * b + self.projector.projector_elements(m, n, self.rank))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adam::AdamFlavor;
    use burn::backend::Flex;
    use burn::optim::{AdamWConfig, SimpleOptimizer};

    type B = Flex;

    fn random(shape: [usize; 2], seed: u64) -> Tensor<B, 2> {
        // a small deterministic generator, independent of burn's RNG
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let values: Vec<f32> = (0..shape[0] * shape[1])
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn identity(flavor: AdamFlavor, decay: DecayTiming, wd: f64) -> EngineConfig {
        EngineConfig {
            rank: 0,
            projector: ProjectorKind::Identity,
            refresh: RefreshPolicy::Every { gap: 1 },
            adam: SubspaceAdam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                bias_correction: true,
                flavor,
                reset_on_refresh: false,
            },
            residual: ResidualRule::Discard,
            scale: 1.0,
            weight_decay: wd,
            decay,
        }
    }

    fn max_diff(a: &Tensor<B, 2>, b: &Tensor<B, 2>) -> f32 {
        a.clone().sub(b.clone()).abs().max().into_scalar()
    }

    /// With the identity projector the pipeline is AdamW: compared with burn's own AdamW
    /// (torch arithmetic, decoupled decay applied to the pre-update weights).
    #[test]
    fn identity_projector_equals_burn_adamw() {
        let engine = identity(AdamFlavor::Torch, DecayTiming::BeforeUpdate, 0.1);
        let adamw = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .with_weight_decay(0.1)
            .build();
        let (mut w_ours, mut w_burn) = (random([7, 5], 1), random([7, 5], 1));
        let (mut s_ours, mut s_burn) = (None, None);
        for step in 0..6 {
            let g = random([7, 5], 100 + step);
            let (w, s) = engine
                .step(1e-2, w_ours, g.clone(), s_ours, &[7, 5])
                .unwrap();
            (w_ours, s_ours) = (w, Some(s));
            (w_burn, s_burn) = SimpleOptimizer::<B>::step(&adamw, 1e-2, w_burn, g, s_burn);
            assert!(max_diff(&w_ours, &w_burn) < 1e-6, "step {step}");
        }
    }

    /// galore-torch's AdamW (ε before bias correction, decay after the update), written out.
    #[test]
    fn identity_projector_equals_galore_adamw_formula() {
        let (lr, wd, b1, b2, eps) = (1e-2f64, 0.05f64, 0.9f64, 0.999f64, 1e-8f64);
        let engine = identity(AdamFlavor::Galore, DecayTiming::AfterUpdate, wd);
        let mut w = random([4, 6], 3);
        let mut w_ref: Vec<f32> = w.clone().into_data().to_vec().unwrap();
        let (mut m, mut v) = (vec![0f64; 24], vec![0f64; 24]);
        let mut state = None;
        for t in 1..=5 {
            let g = random([4, 6], 10 + t as u64);
            let gv: Vec<f32> = g.clone().into_data().to_vec().unwrap();
            let (nw, s) = engine.step(lr, w, g, state, &[4, 6]).unwrap();
            (w, state) = (nw, Some(s));
            let step = lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
            for i in 0..24 {
                let gi = gv[i] as f64;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let mut x = w_ref[i] as f64 - step * m[i] / (v[i].sqrt() + eps);
                x -= lr * wd * x;
                w_ref[i] = x as f32;
            }
            let ours: Vec<f32> = w.clone().into_data().to_vec().unwrap();
            for i in 0..24 {
                assert!((ours[i] - w_ref[i]).abs() < 1e-6, "t={t} i={i}");
            }
        }
    }

    /// `proj_type = full`: the two-sided projector, checked on its own terms. For a gradient of
    /// exact rank r, `up(down(G)) = G`; the first step moves W by `lr·α·U·(R/(|R|+ε'))·Vh`.
    #[test]
    fn full_projection_two_sided() {
        let (m, n, r) = (9usize, 6usize, 2usize);
        let a = random([m, r], 5);
        let b = random([r, n], 6);
        let g = a.matmul(b);
        let kind = ProjectorKind::ExactSvd(crate::projector::ProjType::Full);
        let p = kind.fit(&g, r).unwrap();
        let low = p.down(g.clone());
        assert_eq!(low.dims(), [r, r]);
        assert!(max_diff(&p.up(low.clone()), &g) < 1e-5);

        let engine = EngineConfig {
            rank: r,
            projector: kind,
            scale: 0.25,
            ..identity(AdamFlavor::Galore, DecayTiming::AfterUpdate, 0.0)
        };
        let w = random([m, n], 7);
        let (w1, state) = engine
            .step(1e-2, w.clone(), g.clone(), None, &[m, n])
            .unwrap();
        assert_eq!(state.moment_1.dims(), [r, r]);
        assert_eq!(state.bytes(), engine.state_bytes_f32(m, n));
        // t = 1: N = (1-β1)R / (√(1-β2)|R| + ε), step lr·√(1-β2)/(1-β1)
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let n1 = low
            .clone()
            .mul_scalar(1.0 - b1)
            .div(low.abs().mul_scalar((1.0 - b2).sqrt()).add_scalar(eps));
        let expected = w.sub(
            p.up(n1)
                .mul_scalar(0.25 * 1e-2 * (1.0 - b2).sqrt() / (1.0 - b1)),
        );
        assert!(max_diff(&w1, &expected) < 1e-6);
    }

    #[test]
    fn moments_survive_a_refresh_unless_reset() {
        let mut engine = EngineConfig {
            rank: 2,
            projector: ProjectorKind::ExactSvd(crate::projector::ProjType::Std),
            refresh: RefreshPolicy::Every { gap: 2 },
            ..identity(AdamFlavor::Galore, DecayTiming::AfterUpdate, 0.0)
        };
        let run = |engine: &EngineConfig| {
            let mut w = random([8, 5], 1);
            let mut state = None;
            for t in 0..3 {
                let (nw, s) = engine
                    .step(1e-2, w, random([8, 5], 20 + t), state, &[8, 5])
                    .unwrap();
                (w, state) = (nw, Some(s));
            }
            state.unwrap()
        };
        let kept = run(&engine);
        assert_eq!(
            (kept.step, kept.adam_step, kept.refresh.refreshes),
            (3, 3, 2)
        );
        engine.adam.reset_on_refresh = true;
        let reset = run(&engine);
        assert_eq!(
            (reset.step, reset.adam_step, reset.refresh.refreshes),
            (3, 1, 2)
        );
    }
}
