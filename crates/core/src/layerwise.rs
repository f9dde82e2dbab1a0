//! Layer-wise training: each block's parameters are updated during the backward pass, so the
//! gradients of only one block exist at a time.
//!
//! galore-torch gets this with PyTorch's `register_post_accumulate_grad_hook` ("per-layer weight
//! updates"); burn has no gradient hooks, so Ember runs its own segmented backward over a model
//! that describes itself as **input stage → blocks → output stage** ([`BlockModel`]):
//!
//! 1. **forward without the autodiff graph** (on the inner backend, [`AutodiffModule::valid`]),
//!    keeping only each block's input `x₀ … x_L`;
//! 2. **output stage**: `x_L` as an autodiff leaf, the loss, `backward`; the output stage's
//!    gradients go to the optimizer at once, `∂L/∂x_L` is kept;
//! 3. **blocks, from the top**: block `k` is recomputed with autodiff from `x_k` (a leaf), and
//!    `Σ y_k ⊙ ∂L/∂y_k` is back-propagated — its gradient with respect to every input is exactly
//!    the chain rule's, the upstream gradient `∂L/∂y_k` entering unchanged; block `k`'s
//!    gradients are stepped and dropped, `∂L/∂x_k` is handed down;
//! 4. **input stage** likewise; then the optimizer's step counter advances.
//!
//! Each stage's backward completes before its parameters change, and no stage's backward reads
//! another stage's parameters, so the gradients are those of the ordinary backward pass: the
//! weights equal the ordinary step's (tested for every method). Peak memory: weights +
//! optimizer state + the block inputs + one block's activations and gradients.
//!
//! **Gradient accumulation** ([`LayerwiseConfig::accumulation`] micro-batches per step) — what
//! galore-torch's per-layer mode cannot do: each micro-batch runs forward and backward; a block's
//! gradient is added to an [`Accumulated`] buffer — **projected** (`PᵀG`, r×n) for pipelines that
//! discard their residual (GaLore, Q-GaLore, DCT; exact while the projector is fixed, which the
//! optimizer ensures by refreshing only on a window's first micro-batch), full otherwise (AdamW,
//! Fira, FRUGAL) — and the last micro-batch steps it.
//!
//! **Clipping**: a global gradient norm needs every gradient at once, which layer-wise training
//! never holds. [`LayerwiseConfig::clip_block_norm`] clips each stage's gradient (of each
//! micro-batch) to a norm, computed on the device.
//!
//! **Not supported** (clear errors before the first step): FRUGAL's blockwise mode (it selects
//! among all targets of a whole step); parameters outside every stage or in two stages. One
//! device. Under [`NonFinitePolicy::SkipStep`](crate::NonFinitePolicy) a non-finite gradient skips
//! that stage's update only (the stages above were already updated); under `Error` the step stops
//! with the error, the stages above updated.

use burn::config::Config;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ember_kernels::EmberBackend;
use hashbrown::{HashMap, HashSet};

use crate::error::EmberError;
use crate::optimizer::{Accumulated, EmberOptimizer};
use crate::qlinear::quantized_grads;

/// A part of a [`BlockModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// From the batch to the first block's input (the embedding).
    Input,
    /// Block `k` (0-based, from the input side).
    Block(usize),
    /// From the last block's output to the loss (final norm, LM head, loss).
    Output,
}

/// A model that runs as input stage → blocks → output stage (a decoder-only transformer).
///
/// Implemented for a module generic over the backend, so that the same code runs the forward
/// pass without autodiff (on the inner backend) and the recomputation with it. `Batch` is data
/// both sides can read (e.g. token ids on the host).
pub trait BlockModel<B: Backend>: Module<B> {
    /// One (micro-)batch.
    type Batch;

    /// Number of blocks.
    fn num_blocks(&self) -> usize;

    /// The input stage: the first block's input (`[batch, seq, hidden]`).
    fn input(&self, batch: &Self::Batch) -> Tensor<B, 3>;

    /// Block `k`.
    fn block(&self, k: usize, x: Tensor<B, 3>) -> Tensor<B, 3>;

    /// The output stage and the loss, from the last block's output.
    fn output_loss(&self, x: Tensor<B, 3>, batch: &Self::Batch) -> Tensor<B, 1>;

    /// Visits the parameters of one stage (every parameter belongs to exactly one).
    fn visit_stage<V: ModuleVisitor<B>>(&self, stage: Stage, visitor: &mut V);
}

/// What a [`LayerwiseTrainer`] tells its observer ([`LayerwiseTrainer::set_observer`]), in the
/// order it happens: where a step's memory goes, stage by stage (`ember-bench measure
/// --stage-trace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageEvent {
    /// The forward pass without the graph ended (the block inputs are held).
    Forward,
    /// A stage's backward ended (its gradients are held).
    Backward(Stage),
    /// A stage's gradients were stepped (or accumulated) and dropped.
    Updated(Stage),
}

type Observer = Box<dyn FnMut(StageEvent) + Send>;

/// Options of the [`LayerwiseTrainer`].
#[derive(Config, Debug)]
pub struct LayerwiseConfig {
    /// Micro-batches per optimizer step (1: no accumulation).
    #[config(default = 1)]
    pub accumulation: usize,
    /// Clip each stage's gradient (per micro-batch) to this ℓ₂ norm (`None`: no clipping). A
    /// global norm is not available layer-wise.
    #[config(default = "None")]
    pub clip_block_norm: Option<f64>,
    /// Return the allocator's free pages to the device after the output stage's update, after
    /// the last block's and after the input stage's: the output and input stages (LM head,
    /// embedding: vocabulary × hidden) need temporaries of sizes no block uses, and the blocks'
    /// pages would otherwise stay reserved under the input stage's (measured on the H100,
    /// LLaMA-7B: the pools held 3.5 GiB above the live tensors at the input stage's update).
    /// Three `Backend::memory_cleanup` per micro-batch; a no-op on the CPU.
    #[config(default = true)]
    pub release_stage_memory: bool,
}

/// Trains a [`BlockModel`] layer by layer with an Ember optimizer (see the [module docs](self)).
pub struct LayerwiseTrainer<M, B: AutodiffBackend> {
    optim: EmberOptimizer<M, B>,
    config: LayerwiseConfig,
    /// Parameter ids of each stage, in backward order (output, blocks from the top, input).
    stages: Vec<(Stage, Vec<ParamId>)>,
    observer: Option<Observer>,
}

#[derive(Default)]
struct Ids {
    ids: Vec<ParamId>,
    path: Vec<String>,
    paths: HashMap<ParamId, String>,
}

impl<B: Backend> ModuleVisitor<B> for Ids {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.ids.push(param.id);
        self.paths.insert(param.id, self.path.join("."));
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        self.ids.push(param.id);
        self.paths.insert(param.id, self.path.join("."));
    }
}

/// Sum of squares of a stage's gradients, then their scaling: per-stage clipping on the device.
struct ClipNorm<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
    scale: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ClipNorm<'_, B> {
    fn handle<const D: usize>(&mut self, id: ParamId) {
        if let Some(scale) = &self.scale {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(id) {
                let s = scale.clone().cast(g.dtype()).reshape([1; D]);
                self.grads.register::<B::InnerBackend, D>(id, g * s);
            }
        } else if let Some(g) = self.grads.get::<B::InnerBackend, D>(id) {
            let sq = ember_kernels::portable::fixed_order_sum(
                g.cast(burn::tensor::DType::F32).powi_scalar(2),
            );
            self.sum = Some(match self.sum.take() {
                Some(s) => s + sq,
                None => sq,
            });
        }
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ClipNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.handle::<D>(param.id);
    }
}

impl<M, B> LayerwiseTrainer<M, B>
where
    B: AutodiffBackend,
    B::InnerBackend: EmberBackend,
    M: AutodiffModule<B> + BlockModel<B>,
    M::InnerModule: BlockModel<B::InnerBackend, Batch = M::Batch>,
{
    /// A trainer stepping `optim` (checked against the model at [`check`](Self::check) or the
    /// first [`step`](Self::step)).
    pub fn new(optim: EmberOptimizer<M, B>, config: LayerwiseConfig) -> Self {
        Self {
            optim,
            config,
            stages: Vec::new(),
            observer: None,
        }
    }

    /// Calls `f` at each [`StageEvent`] of every step (after the stage's work was enqueued; a
    /// device observer synchronizes itself if it reads device memory).
    pub fn set_observer(&mut self, f: impl FnMut(StageEvent) + Send + 'static) {
        self.observer = Some(Box::new(f));
    }

    fn notify(&mut self, event: StageEvent) {
        if let Some(f) = self.observer.as_mut() {
            f(event);
        }
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &EmberOptimizer<M, B> {
        &self.optim
    }

    /// The optimizer, mutable (e.g. to load a record).
    pub fn optimizer_mut(&mut self) -> &mut EmberOptimizer<M, B> {
        &mut self.optim
    }

    /// Gives the optimizer back.
    pub fn into_optimizer(self) -> EmberOptimizer<M, B> {
        self.optim
    }

    /// Checks that layer-wise training can run `model` with this optimizer: every parameter in
    /// exactly one stage, an optimizer mode that can step part by part, at least one
    /// micro-batch. Called by the first [`step`](Self::step).
    pub fn check(&mut self, model: &M) -> Result<(), EmberError> {
        let bad = EmberError::InvalidConfig;
        if self.config.accumulation == 0 {
            return Err(bad(
                "layer-wise accumulation must be at least 1 micro-batch".into(),
            ));
        }
        if let Some(c) = self.config.clip_block_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(bad(format!("clip_block_norm = {c} must be positive")));
            }
        }
        if self.optim.is_blockwise() {
            return Err(bad(
                "FRUGAL's blockwise mode selects its active parameters among all targets of a \
                 whole step: it cannot run layer-wise (use a projection kind instead)"
                    .into(),
            ));
        }
        let mut all = Ids::default();
        model.visit(&mut all);
        let mut owner: HashMap<ParamId, Stage> = HashMap::new();
        let mut stages = vec![(Stage::Output, Vec::new())];
        for k in (0..model.num_blocks()).rev() {
            stages.push((Stage::Block(k), Vec::new()));
        }
        stages.push((Stage::Input, Vec::new()));
        for (stage, ids) in &mut stages {
            let mut v = Ids::default();
            model.visit_stage(*stage, &mut v);
            for id in v.ids {
                if let Some(other) = owner.insert(id, *stage) {
                    return Err(bad(format!(
                        "parameter `{}` belongs to two stages ({other:?} and {stage:?}): \
                         layer-wise training updates each stage once (tied weights are not \
                         supported)",
                        all.paths
                            .get(&id)
                            .cloned()
                            .unwrap_or_else(|| id.to_string())
                    )));
                }
                ids.push(id);
            }
        }
        let outside: Vec<String> = all
            .ids
            .iter()
            .filter(|id| !owner.contains_key(*id))
            .map(|id| all.paths[id].clone())
            .collect();
        if !outside.is_empty() {
            return Err(bad(format!(
                "the model's stages do not cover these parameters: {} (BlockModel::visit_stage \
                 must visit every parameter once)",
                outside.join(", ")
            )));
        }
        let known: HashSet<ParamId> = all.ids.into_iter().collect();
        if let Some(id) = owner.keys().find(|id| !known.contains(*id)) {
            return Err(bad(format!(
                "a stage visits parameter {id}, which is not part of the model"
            )));
        }
        self.stages = stages;
        Ok(())
    }

    /// One optimizer step at learning rate `lr` over `batches` (the micro-batches; exactly
    /// [`LayerwiseConfig::accumulation`] of them). Returns the updated model and the mean loss
    /// of the micro-batches (on the device: reading it is the caller's choice).
    pub fn step(
        &mut self,
        lr: f64,
        model: M,
        batches: &[M::Batch],
    ) -> Result<(M, Tensor<B::InnerBackend, 1>), EmberError> {
        if self.stages.is_empty() {
            self.check(&model)?;
        }
        if batches.len() != self.config.accumulation {
            return Err(EmberError::InvalidConfig(format!(
                "{} micro-batches given, the trainer accumulates {}",
                batches.len(),
                self.config.accumulation
            )));
        }
        let mut model = model;
        let mut acc = Accumulated::new();
        let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
        let last = batches.len() - 1;
        for (j, batch) in batches.iter().enumerate() {
            let (m, loss) =
                self.micro_batch(lr, model, batch, &mut acc, j == last, j > 0 || last > 0)?;
            model = m;
            loss_sum = Some(match loss_sum {
                Some(s) => s + loss,
                None => loss,
            });
        }
        self.optim.finish_step();
        let loss = loss_sum
            .expect("one micro-batch")
            .div_scalar(batches.len() as f64);
        Ok((model, loss))
    }

    /// Forward and backward of one micro-batch; each stage's gradient is stepped (`last`) or
    /// accumulated.
    fn micro_batch(
        &mut self,
        lr: f64,
        model: M,
        batch: &M::Batch,
        acc: &mut Accumulated<B::InnerBackend>,
        last: bool,
        accumulating: bool,
    ) -> Result<(M, Tensor<B::InnerBackend, 1>), EmberError> {
        // 1. forward without the graph, keeping each block's input
        let inner = model.valid();
        let blocks = inner.num_blocks();
        let mut inputs = Vec::with_capacity(blocks + 1);
        inputs.push(inner.input(batch));
        for k in 0..blocks {
            let x = inner.block(k, inputs[k].clone());
            inputs.push(x);
        }
        drop(inner);
        self.notify(StageEvent::Forward);

        // 2. output stage
        let mut model = model;
        let x = Tensor::<B, 3>::from_inner(inputs.pop().expect("output input")).require_grad();
        let loss = model.output_loss(x.clone(), batch);
        let loss_value = loss.clone().inner();
        let mut grads = loss.backward();
        let mut upstream = x.grad_remove(&mut grads);
        let stage_grads = quantized_grads(grads, &model);
        self.notify(StageEvent::Backward(Stage::Output));
        model = self.apply(lr, model, 0, stage_grads, acc, last, accumulating)?;
        self.notify(StageEvent::Updated(Stage::Output));
        let device = loss_value.device();
        if self.config.release_stage_memory {
            B::memory_cleanup(&device);
        }

        // 3. blocks from the top
        for k in (0..blocks).rev() {
            let dy = upstream.take().ok_or_else(|| {
                EmberError::Internal(format!("no gradient reached the output of block {k}"))
            })?;
            let x = Tensor::<B, 3>::from_inner(inputs.pop().expect("block input")).require_grad();
            let y = model.block(k, x.clone());
            let surrogate = (y * Tensor::<B, 3>::from_inner(dy)).sum();
            let mut grads = surrogate.backward();
            upstream = x.grad_remove(&mut grads);
            let stage_grads = quantized_grads(grads, &model);
            self.notify(StageEvent::Backward(Stage::Block(k)));
            model = self.apply(lr, model, blocks - k, stage_grads, acc, last, accumulating)?;
            self.notify(StageEvent::Updated(Stage::Block(k)));
        }

        if self.config.release_stage_memory {
            B::memory_cleanup(&device);
        }

        // 4. input stage
        if let Some(dx) = upstream {
            let e = model.input(batch);
            let surrogate = (e * Tensor::<B, 3>::from_inner(dx)).sum();
            let stage_grads = quantized_grads(surrogate.backward(), &model);
            self.notify(StageEvent::Backward(Stage::Input));
            model = self.apply(lr, model, blocks + 1, stage_grads, acc, last, accumulating)?;
            self.notify(StageEvent::Updated(Stage::Input));
            if self.config.release_stage_memory {
                B::memory_cleanup(&device);
            }
        }
        Ok((model, loss_value))
    }

    /// Clips (if configured), then steps or accumulates stage `s`'s gradients.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        lr: f64,
        model: M,
        s: usize,
        mut grads: GradientsParams,
        acc: &mut Accumulated<B::InnerBackend>,
        last: bool,
        accumulating: bool,
    ) -> Result<M, EmberError> {
        let (stage, ids) = self.stages[s].clone();
        if let Some(max) = self.config.clip_block_norm {
            let mut clip = ClipNorm::<B> {
                grads: &mut grads,
                sum: None,
                scale: None,
            };
            model.visit_stage(stage, &mut clip);
            if let Some(sum) = clip.sum.take() {
                // min(1, max / (‖g‖ + 1e-6)), on the device
                clip.scale = Some(
                    sum.sqrt()
                        .add_scalar(1e-6)
                        .recip()
                        .mul_scalar(max)
                        .clamp_max(1.0),
                );
                model.visit_stage(stage, &mut clip);
            }
        }
        if !accumulating {
            return self.optim.try_step_part(lr, model, grads);
        }
        self.optim.try_accumulate(&model, grads, acc)?;
        if !last {
            return Ok(model);
        }
        let part = acc.take(&ids);
        self.optim.try_step_accumulated(lr, model, part, false)
    }
}
