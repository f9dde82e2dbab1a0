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
use crate::engine::{EngineConfig, ParamState, StepContext};
use crate::error::EmberError;
use crate::targets::Targets;

/// What a step does when a gradient holds NaN or ±Inf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NonFinitePolicy {
    /// [`EmberOptimizer::try_step`] returns [`EmberError::NonFiniteGradient`] naming the first
    /// such parameter, and changes nothing (`Optimizer::step` panics with that message). Default.
    Error,
    /// The whole step is skipped (no parameter or state changes) and a warning is logged.
    SkipStep,
}

/// An Ember optimizer for module `M` on autodiff backend `B`.
///
/// Built by the methods' configs (`GaloreConfig::init()`, …). Use it where burn accepts
/// `AdamConfig::init()`: a hand-written loop calls [`Optimizer::step`], burn-train's `Learner`
/// takes it as its optimizer. [`try_step`](Self::try_step) is the same step returning errors
/// instead of panicking.
#[derive(Clone)]
pub struct EmberOptimizer<M, B: AutodiffBackend> {
    target: EngineConfig,
    dense: EngineConfig,
    targets: Targets,
    non_finite: NonFinitePolicy,
    blocks: Option<BlockSchedule>,
    states: HashMap<ParamId, ParamState<B::InnerBackend>>,
    step: usize,
    bases: SharedBases<B::InnerBackend>,
    skipped_steps: usize,
    rounding_seed: u64,
    _module: PhantomData<M>,
}

/// The optimizer's state on the inner backend.
#[derive(Record, Clone)]
pub struct EmberState<B: Backend> {
    /// One [`ParamState`] per parameter that holds state.
    pub states: HashMap<ParamId, ParamState<B>>,
    /// Optimizer steps taken (drives blockwise selection).
    pub step: usize,
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
        target.validate()?;
        dense.validate()?;
        Ok(Self {
            target,
            dense,
            targets,
            non_finite,
            blocks: None,
            states: HashMap::new(),
            step: 0,
            bases: SharedBases::new(),
            skipped_steps: 0,
            rounding_seed: 0,
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

    /// Seed of the stochastic rounding of INT8 weights ([`QLinear`](crate::qlinear::QLinear)).
    pub fn with_rounding_seed(mut self, seed: u64) -> Self {
        self.rounding_seed = seed;
        self
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The pipeline of targeted parameters.
    pub fn target_engine(&self) -> &EngineConfig {
        &self.target
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

    /// Steps skipped because of non-finite gradients ([`NonFinitePolicy::SkipStep`]).
    pub fn skipped_steps(&self) -> usize {
        self.skipped_steps
    }

    /// Which parameters of `module` are targets: `(path, id, shape, is_target)` in module order.
    pub fn plan(&self, module: &M) -> Vec<(String, ParamId, Vec<usize>, bool)> {
        let mut v = PathVisitor::default();
        module.visit(&mut v);
        v.params
            .into_iter()
            .map(|(path, id, shape)| {
                let t = self.targets.is_target(id, &path, &shape);
                (path, id, shape, t)
            })
            .collect()
    }
}

impl<M, B> EmberOptimizer<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    B::InnerBackend: EmberBackend,
{
    /// One optimizer step; on error nothing (module or state) has changed.
    pub fn try_step(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> Result<M, EmberError> {
        self.step_common(lr, module, Grads::Single(grads))
    }

    /// [`try_step`](Self::try_step) with gradients from several devices (burn's multi-device
    /// training): they are summed on one device per parameter, as burn's own optimizers do.
    pub fn try_step_multi(
        &mut self,
        lr: f64,
        module: M,
        grads: MultiGradientsParams,
    ) -> Result<M, EmberError> {
        self.step_common(lr, module, Grads::Multi(grads))
    }

    fn step_common(&mut self, lr: f64, module: M, grads: Grads) -> Result<M, EmberError> {
        // Pass 1: take every gradient, check shapes, ranks, loaded state and finiteness before
        // anything changes.
        let mut collector = Collector::<B> {
            grads,
            path: Vec::new(),
            taken: HashMap::new(),
            order: Vec::new(),
            codes: Vec::new(),
            qparams: HashMap::new(),
        };
        module.visit(&mut collector);
        collector.pair_quantized()?;
        let Collector { taken, order, .. } = collector;

        for id in &order {
            let c = &taken[id];
            if c.shape.iter().product::<usize>() == 0 {
                continue; // empty: nothing to update, no state (skipped below as well)
            }
            let engine = if self.targets.is_target(*id, &c.path, &c.shape) && self.blocks.is_none()
            {
                &self.target
            } else {
                &self.dense
            };
            EngineConfig::check_dtypes(&c.path, c.value.dtype(), c.grad.dtype())?;
            engine.check_param(&c.path, &c.shape, self.states.get(id))?;
        }

        if let Some(bad) = first_non_finite(&order, &taken) {
            let err = EmberError::NonFiniteGradient {
                param: taken[&bad].path.clone(),
            };
            match self.non_finite {
                NonFinitePolicy::Error => return Err(err),
                NonFinitePolicy::SkipStep => {
                    log::warn!("ember: {err}; skipping this optimizer step");
                    self.skipped_steps += 1;
                    return Ok(module);
                }
            }
        }

        // Pass 2: the updates. Errors here (e.g. an SVD failing) are returned before any
        // parameter is replaced, since new states are staged first.
        let mut updates: HashMap<ParamId, Tensor<B::InnerBackend, 2>> = HashMap::new();
        let mut int_updates: HashMap<ParamId, Tensor<B::InnerBackend, 2, Int>> = HashMap::new();
        let mut new_states = HashMap::new();
        let mut dropped = Vec::new();
        let mut taken = taken;

        // blockwise: which targets are state-full this step; states reset at each re-selection
        let block_targets: Vec<ParamId> = match &self.blocks {
            Some(_) => order
                .iter()
                .filter(|id| {
                    let c = &taken[*id];
                    self.targets.is_target(**id, &c.path, &c.shape)
                })
                .copied()
                .collect(),
            None => Vec::new(),
        };
        let active: HashMap<ParamId, bool> = match &self.blocks {
            Some(b) => block_targets
                .iter()
                .copied()
                .zip(b.active(block_targets.len(), self.step))
                .collect(),
            None => HashMap::new(),
        };
        let reselect = self
            .blocks
            .as_ref()
            .is_some_and(|b| self.step.is_multiple_of(b.gap));

        for id in &order {
            let c = taken.remove(id).expect("collected");
            if c.shape.iter().product::<usize>() == 0 {
                continue; // an empty parameter has nothing to update and holds no state
            }
            if let (Some(blocks), Some(&is_active)) = (&self.blocks, active.get(id)) {
                if !is_active {
                    let w = c.value.to_device(&c.device);
                    let w = self.dense.state_free_step(lr, w, c.grad, &blocks.inactive);
                    self.stage(&mut updates, &mut int_updates, *id, &c.path, c.quant, w);
                    dropped.push(*id);
                    continue;
                }
                let state = if reselect {
                    None
                } else {
                    self.states.get(id).cloned()
                };
                let state = state.map(|s| s.to_device(&c.device));
                let w = c.value.to_device(&c.device);
                let (w, state) = self.dense.step(
                    lr,
                    w,
                    c.grad,
                    state,
                    &StepContext::new(&c.shape, &self.bases),
                )?;
                self.stage(&mut updates, &mut int_updates, *id, &c.path, c.quant, w);
                new_states.insert(*id, state);
                continue;
            }
            let engine = if self.targets.is_target(*id, &c.path, &c.shape) {
                &self.target
            } else {
                &self.dense
            };
            let state = self.states.get(id).cloned().map(|s| s.to_device(&c.device));
            let w = c.value.to_device(&c.device);
            let salt = crate::rng::hash_str(&c.path);
            let ctx = StepContext {
                shape: &c.shape,
                bases: &self.bases,
                salt,
            };
            let (w, state) = engine.step(lr, w, c.grad, state, &ctx)?;
            self.stage(&mut updates, &mut int_updates, *id, &c.path, c.quant, w);
            new_states.insert(*id, state);
        }
        for id in dropped {
            self.states.remove(&id);
        }
        self.states.extend(new_states);
        self.step += 1;

        let mut mapper = Applier::<B> {
            updates,
            int_updates,
        };
        Ok(module.map(&mut mapper))
    }

    /// Stages a parameter's new value; an INT8 weight is re-quantized with stochastic rounding
    /// (counter-based uniforms keyed by `SplitMix64(seed, path, step)`).
    fn stage(
        &self,
        updates: &mut HashMap<ParamId, Tensor<B::InnerBackend, 2>>,
        int_updates: &mut HashMap<ParamId, Tensor<B::InnerBackend, 2, Int>>,
        id: ParamId,
        path: &str,
        quant: Option<QuantInfo>,
        w: Tensor<B::InnerBackend, 2>,
    ) {
        match quant {
            None => {
                updates.insert(id, w);
            }
            Some(q) => {
                let key = crate::qlinear::rounding_key(
                    self.rounding_seed,
                    &[crate::rng::hash_str(path), self.step as u64],
                );
                let (codes, qparams) = crate::qlinear::quantize_int8(w, q.group, Some(key));
                int_updates.insert(id, codes);
                let [r, g, two] = qparams.dims();
                updates.insert(q.qparams_id, qparams.reshape([r * g, two]));
            }
        }
    }
}

impl<M, B> Optimizer<M, B> for EmberOptimizer<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    B::InnerBackend: EmberBackend,
{
    type Record = EmberRecord<B>;

    /// Panics with a clear message on bad input; use [`EmberOptimizer::try_step`] for a `Result`.
    fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        self.try_step(lr, module, grads)
            .unwrap_or_else(|e| panic!("ember optimizer step failed: {e}"))
    }

    fn step_multi(&mut self, lr: f64, module: M, grads: MultiGradientsParams) -> M {
        self.try_step_multi(lr, module, grads)
            .unwrap_or_else(|e| panic!("ember optimizer step failed: {e}"))
    }

    fn to_record(&self) -> Self::Record {
        EmberRecord {
            state: EmberState {
                states: self.states.clone(),
                step: self.step,
            },
        }
    }

    fn load_record(mut self, record: Self::Record) -> Self {
        self.states = record.state.states;
        self.step = record.state.step;
        self
    }
}

enum Grads {
    Single(GradientsParams),
    Multi(MultiGradientsParams),
}

impl Grads {
    fn remove<B: Backend, const D: usize>(
        &mut self,
        id: ParamId,
    ) -> Option<(Tensor<B, D>, B::Device)> {
        match self {
            Grads::Single(g) => g.remove::<B, D>(id).map(|t| {
                let d = t.device();
                (t, d)
            }),
            Grads::Multi(g) => g.remove::<B, D>(id),
        }
    }
}

/// A parameter's gradient and value, as 2-D views (`[numel / last, last]` for other ranks).
struct Collected<B: Backend> {
    path: String,
    shape: Vec<usize>,
    grad: Tensor<B, 2>,
    value: Tensor<B, 2>,
    device: B::Device,
    quant: Option<QuantInfo>,
}

/// An INT8 weight ([`QLinear`](crate::qlinear::QLinear)): where its `(scale, zero)` live.
#[derive(Clone, Copy)]
struct QuantInfo {
    qparams_id: ParamId,
    group: usize,
}

type PendingCodes<B> = (
    String,
    ParamId,
    Tensor<B, 2, Int>,
    Tensor<B, 2>,
    burn::tensor::Device<B>,
);

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
    grads: Grads,
    path: Vec<String>,
    taken: HashMap<ParamId, Collected<B::InnerBackend>>,
    order: Vec<ParamId>,
    /// Int parameters that received a float gradient (INT8 weights), by parent path.
    codes: Vec<PendingCodes<B::InnerBackend>>,
    /// Float parameters named `qparams` without a gradient, by parent path.
    qparams: HashMap<String, (ParamId, Tensor<B::InnerBackend, 3>)>,
}

impl<B: AutodiffBackend> Collector<B> {
    /// Joins each INT8 weight with its `qparams` and files it as `<parent>.weight`.
    fn pair_quantized(&mut self) -> Result<(), EmberError> {
        for (parent, id, codes, grad, device) in std::mem::take(&mut self.codes) {
            let path = if parent.is_empty() {
                "weight".to_string()
            } else {
                format!("{parent}.weight")
            };
            let Some((qid, qparams)) = self.qparams.remove(&parent) else {
                return Err(EmberError::UnsupportedParameter {
                    param: format!("{parent}.codes"),
                    reason: "an int parameter received a gradient but has no `qparams` \
                             sibling; only ember's QLinear weights can be trained in INT8"
                        .into(),
                });
            };
            let [rows, words] = codes.dims();
            let [_, groups, _] = qparams.dims();
            let shape = vec![rows, words * 4];
            if grad.dims() != [rows, words * 4] {
                return Err(EmberError::UnsupportedParameter {
                    param: path,
                    reason: format!(
                        "gradient of shape {:?} for an INT8 weight of shape {shape:?}",
                        grad.dims()
                    ),
                });
            }
            let value = crate::qlinear::dequantize_int8(codes, qparams);
            self.order.push(id);
            self.taken.insert(
                id,
                Collected {
                    path,
                    shape,
                    grad,
                    value,
                    device,
                    quant: Some(QuantInfo {
                        qparams_id: qid,
                        group: words * 4 / groups,
                    }),
                },
            );
        }
        Ok(())
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
        if let Some((grad, device)) = self.grads.remove::<B::InnerBackend, D>(id) {
            let value = param.val().inner();
            let shape = value.dims().to_vec();
            let path = if self.path.is_empty() {
                id.to_string()
            } else {
                self.path.join(".")
            };
            self.order.push(id);
            self.taken.insert(
                id,
                Collected {
                    path,
                    shape,
                    grad: as_2d(grad),
                    value: as_2d(value),
                    device,
                    quant: None,
                },
            );
        } else if D == 3 && self.path.last().is_some_and(|n| n == "qparams") {
            let parent = self.path[..self.path.len() - 1].join(".");
            let t = param.val().inner();
            let dims = t.dims();
            self.qparams
                .insert(parent, (param.id, t.reshape([dims[0], dims[1], dims[2]])));
        }
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        if D != 2 {
            return;
        }
        if let Some((grad, device)) = self.grads.remove::<B::InnerBackend, 2>(param.id) {
            let t = param.val().inner();
            let dims = t.dims();
            let parent = self.path[..self.path.len().saturating_sub(1)].join(".");
            self.codes.push((
                parent,
                param.id,
                t.reshape([dims[0], dims[1]]),
                grad,
                device,
            ));
        }
    }
}

/// The first parameter (in module order) whose gradient is not finite: one fused pass over each
/// gradient and one read of the flags per device.
fn first_non_finite<B: EmberBackend>(
    order: &[ParamId],
    taken: &HashMap<ParamId, Collected<B>>,
) -> Option<ParamId> {
    let mut groups: Vec<(B::Device, Vec<ParamId>)> = Vec::new();
    for id in order {
        let device = &taken[id].device;
        match groups.iter_mut().find(|(d, _)| d == device) {
            Some((_, ids)) => ids.push(*id),
            None => groups.push((device.clone(), vec![*id])),
        }
    }
    let mut bad = Vec::new();
    for (device, ids) in groups {
        let grads = ids.iter().map(|id| taken[id].grad.clone()).collect();
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

struct Applier<B: AutodiffBackend> {
    updates: HashMap<ParamId, Tensor<B::InnerBackend, 2>>,
    int_updates: HashMap<ParamId, Tensor<B::InnerBackend, 2, Int>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Applier<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.updates.remove(&id) {
            Some(w) => {
                let require_grad = tensor.is_require_grad();
                let dims: [usize; D] = tensor.dims();
                let mut t = Tensor::<B, D>::from_inner(w.reshape(dims));
                if require_grad {
                    t = t.require_grad();
                }
                t
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }

    fn map_int<const D: usize>(
        &mut self,
        param: Param<Tensor<B, D, Int>>,
    ) -> Param<Tensor<B, D, Int>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.int_updates.remove(&id) {
            Some(codes) => Tensor::<B, D, Int>::from_inner(codes.reshape(tensor.dims())),
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
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
