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
        if !(self.weight_decay >= 0.0) {
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
