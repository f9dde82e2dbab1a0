//! # Pretraining a small LLaMA with Ember optimizers through burn-train's `Learner`
//!
//! The pieces of the `pretrain` binary, public so that the tests drive the same code:
//! * [`Corpus`]: bytes of a text (tiny Shakespeare is embedded), split 90/10 into train and
//!   validation; the tokenizer is the identity on bytes (vocabulary 256).
//! * [`Windows`]: a burn `Dataset` of `seq + 1`-byte windows, in one seeded order (the same every
//!   epoch, so a resumed run sees the same batches as an uninterrupted one).
//! * [`LanguageModel`]: `ember_llama::Llama` (RMSNorm, rotary embeddings, SwiGLU, causal
//!   attention) with burn-train's `TrainStep`/`InferenceStep`.
//! * [`Run`] / [`train`]: builds the optimizer (`adamw|galore|qgalore|fira|frugal|dct`; the
//!   attention and MLP linears are the targets, the rest on the method's AdamW), a warm-up + cosine
//!   learning-rate schedule, and launches `SupervisedTraining` (one device or several, burn's
//!   multi-device strategy), with full-precision file checkpoints after every epoch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::Dataset;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::lr_scheduler::LrScheduler;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::LossMetric;
use burn::train::{
    ClassificationOutput, ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim,
    SupervisedTraining, TrainOutput, TrainStep,
};
use ember::recipe::{Method, Recipe};
use ember_core::EmberOptimizer;
use ember_llama::{Llama, LlamaShape};
use serde::{Deserialize, Serialize};

/// The embedded corpus (see `data/SOURCE.md`).
pub const TINY_SHAKESPEARE: &[u8] = include_bytes!("../data/tinyshakespeare.txt");

/// A byte-level corpus.
#[derive(Clone)]
pub struct Corpus {
    bytes: Arc<Vec<u8>>,
}

impl Corpus {
    /// The embedded tiny Shakespeare.
    pub fn embedded() -> Self {
        Self {
            bytes: Arc::new(TINY_SHAKESPEARE.to_vec()),
        }
    }

    /// A file's bytes.
    pub fn from_path(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Self {
            bytes: Arc::new(bytes),
        })
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `(train, valid)` windows of `seq + 1` bytes: train from the first 90%, valid from the last
    /// 10%; at most `max_train` / `max_valid` of each, in a seeded order.
    pub fn windows(
        &self,
        seq: usize,
        max_train: usize,
        max_valid: usize,
        seed: u64,
    ) -> Result<(Windows, Windows), String> {
        let split = self.bytes.len() * 9 / 10;
        let len = seq + 1;
        let train = Windows::new(self.bytes.clone(), 0..split, len, max_train, seed)?;
        let valid = Windows::new(
            self.bytes.clone(),
            split..self.bytes.len(),
            len,
            max_valid,
            seed,
        )?;
        Ok((train, valid))
    }
}

/// Non-overlapping windows of a byte range, in a seeded order (fixed across epochs).
#[derive(Clone)]
pub struct Windows {
    bytes: Arc<Vec<u8>>,
    starts: Vec<usize>,
    len: usize,
}

impl Windows {
    fn new(
        bytes: Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
        len: usize,
        max: usize,
        seed: u64,
    ) -> Result<Self, String> {
        let count = (range.end - range.start) / len;
        if count == 0 {
            return Err(format!(
                "the corpus split of {} bytes holds no window of {len} bytes; use a longer corpus \
                 or a shorter --seq",
                range.end - range.start
            ));
        }
        let mut rng = ember_core::rng::SplitMix64::new(seed, &[0x57494e]);
        let mut starts: Vec<usize> = rng
            .sample(count, count)
            .into_iter()
            .map(|i| range.start + i * len)
            .collect();
        starts.truncate(max.min(count));
        Ok(Self { bytes, starts, len })
    }
}

impl Dataset<Vec<u8>> for Windows {
    fn get(&self, index: usize) -> Option<Vec<u8>> {
        let s = *self.starts.get(index)?;
        Some(self.bytes[s..s + self.len].to_vec())
    }

    fn len(&self) -> usize {
        self.starts.len()
    }
}

/// A batch of token windows `[batch, seq + 1]`.
#[derive(Clone, Debug)]
pub struct TokenBatch<B: Backend> {
    /// Byte ids.
    pub tokens: Tensor<B, 2, Int>,
}

/// Bytes → token ids.
#[derive(Clone, Default)]
pub struct ByteBatcher;

impl<B: Backend> Batcher<B, Vec<u8>, TokenBatch<B>> for ByteBatcher {
    fn batch(&self, items: Vec<Vec<u8>>, device: &B::Device) -> TokenBatch<B> {
        let (n, t) = (items.len(), items[0].len());
        let ids: Vec<i32> = items.iter().flatten().map(|&b| b as i32).collect();
        TokenBatch {
            tokens: Tensor::from_data(TensorData::new(ids, [n, t]), device),
        }
    }
}

/// The LLaMA decoder as a burn-train model.
#[derive(Module, Debug)]
pub struct LanguageModel<B: Backend> {
    /// The decoder (targets live under `…attn…` and `…mlp…`).
    pub llama: Llama<B>,
    /// Which run this model belongs to (keys its telemetry; not part of the weights).
    pub run_tag: u64,
}

impl<B: Backend> LanguageModel<B> {
    /// Next-token cross-entropy with the logits and targets (for burn-train's metrics).
    pub fn forward_classification(&self, batch: TokenBatch<B>) -> ClassificationOutput<B> {
        let [b, t] = batch.tokens.dims();
        let logits = self
            .llama
            .forward(batch.tokens.clone().slice([0..b, 0..t - 1]));
        let v = logits.dims()[2];
        let logits = logits.reshape([b * (t - 1), v]);
        let targets = batch.tokens.slice([0..b, 1..t]).reshape([b * (t - 1)]);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), targets.clone());
        ClassificationOutput::new(loss, logits, targets)
    }
}

impl<B: AutodiffBackend> TrainStep for LanguageModel<B> {
    type Input = TokenBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: TokenBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        telemetry::on_step(self.run_tag, self);
        let out = self.forward_classification(batch);
        // `quantized_grads` = burn's `from_grads` plus the gradients of INT8 (`QLinear`) weights
        let grads = ember_core::quantized_grads(out.loss.backward(), self);
        TrainOutput { grads, item: out }
    }
}

impl<B: Backend> InferenceStep for LanguageModel<B> {
    type Input = TokenBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: TokenBatch<B>) -> ClassificationOutput<B> {
        self.forward_classification(batch)
    }
}

/// Linear warm-up to `lr` over `warmup` steps, then cosine decay to `lr·min_ratio` at `total`.
#[derive(Clone, Debug)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
    /// Final fraction of `lr`.
    pub min_ratio: f64,
    /// Steps taken.
    pub step: usize,
}

impl WarmupCosine {
    /// The rate of step `k` (1-based).
    pub fn at(&self, k: usize) -> f64 {
        if k <= self.warmup {
            return self.lr * k as f64 / self.warmup.max(1) as f64;
        }
        let p = ((k - self.warmup) as f64 / (self.total.saturating_sub(self.warmup)).max(1) as f64)
            .min(1.0);
        let c = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        self.lr * (self.min_ratio + (1.0 - self.min_ratio) * c)
    }
}

impl LrScheduler for WarmupCosine {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        self.step += 1;
        self.at(self.step)
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

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

    /// The optimizer, via `ember::recipe`: targets `attn` and `mlp`, the rest on the
    /// method's AdamW.
    pub fn optimizer<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
    ) -> Result<EmberOptimizer<M, B>, String> {
        Recipe::new(Method::parse(&self.optimizer)?)
            .with_rank(self.effective_rank())
            .with_density(self.density)
            .with_gap(self.gap)
            .with_scale(self.scale)
            .build()
    }
}

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

/// Bytes of every float and int parameter tensor of `module` (`numel × dtype size`).
pub fn param_bytes<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Bytes<B: Backend>(usize, std::marker::PhantomData<B>);
    impl<B: Backend> ModuleVisitor<B> for Bytes<B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            self.0 += t.shape().num_elements() * t.dtype().size();
        }
        fn visit_int<const D: usize>(&mut self, p: &Param<Tensor<B, D, Int>>) {
            let t = p.val();
            self.0 += t.shape().num_elements() * t.dtype().size();
        }
    }
    let mut v = Bytes::<B>(0, std::marker::PhantomData);
    module.visit(&mut v);
    v.0
}

/// A hash of the exact bits of every float and int parameter, in module order (FNV-1a over the values'
/// bytes, read back to the host): equal hashes mean bit-identical weights.
pub fn weights_hash<B: Backend, M: Module<B>>(module: &M) -> String {
    struct Hash<B: Backend> {
        h: u64,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: Backend> Hash<B> {
        fn bytes(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.h ^= b as u64;
                self.h = self.h.wrapping_mul(0x0000_0100_0000_01B3);
            }
        }
    }
    impl<B: Backend> ModuleVisitor<B> for Hash<B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.bytes(p.val().into_data().convert::<f32>().as_bytes());
        }

        fn visit_int<const D: usize>(&mut self, p: &Param<Tensor<B, D, Int>>) {
            self.bytes(p.val().into_data().convert::<i32>().as_bytes());
        }
    }
    let mut v = Hash::<B> {
        h: 0xcbf2_9ce4_8422_2325,
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
    format!("{:016x}", v.h)
}

/// Per-step hooks of the train step: peak device memory and replica checksums, kept per run
/// (runs in one process, e.g. parallel tests, do not mix).
pub mod telemetry {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Record {
        every: usize,
        /// Train steps seen per device (replicas sharing a device, e.g. two `flex` devices,
        /// are told apart by `devices_per_key`).
        steps: Vec<(String, usize)>,
        devices_per_key: usize,
        checksums: Vec<ReplicaChecksum>,
    }

    static NEXT: AtomicUsize = AtomicUsize::new(1);
    static RUNS: Mutex<Option<HashMap<u64, Record>>> = Mutex::new(None);
    static PEAK: AtomicUsize = AtomicUsize::new(0);
    static NVML: Mutex<Option<ember_core::kernels::nvml::Nvml>> = Mutex::new(None);

    /// Starts the records of a new run (opens NVML if `gpu`); returns its tag.
    pub fn reset(checksum_every: usize, gpu: bool, devices_per_key: usize) -> u64 {
        let tag = NEXT.fetch_add(1, Ordering::SeqCst) as u64;
        RUNS.lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(
                tag,
                Record {
                    every: checksum_every,
                    devices_per_key: devices_per_key.max(1),
                    ..Default::default()
                },
            );
        if gpu {
            PEAK.store(0, Ordering::SeqCst);
            *NVML.lock().unwrap() = Some(ember_core::kernels::nvml::Nvml::open(0));
        }
        tag
    }

    /// Called by every replica at every train step.
    pub fn on_step<B: Backend, M: Module<B>>(tag: u64, model: &M) {
        if let Some(nvml) = NVML.lock().unwrap().as_ref() {
            if let Some(used) = nvml.used() {
                PEAK.fetch_max(used, Ordering::SeqCst);
            }
        }
        let device = format!("{:?}", model.devices()[0]);
        let key = device.clone();
        let step = {
            let mut runs = RUNS.lock().unwrap();
            let Some(rec) = runs.as_mut().and_then(|r| r.get_mut(&tag)) else {
                return;
            };
            if rec.every == 0 {
                return;
            }
            let i = match rec.steps.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    rec.steps.push((key, 0));
                    rec.steps.len() - 1
                }
            };
            rec.steps[i].1 += 1;
            let step = (rec.steps[i].1 - 1) / rec.devices_per_key;
            if !step.is_multiple_of(rec.every) {
                return;
            }
            step
        };
        let c = weights_hash::<B, M>(model);
        if let Some(rec) = RUNS.lock().unwrap().as_mut().and_then(|r| r.get_mut(&tag)) {
            rec.checksums.push(ReplicaChecksum {
                device,
                step,
                checksum: c,
            });
        }
    }

    /// `(peak bytes, checksums sorted by step)` of run `tag` (its records are dropped).
    pub fn take(tag: u64) -> (Option<usize>, Vec<ReplicaChecksum>) {
        let peak = PEAK.load(Ordering::SeqCst);
        let rec = RUNS
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|r| r.remove(&tag))
            .unwrap_or_default();
        let mut c = rec.checksums;
        c.sort_by(|a, b| a.step.cmp(&b.step).then(a.device.cmp(&b.device)));
        ((peak > 0).then_some(peak), c)
    }
}

/// burn-train renderer that prints one progress line every `every` steps (burn's plain CLI
/// renderer prints every item).
pub struct QuietRenderer {
    /// Steps between lines (0: silent).
    pub every: usize,
}

impl burn::train::renderer::MetricsRendererTraining for QuietRenderer {
    fn update_train(&mut self, _state: burn::train::renderer::MetricState) {}

    fn update_valid(&mut self, _state: burn::train::renderer::MetricState) {}

    fn render_train(
        &mut self,
        item: burn::train::renderer::TrainingProgress,
        _indicators: Vec<burn::train::renderer::ProgressType>,
    ) {
        if let Some(i) = item.iteration {
            if self.every > 0 && i % self.every == 0 {
                eprintln!(
                    "epoch {}/{} step {i}",
                    item.global_progress.items_processed, item.global_progress.items_total
                );
            }
        }
    }

    fn render_valid(
        &mut self,
        _item: burn::train::renderer::TrainingProgress,
        _indicators: Vec<burn::train::renderer::ProgressType>,
    ) {
    }
}

impl burn::train::renderer::MetricsRendererEvaluation for QuietRenderer {
    fn update_test(
        &mut self,
        _name: burn::train::renderer::EvaluationName,
        _state: burn::train::renderer::MetricState,
    ) {
    }

    fn render_test(
        &mut self,
        _item: burn::train::renderer::EvaluationProgress,
        _indicators: Vec<burn::train::renderer::ProgressType>,
    ) {
    }
}

impl burn::train::renderer::MetricsRenderer for QuietRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, _definition: burn::train::metric::MetricDefinition) {}
}

/// Reads burn-train's per-item metric log (`<dir>/<split>/epoch-<e>/Loss.log`).
fn read_losses(dir: &Path, split: &str, epoch: usize) -> Vec<f64> {
    let path = dir
        .join(split)
        .join(format!("epoch-{epoch}"))
        .join("Loss.log");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return vec![];
    };
    text.lines()
        .filter_map(|l| {
            l.split(',')
                .next()
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .collect()
}

/// The epoch numbers of `<dir>/epoch-*`, ascending.
fn epoch_dirs(dir: &Path) -> Vec<usize> {
    let mut v: Vec<usize> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("epoch-")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Mean validation loss of `model` over `valid` (batches of `batch`).
pub fn evaluate<B: Backend>(
    model: &LanguageModel<B>,
    valid: &Windows,
    batch: usize,
    device: &B::Device,
) -> f64 {
    let mut total = 0.0;
    let mut n = 0;
    let items: Vec<Vec<u8>> = (0..valid.len()).filter_map(|i| valid.get(i)).collect();
    for chunk in items.chunks(batch) {
        let b: TokenBatch<B> = ByteBatcher.batch(chunk.to_vec(), device);
        let l: f64 = model.forward_classification(b).loss.into_scalar().elem();
        total += l * chunk.len() as f64;
        n += chunk.len();
    }
    total / n.max(1) as f64
}

/// Trains `run` on `corpus` with autodiff backend `B` on `devices` (the first is the main one).
pub fn train<B: AutodiffBackend>(
    run: &Run,
    corpus: &Corpus,
    devices: Vec<B::Device>,
    gpu: bool,
) -> Result<Summary, String>
where
    B::InnerBackend: ember_core::EmberBackend,
{
    if devices.is_empty() {
        return Err("no device".into());
    }
    run.shape.validate()?;
    if run.int8_weights && devices.len() > 1 {
        return Err(
            "--int8-weights with several devices is not supported: burn's multi-device \
                    strategy moves gradients by float parameter and would drop the INT8 weights' \
                    gradients"
                .into(),
        );
    }
    if run.shape.vocab_size != 256 {
        return Err("the byte-level tokenizer needs vocab_size = 256".into());
    }
    if run.seq > run.shape.max_sequence_length {
        return Err(format!(
            "--seq {} exceeds the model's max_sequence_length {}",
            run.seq, run.shape.max_sequence_length
        ));
    }
    let main = devices[0].clone();
    let per_step = run.batch * devices.len();
    let (train_w, valid_w) = corpus.windows(
        run.seq,
        run.steps_per_epoch * per_step,
        run.valid_windows,
        run.seed,
    )?;
    let steps_per_epoch = train_w.len() / per_step;
    if steps_per_epoch == 0 {
        return Err("fewer training windows than one batch per device".into());
    }
    let total_steps = steps_per_epoch * run.epochs;

    // replicas on one device (several `flex` "devices") share a counter
    let distinct = {
        let mut names: Vec<String> = devices.iter().map(|d| format!("{d:?}")).collect();
        names.sort();
        names.dedup();
        names.len()
    };
    let tag = telemetry::reset(run.checksum_every, gpu, devices.len() / distinct);
    // The backend's seeded generator is global, and burn initializes parameters lazily, at first
    // use: seeding and touching every parameter (`valid()`, in module order) happen under one
    // lock, so runs in one process (parallel tests) cannot draw from each other's stream.
    static INIT: Mutex<()> = Mutex::new(());
    let (model, initial) = {
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(&main, run.seed);
        let llama = run.shape.init::<B>(&main);
        let llama = if run.int8_weights {
            llama.into_int8(256)?
        } else {
            llama
        };
        let model = LanguageModel {
            llama,
            run_tag: tag,
        };
        let initial = model.valid();
        (model, initial)
    };
    let params = run.shape.param_count();
    let weight_bytes = param_bytes(&initial);
    let initial_valid_loss = evaluate(&initial, &valid_w, run.batch, &main);
    drop(initial);
    let optim = run.optimizer::<B, LanguageModel<B>>()?;
    let schedule = WarmupCosine {
        lr: run.lr,
        warmup: run.warmup,
        total: total_steps,
        min_ratio: 0.1,
        step: 0,
    };

    let train_loader = DataLoaderBuilder::new(ByteBatcher)
        .batch_size(run.batch)
        .build(train_w.clone());
    let valid_loader = DataLoaderBuilder::new(ByteBatcher)
        .batch_size(run.batch)
        .build(valid_w.clone());

    let mut training = SupervisedTraining::new(&run.dir, train_loader, valid_loader)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
        .with_application_logger(None)
        .renderer(QuietRenderer { every: 50 })
        .num_epochs(run.stop_after_epoch.unwrap_or(run.epochs).min(run.epochs));
    if let Some(e) = run.resume_epoch {
        training = training.checkpoint(e);
    }
    if devices.len() > 1 {
        training = training.with_training_strategy(
            ExecutionStrategy::multi(devices.clone(), MultiDeviceOptim::OptimMainDevice).into(),
        );
    }

    let start = Instant::now();
    let result = training.launch(Learner::new(model, optim, schedule));
    B::sync(&main).ok();
    let seconds = start.elapsed().as_secs_f64();
    let (peak, replica_checksums) = telemetry::take(tag);

    let first_epoch = run.resume_epoch.map_or(1, |e| e + 1);
    let last_epoch = run.stop_after_epoch.unwrap_or(run.epochs).min(run.epochs);
    let mut train_loss = vec![];
    let mut valid_loss = vec![];
    // burn-train 0.21 numbers a resumed launch's log directories from epoch 1 again (overwriting
    // the first launch's), so this launch's epochs are the last `k` directories, whichever way
    // they are numbered
    let k = (last_epoch + 1).saturating_sub(first_epoch);
    let logged = epoch_dirs(&run.dir.join("train"));
    for &e in &logged[logged.len().saturating_sub(k)..] {
        let t = read_losses(&run.dir, "train", e);
        // one entry per device batch: average the devices' batches of each step
        train_loss.extend(
            t.chunks(devices.len())
                .map(|c| c.iter().sum::<f64>() / c.len() as f64),
        );
        let v = read_losses(&run.dir, "valid", e);
        if !v.is_empty() {
            valid_loss.push(v.iter().sum::<f64>() / v.len() as f64);
        }
    }
    let trained = result.model;
    let inner_device = main.clone();
    let final_valid_loss = evaluate(&trained, &valid_w, run.batch, &inner_device);
    let final_checksum = weights_hash(&trained);
    let tokens =
        (last_epoch + 1).saturating_sub(first_epoch) * steps_per_epoch * per_step * run.seq;
    Ok(Summary {
        run: run.clone(),
        params,
        train_loss,
        valid_loss,
        initial_valid_loss,
        final_valid_loss,
        weight_bytes,
        tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds,
        peak_device_bytes: peak,
        replica_checksums,
        final_checksum,
    })
}

/// Loss-curve plot.
pub mod plot {
    use super::Summary;
    use plotters::prelude::*;
    use std::path::Path;

    /// Training loss (moving average over 20 steps) of every run, and each run's per-epoch
    /// validation loss as points, on one SVG chart.
    pub fn loss_curves(runs: &[Summary], path: &Path) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let smooth = |v: &[f64]| -> Vec<(f64, f64)> {
            (0..v.len())
                .map(|i| {
                    let lo = i.saturating_sub(19);
                    let w = &v[lo..=i];
                    ((i + 1) as f64, w.iter().sum::<f64>() / w.len() as f64)
                })
                .collect()
        };
        let steps = runs.iter().map(|r| r.train_loss.len()).max().unwrap_or(1) as f64;
        let curves: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| smooth(&r.train_loss)).collect();
        // y range: from the lowest point to the smoothed loss after the first 5% of steps
        let skip = (steps * 0.05) as usize;
        let lo = curves
            .iter()
            .flatten()
            .map(|p| p.1)
            .chain(runs.iter().flat_map(|r| r.valid_loss.iter().copied()))
            .fold(f64::INFINITY, f64::min);
        let hi = curves
            .iter()
            .filter_map(|c| c.get(skip).map(|p| p.1))
            .fold(f64::NEG_INFINITY, f64::max);
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Byte-level LLaMA on tiny Shakespeare: training loss (20-step mean) and validation loss (dots)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..steps, (lo * 0.97)..(hi * 1.02))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("cross-entropy (nats/byte)")
            .draw()
            .map_err(|e| err(&e))?;
        for (k, (r, c)) in runs.iter().zip(&curves).enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let mut label = match r.run.optimizer.as_str() {
                "adamw" => "adamw".to_string(),
                "frugal" => format!("frugal ρ={}", r.run.density),
                o => format!("{o} r={}", r.run.effective_rank()),
            };
            if r.run.int8_weights {
                label.push_str(" INT8 weights");
            }
            chart
                .draw_series(LineSeries::new(c.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            let per_epoch = r.train_loss.len() as f64 / r.valid_loss.len().max(1) as f64;
            chart
                .draw_series(
                    r.valid_loss.iter().enumerate().map(|(e, &v)| {
                        Circle::new(((e + 1) as f64 * per_epoch, v), 4, color.filled())
                    }),
                )
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}
