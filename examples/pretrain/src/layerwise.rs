//! Training layer by layer (`ember_core::layerwise`): each block's parameters are updated during
//! the backward pass, so one block's gradients exist at a time. A loop of its own (burn-train's
//! `Learner` computes every gradient before the optimizer sees any): the same data order,
//! schedule, per-epoch validation and checkpoints (model and optimizer records per epoch) as
//! the `Learner` path, on one device.

use std::path::Path;
use std::time::Instant;

use burn::data::dataset::Dataset;
use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use ember_core::{LayerwiseConfig, LayerwiseTrainer};
use ember_llama::{Llama, Tokens};

use crate::data::{Corpus, Windows};
use crate::report::weights_hash;
use crate::run::{Run, Summary};
use crate::schedule::WarmupCosine;

/// `count` windows from `start` as a token batch (`[count, seq + 1]` bytes).
fn tokens(windows: &Windows, start: usize, count: usize) -> Tokens {
    let items: Vec<Vec<u8>> = (start..start + count)
        .filter_map(|i| windows.get(i))
        .collect();
    let seq = items[0].len();
    Tokens {
        ids: items.iter().flatten().map(|&b| b as i32).collect(),
        batch: items.len(),
        seq,
    }
}

/// Mean validation loss of `model` over `valid` (batches of `batch`).
pub fn evaluate_llama<B: ember_llama::ModelOps>(
    model: &Llama<B>,
    valid: &Windows,
    batch: usize,
    device: &B::Device,
) -> f64 {
    let (mut total, mut n) = (0.0, 0);
    let mut start = 0;
    while start < valid.len() {
        let count = batch.min(valid.len() - start);
        let t = tokens(valid, start, count);
        let l: f64 = model.loss(t.tensor(device)).into_scalar().elem();
        total += l * count as f64;
        n += count;
        start += count;
    }
    total / n.max(1) as f64
}

fn checkpoint(dir: &Path, what: &str, epoch: usize) -> std::path::PathBuf {
    dir.join("layerwise").join(format!("{what}-{epoch}"))
}

/// Trains `run` layer by layer on the first of `devices` (exactly one).
pub fn train_layerwise<B: AutodiffBackend + ember_llama::ModelOps>(
    run: &Run,
    corpus: &Corpus,
    devices: Vec<B::Device>,
    gpu: bool,
) -> Result<Summary, String>
where
    B::InnerBackend: ember_core::EmberBackend,
{
    if devices.len() != 1 {
        return Err("layer-wise training runs on one device (--devices 1)".into());
    }
    run.shape.validate()?;
    if run.shape.vocab_size != 256 {
        return Err("the byte-level tokenizer needs vocab_size = 256".into());
    }
    if run.seq > run.shape.max_sequence_length {
        return Err(format!(
            "--seq {} exceeds the model's max_sequence_length {}",
            run.seq, run.shape.max_sequence_length
        ));
    }
    let device = devices[0].clone();
    let (train_w, valid_w) = corpus.windows(
        run.seq,
        run.steps_per_epoch * run.batch,
        run.valid_windows,
        run.seed,
    )?;
    let steps_per_epoch = train_w.len() / run.batch;
    if steps_per_epoch == 0 {
        return Err("fewer training windows than one batch".into());
    }
    let total_steps = steps_per_epoch * run.epochs;
    let dtype = run.weights()?;
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();

    let mut model = {
        let _guard = crate::run::INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(&device, run.seed);
        let model = run.init_model::<B>(&device)?;
        let _ = model.valid();
        model
    };
    let initial_valid_loss = evaluate_llama(&model.valid(), &valid_w, run.batch, &device);
    let mut trainer =
        LayerwiseTrainer::new(run.optimizer::<B, Llama<B>>()?, LayerwiseConfig::new());
    let first_epoch = run.resume_epoch.map_or(1, |e| e + 1);
    if let Some(e) = run.resume_epoch {
        let m = recorder
            .load(checkpoint(&run.dir, "model", e), &device)
            .map_err(|err| format!("loading the model of epoch {e}: {err}"))?;
        // burn's full-precision records widen bf16 weights: back to the run's dtype
        model = model.load_record(m).cast(dtype);
        let o = recorder
            .load(checkpoint(&run.dir, "optim", e), &device)
            .map_err(|err| format!("loading the optimizer of epoch {e}: {err}"))?;
        let optim = trainer.into_optimizer().load_record(o);
        trainer = LayerwiseTrainer::new(optim, LayerwiseConfig::new());
    }
    trainer.check(&model).map_err(|e| e.to_string())?;
    let schedule = WarmupCosine {
        lr: run.lr,
        warmup: run.warmup,
        total: total_steps,
        min_ratio: 0.1,
        step: 0,
    };
    let nvml = gpu.then(|| ember_core::kernels::nvml::Nvml::open(0));
    let mut peak: Option<usize> = None;
    let last_epoch = run.stop_after_epoch.unwrap_or(run.epochs).min(run.epochs);
    let (mut train_loss, mut valid_loss) = (vec![], vec![]);
    let start = Instant::now();
    for epoch in first_epoch..=last_epoch {
        for s in 0..steps_per_epoch {
            let k = (epoch - 1) * steps_per_epoch + s;
            let batch = tokens(&train_w, s * run.batch, run.batch);
            let (m, loss) = trainer
                .step(schedule.at(k + 1), model, &[batch])
                .map_err(|e| e.to_string())?;
            model = m;
            train_loss.push(loss.into_scalar().elem::<f64>());
            if let Some(used) = nvml.as_ref().and_then(|n| n.used()) {
                peak = Some(peak.unwrap_or(0).max(used));
            }
            if (k + 1).is_multiple_of(50) {
                eprintln!(
                    "epoch {epoch} step {} loss {:.4}",
                    k + 1,
                    train_loss.last().unwrap()
                );
            }
        }
        valid_loss.push(evaluate_llama(&model.valid(), &valid_w, run.batch, &device));
        std::fs::create_dir_all(run.dir.join("layerwise")).map_err(|e| e.to_string())?;
        recorder
            .record(
                model.clone().into_record(),
                checkpoint(&run.dir, "model", epoch),
            )
            .map_err(|e| e.to_string())?;
        recorder
            .record(
                Optimizer::<Llama<B>, B>::to_record(trainer.optimizer()),
                checkpoint(&run.dir, "optim", epoch),
            )
            .map_err(|e| e.to_string())?;
    }
    B::sync(&device).ok();
    let seconds = start.elapsed().as_secs_f64();
    let final_valid_loss = evaluate_llama(&model.valid(), &valid_w, run.batch, &device);
    let tokens =
        (last_epoch + 1).saturating_sub(first_epoch) * steps_per_epoch * run.batch * run.seq;
    Ok(Summary {
        run: run.clone(),
        params: run.shape.param_count(),
        train_loss,
        valid_loss,
        initial_valid_loss,
        final_valid_loss,
        weight_bytes: crate::report::param_bytes(&model),
        tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds,
        peak_device_bytes: peak,
        replica_checksums: vec![],
        final_checksum: weights_hash(&model),
    })
}
