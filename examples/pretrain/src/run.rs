//! What a run depends on and what it produced.

use std::path::PathBuf;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ember::groups::{GroupSpec, GroupsConfig};
use ember::recipe::Method;
use ember_core::EmberOptimizer;
use ember_llama::LlamaShape;
use serde::{Deserialize, Serialize};

use crate::*;
use ember::core::StateDtype;

/// Everything a run depends on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// `adamw|galore|qgalore|fira|frugal|dct`.
    pub optimizer: String,
    /// Rank of the projected methods (0: hidden/4).
    pub rank: usize,
    /// FRUGAL's density ρ.
    pub density: f64,
    /// Steps between subspace refreshes.
    pub gap: usize,
    /// GaLore / Fira / Q-GaLore update scale α (`None`: the method's default, 0.25).
    #[serde(default)]
    pub scale: Option<f64>,
    /// Model shape.
    pub shape: LlamaShape,
    /// Sequences per batch (per device).
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Epochs.
    pub epochs: usize,
    /// Optimizer steps per epoch (limits the training windows).
    pub steps_per_epoch: usize,
    /// Validation windows.
    pub valid_windows: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Seed (model init, data order).
    pub seed: u64,
    /// Number of devices (data parallel through burn's multi-device strategy).
    pub devices: usize,
    /// Checkpoint/artifact directory.
    pub dir: PathBuf,
    /// Resume from this epoch's checkpoint.
    pub resume_epoch: Option<usize>,
    /// Stop after this epoch (an interrupted run: the schedule still spans `epochs`).
    pub stop_after_epoch: Option<usize>,
    /// Record the replicas' weight checksums every this many steps (0: never).
    pub checksum_every: usize,
    /// Store the attention and MLP weights in INT8 (`QLinear`, groups of 256), Q-GaLore's mode.
    #[serde(default)]
    pub int8_weights: bool,
    /// Weights dtype: `f32` or `bf16`.
    #[serde(default = "f32_name")]
    pub weights_dtype: String,
    /// Optimizer-state dtype: `f32`, `bf16` or `int8` (blockwise 8-bit moments).
    #[serde(default = "f32_name")]
    pub state_dtype: String,
    /// Layer-wise training (`ember_core::layerwise`): each block updated during the backward
    /// pass; one device.
    #[serde(default)]
    pub layerwise: bool,
    /// Decoupled weight decay λ of the projected parameters and the LM head; norms, other 1-D
    /// parameters and the embedding get none (the usual LLM recipe).
    #[serde(default)]
    pub weight_decay: f64,
    /// Refresh the projectors with the exact SVD on the host on every backend (default: the
    /// device projector on GPU backends).
    #[serde(default)]
    pub host_svd: bool,
    /// `NonFinitePolicy::SkipStepOnDevice`: the NaN/Inf check stays on the device.
    #[serde(default)]
    pub check_on_device: bool,
}

fn f32_name() -> String {
    "f32".into()
}

impl Run {
    /// A tiny run for tests on the CPU.
    pub fn tiny(optimizer: &str, dir: PathBuf) -> Self {
        Self {
            optimizer: optimizer.into(),
            rank: 0,
            density: 0.25,
            gap: 4,
            scale: None,
            shape: LlamaShape {
                name: "pico".into(),
                hidden_size: 32,
                intermediate_size: 64,
                num_attention_heads: 2,
                num_hidden_layers: 2,
                vocab_size: 256,
                max_sequence_length: 64,
            },
            batch: 4,
            seq: 32,
            epochs: 2,
            steps_per_epoch: 6,
            valid_windows: 8,
            lr: 3e-3,
            warmup: 2,
            seed: 1,
            devices: 1,
            dir,
            resume_epoch: None,
            stop_after_epoch: None,
            checksum_every: 0,
            int8_weights: false,
            weights_dtype: f32_name(),
            state_dtype: f32_name(),
            layerwise: false,
            weight_decay: 0.0,
            host_svd: false,
            check_on_device: false,
        }
    }

    /// The rank used (hidden/4 when 0).
    pub fn effective_rank(&self) -> usize {
        if self.rank == 0 {
            self.shape.hidden_size / 4
        } else {
            self.rank
        }
    }

    /// The optimizer's parameter groups (`ember::groups`), first match wins:
    ///
    /// | group | parameters | what |
    /// |---|---|---|
    /// | `no-decay` | 1-D (norm gains), the embedding | the method's AdamW, λ = 0 |
    /// | `projected` | `attn`, `mlp` | the method (rank, gap, density, α), λ = `weight_decay` |
    /// | default | the rest (LM head) | the method's AdamW, λ = `weight_decay` |
    pub fn groups(&self) -> Result<GroupsConfig, String> {
        let method = Method::parse(&self.optimizer)?;
        let state = match self.state_dtype.as_str() {
            "f32" => StateDtype::F32,
            "bf16" => StateDtype::Bf16,
            "int8" => StateDtype::Int8Blockwise,
            other => return Err(format!("unknown state dtype `{other}`: f32, bf16 or int8")),
        };
        let mut projected = GroupSpec::new("projected", method, &["attn", "mlp"])
            .with_state_dtype(state)
            .with_weight_decay(self.weight_decay);
        if method.has_rank() {
            projected = projected.with_rank(self.effective_rank());
        }
        if method == Method::Frugal {
            projected = projected.with_density(self.density);
        }
        if method != Method::Adamw {
            projected = projected.with_update_proj_gap(self.gap);
        }
        if let Some(a) = self.scale {
            projected = projected.with_scale(a);
        }
        if self.host_svd && method != Method::Adamw {
            projected.host_svd = Some(true);
        }
        let dense = |name: &str, params: &[&str], wd: f64| {
            GroupSpec::new(name, method, params)
                .with_dense(true)
                .with_state_dtype(state)
                .with_weight_decay(wd)
        };
        Ok(GroupsConfig::new()
            .with_group(dense("no-decay", &[":1d", "embed"], 0.0))
            .with_group(projected)
            .with_default(dense("default", &[], self.weight_decay)))
    }

    /// The optimizer of [`groups`](Self::groups).
    pub fn optimizer<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
    ) -> Result<EmberOptimizer<M, B>, String> {
        let policy = if self.check_on_device {
            ember::core::NonFinitePolicy::SkipStepOnDevice
        } else {
            ember::core::NonFinitePolicy::Error
        };
        // `EMBER_EARLY_PROJECTION=off`: Fira's and FRUGAL's `R` inside each update, after the
        // NaN/Inf check (`EmberOptimizer::with_early_projection`; for comparisons)
        let early = !matches!(
            std::env::var("EMBER_EARLY_PROJECTION").as_deref(),
            Ok("off") | Ok("0")
        );
        // `EMBER_DEFERRED_CHECK=off`: the host check's read-back before the updates are queued
        // (`EmberOptimizer::with_deferred_check`; for comparisons)
        let mut optim = self
            .groups()?
            .build_with(policy)?
            .with_early_projection(early);
        if matches!(
            std::env::var("EMBER_DEFERRED_CHECK").as_deref(),
            Ok("off") | Ok("0")
        ) {
            optim = optim.with_deferred_check(false);
        }
        Ok(optim)
    }

    /// The weights' dtype.
    pub fn weights(&self) -> Result<burn::tensor::DType, String> {
        match self.weights_dtype.as_str() {
            "f32" => Ok(burn::tensor::DType::F32),
            "bf16" => Ok(burn::tensor::DType::BF16),
            other => Err(format!("unknown weights dtype `{other}`: f32 or bf16")),
        }
    }

    /// The initial model: in the run's dtype, INT8 projections if asked (seed the backend first).
    pub fn init_model<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<ember_llama::Llama<B>, String> {
        if self.int8_weights {
            self.shape.init_int8::<B>(device, self.weights()?, 256)
        } else {
            Ok(self.shape.init_with::<B>(device, self.weights()?))
        }
    }
}

/// The backend's seeded generator is global, and burn initializes parameters lazily, at first
/// use: seeding and touching every parameter happen under this lock, so runs in one process
/// (parallel tests) cannot draw from each other's stream.
pub(crate) static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The run's settings.
    pub run: Run,
    /// Parameters of the model.
    pub params: usize,
    /// Training loss of every optimizer step of this launch (mean over the devices' batches of
    /// that step), in order, from burn-train's metric logs.
    pub train_loss: Vec<f64>,
    /// Validation loss after every epoch of this launch (burn-train's logs).
    pub valid_loss: Vec<f64>,
    /// Validation loss of the initial model (all validation windows).
    pub initial_valid_loss: f64,
    /// Validation loss of the final model over all validation windows, computed after training.
    pub final_valid_loss: f64,
    /// Bytes of the model's parameter tensors (float and int), `numel × dtype size`.
    #[serde(default)]
    pub weight_bytes: usize,
    /// Training tokens processed in this launch.
    pub tokens: usize,
    /// Wall-clock seconds of the `Learner` launch (training, per-epoch validation, checkpoints).
    pub seconds: f64,
    /// `tokens / seconds`.
    pub tokens_per_second: f64,
    /// Peak device memory in use (NVML, GPU 0), sampled at every train step.
    pub peak_device_bytes: Option<usize>,
    /// Weight checksums of every replica (device) at every `checksum_every`-th step.
    pub replica_checksums: Vec<ReplicaChecksum>,
    /// [`weights_hash`] of the final weights (older summaries: a float checksum, read as text).
    #[serde(deserialize_with = "text_or_number")]
    pub final_checksum: String,
}

/// A replica's weight hash at one of its train steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaChecksum {
    /// The device (Debug form).
    pub device: String,
    /// The optimizer step (0-based, counted per replica over the whole launch).
    pub step: usize,
    /// [`weights_hash`] of the weights that replica computed that step's gradient with.
    #[serde(deserialize_with = "text_or_number")]
    pub checksum: String,
}

fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        v => v.to_string(),
    })
}

/// Trains `run` on `corpus` with autodiff backend `B` on `devices` (the first is the main one):
/// through burn-train's `Learner` ([`crate::learner`]), or layer by layer
/// ([`crate::layerwise`], one device) with `run.layerwise`.
pub fn train<B: AutodiffBackend + ember_llama::ModelOps>(
    run: &Run,
    corpus: &Corpus,
    devices: Vec<B::Device>,
    gpu: bool,
) -> Result<Summary, String>
where
    B::InnerBackend: ember_core::EmberBackend,
{
    if run.layerwise {
        crate::layerwise::train_layerwise::<B>(run, corpus, devices, gpu)
    } else {
        crate::learner::train_learner::<B>(run, corpus, devices, gpu)
    }
}
