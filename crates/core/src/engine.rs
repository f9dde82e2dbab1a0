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
use crate::dct::SharedBases;
use crate::error::EmberError;
use crate::projector::{tensor_bytes, ProjectorKind, ProjectorState, Side};
use crate::refresh::{RefreshPolicy, RefreshState};
use crate::residual::{ResidualPart, ResidualRule};
use crate::state::{Moment, StateStorage};
use burn::tensor::DType;
use ember_kernels::portable::ResidualInputs;
use ember_kernels::{Basis, EmberBackend, ResidualUpdate, UpdateCoefficients};

/// When weight decay is applied relative to the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecayTiming {
    /// `W ← W − lr·λ·W` after the update, on the updated `W` (galore-torch, fira, q-galore).
    AfterUpdate,
    /// `W ← W·(1 − lr·λ)` before the update (torch AdamW, FRUGAL, DCT-AdamW).
    BeforeUpdate,
}

/// How the subspace rank of a parameter is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RankRule {
    /// The same rank `r` for every targeted parameter (GaLore, Fira, DCT, Q-GaLore).
    Fixed(usize),
    /// `round(ρ × projected dimension)` (FRUGAL's `density`; round half to even, as Python).
    Density(f64),
    /// `floor(ρ × projected dimension)` (FRUGAL's coordinate optimizer: `int(ρ·dim)`).
    DensityFloor(f64),
}

/// What a step needs to know about its parameter besides its values.
#[derive(Clone, Copy)]
pub struct StepContext<'a, B: Backend> {
    /// The parameter's original shape (recorded in the state).
    pub shape: &'a [usize],
    /// The shared DCT bases.
    pub bases: &'a SharedBases<B>,
    /// Identifies the parameter for seeded projectors (hash of its module path).
    pub salt: u64,
    /// The step's skip flag on the device ([`ember_kernels::Skip`]): where it is 1 the step
    /// changes neither the weight nor the moments (its gradients were not finite). `None`: the
    /// gradients were checked on the host. A step that refreshes its projector needs `None`.
    pub skip: Option<&'a Tensor<B, 1>>,
}

impl<'a, B: Backend> StepContext<'a, B> {
    /// A context with no seeded salt and no skip flag.
    pub fn new(shape: &'a [usize], bases: &'a SharedBases<B>) -> Self {
        Self {
            shape,
            bases,
            salt: 0,
            skip: None,
        }
    }
}

/// The gradient a step applies.
#[derive(Debug, Clone)]
pub enum Gradient<B: Backend> {
    /// The full gradient `G` (m×n).
    Full(Tensor<B, 2>),
    /// An accumulated projected gradient `Σⱼ down(Gⱼ)` ([`EngineConfig::project`]).
    Projected(Tensor<B, 2>),
    /// The full gradient `G` and `R = down(G)` with the parameter's current projector, computed
    /// before the step ([`EngineConfig::project`]) for a residual rule that reads both
    /// ([`EngineConfig::projects_beside`]).
    WithProjected(Tensor<B, 2>, Tensor<B, 2>),
    /// Fira's residual `D = G − α·up(R)` and `R = down(G)`, computed before the step in place of
    /// [`WithProjected`](Self::WithProjected)'s `G` where the backend does it with the down
    /// product ([`EngineConfig::project_beside`], `EmberBackend::projection_down_residual`).
    WithResidual(Tensor<B, 2>, Tensor<B, 2>),
}

impl<B: Backend> Gradient<B> {
    /// The tensor a NaN/Inf check reads: `G`, or `R` where only `R` is kept, or Fira's residual
    /// `D` (non-finite wherever `G` is: a non-finite `G` makes `R` and `up(R)` non-finite).
    pub fn checked(&self) -> &Tensor<B, 2> {
        match self {
            Gradient::Full(t)
            | Gradient::Projected(t)
            | Gradient::WithProjected(t, _)
            | Gradient::WithResidual(t, _) => t,
        }
    }

    /// The same kind of gradient around `t` in place of [`checked`](Self::checked)'s tensor
    /// (clipping's output); `None` for [`Gradient::WithProjected`], whose `R` would go stale.
    pub fn with_checked(&self, t: Tensor<B, 2>) -> Option<Self> {
        match self {
            Gradient::Full(_) => Some(Gradient::Full(t)),
            Gradient::Projected(_) => Some(Gradient::Projected(t)),
            Gradient::WithProjected(..) | Gradient::WithResidual(..) => None,
        }
    }
}

/// A parameter's state taken apart for one step.
struct Parts<B: Backend> {
    step: usize,
    adam_step: usize,
    moments: Option<(Moment<B>, Moment<B>)>,
    projector: Option<ProjectorState<B>>,
    refresh: RefreshState,
    prev_norm: Option<Tensor<B, 1>>,
}

impl<B: Backend> Parts<B> {
    fn unpack(state: Option<ParamState<B>>, policy: &RefreshPolicy) -> Self {
        match state {
            Some(s) => Self {
                step: s.step,
                adam_step: s.adam_step,
                moments: Some((s.moment_1, s.moment_2)),
                projector: Some(s.projector),
                refresh: s.refresh,
                prev_norm: s.residual_norm,
            },
            None => Self {
                step: 0,
                adam_step: 0,
                moments: None,
                projector: None,
                refresh: policy.init_state(),
                prev_norm: None,
            },
        }
    }
}

/// The parts of one pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Subspace rank.
    pub rank: RankRule,
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
    /// How the moments and the projector are stored.
    #[serde(default)]
    pub state: StateStorage,
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
    pub moment_1: Moment<B>,
    /// Second moment, of the low-rank shape.
    pub moment_2: Moment<B>,
    /// The projector.
    pub projector: ProjectorState<B>,
    /// Refresh bookkeeping.
    pub refresh: RefreshState,
    /// The residual rule's memory (Fira's `ζ`, the norm of the last residual term).
    pub residual_norm: Option<Tensor<B, 1>>,
}

impl<B: Backend> ParamState<B> {
    /// Bytes held on the device for this parameter (moments + projector + refresh vectors).
    pub fn bytes(&self) -> usize {
        self.moment_1.bytes()
            + self.moment_2.bytes()
            + self.projector.bytes()
            + self.residual_norm.as_ref().map(tensor_bytes).unwrap_or(0)
            + 4 * self.refresh.last_first_vector.len()
    }

    /// Moves every tensor to `device`.
    pub fn to_device(mut self, device: &B::Device) -> Self {
        self.moment_1 = self.moment_1.to_device(device);
        self.moment_2 = self.moment_2.to_device(device);
        self.projector = self.projector.to_device(device);
        self.residual_norm = self.residual_norm.map(|v| v.to_device(device));
        self
    }
}

impl EngineConfig {
    /// Checks the configuration values (not the parameter shapes).
    pub fn validate(&self) -> Result<(), EmberError> {
        let bad = EmberError::InvalidConfig;
        if self.projector != ProjectorKind::Identity {
            match self.rank {
                RankRule::Fixed(0) => return Err(bad("rank must be at least 1".into())),
                RankRule::Density(rho) | RankRule::DensityFloor(rho)
                    if !(rho > 0.0 && rho <= 1.0) =>
                {
                    return Err(bad(format!("density ρ = {rho} must be in (0, 1]")))
                }
                _ => {}
            }
        }
        if let ProjectorKind::Dct(crate::projector::ProjType::Full)
        | ProjectorKind::DeviceRange {
            proj_type: crate::projector::ProjType::Full,
            ..
        }
        | ProjectorKind::Custom(crate::projector::CustomProjector {
            proj_type: crate::projector::ProjType::Full,
            ..
        }) = self.projector
        {
            return Err(bad("this projector has no two-sided (`full`) mode".into()));
        }
        self.residual.validate().map_err(bad)?;
        self.state.validate().map_err(bad)?;
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

    /// Checks that the parts of the caller's (a [`ResidualRule::Custom`], a
    /// [`ProjectorKind::Custom`]) were built for the backend `B` the engine steps on.
    pub fn check_parts<B: Backend>(&self) -> Result<(), EmberError> {
        self.residual.part::<B>()?;
        if let ProjectorKind::Custom(c) = &self.projector {
            c.part::<B>()?;
        }
        Ok(())
    }

    /// The rank used for an `m × n` parameter.
    pub fn rank_for(&self, m: usize, n: usize) -> usize {
        match self.rank {
            RankRule::Fixed(r) => r,
            RankRule::Density(rho) | RankRule::DensityFloor(rho) => {
                let dim = match self.projector.side(m, n) {
                    Some(Side::Left) => m,
                    Some(Side::Right) => n,
                    _ => m.min(n),
                };
                let x = rho * dim as f64;
                if matches!(self.rank, RankRule::Density(_)) {
                    x.round_ties_even() as usize
                } else {
                    x.floor() as usize
                }
            }
        }
    }

    /// The largest rank an `m × n` parameter admits.
    pub fn max_rank(&self, m: usize, n: usize) -> usize {
        match (&self.projector, self.projector.side(m, n)) {
            (ProjectorKind::ExactSvd(_) | ProjectorKind::AutoSvd(_), _) => m.min(n),
            (_, Some(Side::Left)) => m,
            (_, Some(Side::Right)) => n,
            _ => m.min(n),
        }
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
            let rank = self.rank_for(shape[0], shape[1]);
            if rank == 0 || rank > self.max_rank(shape[0], shape[1]) {
                return Err(EmberError::InvalidRank {
                    param: name.into(),
                    shape: shape.to_vec(),
                    rank,
                });
            }
            if let ProjectorKind::QuantizedSvd { group_size, .. } = self.projector {
                // the quantized projector is P (r×n for m ≥ n, else m×r), grouped along its rows
                let (m, n) = (shape[0], shape[1]);
                let (rows, cols) = if m >= n { (rank, n) } else { (m, rank) };
                let group = if group_size < 0 {
                    cols
                } else {
                    group_size as usize
                };
                if group == 0 || !(rows * cols).is_multiple_of(group) {
                    return Err(EmberError::UnsupportedParameter {
                        param: name.into(),
                        reason: format!(
                            "the quantization group size {group_size} does not divide its \
                             {rows}x{cols} projector"
                        ),
                    });
                }
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
            let [m, n] = [shape[0], shape.get(1).copied().unwrap_or(1)];
            let expected = match self.projector {
                ProjectorKind::Identity => None,
                _ => Some(self.rank_for(m, n)),
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
            let low = match self.projector {
                ProjectorKind::Identity => state.moment_1.dims(),
                ref p => p.low_rank_shape(m, n, self.rank_for(m, n)),
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
            let want = self.state.moment_dtype(low[0] * low[1]);
            for m in [&state.moment_1, &state.moment_2] {
                if m.dtype() != want {
                    return Err(EmberError::CheckpointMismatch {
                        param: name.into(),
                        reason: format!(
                            "moments stored as {}, the configuration stores {}",
                            m.dtype().name(),
                            want.name()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks that a parameter's and its gradient's dtypes can be stepped: f32, bf16 or f16 (the
    /// step computes in f32 and rounds the weight back once).
    pub fn check_dtypes(name: &str, weight: DType, grad: DType) -> Result<(), EmberError> {
        let ok = |d: DType| matches!(d, DType::F32 | DType::BF16 | DType::F16);
        for (what, d) in [("the parameter", weight), ("its gradient", grad)] {
            if !ok(d) {
                return Err(EmberError::UnsupportedParameter {
                    param: name.into(),
                    reason: format!(
                        "{what} has dtype {d:?}; Ember steps f32, bf16 and f16 parameters and \
                         gradients (weights {weight:?}, gradient {grad:?})"
                    ),
                });
            }
        }
        Ok(())
    }

    /// One step of the pipeline for a 2-D view `w` of a parameter with gradient `g`.
    ///
    /// `w` and `g` may be f32, bf16 or f16: the step computes in f32 and rounds the new weight
    /// to `w`'s dtype once, at the end. `salt` identifies the parameter for seeded projectors.
    /// The caller checks shapes and dtypes with [`check_param`](Self::check_param) and
    /// finiteness of `g` beforehand.
    pub fn step<B: EmberBackend>(
        &self,
        lr: f64,
        w: Tensor<B, 2>,
        g: Tensor<B, 2>,
        state: Option<ParamState<B>>,
        ctx: &StepContext<'_, B>,
    ) -> Result<(Tensor<B, 2>, ParamState<B>), EmberError> {
        self.step_with(lr, w, Gradient::Full(g), state, ctx)
    }

    /// Whether gradients of this pipeline can be accumulated projected (`R = down(G)`, r×n)
    /// instead of full: a projector and a residual that is discarded (GaLore, Q-GaLore, DCT).
    pub fn accumulates_projected(&self) -> bool {
        self.projector != ProjectorKind::Identity && self.residual.is_discard()
    }

    /// `R = down(G)` with the parameter's projector, refreshing it first when due and
    /// `allow_refresh` (the first micro-batch of an accumulation window). Returns `R` (f32) and
    /// the state holding the projector; nothing else changes (the step counters advance at
    /// [`step_with`](Self::step_with)). With the projector fixed over a window,
    /// `Σⱼ down(Gⱼ) = down(Σⱼ Gⱼ)`: accumulating `R` is exact.
    pub fn project<B: EmberBackend>(
        &self,
        g: Tensor<B, 2>,
        state: Option<ParamState<B>>,
        ctx: &StepContext<'_, B>,
        allow_refresh: bool,
    ) -> Result<(Tensor<B, 2>, ParamState<B>), EmberError> {
        self.project_inner(g, state, ctx, allow_refresh, false)
            .map(|(r, _, state)| (r, state))
    }

    /// `R = down(G)` computed before the step beside what the residual rule reads
    /// ([`projects_beside`](Self::projects_beside)): [`Gradient::WithResidual`] with Fira's
    /// residual `G − α·up(R)` where the backend computes it with the down product
    /// (`EmberBackend::projection_down_residual`: in place over `G`, one cuBLAS window for both
    /// products on CUDA), else [`Gradient::WithProjected`] with `G`.
    pub fn project_beside<B: EmberBackend>(
        &self,
        g: Tensor<B, 2>,
        state: Option<ParamState<B>>,
        ctx: &StepContext<'_, B>,
    ) -> Result<(Gradient<B>, ParamState<B>), EmberError> {
        let (r, beside, state) = self.project_inner(g, state, ctx, false, true)?;
        let grad = match beside {
            Some((d, true)) => Gradient::WithResidual(d, r),
            Some((g, false)) => Gradient::WithProjected(g, r),
            None => unreachable!("kept beside"),
        };
        Ok((grad, state))
    }

    /// [`project`](Self::project); with `beside`, also `G` — or Fira's residual, flagged `true`.
    #[allow(clippy::type_complexity)]
    fn project_inner<B: EmberBackend>(
        &self,
        g: Tensor<B, 2>,
        state: Option<ParamState<B>>,
        ctx: &StepContext<'_, B>,
        allow_refresh: bool,
        beside: bool,
    ) -> Result<(Tensor<B, 2>, Option<(Tensor<B, 2>, bool)>, ParamState<B>), EmberError> {
        let mut p = Parts::unpack(state, &self.refresh);
        if allow_refresh || p.projector.is_none() {
            self.refresh_parts(&mut p, &g, ctx)?;
        }
        let projector = p.projector.take().expect("projector set above");
        let device = g.device();
        let g_dtype = g.dtype();
        let low_precision = g_dtype != DType::F32;
        // a dtype the backend multiplies as it is (bf16 on CUDA) needs no f32 copy of `G`, nor
        // of a projector stored in it
        let native = low_precision && B::native_dtype(g_dtype);
        let keep = (native && keeps_projector_dtype()).then_some(g_dtype);
        let active = projector.materialize_keeping(ctx.bases, keep);
        let [rows, cols] = g.dims();
        let fira = matches!(self.residual, ResidualRule::Fira(_));
        let (r, beside) = match (
            active.basis(),
            self.update_chunks(rows, cols, true, low_precision),
        ) {
            // Fira's residual with the down product where the backend does it
            (Some(basis), None) if beside && fira && g.dtype() == DType::F32 => {
                let (r, d, given) = B::projection_down_residual(&basis, g, self.scale);
                (r, Some((d, given)))
            }
            (basis, chunks) => {
                let kept = beside.then(|| (g.clone(), false));
                let r = match (basis, chunks) {
                    (Some(basis), _) if native => basis.down(g),
                    // a large gradient: one row chunk in f32 at a time
                    (Some(basis), Some(chunks)) => crate::chunked::down(&basis, g, &chunks),
                    _ => active.down(g.cast(DType::F32), ctx.bases),
                };
                (r, kept)
            }
        };
        let [a, b] = r.dims();
        let (m1, m2) = p
            .moments
            .take()
            .unwrap_or_else(|| self.state.zeros([a, b], &r.device()));
        Ok((
            r,
            beside,
            ParamState {
                shape: ctx.shape.to_vec(),
                step: p.step,
                adam_step: p.adam_step,
                moment_1: m1,
                moment_2: m2,
                projector: projector.stored_as(self.projector_dtype::<B>(g_dtype, &device)),
                refresh: p.refresh,
                residual_norm: p.prev_norm,
            },
        ))
    }

    /// Whether a step can take this parameter's `R = down(G)` computed before it, beside `G`
    /// ([`Gradient::WithProjected`]): a projector, a residual rule that reads `G` (a discarded
    /// residual takes [`Gradient::Projected`] instead), an f32 gradient (a bf16 one is projected
    /// in f32 inside the step), and a state whose projector is not due for a refresh (`R` must
    /// come from the projector the step uses).
    pub fn projects_beside<B: Backend>(&self, g: DType, state: Option<&ParamState<B>>) -> bool {
        self.projector != ProjectorKind::Identity
            && !self.residual.is_discard()
            && g == DType::F32
            && state.is_some()
            && !self.refreshes_next(state)
    }

    /// Whether the next step of a parameter with state `state` fits a projector from its
    /// gradient (its first step, or a refresh the policy schedules): such a step reads the
    /// gradient on the host or fits on it, so the optimizer checks that gradient on the host
    /// first. Never for the identity projector.
    pub fn refreshes_next<B: Backend>(&self, state: Option<&ParamState<B>>) -> bool {
        if self.projector == ProjectorKind::Identity {
            return false;
        }
        match state {
            None => true,
            Some(s) => self.refresh.is_due(s.step, &s.refresh),
        }
    }

    fn refresh_due<B: Backend>(&self, p: &Parts<B>) -> bool {
        self.projector != ProjectorKind::Identity
            && (p.projector.is_none() || self.refresh.is_due(p.step, &p.refresh))
    }

    /// The dtype a dense projector of a `w_dtype` weight is stored in: the state storage's
    /// ([`StateStorage::projector_dtype_on`]), except where the residual is discarded (GaLore)
    /// and the backend multiplies `w_dtype` as it is (bf16 on CUDA, `EmberBackend::native_dtype`):
    /// there every product rounds the basis to `w_dtype` anyway (cuBLAS's bf16 operands, the
    /// update GEMM's `P`), so the projector is stored rounded once — the same values in the
    /// products, half the bytes of an f32 projector, and no cast of `P` in each step's down
    /// and update products (galore-torch also keeps a bf16 weight's projector in bf16). The
    /// next refresh's warm start (the device projector) then starts from the rounded basis.
    /// `EMBER_KEEP_PROJECTOR_DTYPE=off` stores the state's dtype (the comparison).
    pub fn projector_dtype<B: EmberBackend>(&self, w_dtype: DType, device: &B::Device) -> DType {
        let stored = self.state.projector_dtype_on::<B>(device);
        if self.residual.is_discard()
            && stored == DType::F32
            && w_dtype != DType::F32
            && B::native_dtype(w_dtype)
            && keeps_projector_dtype()
        {
            w_dtype
        } else {
            stored
        }
    }

    /// Refreshes the projector of `p` if it has none or the refresh policy says so.
    fn refresh_parts<B: EmberBackend>(
        &self,
        p: &mut Parts<B>,
        g: &Tensor<B, 2>,
        ctx: &StepContext<'_, B>,
    ) -> Result<(), EmberError> {
        let [m, n] = g.dims();
        let identity = self.projector == ProjectorKind::Identity;
        if p.projector.is_none() || (!identity && self.refresh.is_due(p.step, &p.refresh)) {
            let (fresh, first) = self.projector.fit_warm(
                &g.clone().cast(DType::F32),
                self.rank_for(m, n),
                ctx.bases,
                ctx.salt,
                p.refresh.refreshes,
                p.projector.as_ref(),
            )?;
            self.refresh.observe(&mut p.refresh, first);
            p.refresh.refreshes += 1;
            if self.adam.reset_on_refresh && p.moments.is_some() {
                p.moments = None;
                p.adam_step = 0;
            }
            p.projector = Some(fresh);
        }
        Ok(())
    }

    /// [`step`](Self::step) with the full gradient or an accumulated projected one
    /// ([`Gradient::Projected`], from [`project`](Self::project); no refresh then, and the
    /// residual must be discarded).
    pub fn step_with<B: EmberBackend>(
        &self,
        lr: f64,
        w: Tensor<B, 2>,
        grad: Gradient<B>,
        state: Option<ParamState<B>>,
        ctx: &StepContext<'_, B>,
    ) -> Result<(Tensor<B, 2>, ParamState<B>), EmberError> {
        let StepContext {
            shape, bases, skip, ..
        } = *ctx;
        ember_kernels::host_trace::note("engine step");
        self.state
            .check_device::<B>(&w.device())
            .map_err(EmberError::InvalidConfig)?;
        let w_dtype = w.dtype();
        let identity = self.projector == ProjectorKind::Identity;
        // a residual rule of the caller's, on this backend (an error if built for another)
        let custom = self.residual.part::<B>()?;
        let mut p = Parts::unpack(state, &self.refresh);
        // the full gradient `g` (stored dtype) or the projected one `r` (f32)
        // Fira's residual computed with the down projection ([`Gradient::WithResidual`])
        let residual_given = matches!(grad, Gradient::WithResidual(..));
        if residual_given && !matches!(self.residual, ResidualRule::Fira(_)) {
            return Err(EmberError::Internal(
                "a residual computed before the step needs Fira's rule".into(),
            ));
        }
        let (g, r_given) = match grad {
            Gradient::Full(g) => (Some(g), None),
            Gradient::WithProjected(g, r) | Gradient::WithResidual(g, r) => {
                if identity || p.projector.is_none() || self.refresh_due(&p) {
                    return Err(EmberError::Internal(
                        "a gradient projected before its step needs a projector that is not due \
                         for a refresh"
                            .into(),
                    ));
                }
                (Some(g), Some(r.cast(DType::F32)))
            }
            // identity: R is G
            Gradient::Projected(r) if identity => (Some(r), None),
            Gradient::Projected(r) => {
                if !self.residual.is_discard() || p.projector.is_none() {
                    return Err(EmberError::Internal(
                        "a projected gradient needs a projector and a discarded residual".into(),
                    ));
                }
                // the residual is discarded: `g` is never read
                (None, Some(r.cast(DType::F32)))
            }
        };
        if let Some(g) = &g {
            if skip.is_some() && self.refresh_due(&p) {
                return Err(EmberError::Internal(
                    "a projector refresh on a step whose gradients were not checked on the host"
                        .into(),
                ));
            }
            self.refresh_parts(&mut p, g, ctx)?;
        }
        // (a loaded checkpoint may hold a bf16 projector widened to the backend's float)
        let projector = p
            .projector
            .take()
            .expect("projector set above")
            .stored_as(self.projector_dtype::<B>(w_dtype, &w.device()));
        let (moments, prev_norm) = (p.moments.take(), p.prev_norm.take());
        let step = p.step + 1;
        let adam_step = p.adam_step + 1;
        let (adam, c) = self.adam.coefficients(adam_step, lr);
        let coef = self.update_coefficients(lr, c);

        // dequantize / gather / widen the basis once for this step's down and up projections;
        // a projector stored in the weight's dtype stays in it where the backend updates that
        // dtype as it is (bf16 on CUDA: the products round the basis to bf16 anyway)
        let keep = (self.residual.is_discard()
            && w_dtype != DType::F32
            && B::native_dtype(w_dtype)
            && g.as_ref().is_none_or(|g| g.dtype() == w_dtype)
            && keeps_projector_dtype())
        .then_some(w_dtype);
        let active = projector.materialize_keeping(bases, keep);
        let basis = active.basis();
        // large parameters whose update is row-local: one row chunk in f32 at a time
        let [rows, cols] = w.dims();
        let low_precision =
            w_dtype != DType::F32 || g.as_ref().is_some_and(|g| g.dtype() != DType::F32);
        let row_local = basis.is_some() || identity;
        // a backend that updates this dtype as it is (bf16 on CUDA: cuBLAS and the kernels read
        // and write it, `EmberBackend::native_dtype`) needs no f32 copies, whole or chunked
        let native = low_precision
            && row_local
            && self.residual.is_discard()
            && B::native_dtype(w_dtype)
            && g.as_ref().is_none_or(|g| g.dtype() == w_dtype);
        let chunks = if native {
            None
        } else {
            self.update_chunks(rows, cols, row_local, low_precision)
        };
        let (w, m1, m2, residual_norm) = if let Some(chunks) = chunks {
            let (w, m1, m2) = match basis {
                Some(basis) => {
                    let r = match (r_given, g) {
                        (Some(r), _) => r,
                        (None, Some(g)) => crate::chunked::down(&basis, g, &chunks),
                        (None, None) => unreachable!("a gradient is given"),
                    };
                    let (n_low, m1, m2) =
                        self.state
                            .adam(r.clone(), moments, adam, bases, skip.cloned(), DType::F32);
                    let mut out = w;
                    for k in chunks {
                        let (basis_k, n_k) = crate::chunked::basis_rows(&basis, &n_low, k.clone());
                        let w_k = crate::chunked::rows_of(&out, k.clone()).cast(DType::F32);
                        // the residual is discarded: `G` and `R` are not read
                        let (w_k, _) = B::projected_update(
                            w_k,
                            n_k.clone(),
                            &basis_k,
                            n_k,
                            r.clone(),
                            coef,
                            ResidualUpdate::None,
                            None,
                            skip.cloned(),
                        );
                        out = out.slice_assign([k, 0..cols], w_k.cast(w_dtype));
                    }
                    (out, m1, m2)
                }
                None => {
                    let g = g.expect("identity: the full gradient");
                    let (m, v) = match moments {
                        // `to_device` also rounds a checkpoint's widened bf16 moment back to bf16
                        Some((m, v)) => (m.to_device(&g.device()), v.to_device(&g.device())),
                        None => self.state.zeros([rows, cols], &g.device()),
                    };
                    let (mut out, mut m, mut v) = (w, m, v);
                    for k in chunks {
                        let w_k = crate::chunked::rows_of(&out, k.clone()).cast(DType::F32);
                        let g_k = crate::chunked::rows_of(&g, k.clone()).cast(DType::F32);
                        let moments_k = Some((m.rows(k.clone()), v.rows(k.clone())));
                        let (w_k, m_k, v_k) = self.state.adam_full(
                            w_k,
                            g_k,
                            moments_k,
                            adam,
                            coef,
                            bases,
                            skip.cloned(),
                        );
                        out = out.slice_assign([k.clone(), 0..cols], w_k.cast(w_dtype));
                        m = m.assign_rows(k.clone(), m_k);
                        v = v.assign_rows(k, v_k);
                    }
                    (out, m, v)
                }
            };
            // already in the stored dtype
            (w, m1, m2, None)
        } else {
            // f32 working copies unless the backend takes the dtype as it is
            let to = |t: Tensor<B, 2>| if native { t } else { t.cast(DType::F32) };
            let w = to(w);
            // the residual is discarded when only `r` is given: `g` is never read then, and `r`
            // stands in for it — not a second handle on `w`, which would keep the update from
            // writing `w` in place (cuBLAS's accumulating GEMM then copies it first)
            let g = g
                .map(to)
                .or_else(|| r_given.clone())
                .expect("a gradient or a projected one");
            self.whole_update(
                w,
                g,
                r_given,
                basis,
                &active,
                moments,
                prev_norm,
                adam,
                c,
                lr,
                bases,
                skip,
                (custom, residual_given),
            )?
        };

        Ok((
            w.cast(w_dtype),
            ParamState {
                shape: shape.to_vec(),
                step,
                adam_step,
                moment_1: m1,
                moment_2: m2,
                projector,
                refresh: p.refresh,
                residual_norm,
            },
        ))
    }

    /// The whole-tensor update: `w` and `g` in f32, or both in a dtype the backend updates as it
    /// is ([`EmberBackend::native_dtype`]); returns the new weight (in `w`'s dtype), the moments
    /// and the residual rule's new memory.
    #[allow(clippy::too_many_arguments)]
    fn whole_update<B: EmberBackend>(
        &self,
        w: Tensor<B, 2>,
        g: Tensor<B, 2>,
        r_given: Option<Tensor<B, 2>>,
        basis: Option<Basis<B>>,
        active: &ProjectorState<B>,
        moments: Option<(Moment<B>, Moment<B>)>,
        prev_norm: Option<Tensor<B, 1>>,
        adam: ember_kernels::AdamCoefficients,
        c: f64,
        lr: f64,
        bases: &SharedBases<B>,
        skip: Option<&Tensor<B, 1>>,
        (custom, residual_given): (Option<&dyn ResidualPart<B>>, bool),
    ) -> Result<Updated<B>, EmberError> {
        let skip = skip.cloned();
        let coef = self.update_coefficients(lr, c);
        // Fira's residual computed with the down projection: `g` is `G − α·up(R)`
        let rule = match self.residual.to_update(lr) {
            Some(ResidualUpdate::Fira { gamma, .. }) if residual_given => {
                Some(ResidualUpdate::Fira { gamma, given: true })
            }
            rule => rule,
        };
        // a rule of the caller's: its term on the portable path, its result checked
        let checked = custom.map(|part| CustomTerm::new(part, lr, w.dims(), prev_norm.as_ref()));
        let identity = self.projector == ProjectorKind::Identity;
        ember_kernels::host_trace::note("whole update");
        Ok(match basis {
            // a dense basis: the backend's projected update (fused on CubeCL backends)
            Some(basis) => {
                let r = r_given.unwrap_or_else(|| basis.down(g.clone()));
                // a weight the backend updates in its own low precision, without a residual:
                // cuBLAS's GEMM reads `N` in that dtype, so `N` is written in it (one rounding,
                // the same values; no f32 `N`, no cast)
                let w_dtype = w.dtype();
                let n_dtype = if w_dtype != DType::F32
                    && B::native_dtype(w_dtype)
                    && self.residual.is_discard()
                    && n_in_weight_dtype()
                {
                    w_dtype
                } else if w_dtype == DType::F32
                    && B::f16_update_operands()
                    && self.residual.is_discard()
                    && self.n_fits_f16()
                    && worth_f16_operands(w.dims(), r.dims())
                {
                    // the f32 weight's update GEMM on f16 tensor cores (TF32's significand)
                    DType::F16
                } else {
                    DType::F32
                };
                ember_kernels::host_trace::note("down queued");
                let (n_low, m1, m2) =
                    self.state
                        .adam(r.clone(), moments, adam, bases, skip.clone(), n_dtype);
                ember_kernels::host_trace::note("adam queued");
                let (w, zeta) = match (rule, &checked) {
                    (Some(rule), _) => {
                        B::projected_update(w, g, &basis, n_low, r, coef, rule, prev_norm, skip)
                    }
                    (None, Some(term)) => ember_kernels::portable::projected_update_with(
                        w,
                        g,
                        &|x| basis.up(x),
                        n_low,
                        r,
                        coef,
                        Some(&|x| term.call(x)),
                        prev_norm,
                        skip,
                    ),
                    (None, None) => unreachable!("a custom rule is resolved in `step_with`"),
                };
                ember_kernels::host_trace::note("update queued");
                checked.map_or(Ok(()), |t| t.result())?;
                (w, m1, m2, zeta)
            }
            // full rank (non-targeted parameters): AdamW in one kernel
            None if identity && self.residual.is_discard() => {
                let (w, m1, m2) = self.state.adam_full(w, g, moments, adam, coef, bases, skip);
                (w, m1, m2, None)
            }
            // coordinate selection, two-sided projection: the portable update with their own
            // back-projection
            None => {
                let r = r_given.unwrap_or_else(|| active.down(g.clone(), bases));
                let (n_low, m1, m2) =
                    self.state
                        .adam(r.clone(), moments, adam, bases, skip.clone(), DType::F32);
                let built_in = rule.filter(|r| *r != ResidualUpdate::None).map(|rule| {
                    move |x| ember_kernels::portable::residual_term(rule, x).expect("a rule")
                });
                let term: Option<ember_kernels::portable::ResidualFn<'_, B>> =
                    match (&built_in, &checked) {
                        (Some(f), _) => Some(f),
                        (None, Some(t)) => Some(&|x| t.call(x)),
                        (None, None) => None,
                    };
                let (w, residual_norm) = ember_kernels::portable::projected_update_with(
                    w,
                    g,
                    &|x| active.up(x, bases),
                    n_low,
                    r,
                    coef,
                    term,
                    prev_norm,
                    skip,
                );
                checked.map_or(Ok(()), |t| t.result())?;
                (w, m1, m2, residual_norm)
            }
        })
    }

    /// Row chunks for a step of an `rows × cols` parameter ([`crate::chunked`]): `None` unless
    /// the parameter is larger than [`StateStorage::update_chunk_elements`] and its update is
    /// row-local (`row_local`: a dense projection or the identity; the residual discarded).
    ///
    /// Only a parameter stored below f32 (`low_precision`: its weight or gradient) is chunked:
    /// an f32 one has no working copies to save, and its chunks would be written back by an
    /// extra copy (measured on the H100: AdamW on 4096×11008 f32, 0.73 → 1.23 ms).
    fn update_chunks(
        &self,
        rows: usize,
        cols: usize,
        row_local: bool,
        low_precision: bool,
    ) -> Option<Vec<std::ops::Range<usize>>> {
        if !row_local || !low_precision || !self.residual.is_discard() {
            return None;
        }
        let numel = rows * cols;
        let identity = self.projector == ProjectorKind::Identity;
        // the full-rank moments are cut with the rows: whole 8-bit blocks, chunks that stay 8-bit
        let (min, align) = if identity && self.state.uses_maps(numel) {
            (self.state.min_8bit_size, self.state.block_size)
        } else {
            (0, 1)
        };
        crate::chunked::row_chunks(rows, cols, self.state.update_chunk_elements, min, align)
    }

    /// Decay and step coefficients of one update at learning rate `lr` and Adam step size `c`.
    pub fn update_coefficients(&self, lr: f64, c: f64) -> UpdateCoefficients {
        let decay = lr * self.weight_decay;
        UpdateCoefficients {
            decay_before: if self.decay == DecayTiming::BeforeUpdate {
                decay
            } else {
                0.0
            },
            scale: self.scale,
            step: c,
            decay_after: if self.decay == DecayTiming::AfterUpdate {
                decay
            } else {
                0.0
            },
        }
    }

    /// A state-free update with `rule` on the whole gradient (FRUGAL's inactive blocks): decay
    /// as configured, then `W ← W − lr·s·sign(G)` (signSGD), `W ← W − lr·s·G` (SGD) or nothing
    /// (`Discard`); a rule of the caller's is an error (it needs a projected step).
    /// `skip`: the step's skip flag ([`StepContext::skip`]).
    pub fn state_free_step<B: EmberBackend>(
        &self,
        lr: f64,
        w: Tensor<B, 2>,
        g: Tensor<B, 2>,
        rule: &ResidualRule,
        skip: Option<&Tensor<B, 1>>,
    ) -> Result<Tensor<B, 2>, EmberError> {
        let rule = rule.to_update(lr).ok_or_else(|| {
            EmberError::InvalidConfig(
                "a state-free step takes a built-in rule (signSGD, SGD or none)".into(),
            )
        })?;
        Ok(B::state_free_step(
            w,
            g,
            rule,
            self.update_coefficients(lr, 0.0),
            skip.cloned(),
        ))
    }

    /// Bytes of optimizer state this pipeline holds for an `m × n` parameter (moments as the
    /// [`StateStorage`] keeps them, the projector, 32-bit indices, residual memory), i.e. what
    /// [`ParamState::bytes`] reports once the parameter stepped. Shared DCT bases and the 8-bit
    /// maps are not included (counted once per optimizer).
    pub fn state_bytes(&self, m: usize, n: usize) -> usize {
        let r = self.rank_for(m, n);
        let [a, b] = self.projector.low_rank_shape(m, n, r);
        let residual = self.residual.memory_bytes();
        2 * self.state.moment_bytes(a * b)
            + self
                .projector
                .projector_bytes(m, n, r, self.state.projector_element_bytes())
            + residual
    }
}

/// What a whole-tensor update returns: the new weight, the two moments and the residual rule's
/// new memory.
type Updated<B> = (Tensor<B, 2>, Moment<B>, Moment<B>, Option<Tensor<B, 1>>);

/// A residual rule of the caller's on the portable path, its result checked: a term of another
/// shape or dtype than the f32 weight's, or a memory whose shape changed, is an error of the step
/// rather than a panic inside the update that follows (which then gets a zero term and the old
/// memory, and whose result is dropped).
struct CustomTerm<'a, B: Backend> {
    part: &'a dyn ResidualPart<B>,
    lr: f64,
    shape: [usize; 2],
    memory: Option<[usize; 1]>,
    error: std::cell::RefCell<Option<String>>,
}

impl<'a, B: Backend> CustomTerm<'a, B> {
    fn new(
        part: &'a dyn ResidualPart<B>,
        lr: f64,
        shape: [usize; 2],
        memory: Option<&Tensor<B, 1>>,
    ) -> Self {
        Self {
            part,
            lr,
            shape,
            memory: memory.map(|m| m.dims()),
            error: std::cell::RefCell::new(None),
        }
    }

    fn call(&self, x: ResidualInputs<B>) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
        let (zero, old) = (x.g.zeros_like(), x.memory.clone());
        let (term, memory) = self.part.term(x, self.lr);
        let bad = if term.dims() != self.shape || term.dtype() != DType::F32 {
            Some(format!(
                "returned a {:?} term of shape {:?} for an f32 weight of shape {:?}",
                term.dtype(),
                term.dims(),
                self.shape
            ))
        } else {
            match (self.memory, &memory) {
                (Some(before), Some(m)) if m.dims() != before => Some(format!(
                    "changed its memory's shape from {before:?} to {:?}",
                    m.dims()
                )),
                _ => None,
            }
        };
        match bad {
            Some(why) => {
                *self.error.borrow_mut() = Some(why);
                (zero, old)
            }
            None => (term, memory),
        }
    }

    fn result(&self) -> Result<(), EmberError> {
        match self.error.borrow_mut().take() {
            Some(why) => Err(EmberError::InvalidConfig(format!(
                "the custom residual rule {why}"
            ))),
            None => Ok(()),
        }
    }
}

/// Whether the low-rank update `N` of a weight updated in its own low precision is written in
/// that dtype by the Adam kernel (default); `EMBER_N_IN_WEIGHT_DTYPE=off` writes it in f32 and
/// leaves the rounding to the update (same values; for comparisons of the step time).
/// Multiply-adds of an update GEMM below which an f32 weight keeps TF32 operands: the f16 path
/// rounds `P` to f16 each step — one more launch per parameter — which a small GEMM does not win
/// back (the half-rate saving is ≈ 0.05 ms at 4096×11008 r512's 2.3·10¹⁰, ≈ 0.03 ms at 4096²
/// r512's 8.6·10⁹; a launch costs ≈ 5–20 µs on the host-bound steps of a small model).
pub const F16_UPDATE_MIN_MACS: usize = 1 << 30;

/// Whether an `[m, n]` weight whose low-rank gradient is `low` has an update GEMM large enough
/// for f16 operands ([`F16_UPDATE_MIN_MACS`]).
fn worth_f16_operands([m, n]: [usize; 2], [a, b]: [usize; 2]) -> bool {
    let rank = a.min(b);
    m.saturating_mul(n).saturating_mul(rank) >= F16_UPDATE_MIN_MACS
}

impl EngineConfig {
    /// Whether Adam's normalized update `N` stays far inside f16's range (±65504) whatever the
    /// gradients: `|N| ≤ |M|/√V ≤ (1−β₁)/√((1−β₂)(1−β₁²/β₂))` (Cauchy–Schwarz over the EMAs;
    /// each flavor's `d ≤ 1` and `ε ≥ 0` only shrink `N`), with f32 or bf16 moments (8-bit
    /// moments dequantize `V` with their own error, so they keep an f32 `N`). Required below
    /// 1024 (7.3 at galore-torch's β = (0.9, 0.999)).
    fn n_fits_f16(&self) -> bool {
        let (b1, b2) = (self.adam.beta_1, self.adam.beta_2);
        if self.state.dtype == crate::state::StateDtype::Int8Blockwise
            || !(0.0..1.0).contains(&b1)
            || !(0.0..1.0).contains(&b2)
            || b1 * b1 >= b2
        {
            return false;
        }
        let bound = (1.0 - b1) / ((1.0 - b2) * (1.0 - b1 * b1 / b2)).sqrt();
        bound < 1024.0
    }
}

fn n_in_weight_dtype() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("EMBER_N_IN_WEIGHT_DTYPE").as_deref(),
            Ok("off") | Ok("0")
        )
    })
}

/// Whether a projector stored in the weight's dtype stays in it on the native path (default);
/// `EMBER_KEEP_PROJECTOR_DTYPE=off` widens it to f32 as before (same values; for comparisons
/// of the step time).
fn keeps_projector_dtype() -> bool {
    static KEEP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KEEP.get_or_init(|| {
        !matches!(
            std::env::var("EMBER_KEEP_PROJECTOR_DTYPE").as_deref(),
            Ok("off") | Ok("0")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adam::AdamFlavor;
    use burn::backend::Flex;
    use burn::optim::{AdamWConfig, SimpleOptimizer};
    use burn::tensor::Tolerance;

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
            rank: RankRule::Fixed(0),
            projector: ProjectorKind::Identity,
            refresh: RefreshPolicy::every(1),
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
            state: StateStorage::default(),
        }
    }

    /// `|a − b| < abs` element by element (burn's `TensorData::assert_approx_eq`).
    #[track_caller]
    fn assert_close(a: &Tensor<B, 2>, b: &Tensor<B, 2>, abs: f64) {
        a.to_data()
            .assert_approx_eq::<f32>(&b.to_data(), Tolerance::absolute(abs));
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
                .step(
                    1e-2,
                    w_ours,
                    g.clone(),
                    s_ours,
                    &StepContext::new(&[7, 5], &SharedBases::new()),
                )
                .unwrap();
            (w_ours, s_ours) = (w, Some(s));
            (w_burn, s_burn) = SimpleOptimizer::<B>::step(&adamw, 1e-2, w_burn, g, s_burn);
            assert_close(&w_ours, &w_burn, 1e-6);
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
            let (nw, s) = engine
                .step(
                    lr,
                    w,
                    g,
                    state,
                    &StepContext::new(&[4, 6], &SharedBases::new()),
                )
                .unwrap();
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
            w.to_data().assert_approx_eq::<f32>(
                &TensorData::new(w_ref.clone(), [4, 6]),
                Tolerance::absolute(1e-6),
            );
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
        let bases = SharedBases::new();
        let p = kind.fit(&g, r, &bases, 0, 0).unwrap();
        let low = p.down(g.clone(), &bases);
        assert_eq!(low.dims(), [r, r]);
        assert_close(&p.up(low.clone(), &bases), &g, 1e-5);

        let engine = EngineConfig {
            rank: RankRule::Fixed(r),
            projector: kind,
            scale: 0.25,
            ..identity(AdamFlavor::Galore, DecayTiming::AfterUpdate, 0.0)
        };
        let w = random([m, n], 7);
        let (w1, state) = engine
            .step(
                1e-2,
                w.clone(),
                g.clone(),
                None,
                &StepContext::new(&[m, n], &bases),
            )
            .unwrap();
        assert_eq!(state.moment_1.dims(), [r, r]);
        assert_eq!(state.bytes(), engine.state_bytes(m, n));
        // t = 1: N = (1-β1)R / (√(1-β2)|R| + ε), step lr·√(1-β2)/(1-β1)
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let n1 = low
            .clone()
            .mul_scalar(1.0 - b1)
            .div(low.abs().mul_scalar((1.0 - b2).sqrt()).add_scalar(eps));
        let expected = w.sub(
            p.up(n1, &bases)
                .mul_scalar(0.25 * 1e-2 * (1.0 - b2).sqrt() / (1.0 - b1)),
        );
        assert_close(&w1, &expected, 1e-6);
    }

    #[test]
    fn moments_survive_a_refresh_unless_reset() {
        let mut engine = EngineConfig {
            rank: RankRule::Fixed(2),
            projector: ProjectorKind::ExactSvd(crate::projector::ProjType::Std),
            refresh: RefreshPolicy::every(2),
            ..identity(AdamFlavor::Galore, DecayTiming::AfterUpdate, 0.0)
        };
        let run = |engine: &EngineConfig| {
            let mut w = random([8, 5], 1);
            let mut state = None;
            for t in 0..3 {
                let (nw, s) = engine
                    .step(
                        1e-2,
                        w,
                        random([8, 5], 20 + t),
                        state,
                        &StepContext::new(&[8, 5], &SharedBases::new()),
                    )
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

    /// `N` goes to f16 only where Adam bounds it far inside f16's range: galore-torch's
    /// β = (0.9, 0.999) (bound 7.3) and β = (0.9, 0.95) yes; β₂ so close to 1 that the bound
    /// passes 1024, β₁² ≥ β₂ (no bound) and 8-bit moments (dequantized `V`) no.
    #[test]
    fn n_goes_to_f16_only_within_its_bound() {
        let with = |b1: f64, b2: f64, dtype: crate::state::StateDtype| {
            let mut e = identity(AdamFlavor::Galore, DecayTiming::AfterUpdate, 0.0);
            e.adam.beta_1 = b1;
            e.adam.beta_2 = b2;
            e.state.dtype = dtype;
            e.n_fits_f16()
        };
        use crate::state::StateDtype::*;
        assert!(with(0.9, 0.999, F32));
        assert!(with(0.9, 0.95, Bf16));
        assert!(!with(0.0, 1.0 - 1e-7, F32)); // bound 3162
        assert!(!with(0.99, 0.9, F32)); // β₁² ≥ β₂
        assert!(!with(0.9, 0.999, Int8Blockwise));
        // and only for GEMMs large enough to win back the rounding of `P`
        assert!(worth_f16_operands([4096, 11008], [512, 11008]));
        assert!(worth_f16_operands([2048, 2048], [2048, 512]));
        assert!(!worth_f16_operands([2048, 2048], [128, 2048]));
        assert!(!worth_f16_operands([512, 1376], [512, 128]));
    }

    /// A refresh rule of the caller's plugs in as `RefreshPolicy::Custom`: the engine refreshes
    /// when it says (here at steps 0, 1 and 4 of 6) and hands it every fresh first vector; a
    /// config holding it refuses to serialize instead of writing a config that cannot be read.
    #[test]
    fn a_custom_refresh_rule_plugs_in() {
        use crate::refresh::{RefreshRule, RefreshState};
        use std::sync::atomic::{AtomicUsize, Ordering};
        #[derive(Debug, Default)]
        struct AtSteps(AtomicUsize);
        impl RefreshRule for AtSteps {
            fn initial_gap(&self) -> usize {
                1
            }
            fn is_due_after_first(&self, k: usize, _: &RefreshState) -> bool {
                k == 1 || k == 4
            }
            fn observe(&self, _: &mut RefreshState, first: Option<Vec<f32>>) {
                assert_eq!(first.map(|v| v.len()), Some(5), "the first right vector");
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let rule = std::sync::Arc::new(AtSteps::default());
        let engine = EngineConfig {
            rank: RankRule::Fixed(2),
            projector: ProjectorKind::ExactSvd(crate::projector::ProjType::Std),
            refresh: RefreshPolicy::Custom(rule.clone()),
            ..identity(AdamFlavor::Galore, DecayTiming::AfterUpdate, 0.0)
        };
        engine.validate().unwrap();
        let mut w = random([8, 5], 1);
        let mut state = None;
        let mut refreshes = vec![];
        for t in 0..6 {
            let (nw, s) = engine
                .step(
                    1e-2,
                    w,
                    random([8, 5], 40 + t),
                    state,
                    &StepContext::new(&[8, 5], &SharedBases::new()),
                )
                .unwrap();
            refreshes.push(s.refresh.refreshes);
            (w, state) = (nw, Some(s));
        }
        assert_eq!(refreshes, [1, 2, 2, 2, 3, 3]);
        assert_eq!(rule.0.load(Ordering::Relaxed), 3);
        let err = serde_json::to_string(&engine).unwrap_err().to_string();
        assert!(err.contains("Custom"), "{err}");
        // the built-in rules serialize as before the rule became a part: `{"Every":{"gap":2}}`
        assert_eq!(
            serde_json::to_string(&RefreshPolicy::every(2)).unwrap(),
            r#"{"Every":{"gap":2}}"#
        );
    }

    /// A residual rule of the caller's plugs in as a part ([`ResidualRule::custom`]): FRUGAL's
    /// SGD written as one gives the built-in rule's weights bit for bit over refreshes and both
    /// sides (flex runs the built-in rule on the same portable path); a rule with memory gets its
    /// memory back each step, in the record and counted by the estimate; a rule built for another
    /// backend, a term of the wrong shape, a config holding one in serde, and a custom rule for
    /// FRUGAL's inactive blocks are errors, not panics.
    #[test]
    fn custom_residual_rules_plug_in() {
        use crate::residual::{ResidualPart, Sgd};
        #[derive(Debug)]
        struct MySgd(f64);
        impl ResidualPart<B> for MySgd {
            fn term(&self, x: ResidualInputs<B>, lr: f64) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
                (x.g.sub(x.up_r).mul_scalar(lr * self.0), None)
            }
        }
        /// Counts its steps in its memory; adds nothing.
        #[derive(Debug)]
        struct Counter;
        impl ResidualPart<B> for Counter {
            fn term(&self, x: ResidualInputs<B>, _: f64) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
                let count = match x.memory {
                    Some(m) => m.add_scalar(1.0),
                    None => Tensor::ones([1], &x.g.device()),
                };
                (x.g.zeros_like(), Some(count))
            }
            fn memory_bytes(&self) -> usize {
                4
            }
        }
        /// Returns a term of the transposed shape.
        #[derive(Debug)]
        struct Transposed;
        impl ResidualPart<B> for Transposed {
            fn term(&self, x: ResidualInputs<B>, _: f64) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
                (x.g.transpose(), None)
            }
        }
        let engine = |residual: ResidualRule| EngineConfig {
            rank: RankRule::Fixed(3),
            projector: ProjectorKind::ExactSvd(crate::projector::ProjType::Std),
            refresh: RefreshPolicy::every(2),
            residual,
            ..identity(AdamFlavor::Torch, DecayTiming::BeforeUpdate, 0.1)
        };
        let run = |engine: &EngineConfig, shape: [usize; 2]| {
            let bases = SharedBases::new();
            let ctx = StepContext::new(&shape, &bases);
            let mut w = random(shape, 2);
            let mut state: Option<ParamState<B>> = None;
            for t in 0..5 {
                let (nw, s) = engine.step(1e-2, w, random(shape, 30 + t), state, &ctx)?;
                (w, state) = (nw, Some(s));
            }
            Ok::<_, EmberError>((w, state.unwrap()))
        };
        for shape in [[12, 20], [20, 12]] {
            let built_in = engine(ResidualRule::Sgd(Sgd { lr_scale: 0.5 }));
            let custom = engine(ResidualRule::custom::<B, _>("my sgd", MySgd(0.5)).unwrap());
            let (a, _) = run(&built_in, shape).unwrap();
            let (b, _) = run(&custom, shape).unwrap();
            a.into_data().assert_eq(&b.into_data(), true);
        }
        let counting = engine(ResidualRule::custom::<B, _>("counter", Counter).unwrap());
        let (_, state) = run(&counting, [12, 20]).unwrap();
        let count = state.residual_norm.clone().expect("the rule's memory");
        count
            .into_data()
            .assert_eq(&TensorData::from([5.0f32]), true);
        assert_eq!(state.bytes(), counting.state_bytes(12, 20));
        // for another backend: the step says so
        type Other = burn::backend::Autodiff<B>;
        let other = engine(ResidualRule::custom::<Other, _>("elsewhere", Counter2).unwrap());
        #[derive(Debug)]
        struct Counter2;
        impl ResidualPart<Other> for Counter2 {
            fn term(
                &self,
                x: ResidualInputs<Other>,
                _: f64,
            ) -> (Tensor<Other, 2>, Option<Tensor<Other, 1>>) {
                (x.g.zeros_like(), None)
            }
        }
        let err = run(&other, [12, 20]).unwrap_err().to_string();
        assert!(err.contains("built for the backend"), "{err}");
        let wrong = engine(ResidualRule::custom::<B, _>("transposed", Transposed).unwrap());
        let err = run(&wrong, [12, 20]).unwrap_err().to_string();
        assert!(err.contains("term of shape [20, 12]"), "{err}");
        let err = serde_json::to_string(&counting).unwrap_err().to_string();
        assert!(err.contains("Custom"), "{err}");
        let blocks = crate::blocks::BlockSchedule {
            density: 0.5,
            gap: 2,
            order: crate::blocks::BlockOrder::Ascending,
            seed: 0,
            inactive: ResidualRule::custom::<B, _>("counter", Counter).unwrap(),
        };
        assert!(blocks.validate().is_err());
    }

    /// A step given `R` computed before it beside `G` ([`Gradient::WithProjected`]) is the step
    /// from `G` alone, bit for bit, for Fira's and FRUGAL's residual rules and both sides; a step
    /// due for a refresh refuses it.
    #[test]
    fn steps_with_r_computed_before_equal_full_steps() {
        let rules = [
            ResidualRule::fira(1.01),
            ResidualRule::SignSgd(crate::residual::SignSgd { lr_scale: 0.5 }),
        ];
        for residual in rules {
            for shape in [[12, 20], [20, 12]] {
                let engine = EngineConfig {
                    rank: RankRule::Fixed(3),
                    projector: ProjectorKind::ExactSvd(crate::projector::ProjType::Std),
                    refresh: RefreshPolicy::every(3),
                    residual: residual.clone(),
                    ..identity(AdamFlavor::Galore, DecayTiming::AfterUpdate, 0.1)
                };
                let bases = SharedBases::new();
                let ctx = StepContext::new(&shape, &bases);
                // 0: `G` only; 1: `R` beside `G`; 2: `R` beside Fira's residual `G − α·up(R)`
                // (what a backend computing it with the down product hands over; flex's own
                // `project_beside` keeps `G`)
                let run = |mode: usize| {
                    let mut w = random(shape, 5);
                    let mut state: Option<ParamState<B>> = None;
                    let mut used = 0;
                    for t in 0..5 {
                        let g = random(shape, 60 + t);
                        let grad = if mode > 0 && engine.projects_beside(g.dtype(), state.as_ref())
                        {
                            used += 1;
                            let (grad, s) = engine.project_beside(g, state.take(), &ctx).unwrap();
                            let Gradient::WithProjected(g, r) = grad else {
                                panic!("flex keeps `G` beside `R`");
                            };
                            let grad = if mode == 2 {
                                let up = s.projector.up(r.clone(), &bases);
                                Gradient::WithResidual(g.sub(up.mul_scalar(engine.scale)), r)
                            } else {
                                Gradient::WithProjected(g, r)
                            };
                            state = Some(s);
                            grad
                        } else {
                            Gradient::Full(g)
                        };
                        let (nw, s) = engine.step_with(1e-2, w, grad, state, &ctx)?;
                        (w, state) = (nw, Some(s));
                    }
                    Ok::<_, EmberError>((w, used))
                };
                let (full, _) = run(0).unwrap();
                let (before, used) = run(1).unwrap();
                // steps 1, 2 and 4 (0 and 3 fit the projector)
                assert_eq!(used, 3, "{residual:?} {shape:?}");
                full.clone()
                    .into_data()
                    .assert_eq(&before.into_data(), true);
                match (&residual, run(2)) {
                    (ResidualRule::Fira(_), Ok((given, _))) => {
                        full.into_data().assert_eq(&given.into_data(), true)
                    }
                    // a residual handed over for another rule is refused
                    (_, Err(e)) => assert!(matches!(e, EmberError::Internal(_)), "{e}"),
                    (_, Ok(_)) => panic!("{residual:?}: a residual for another rule was taken"),
                }
                // a state due for a refresh (after 3 steps): not projected before, and refused
                let mut s = None;
                for t in 0..3 {
                    let (_, next) = engine
                        .step(1e-2, random(shape, 5), random(shape, 8 + t), s, &ctx)
                        .unwrap();
                    s = Some(next);
                }
                assert!(!engine.projects_beside(DType::F32, s.as_ref()));
                let g = random(shape, 9);
                let r = engine.project(g.clone(), s.clone(), &ctx, false).unwrap().0;
                let refused = engine.step_with(
                    1e-2,
                    random(shape, 5),
                    Gradient::WithProjected(g, r),
                    s,
                    &ctx,
                );
                assert!(
                    matches!(refused, Err(EmberError::Internal(_))),
                    "{residual:?}"
                );
            }
        }
    }

    /// A parameter larger than `update_chunk_elements` is stepped in row chunks
    /// ([`crate::chunked`]): the same weights and state as the whole-tensor step — bit for bit
    /// for the full-rank AdamW (f32 and 8-bit moments, f32 and bf16 weights) and a right
    /// projection, within f32 rounding for a left one (`R` summed over chunks).
    #[test]
    fn chunked_steps_equal_whole_tensor_steps() {
        use crate::state::StateDtype;
        let galore = |proj: crate::projector::ProjType| EngineConfig {
            rank: RankRule::Fixed(8),
            projector: ProjectorKind::ExactSvd(proj),
            refresh: RefreshPolicy::every(2),
            ..identity(AdamFlavor::Galore, DecayTiming::AfterUpdate, 0.1)
        };
        let cases = [
            (
                "adamw",
                identity(AdamFlavor::Torch, DecayTiming::BeforeUpdate, 0.1),
                [96, 160],
                true,
            ),
            (
                "left",
                galore(crate::projector::ProjType::Std),
                [96, 160],
                false,
            ),
            (
                "right",
                galore(crate::projector::ProjType::Std),
                [160, 96],
                true,
            ),
        ];
        for (name, base, shape, exact) in cases {
            for state_dtype in [StateDtype::F32, StateDtype::Int8Blockwise] {
                for w_dtype in [DType::F32, DType::BF16] {
                    let run = |chunk: usize| {
                        let mut engine = base.clone();
                        engine.state.dtype = state_dtype;
                        engine.state.update_chunk_elements = chunk;
                        let bases = SharedBases::new();
                        let mut w = random(shape, 3).cast(w_dtype);
                        let mut state = None;
                        for t in 0..3 {
                            let g = random(shape, 40 + t).cast(w_dtype);
                            let (nw, s) = engine
                                .step(1e-2, w, g, state, &StepContext::new(&shape, &bases))
                                .unwrap();
                            (w, state) = (nw, Some(s));
                        }
                        let s = state.unwrap();
                        let m = s.moment_1.to_f32(&bases, true);
                        let v = s.moment_2.to_f32(&bases, false);
                        (w, m, v, s.bytes())
                    };
                    let mut chunked = base.clone();
                    chunked.state.dtype = state_dtype;
                    chunked.state.update_chunk_elements = 4096;
                    let chunks = chunked
                        .update_chunks(shape[0], shape[1], true, true)
                        .unwrap();
                    assert!(chunks.len() >= 3, "{name}: {chunks:?}");
                    // f32 weights and gradients are stepped whole
                    assert!(chunked
                        .update_chunks(shape[0], shape[1], true, false)
                        .is_none());
                    let (w0, m0, v0, b0) = run(0);
                    let (w1, m1, v1, b1) = run(4096);
                    let what = format!("{name}, {state_dtype:?} state, {w_dtype:?} weights");
                    assert_eq!(w1.dtype(), w_dtype, "{what}");
                    assert_eq!(b0, b1, "{what}: state bytes");
                    let (w0, w1) = (w0.cast(DType::F32), w1.cast(DType::F32));
                    if exact {
                        w0.into_data().assert_eq(&w1.into_data(), true);
                        m0.into_data().assert_eq(&m1.into_data(), true);
                        v0.into_data().assert_eq(&v1.into_data(), true);
                    } else {
                        // relative to the largest weight
                        let tol = if w_dtype == DType::BF16 { 1e-2 } else { 1e-5 };
                        let scale: f32 = w0.clone().abs().max().into_scalar();
                        assert_close(&w1, &w0, tol * scale as f64);
                    }
                }
            }
        }
    }
}
