//! [`EmberOptimizer`]: a burn [`Optimizer`] that runs the engine on targeted parameters and the
//! method's AdamW on the others.

use hashbrown::HashMap;
use std::marker::PhantomData;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::AutodiffBackend;
use ember_kernels::EmberBackend;
use serde::{Deserialize, Serialize};

use crate::blocks::BlockSchedule;
use crate::dct::SharedBases;
use crate::engine::{EngineConfig, Gradient, ParamState, StepContext};
use crate::error::EmberError;
use crate::groups::{Clipping, Group};
use crate::projector::tensor_bytes;
use crate::targets::Targets;
use burn::tensor::DType;

/// What a step does when a gradient holds NaN or ±Inf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NonFinitePolicy {
    /// [`EmberOptimizer::try_step`] returns [`EmberError::NonFiniteGradient`] naming the first
    /// such parameter, and changes nothing. Default. (burn's `Optimizer::step`, which cannot
    /// return an error, skips the step instead: see its docs.) On GPU backends the verdict is
    /// read back after the step's updates are queued, holding the flag on the device
    /// ([`EmberOptimizer::with_deferred_check`]); the outcome is the same.
    Error,
    /// The whole step is skipped (no parameter or state changes) and a warning is logged.
    SkipStep,
    /// As `SkipStep`, with the check kept on the device: a step only enqueues work, nothing is
    /// read back to the host. One fused pass flags the gradients; the update kernels (and
    /// cuBLAS's accumulating GEMM, through device-side scalars) read the flag and, where it is
    /// set, leave every weight and moment as it was. The host learns of a skipped step later:
    /// at the next step that checks on the host (below), where the warning is logged, and from
    /// [`EmberOptimizer::skipped_steps`], which reads the count back.
    ///
    /// Differences from `SkipStep`: the per-parameter step counters advance on a skipped step
    /// (Adam's bias correction and the refresh schedule count it; the weights and moments do
    /// not change). A step checks on the host instead, exactly as `SkipStep`, where a parameter
    /// fits its projector from the gradient (its first step, a scheduled refresh), for INT8
    /// weights ([`QLinear`](crate::QLinear): their stochastic requantization), for gradients on
    /// several devices, and for accumulated micro-batches
    /// ([`try_accumulate`](EmberOptimizer::try_accumulate)).
    SkipStepOnDevice,
    /// No check at all, as burn's and PyTorch's AdamW: a NaN or ±Inf gradient goes into the
    /// weights and moments. For runs that check elsewhere (a loss scaler, the loss itself); it
    /// saves the pass over every gradient (on the H100 0.11 ms per step for a 4096×11008 f32
    /// AdamW parameter, `ember-bench step`'s `step_unchecked_ms`; for GaLore-family targets
    /// the checking policies read the projected `R = down(G)`, and `SkipStepOnDevice` then
    /// costs about what `Unchecked` does).
    Unchecked,
}

/// An Ember optimizer for module `M` on autodiff backend `B`.
///
/// Built by the methods' configs (`GaloreConfig::init()`, …). Use it where burn accepts
/// `AdamConfig::init()`: a hand-written loop calls [`Optimizer::step`], burn-train's `Learner`
/// takes it as its optimizer. [`try_step`](Self::try_step) is the same step returning errors
/// instead of panicking.
#[derive(Clone)]
pub struct EmberOptimizer<M, B: AutodiffBackend> {
    /// The parameter groups, first match wins.
    groups: Vec<Group>,
    /// Everything no group selects.
    default: Group,
    clipping: Option<Clipping>,
    /// The group layout of a loaded checkpoint (checked at the next step).
    loaded_layout: Option<Vec<String>>,
    non_finite: NonFinitePolicy,
    blocks: Option<BlockSchedule>,
    states: HashMap<ParamId, ParamState<B::InnerBackend>>,
    step: usize,
    bases: SharedBases<B::InnerBackend>,
    skipped_steps: usize,
    /// Steps skipped on the device ([`NonFinitePolicy::SkipStepOnDevice`]): f32 `[1]`, never read
    /// on an ordinary step; `skipped_steps` counts the ones already read back.
    device_skips: Option<Tensor<B::InnerBackend, 1>>,
    /// Steps (and parts) whose gradients were checked on the host.
    host_checks: usize,
    rounding_seed: u64,
    /// The targets were checked against a module (at the first step).
    targets_checked: bool,
    /// [`with_early_projection`](Self::with_early_projection).
    early_projection: bool,
    /// [`with_deferred_check`](Self::with_deferred_check): `None` follows the backend.
    deferred_check: Option<bool>,
    _module: PhantomData<M>,
}

/// The optimizer's state on the inner backend.
#[derive(Record, Clone)]
pub struct EmberState<B: Backend> {
    /// One [`ParamState`] per parameter that holds state.
    pub states: HashMap<ParamId, ParamState<B>>,
    /// Optimizer steps taken (drives blockwise selection).
    pub step: usize,
    /// The group layout the states belong to (each group's name, parts and settings).
    pub layout: Vec<String>,
}

/// The optimizer's state as a burn [`Record`] of the autodiff backend.
pub struct EmberRecord<B: AutodiffBackend> {
    /// The state.
    pub state: EmberState<B::InnerBackend>,
}

impl<B: AutodiffBackend> Clone for EmberRecord<B> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
        }
    }
}

impl<B: AutodiffBackend> Record<B> for EmberRecord<B> {
    type Item<S: PrecisionSettings> =
        <EmberState<B::InnerBackend> as Record<B::InnerBackend>>::Item<S>;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        Record::<B::InnerBackend>::into_item(self.state)
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, device: &B::Device) -> Self {
        Self {
            state: Record::<B::InnerBackend>::from_item(item, device),
        }
    }
}

impl<M, B> EmberOptimizer<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    /// An optimizer running `target` on the parameters chosen by `targets` and `dense` (an
    /// identity-projector pipeline: the method's AdamW) on the others.
    pub fn new(
        target: EngineConfig,
        dense: EngineConfig,
        targets: Targets,
        non_finite: NonFinitePolicy,
    ) -> Result<Self, EmberError> {
        let group = Group {
            name: "targets".into(),
            selector: targets,
            engine: target,
            dense: dense.clone(),
            lr_scale: 1.0,
        };
        let default = Group {
            name: "default".into(),
            selector: Targets::default(),
            engine: dense.clone(),
            dense,
            lr_scale: 1.0,
        };
        Self::with_groups(vec![group], default, non_finite)
    }

    /// An optimizer over parameter groups (first match wins; `default` takes the rest; see
    /// [`crate::groups`]).
    pub fn with_groups(
        groups: Vec<Group>,
        default: Group,
        non_finite: NonFinitePolicy,
    ) -> Result<Self, EmberError> {
        for g in groups.iter().chain([&default]) {
            let named = |e: EmberError| match e {
                EmberError::InvalidConfig(m) => {
                    EmberError::InvalidConfig(format!("group `{}`: {m}", g.name))
                }
                e => e,
            };
            g.engine.validate().map_err(named)?;
            g.dense.validate().map_err(named)?;
            // parts of the caller's must be built for the backend the engine steps on
            g.engine.check_parts::<B::InnerBackend>().map_err(named)?;
            g.dense.check_parts::<B::InnerBackend>().map_err(named)?;
            g.selector
                .validate()
                .map_err(|m| EmberError::InvalidConfig(format!("group `{}`: {m}", g.name)))?;
            if !(g.lr_scale.is_finite() && g.lr_scale >= 0.0) {
                return Err(EmberError::InvalidConfig(format!(
                    "group `{}`: lr_scale {} must be finite and ≥ 0",
                    g.name, g.lr_scale
                )));
            }
        }
        Ok(Self {
            groups,
            default,
            clipping: None,
            loaded_layout: None,
            non_finite,
            blocks: None,
            states: HashMap::new(),
            step: 0,
            bases: SharedBases::new(),
            skipped_steps: 0,
            device_skips: None,
            host_checks: 0,
            rounding_seed: 0,
            targets_checked: false,
            early_projection: true,
            deferred_check: None,
            _module: PhantomData,
        })
    }

    /// Blockwise mode: targeted parameters take turns being state-full (see
    /// [`crate::blocks`]); the `dense` pipeline is their state-full optimizer.
    pub fn with_blocks(mut self, blocks: BlockSchedule) -> Result<Self, EmberError> {
        blocks.validate().map_err(EmberError::InvalidConfig)?;
        self.blocks = Some(blocks);
        Ok(self)
    }

    /// Clips gradients before each update ([`Clipping`]).
    pub fn with_clipping(mut self, clipping: Option<Clipping>) -> Result<Self, EmberError> {
        if let Some(c) = &clipping {
            c.validate().map_err(EmberError::InvalidConfig)?;
        }
        self.clipping = clipping;
        Ok(self)
    }

    /// The groups (first match wins) and the default group.
    pub fn groups(&self) -> (&[Group], &Group) {
        (&self.groups, &self.default)
    }

    /// The group layout (what a checkpoint records and is checked against).
    pub fn layout(&self) -> Vec<String> {
        self.groups
            .iter()
            .chain([&self.default])
            .map(Group::layout)
            .collect()
    }

    /// The group of a parameter: `(index, group)`, `None` for the default group.
    fn route(&self, id: ParamId, path: &str, shape: &[usize]) -> (Option<usize>, &Group) {
        route(&self.groups, &self.default, id, path, shape)
    }

    /// Whether a residual rule that reads the full gradient (Fira, FRUGAL) gets `R = down(G)` of
    /// every f32 parameter computed before the step's NaN/Inf check, as a discarded residual's
    /// parameters always do (default on). With the check on the host, what is queued before it
    /// overlaps the device's backward pass instead of following the check's wait: in the H100's
    /// pretraining run FRUGAL trained 5.6–7.0% more tokens/s, Fira within the noise (+3.7%,
    /// +5.9%, −1.0% in three pairs; `docs/benchmarks.md`). The step then holds every such parameter's `R` (f32, `r` rows or
    /// columns of its longer side) from its start beside `G` (counted in `ember-bench
    /// estimate`'s step temporaries); `false` computes each `R` inside its parameter's update,
    /// after the check. Results are the same either way.
    pub fn with_early_projection(mut self, early: bool) -> Self {
        self.early_projection = early;
        self
    }

    /// Whether the host policies ([`NonFinitePolicy::Error`], [`NonFinitePolicy::SkipStep`])
    /// read their NaN/Inf verdict back **after** the step's updates are queued instead of
    /// before. The gradients are flagged on the device as under
    /// [`NonFinitePolicy::SkipStepOnDevice`], the updates are queued holding that flag (where
    /// it is set they leave every weight and moment as it was), and the step ends by reading
    /// the flag: set, the step's counters are put back and the policy applies — `Error`
    /// returns [`EmberError::NonFiniteGradient`] naming the first such parameter, `SkipStep`
    /// logs and counts the skip — so the outcome is the host check's, bit for bit. What
    /// changes is when the host waits: it queues the updates while the device still runs the
    /// backward pass, and waits once, for the whole step.
    ///
    /// Default: on where the backend runs the fused kernels
    /// ([`EmberBackend::fused_kernels`]: CubeCL backends), off elsewhere (on a CPU backend the
    /// portable path's masking costs more than the wait). Steps that must check on the host
    /// first check there either way (those listed under `SkipStepOnDevice`, and FRUGAL's
    /// blockwise mode, whose re-selection resets states).
    pub fn with_deferred_check(mut self, deferred: bool) -> Self {
        self.deferred_check = Some(deferred);
        self
    }

    /// Seed of the stochastic rounding of INT8 weights ([`QLinear`](crate::qlinear::QLinear)).
    pub fn with_rounding_seed(mut self, seed: u64) -> Self {
        self.rounding_seed = seed;
        self
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The pipeline of the first group's 2-D parameters (the method's, for a single-method
    /// config).
    pub fn target_engine(&self) -> &EngineConfig {
        &self.groups.first().unwrap_or(&self.default).engine
    }

    /// Bytes of optimizer state held now: every parameter's state plus the shared DCT bases
    /// (each counted once).
    pub fn state_bytes(&self) -> usize {
        self.states.values().map(ParamState::bytes).sum::<usize>() + self.bases.bytes()
    }

    /// The shared DCT bases (sizes and bytes).
    pub fn shared_bases(&self) -> &SharedBases<B::InnerBackend> {
        &self.bases
    }

    /// The state of one parameter, if it has stepped.
    pub fn param_state(&self, id: ParamId) -> Option<&ParamState<B::InnerBackend>> {
        self.states.get(&id)
    }

    /// Whether the optimizer runs FRUGAL's blockwise mode.
    pub fn is_blockwise(&self) -> bool {
        self.blocks.is_some()
    }

    /// Steps (or, layer-wise, parts of steps) skipped because of non-finite gradients. Under
    /// [`NonFinitePolicy::SkipStepOnDevice`] this reads the device's count back (a host
    /// synchronization).
    pub fn skipped_steps(&self) -> usize {
        self.skipped_steps + self.unreported_device_skips()
    }

    /// Steps (and parts of steps, layer-wise) whose gradients were checked for NaN/Inf on the
    /// host — one synchronization with the device each. Every step under `Error` and
    /// `SkipStep`; under [`NonFinitePolicy::SkipStepOnDevice`] only the steps that need it
    /// (its docs say which).
    pub fn host_checks(&self) -> usize {
        self.host_checks
    }

    /// Skips counted on the device and not yet read back.
    fn unreported_device_skips(&self) -> usize {
        self.device_skips.as_ref().map_or(0, |t| {
            let v: Vec<f32> = t
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default();
            v.first().copied().unwrap_or(0.0).round() as usize
        })
    }

    /// Reads the device's skip count back into `skipped_steps` (at a step that synchronizes
    /// anyway) and logs the skips it finds.
    fn report_device_skips(&mut self) {
        let n = self.unreported_device_skips();
        self.device_skips = None;
        if n > 0 {
            log::warn!(
                "ember: {n} optimizer step(s) skipped on the device since the last check: \
                 non-finite gradients (NaN/±Inf)"
            );
            self.skipped_steps += n;
        }
    }

    /// Which parameters of `module` are projected: `(path, id, shape, is_target)` in module
    /// order (a 2-D parameter in a group whose pipeline projects).
    pub fn plan(&self, module: &M) -> Vec<(String, ParamId, Vec<usize>, bool)> {
        self.plan_groups(module)
            .into_iter()
            .map(|p| (p.path, p.id, p.shape, p.projected))
            .collect()
    }

    /// Every parameter of `module` with its group and what runs on it, in module order.
    pub fn plan_groups(&self, module: &M) -> Vec<PlanEntry> {
        let mut v = PathVisitor::default();
        module.visit(&mut v);
        v.params
            .into_iter()
            .map(|(path, id, shape)| {
                let (_, group) = self.route(id, &path, &shape);
                let engine = group.engine_for(&shape);
                PlanEntry {
                    group: group.name.clone(),
                    projected: engine.projector != crate::projector::ProjectorKind::Identity,
                    lr_scale: group.lr_scale,
                    weight_decay: engine.weight_decay,
                    state: engine.state.dtype,
                    path,
                    id,
                    shape,
                }
            })
            .collect()
    }
}

/// How a step call relates to the optimizer step counter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A whole step: every parameter's gradient; the counter advances.
    Whole,
    /// Part of a step (layer-wise training: one block's parameters); the counter advances at
    /// [`EmberOptimizer::finish_step`].
    Part,
}

/// Gradients accumulated over micro-batches ([`EmberOptimizer::try_accumulate`]): per
/// parameter, the **projected** gradient `Σⱼ down(Gⱼ)` (r×n) where the pipeline discards its
/// residual (GaLore, Q-GaLore, DCT: exact while the projector is fixed over the window, and the
/// projector is refreshed only on a parameter's first micro-batch), the full `Σⱼ Gⱼ` otherwise
/// (AdamW, Fira, FRUGAL). Sums, like burn's `GradientsAccumulator`.
pub struct Accumulated<B: Backend> {
    /// Per parameter: the sum, the full gradient's shape as burn returned it, the device.
    entries: HashMap<ParamId, AccumulatedEntry<B>>,
}

/// One parameter's accumulated gradient, the full gradient's shape, its device.
type AccumulatedEntry<B> = (
    Gradient<B>,
    Vec<usize>,
    <B as burn::tensor::backend::BackendTypes>::Device,
);

impl<B: Backend> Default for Accumulated<B> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<B: Backend> Accumulated<B> {
    /// Nothing accumulated.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parameters holding an accumulated gradient.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is accumulated.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the accumulated gradients.
    pub fn bytes(&self) -> usize {
        self.entries
            .values()
            .map(|(g, _, _)| match g {
                Gradient::WithProjected(g, r) | Gradient::WithResidual(g, r) => {
                    tensor_bytes(g) + tensor_bytes(r)
                }
                g => tensor_bytes(g.checked()),
            })
            .sum()
    }

    /// Takes the entries of `ids` out (one stage's parameters).
    pub fn take(&mut self, ids: &[ParamId]) -> Self {
        Self {
            entries: ids
                .iter()
                .filter_map(|id| self.entries.remove(id).map(|e| (*id, e)))
                .collect(),
        }
    }

    fn add(&mut self, id: ParamId, g: Gradient<B>, shape: Vec<usize>, device: B::Device) {
        let sum = match (self.entries.remove(&id), g) {
            (None, g) => g,
            (Some((Gradient::Full(a), ..)), Gradient::Full(b)) => Gradient::Full(a + b),
            (Some((Gradient::Projected(a), ..)), Gradient::Projected(b)) => {
                Gradient::Projected(a + b)
            }
            (Some(_), g) => g, // not reached: a parameter's pipeline does not change
        };
        self.entries.insert(id, (sum, shape, device));
    }
}

impl<M, B> EmberOptimizer<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    B::InnerBackend: EmberBackend,
{
    /// One optimizer step.
    ///
    /// Bad input (a gradient of the wrong shape or dtype, a rank that does not fit, a checkpoint
    /// of another configuration, a negative or non-finite `lr`, NaN/Inf gradients under
    /// [`NonFinitePolicy::Error`]) is an error found before anything changes. The update itself
    /// is applied parameter by parameter, each old weight freed as its new one is made (no
    /// second copy of the model's weights); an internal failure there (e.g. an SVD that does
    /// not converge) is returned after the parameters before it were updated.
    pub fn try_step(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> Result<M, EmberError> {
        self.step_common(
            lr,
            module,
            Grads::Single(grads),
            Mode::Whole,
            self.non_finite,
        )
    }

    /// [`try_step`](Self::try_step) with gradients from several devices (burn's multi-device
    /// training): they are summed on one device per parameter, as burn's own optimizers do.
    pub fn try_step_multi(
        &mut self,
        lr: f64,
        module: M,
        grads: MultiGradientsParams,
    ) -> Result<M, EmberError> {
        self.step_common(
            lr,
            module,
            Grads::Multi(grads),
            Mode::Whole,
            self.non_finite,
        )
    }

    /// Part of a step: updates the parameters that have a gradient in `grads` (one block, in
    /// layer-wise training) without advancing the optimizer step counter; call
    /// [`finish_step`](Self::finish_step) once every part of the step is done. Per-parameter
    /// states (step counts, refreshes) advance as in [`try_step`](Self::try_step).
    pub fn try_step_part(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> Result<M, EmberError> {
        self.step_common(
            lr,
            module,
            Grads::Single(grads),
            Mode::Part,
            self.non_finite,
        )
    }

    /// The policy of burn's `Optimizer::step`, which cannot return an error: the configured one
    /// if it skips, else `SkipStep`.
    fn skipping_policy(&self) -> NonFinitePolicy {
        match self.non_finite {
            NonFinitePolicy::Error => NonFinitePolicy::SkipStep,
            p => p,
        }
    }

    /// Ends a step made of [`try_step_part`](Self::try_step_part) calls.
    pub fn finish_step(&mut self) {
        self.step += 1;
    }

    /// Adds `grads` (one micro-batch, or one block of it) to `acc`: projected where the
    /// pipeline discards its residual, full otherwise (see [`Accumulated`]). A parameter's first
    /// micro-batch in `acc` may refresh its projector (when due); later ones use that projector.
    pub fn try_accumulate(
        &mut self,
        module: &M,
        grads: GradientsParams,
        acc: &mut Accumulated<B::InnerBackend>,
    ) -> Result<(), EmberError> {
        if self.blocks.is_some() {
            return Err(unsupported_blockwise());
        }
        let (order, mut pending) = self.collect(module, Grads::Single(grads))?;
        self.targets_checked = true;
        let checked = self.non_finite != NonFinitePolicy::Unchecked;
        if let Some(bad) = checked
            .then(|| first_non_finite(&order, &pending))
            .flatten()
        {
            let err = EmberError::NonFiniteGradient {
                param: pending[&bad].path.clone(),
            };
            match self.non_finite {
                NonFinitePolicy::Error | NonFinitePolicy::Unchecked => return Err(err),
                NonFinitePolicy::SkipStep | NonFinitePolicy::SkipStepOnDevice => {
                    log::warn!("ember: {err}; skipping this micro-batch");
                    self.skipped_steps += 1;
                    return Ok(());
                }
            }
        }
        for id in order {
            let p = pending.remove(&id).expect("collected");
            if p.empty {
                continue;
            }
            let engine = self.engine_of(id, &p).clone();
            let g = match p.grad {
                Gradient::Full(g) if engine.accumulates_projected() => {
                    let first = !acc.entries.contains_key(&id);
                    let state = self.states.remove(&id).map(|s| s.to_device(&p.device));
                    let ctx = StepContext {
                        shape: &p.shape,
                        bases: &self.bases,
                        salt: crate::rng::hash_str(&p.path),
                        skip: None,
                    };
                    let (r, state) = engine.project(g, state, &ctx, first)?;
                    self.states.insert(id, state);
                    Gradient::Projected(r)
                }
                g => g,
            };
            acc.add(p.grad_id, g, p.grad_shape, p.device);
        }
        Ok(())
    }

    /// One step with accumulated gradients (the parameters in `acc`); `finish` advances the
    /// optimizer step counter (a whole step), else it is part of a step (layer-wise).
    pub fn try_step_accumulated(
        &mut self,
        lr: f64,
        module: M,
        acc: Accumulated<B::InnerBackend>,
        finish: bool,
    ) -> Result<M, EmberError> {
        let mode = if finish { Mode::Whole } else { Mode::Part };
        self.step_common(lr, module, Grads::Accumulated(acc), mode, self.non_finite)
    }

    /// Whether this step can keep its NaN/Inf check on the device
    /// ([`NonFinitePolicy::SkipStepOnDevice`]): one device, no INT8 weight, no parameter that
    /// fits its projector from this gradient.
    fn checks_on_device(
        &self,
        order: &[ParamId],
        pending: &HashMap<ParamId, Pending<B::InnerBackend>>,
    ) -> bool {
        let mut device = None;
        order.iter().all(|id| {
            let p = &pending[id];
            if p.empty {
                return true;
            }
            let same = match &device {
                None => {
                    device = Some(p.device.clone());
                    true
                }
                Some(d) => *d == p.device,
            };
            same && p.quant.is_none() && !self.engine_of(*id, p).refreshes_next(self.states.get(id))
        })
    }

    /// Before the NaN/Inf check: every gradient that its pipeline reads only through
    /// `R = down(G)` (a projector, the residual discarded: GaLore, Q-GaLore, DCT) is projected
    /// first, and the check reads `R` (r×n) instead of `G` (m×n) — at 4096×11008 r512 22 MB
    /// instead of 180 MB. The verdict is the same: a NaN or ±Inf in column `j` of `G` makes
    /// every entry of column `j` of `R = PᵀG` NaN or ±Inf (`x·NaN` and `0·Inf` are NaN, `x·Inf`
    /// is ±Inf, and every entry of the column has a term with that element; a right projector
    /// likewise by rows). A finite `G` whose `R` overflows is flagged too: unflagged, that step
    /// would write ±Inf/NaN into the moments. Not for a parameter whose step fits its projector
    /// from `G` (its first step, a scheduled refresh: the check guards the fit), nor with
    /// global-norm clipping (which reads `G`) or FRUGAL's blocks. Projecting changes no state,
    /// so a step the check then refuses leaves everything as it was.
    fn project_first(
        &mut self,
        order: &[ParamId],
        pending: &mut HashMap<ParamId, Pending<B::InnerBackend>>,
    ) -> Result<(), EmberError> {
        for id in order {
            let p = &pending[id];
            if p.empty || !matches!(p.grad, Gradient::Full(_)) || p.quant.is_some() {
                continue;
            }
            let engine = self.engine_of(*id, p).clone();
            let state = self.states.get(id);
            let beside = self.early_projection && engine.projects_beside(p.grad_dtype(), state);
            if !beside && (!engine.accumulates_projected() || engine.refreshes_next(state)) {
                continue;
            }
            let mut p = pending.remove(id).expect("collected");
            let state = self.states.remove(id).map(|s| s.to_device(&p.device));
            let ctx = StepContext {
                shape: &p.shape,
                bases: &self.bases,
                salt: crate::rng::hash_str(&p.path),
                skip: None,
            };
            let Gradient::Full(g) = p.grad else {
                unreachable!("matched above")
            };
            let (grad, state) = if beside {
                // `G` (or Fira's residual, computed with the down product) beside `R`
                engine.project_beside(g, state, &ctx)?
            } else {
                let (r, state) = engine.project(g, state, &ctx, false)?;
                (Gradient::Projected(r), state)
            };
            self.states.insert(*id, state);
            p.grad = grad;
            pending.insert(*id, p);
        }
        Ok(())
    }

    fn engine_of(&self, id: ParamId, p: &Pending<B::InnerBackend>) -> &EngineConfig {
        let (_, group) = self.route(id, &p.path, &p.shape);
        if self.blocks.is_some() {
            &group.dense
        } else {
            group.engine_for(&p.shape)
        }
    }

    /// Pass 1: takes every gradient and checks dtypes, shapes, ranks and loaded state.
    #[allow(clippy::type_complexity)]
    fn collect(
        &self,
        module: &M,
        grads: Grads<B::InnerBackend>,
    ) -> Result<(Vec<ParamId>, HashMap<ParamId, Pending<B::InnerBackend>>), EmberError> {
        let mut collector = Collector::<B> {
            grads,
            path: Vec::new(),
            taken: HashMap::new(),
            order: Vec::new(),
            last_codes: None,
            error: None,
            all: Vec::new(),
        };
        module.visit(&mut collector);
        if let Some(e) = collector.error {
            return Err(e);
        }
        if let Some(loaded) = &self.loaded_layout {
            if *loaded != self.layout() {
                return Err(EmberError::CheckpointMismatch {
                    param: "(optimizer)".into(),
                    reason: format!(
                        "the checkpoint was made with another group layout: {} groups {:?}, \
                         this optimizer {} groups {:?}",
                        loaded.len(),
                        loaded,
                        self.groups.len() + 1,
                        self.layout()
                    ),
                });
            }
        }
        if !self.targets_checked {
            self.check_selectors(&collector.all)?;
        }
        let Collector { taken, order, .. } = collector;
        for id in &order {
            let p = &taken[id];
            if p.empty {
                continue; // nothing to update, no state
            }
            EngineConfig::check_dtypes(&p.path, p.dtype, p.grad_dtype())?;
            if let Gradient::Full(g) = &p.grad {
                let rows: usize = p.shape[..p.shape.len().saturating_sub(1)].iter().product();
                let want = [rows.max(1), *p.shape.last().unwrap_or(&1)];
                if g.dims() != want || p.grad_shape != p.shape {
                    return Err(EmberError::GradientShape {
                        param: p.path.clone(),
                        param_shape: p.shape.clone(),
                        grad_shape: p.grad_shape.clone(),
                    });
                }
            }
            self.engine_of(*id, p)
                .check_param(&p.path, &p.shape, self.states.get(id))?;
        }
        Ok((order, taken))
    }

    /// At the first step: every pattern and id of a group selects a parameter, and every group
    /// gets at least one (not all taken by an earlier group).
    fn check_selectors(&self, all: &[(String, ParamId, Vec<usize>)]) -> Result<(), EmberError> {
        let example = all
            .iter()
            .map(|(p, _, _)| p.as_str())
            .max_by_key(|p| p.matches('.').count())
            .unwrap_or("");
        let single = self.groups.len() == 1;
        for (index, group) in self.groups.iter().enumerate() {
            let unmatched = group
                .selector
                .unmatched(all.iter().map(|(p, id, s)| (p.as_str(), *id, s.as_slice())));
            let whose = if single {
                "the targets select".to_string()
            } else {
                format!("group `{}` selects", group.name)
            };
            if !unmatched.is_empty() {
                return Err(EmberError::InvalidConfig(format!(
                    "{whose} no parameter of the model: {} (module paths look like \
                     `{example}`; patterns without `*` match substrings, with `*` whole paths)",
                    unmatched.join(", ")
                )));
            }
            let taken = all
                .iter()
                .filter(|(p, id, shape)| self.route(*id, p, shape).0 == Some(index))
                .count();
            if taken == 0 && !single && !group.selector.is_none() {
                return Err(EmberError::InvalidConfig(format!(
                    "group `{}` gets no parameter: its selector matches nothing, or only \
                     parameters an earlier group took (first match wins)",
                    group.name
                )));
            }
        }
        Ok(())
    }

    fn step_common(
        &mut self,
        lr: f64,
        module: M,
        grads: Grads<B::InnerBackend>,
        mode: Mode,
        non_finite: NonFinitePolicy,
    ) -> Result<M, EmberError> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(EmberError::InvalidConfig(format!(
                "learning rate {lr} must be finite and ≥ 0"
            )));
        }
        if mode == Mode::Part && self.blocks.is_some() {
            return Err(unsupported_blockwise());
        }
        let mut timer = crate::timing::StepTimer::start();
        let (order, mut pending) = self.collect(&module, grads)?;
        self.targets_checked = true;
        timer.lap(crate::timing::Phase::Collect);
        // the check reads `R = down(G)` where the pipeline reads nothing else of `G`
        if non_finite != NonFinitePolicy::Unchecked
            && self.clipping.is_none()
            && self.blocks.is_none()
        {
            self.project_first(&order, &mut pending)?;
        }
        timer.lap(crate::timing::Phase::ProjectFirst);
        // the step's skip flag on the device, or the check on the host (now, or deferred to the
        // step's end: `with_deferred_check`)
        let deferred = matches!(
            non_finite,
            NonFinitePolicy::Error | NonFinitePolicy::SkipStep
        ) && self.blocks.is_none()
            && self
                .deferred_check
                .unwrap_or_else(<B::InnerBackend as EmberBackend>::fused_kernels)
            && self.checks_on_device(&order, &pending);
        let on_device = non_finite == NonFinitePolicy::SkipStepOnDevice
            && self.checks_on_device(&order, &pending);
        let mut verdict = None;
        // (the flags pass only where the device keeps them: the host check makes its own)
        let flags = (deferred || on_device)
            .then(|| device_flags(&order, &pending))
            .flatten();
        let skip = match flags {
            Some((ids, flags)) if deferred => {
                let flag = ember_kernels::skip_flag(flags.clone());
                verdict = Some(Verdict {
                    paths: ids.iter().map(|id| pending[id].path.clone()).collect(),
                    counters: ids
                        .iter()
                        .map(|id| {
                            let s = self.states.get(id);
                            (*id, s.map(|s| (s.step, s.adam_step)))
                        })
                        .collect(),
                    flags,
                });
                Some(flag)
            }
            Some((_, flags)) if on_device => Some(ember_kernels::skip_flag(flags)),
            _ => None,
        };
        if verdict.is_some() {
            self.report_device_skips();
            self.host_checks += 1;
        } else if let Some(flag) = &skip {
            self.device_skips = Some(match self.device_skips.take() {
                Some(count) => {
                    let device = count.device();
                    count.add(flag.clone().to_device(&device))
                }
                None => flag.clone(),
            });
        } else if non_finite != NonFinitePolicy::Unchecked {
            self.report_device_skips();
            self.host_checks += 1;
            if let Some(bad) = first_non_finite(&order, &pending) {
                let err = EmberError::NonFiniteGradient {
                    param: pending[&bad].path.clone(),
                };
                match non_finite {
                    NonFinitePolicy::Error | NonFinitePolicy::Unchecked => return Err(err),
                    NonFinitePolicy::SkipStep | NonFinitePolicy::SkipStepOnDevice => {
                        log::warn!("ember: {err}; skipping this optimizer step");
                        self.skipped_steps += 1;
                        return Ok(module);
                    }
                }
            }
        }

        timer.lap(crate::timing::Phase::Check);
        let mut pending = pending;
        if let Some(clipping) = self.clipping {
            if mode == Mode::Part && matches!(clipping, Clipping::GlobalNorm(_)) {
                return Err(EmberError::InvalidConfig(
                    "clipping by the global norm needs every gradient of a step at once, which a \
                     step made of parts (layer-wise training) never has; clip per parameter \
                     (Clipping::Norm) or per block (LayerwiseConfig::clip_block_norm)"
                        .into(),
                ));
            }
            let ids: Vec<ParamId> = order
                .iter()
                .filter(|id| !pending[*id].empty)
                .copied()
                .collect();
            let grads = ids
                .iter()
                .map(|id| pending[id].grad_tensor().clone())
                .collect();
            for (id, g) in ids.iter().zip(clipping.apply(grads)) {
                let p = pending.get_mut(id).expect("collected");
                // (no `WithProjected` here: projections come before the step only unclipped)
                p.grad = p.grad.with_checked(g).ok_or_else(|| {
                    EmberError::Internal("clipping a gradient projected before its step".into())
                })?;
            }
        }

        // blockwise: which targets are state-full this step; states reset at each re-selection
        let (active, reselect) = match &self.blocks {
            Some(b) => {
                let targets: Vec<ParamId> = order
                    .iter()
                    .filter(|id| {
                        let p = &pending[*id];
                        p.shape.len() == 2 && self.route(**id, &p.path, &p.shape).0 == Some(0)
                    })
                    .copied()
                    .collect();
                let active: HashMap<ParamId, bool> = targets
                    .iter()
                    .copied()
                    .zip(b.active(targets.len(), self.step))
                    .collect();
                (active, self.step.is_multiple_of(b.gap))
            }
            None => (HashMap::new(), false),
        };

        // Pass 2: the updates, parameter by parameter inside the module mapping
        let mut stepper = Stepper::<B> {
            lr,
            pending,
            groups: &self.groups,
            default: &self.default,
            blocks: self.blocks.as_ref(),
            active,
            reselect,
            states: &mut self.states,
            bases: &self.bases,
            rounding_seed: self.rounding_seed,
            step: self.step,
            qparams: HashMap::new(),
            skip,
            error: None,
        };
        timer.lap(crate::timing::Phase::Prepare);
        let module = module.map(&mut stepper);
        if let Some(e) = stepper.error {
            return Err(e);
        }
        timer.lap(crate::timing::Phase::Update);
        // the deferred check's verdict: one read of the flags, after every update is queued
        let bad = verdict.and_then(|v| v.read(&mut self.states));
        timer.lap(crate::timing::Phase::Verdict);
        timer.finish();
        if let Some(param) = bad {
            let err = EmberError::NonFiniteGradient { param };
            if non_finite == NonFinitePolicy::Error {
                return Err(err);
            }
            log::warn!("ember: {err}; skipping this optimizer step");
            self.skipped_steps += 1;
            return Ok(module);
        }
        if mode == Mode::Whole {
            self.step += 1;
        }
        Ok(module)
    }
}

fn unsupported_blockwise() -> EmberError {
    EmberError::InvalidConfig(
        "FRUGAL's blockwise mode chooses its active parameters among all targets of a whole \
         step: it cannot run part by part (layer-wise training) or with accumulated gradients"
            .into(),
    )
}

impl<M, B> Optimizer<M, B> for EmberOptimizer<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    B::InnerBackend: EmberBackend,
{
    type Record = EmberRecord<B>;

    /// A step for burn's `Learner` and hand-written loops. `Optimizer::step` cannot return an
    /// error, so a non-finite gradient **skips the step** (logged with the parameter's name,
    /// counted by [`EmberOptimizer::skipped_steps`]) whatever the [`NonFinitePolicy`] (with
    /// `SkipStepOnDevice`, on the device);
    /// [`EmberOptimizer::try_step`] returns it as an error instead. Other bad input panics with
    /// the error's message.
    fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        let policy = self.skipping_policy();
        self.step_common(lr, module, Grads::Single(grads), Mode::Whole, policy)
            .unwrap_or_else(|e| panic!("ember optimizer step failed: {e}"))
    }

    fn step_multi(&mut self, lr: f64, module: M, grads: MultiGradientsParams) -> M {
        let policy = self.skipping_policy();
        self.step_common(lr, module, Grads::Multi(grads), Mode::Whole, policy)
            .unwrap_or_else(|e| panic!("ember optimizer step failed: {e}"))
    }

    fn to_record(&self) -> Self::Record {
        EmberRecord {
            state: EmberState {
                states: self.states.clone(),
                step: self.step,
                layout: self.layout(),
            },
        }
    }

    /// Loads the states; a record of another group layout is refused at the next step
    /// (`EmberError::CheckpointMismatch`).
    fn load_record(mut self, record: Self::Record) -> Self {
        self.states = record.state.states;
        self.step = record.state.step;
        self.loaded_layout = Some(record.state.layout);
        self
    }
}

enum Grads<B: Backend> {
    Single(GradientsParams),
    Multi(MultiGradientsParams),
    Accumulated(Accumulated<B>),
}

impl<B: Backend> Grads<B> {
    /// The gradient of `id` as a 2-D view, its original shape and its device.
    fn remove<const D: usize>(
        &mut self,
        id: ParamId,
    ) -> Option<(Gradient<B>, Vec<usize>, B::Device)> {
        let full = |t: Tensor<B, D>, d: B::Device| {
            let shape = t.dims().to_vec();
            (Gradient::Full(as_2d(t)), shape, d)
        };
        match self {
            Grads::Single(g) => g.remove::<B, D>(id).map(|t| {
                let d = t.device();
                full(t, d)
            }),
            Grads::Multi(g) => g.remove::<B, D>(id).map(|(t, d)| full(t, d)),
            Grads::Accumulated(acc) => acc.entries.remove(&id),
        }
    }
}

/// A parameter to update: its gradient (a 2-D view, `[numel / last, last]` for other ranks).
struct Pending<B: Backend> {
    path: String,
    /// The parameter's shape.
    shape: Vec<usize>,
    /// The gradient's shape as burn returned it (checked against `shape`).
    grad_shape: Vec<usize>,
    grad: Gradient<B>,
    /// The id the gradient is filed under (the parameter's own, or an INT8 weight's `qparams`).
    grad_id: ParamId,
    dtype: DType,
    device: B::Device,
    quant: Option<QuantInfo<B>>,
    empty: bool,
}

impl<B: Backend> Pending<B> {
    fn grad_dtype(&self) -> DType {
        self.grad.checked().dtype()
    }

    fn grad_tensor(&self) -> &Tensor<B, 2> {
        self.grad.checked()
    }
}

/// An INT8 weight ([`QLinear`](crate::qlinear::QLinear)): its `(scale, zero)` parameter.
struct QuantInfo<B: Backend> {
    qparams_id: ParamId,
    qparams: Tensor<B, 3>,
    group: usize,
}

fn as_2d<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 2> {
    let dims = t.dims();
    let cols = if D >= 2 { dims[D - 1] } else { dims[0] };
    let rows = if D >= 2 {
        dims[..D - 1].iter().product()
    } else {
        1
    };
    t.reshape([rows, cols])
}

struct Collector<B: AutodiffBackend> {
    grads: Grads<B::InnerBackend>,
    path: Vec<String>,
    taken: HashMap<ParamId, Pending<B::InnerBackend>>,
    order: Vec<ParamId>,
    /// The last int parameter seen: `(module path, id, [rows, words], codes)`, the codes of an
    /// INT8 weight if the next float parameter of the same module is its `[rows, groups, 2]`
    /// scale and zero point.
    last_codes: Option<(Vec<String>, ParamId, [usize; 2])>,
    error: Option<EmberError>,
    /// `(path, id, shape)` of every parameter of the module (INT8 weights as `<layer>.weight`).
    all: Vec<(String, ParamId, Vec<usize>)>,
}

impl<B: AutodiffBackend> Collector<B> {
    /// A float parameter that is the `(scale, zero)` of the INT8 weight just visited: takes the
    /// weight's gradient (filed under this parameter's id by `quantized_grads`).
    fn quantized<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) -> bool {
        let Some((parent, codes_id, [rows, words])) = self.last_codes.take() else {
            return false;
        };
        let t = param.val();
        let dims = t.dims();
        if D != 3
            || parent[..] != self.path[..self.path.len().saturating_sub(1)]
            || dims[0] != rows
            || dims[2] != 2
        {
            return false;
        }
        let (cols, groups) = (words * 4, dims[1]);
        let path = if parent.is_empty() {
            "weight".to_string()
        } else {
            format!("{}.weight", parent.join("."))
        };
        let Some((grad, grad_shape, device)) = self.grads.remove::<3>(param.id) else {
            return true; // an INT8 weight without a gradient this step
        };
        let (grad, grad_shape) = match grad {
            Gradient::Full(g) => {
                if grad_shape != [rows, groups, cols / groups.max(1)] && self.error.is_none() {
                    self.error = Some(EmberError::GradientShape {
                        param: path.clone(),
                        param_shape: vec![rows, cols],
                        grad_shape: grad_shape.clone(),
                    });
                }
                let n = g.shape().num_elements();
                let g = if n == rows * cols {
                    g.reshape([rows, cols])
                } else {
                    g
                };
                (Gradient::Full(g), vec![rows, cols])
            }
            // accumulated: already the weight's view
            g => (g, grad_shape),
        };
        let inner = t.inner();
        let inner_dims = inner.dims();
        self.order.push(codes_id);
        self.taken.insert(
            codes_id,
            Pending {
                path,
                shape: vec![rows, cols],
                grad_shape,
                grad,
                grad_id: param.id,
                dtype: DType::F32,
                device,
                quant: Some(QuantInfo {
                    qparams_id: param.id,
                    qparams: inner.reshape([inner_dims[0], inner_dims[1], inner_dims[2]]),
                    group: cols / groups.max(1),
                }),
                empty: rows * cols == 0,
            },
        );
        true
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collector<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id = param.id;
        if self.quantized(param) {
            return;
        }
        let value = param.val();
        self.all
            .push((self.path.join("."), id, value.dims().to_vec()));
        if let Some((grad, grad_shape, device)) = self.grads.remove::<D>(id) {
            let shape = value.dims().to_vec();
            let path = if self.path.is_empty() {
                id.to_string()
            } else {
                self.path.join(".")
            };
            self.order.push(id);
            self.taken.insert(
                id,
                Pending {
                    path,
                    empty: shape.iter().product::<usize>() == 0,
                    shape,
                    grad_shape,
                    grad,
                    grad_id: id,
                    dtype: value.dtype(),
                    device,
                    quant: None,
                },
            );
        }
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        self.last_codes = None;
        if D != 2 {
            return;
        }
        let dims = param.val().dims();
        let parent = self.path[..self.path.len().saturating_sub(1)].to_vec();
        self.all.push((
            format!("{}.weight", parent.join(".")),
            param.id,
            vec![dims[0], dims[1] * 4],
        ));
        self.last_codes = Some((parent, param.id, [dims[0], dims[1]]));
    }
}

/// The first parameter (in module order) whose gradient is not finite: one fused pass over each
/// gradient and one read of the flags per device.
fn first_non_finite<B: EmberBackend>(
    order: &[ParamId],
    pending: &HashMap<ParamId, Pending<B>>,
) -> Option<ParamId> {
    let mut groups: Vec<(B::Device, Vec<ParamId>)> = Vec::new();
    for id in order {
        let device = &pending[id].device;
        match groups.iter_mut().find(|(d, _)| d == device) {
            Some((_, ids)) => ids.push(*id),
            None => groups.push((device.clone(), vec![*id])),
        }
    }
    let mut bad = Vec::new();
    for (device, ids) in groups {
        let grads = ids
            .iter()
            .map(|id| pending[id].grad_tensor().clone())
            .collect();
        let flags = B::non_finite_flags(grads, &device)
            .into_data()
            .convert::<f32>();
        let flags = flags.as_slice::<f32>().expect("f32 flags");
        bad.extend(
            ids.iter()
                .zip(flags)
                .filter(|(_, f)| **f != 0.0)
                .map(|(id, _)| *id),
        );
    }
    order.iter().find(|id| bad.contains(id)).copied()
}

/// The NaN/Inf flags of a step's gradients on one device, one per parameter (the parameters
/// with a gradient, in module order), not read back: reduced to the step's skip flag
/// ([`ember_kernels::skip_flag`]) for the update kernels. `None` without gradients.
fn device_flags<B: EmberBackend>(
    order: &[ParamId],
    pending: &HashMap<ParamId, Pending<B>>,
) -> Option<(Vec<ParamId>, Tensor<B, 1>)> {
    let ids: Vec<ParamId> = order
        .iter()
        .filter(|id| !pending[*id].empty)
        .copied()
        .collect();
    let device = pending[ids.first()?].device.clone();
    let grads = ids
        .iter()
        .map(|id| pending[id].grad_tensor().clone())
        .collect();
    let flags = B::non_finite_flags(grads, &device);
    Some((ids, flags))
}

/// A parameter's step counters (`step`, `adam_step`). Its refresh state needs no copy: a
/// deferred check never runs on a step that refreshes a projector (those check first).
type Counters = (usize, usize);

/// A host policy's check deferred to the step's end ([`EmberOptimizer::with_deferred_check`]):
/// the flags, and what the step changes on the host, to put back if one is set.
struct Verdict<B: Backend> {
    /// One flag per parameter, in module order.
    flags: Tensor<B, 1>,
    /// The parameters' paths, in the flags' order.
    paths: Vec<String>,
    /// Each parameter's counters before the step (`None`: no state before it).
    counters: Vec<(ParamId, Option<Counters>)>,
}

impl<B: Backend> Verdict<B> {
    /// Reads the flags (the step's one synchronization); if one is set, puts every counter
    /// back (the updates held the weights and moments on the device) and returns the first
    /// such parameter's path.
    fn read(self, states: &mut HashMap<ParamId, ParamState<B>>) -> Option<String> {
        let flags: Vec<f32> = self
            .flags
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 flags");
        let first = flags.iter().position(|f| *f != 0.0)?;
        for (id, before) in self.counters {
            match before {
                Some((step, adam_step)) => {
                    if let Some(s) = states.get_mut(&id) {
                        s.step = step;
                        s.adam_step = adam_step;
                    }
                }
                None => {
                    states.remove(&id);
                }
            }
        }
        self.paths.into_iter().nth(first)
    }
}

/// Pass 2: computes each parameter's update while the module is mapped, so that its old value
/// is freed as soon as the new one exists.
struct Stepper<'a, B: AutodiffBackend> {
    lr: f64,
    pending: HashMap<ParamId, Pending<B::InnerBackend>>,
    groups: &'a [Group],
    default: &'a Group,
    blocks: Option<&'a BlockSchedule>,
    active: HashMap<ParamId, bool>,
    reselect: bool,
    states: &'a mut HashMap<ParamId, ParamState<B::InnerBackend>>,
    bases: &'a SharedBases<B::InnerBackend>,
    rounding_seed: u64,
    step: usize,
    /// New `(scale, zero)` of INT8 weights, applied when their `qparams` is mapped.
    qparams: HashMap<ParamId, Tensor<B::InnerBackend, 3>>,
    /// The step's skip flag on the device (`None`: checked on the host).
    skip: Option<Tensor<B::InnerBackend, 1>>,
    error: Option<EmberError>,
}

impl<B: AutodiffBackend> Stepper<'_, B>
where
    B::InnerBackend: EmberBackend,
{
    /// The new value of parameter `id` (2-D view) from its current value `w`.
    fn update(
        &mut self,
        id: ParamId,
        p: Pending<B::InnerBackend>,
        w: Tensor<B::InnerBackend, 2>,
    ) -> Result<Tensor<B::InnerBackend, 2>, EmberError> {
        let w = w.to_device(&p.device);
        let (_, group) = route(self.groups, self.default, id, &p.path, &p.shape);
        let lr = self.lr * group.lr_scale;
        if let (Some(blocks), Some(&is_active)) = (self.blocks, self.active.get(&id)) {
            let Gradient::Full(g) = p.grad else {
                return Err(unsupported_blockwise());
            };
            let dense = &group.dense;
            if !is_active {
                self.states.remove(&id);
                return dense.state_free_step(lr, w, g, &blocks.inactive, self.skip.as_ref());
            }
            let state = if self.reselect {
                self.states.remove(&id);
                None
            } else {
                self.states.remove(&id).map(|s| s.to_device(&p.device))
            };
            let ctx = StepContext {
                skip: self.skip.as_ref(),
                ..StepContext::new(&p.shape, self.bases)
            };
            let (w, state) = dense.step(lr, w, g, state, &ctx)?;
            self.states.insert(id, state);
            return Ok(w);
        }
        let engine = if self.blocks.is_some() {
            &group.dense
        } else {
            group.engine_for(&p.shape)
        };
        let state = self.states.remove(&id).map(|s| s.to_device(&p.device));
        let ctx = StepContext {
            shape: &p.shape,
            bases: self.bases,
            salt: crate::rng::hash_str(&p.path),
            skip: self.skip.as_ref(),
        };
        // the state moves into the step (not a copy): a large parameter's moments are then
        // updated in place, chunk by chunk (`crate::chunked`). A failed step discards the module
        // with the error (`step_common`), so nothing is kept for it.
        let (w, state) = engine.step_with(lr, w, p.grad, state, &ctx)?;
        self.states.insert(id, state);
        Ok(w)
    }
}

impl<B: AutodiffBackend> ModuleMapper<B> for Stepper<'_, B>
where
    B::InnerBackend: EmberBackend,
{
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if let Some(q) = self.qparams.remove(&id) {
            let t = Tensor::<B, D>::from_inner(q.reshape(tensor.dims()));
            return Param::from_mapped_value(id, t, mapper);
        }
        let Some(p) = self.pending.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        if p.empty || self.error.is_some() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let require_grad = tensor.is_require_grad();
        let dims: [usize; D] = tensor.dims();
        let device = tensor.device();
        let dtype = tensor.dtype();
        // the value moves into the step (not a copy): a large parameter is then updated in its
        // own buffer, chunk by chunk (`crate::chunked`)
        let w = as_2d(tensor.inner());
        match self.update(id, p, w) {
            Ok(w) => {
                let mut t = Tensor::<B, D>::from_inner(w.reshape(dims).to_device(&device));
                if require_grad {
                    t = t.require_grad();
                }
                Param::from_mapped_value(id, t, mapper)
            }
            Err(e) => {
                // `step_common` returns the error and drops the module: a placeholder value
                self.error = Some(e);
                let t = Tensor::<B, D>::empty(dims, &device).cast(dtype);
                Param::from_mapped_value(id, t, mapper)
            }
        }
    }

    fn map_int<const D: usize>(
        &mut self,
        param: Param<Tensor<B, D, Int>>,
    ) -> Param<Tensor<B, D, Int>> {
        let (id, tensor, mapper) = param.consume();
        let Some(p) = self.pending.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let Some(q) = p
            .quant
            .as_ref()
            .map(|q| (q.qparams_id, q.qparams.clone(), q.group))
        else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        if p.empty || self.error.is_some() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let (qparams_id, qparams, group) = q;
        let dims = tensor.dims();
        let codes = tensor.clone().inner().reshape([dims[0], dims[1]]);
        let w = crate::qlinear::dequantize_int8(codes, qparams);
        let path = p.path.clone();
        match self.update(id, p, w) {
            Ok(w) => {
                // re-quantize with stochastic rounding, keyed by (seed, path, step)
                let key = crate::qlinear::rounding_key(
                    self.rounding_seed,
                    &[crate::rng::hash_str(&path), self.step as u64],
                );
                let (codes, new_qparams) = crate::qlinear::quantize_int8(w, group, Some(key));
                self.qparams.insert(qparams_id, new_qparams);
                drop(tensor);
                let t = Tensor::<B, D, Int>::from_inner(codes.reshape(dims));
                Param::from_mapped_value(id, t, mapper)
            }
            Err(e) => {
                self.error = Some(e);
                Param::from_mapped_value(id, tensor, mapper)
            }
        }
    }
}

/// The group of a parameter among `groups` (first match), else `default`.
fn route<'a>(
    groups: &'a [Group],
    default: &'a Group,
    id: ParamId,
    path: &str,
    shape: &[usize],
) -> (Option<usize>, &'a Group) {
    match groups
        .iter()
        .position(|g| g.selector.selects_shaped(id, path, shape))
    {
        Some(i) => (Some(i), &groups[i]),
        None => (None, default),
    }
}

/// One parameter in [`EmberOptimizer::plan_groups`].
#[derive(Debug, Clone)]
pub struct PlanEntry {
    /// Module path.
    pub path: String,
    /// Id.
    pub id: ParamId,
    /// Shape.
    pub shape: Vec<usize>,
    /// Its group's name.
    pub group: String,
    /// Projected (a 2-D parameter of a group whose pipeline projects), else AdamW.
    pub projected: bool,
    /// The group's learning-rate scale.
    pub lr_scale: f64,
    /// λ.
    pub weight_decay: f64,
    /// State storage.
    pub state: crate::state::StateDtype,
}

impl std::fmt::Display for PlanEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<40} {:>14} {:<12} {:<8} lr×{} λ={} state {}",
            self.path,
            format!("{:?}", self.shape),
            self.group,
            if self.projected { "projected" } else { "adamw" },
            self.lr_scale,
            self.weight_decay,
            self.state.name()
        )
    }
}

/// Collects `(path, id, shape)` of every float parameter.
#[derive(Default)]
struct PathVisitor {
    path: Vec<String>,
    params: Vec<(String, ParamId, Vec<usize>)>,
}

impl<B: Backend> ModuleVisitor<B> for PathVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.params
            .push((self.path.join("."), param.id, param.val().dims().to_vec()));
    }
}
