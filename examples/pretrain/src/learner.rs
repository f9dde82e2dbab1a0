//! Training through burn-train's `Learner` (one device or several).

use std::path::Path;
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::Dataset;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::LossMetric;
use burn::train::{ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining};

use crate::*;

/// burn-train renderer that prints one progress line every `every` steps (burn's plain CLI
/// renderer prints every item), with the seconds since `start` (the host's clock when the line is
/// printed: the host runs at most CubeCL's queue ahead of the device).
pub struct QuietRenderer {
    /// Steps between lines (0: silent).
    pub every: usize,
    /// When the run started.
    pub start: Instant,
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
                    "epoch {}/{} step {i} ({:.2} s)",
                    item.global_progress.items_processed,
                    item.global_progress.items_total,
                    self.start.elapsed().as_secs_f64()
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
pub fn evaluate<B: ember_llama::ModelOps>(
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

/// Trains `run` on `corpus` through burn-train's `Learner` with autodiff backend `B` on
/// `devices` (the first is the main one).
pub fn train_learner<B: AutodiffBackend + ember_llama::ModelOps>(
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
    if run.resume_epoch.is_some() && run.weights()? != burn::tensor::DType::F32 {
        return Err(
            "resuming bf16 weights through burn-train's Learner would restore them as f32 \
             (its checkpoints use burn's full-precision settings); resume with --layerwise, \
             whose loop restores the run's dtype"
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
    let (model, initial) = {
        let _guard = crate::run::INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(&main, run.seed);
        let llama = run.init_model::<B>(&main)?;
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
        .renderer(QuietRenderer {
            every: 50,
            start: Instant::now(),
        })
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
