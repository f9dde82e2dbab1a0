//! `pretrain`: train a small byte-level LLaMA with an Ember optimizer through burn-train's
//! `Learner` (or layer by layer, `--layerwise`), or report several runs (table + loss-curve SVG).
//!
//! ```text
//! pretrain train --optimizer galore --device flex --out runs/galore
//! pretrain report runs/* --plot docs/img/loss.svg
//! ```

use std::path::PathBuf;

#[cfg(feature = "profile")]
mod profile;

use clap::{Parser, Subcommand, ValueEnum};
use ember_llama::LlamaShape;
use ember_pretrain::{train, Corpus, Run, Summary};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Device {
    Flex,
    Wgpu,
    Cuda,
}

#[derive(Subcommand)]
enum Command {
    /// Train one model with one optimizer.
    Train(Box<TrainArgs>),
    /// Compare finished runs: a markdown table and a loss-curve plot.
    Report {
        /// Run directories (each with a `summary.json`).
        dirs: Vec<PathBuf>,
        /// Write the loss curves of all runs to this SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

#[derive(Parser)]
struct TrainArgs {
    /// adamw | galore | qgalore | fira | frugal | dct.
    #[arg(long, default_value = "galore")]
    optimizer: String,
    /// Rank of the projected methods (default hidden/4).
    #[arg(long, default_value_t = 0)]
    rank: usize,
    /// FRUGAL's density ρ.
    #[arg(long, default_value_t = 0.25)]
    density: f64,
    /// Steps between subspace refreshes.
    #[arg(long, default_value_t = 200)]
    gap: usize,
    /// Update scale α of GaLore, Fira and Q-GaLore (default: the method's, 0.25).
    #[arg(long)]
    scale: Option<f64>,
    /// Model: `pico` (tests), `small` (25.6M parameters), `medium` (51M).
    #[arg(long, default_value = "small")]
    model: String,
    #[arg(long, value_enum, default_value = "flex")]
    device: Device,
    /// Devices for data-parallel training (burn's multi-device strategy).
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Sequences per batch and device.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Optimizer steps per epoch.
    #[arg(long, default_value_t = 100)]
    steps_per_epoch: usize,
    /// Validation windows.
    #[arg(long, default_value_t = 256)]
    valid_windows: usize,
    /// Peak learning rate (warm-up, then cosine to 10%).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 40)]
    warmup: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Text to train on (default: the embedded tiny Shakespeare).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Directory for checkpoints, logs and `summary.json`.
    #[arg(long, default_value = "runs/pretrain")]
    out: PathBuf,
    /// Resume from the checkpoint of this epoch in `--out`.
    #[arg(long)]
    resume_epoch: Option<usize>,
    /// Stop after this epoch (the learning-rate schedule still spans --epochs).
    #[arg(long)]
    stop_after_epoch: Option<usize>,
    /// Store the attention and MLP weights in INT8 (QLinear, groups of 256; Q-GaLore's mode).
    #[arg(long)]
    int8_weights: bool,
    /// Weights dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    weights_dtype: String,
    /// Optimizer-state dtype: f32, bf16 or int8 (blockwise 8-bit moments).
    #[arg(long, default_value = "f32")]
    state_dtype: String,
    /// Layer-wise training: each block updated during the backward pass, one block's gradients
    /// at a time (one device; its own loop instead of burn-train's Learner).
    #[arg(long)]
    layerwise: bool,
    /// Decoupled weight decay of the projected parameters and the LM head (norms, 1-D
    /// parameters and the embedding: none).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Record every replica's weight checksum every N steps (0: off).
    #[arg(long, default_value_t = 0)]
    checksum_every: usize,
    /// Refresh the projectors with the exact SVD on the host (default on GPU backends: the
    /// device projector).
    #[arg(long)]
    host_svd: bool,
    /// Keep the NaN/Inf check of the gradients on the device (`NonFinitePolicy::SkipStepOnDevice`:
    /// no read-back per step) instead of reading its flags back every step.
    #[arg(long)]
    check_on_device: bool,
}

fn shape(name: &str) -> Result<LlamaShape, String> {
    let s = |h, i, heads, layers| LlamaShape {
        name: name.into(),
        hidden_size: h,
        intermediate_size: i,
        num_attention_heads: heads,
        num_hidden_layers: layers,
        vocab_size: 256,
        max_sequence_length: 1024,
    };
    match name {
        "pico" => Ok(s(32, 64, 2, 2)),
        "small" => Ok(s(512, 1376, 8, 8)),
        "medium" => Ok(s(640, 1728, 10, 10)),
        _ => Err(format!("unknown --model {name}: pico | small | medium")),
    }
}

fn run_train(a: TrainArgs) -> Result<(), String> {
    let corpus = match &a.corpus {
        Some(p) => Corpus::from_path(p)?,
        None => Corpus::embedded(),
    };
    let run = Run {
        optimizer: a.optimizer.clone(),
        rank: a.rank,
        density: a.density,
        gap: a.gap,
        scale: a.scale,
        shape: shape(&a.model)?,
        batch: a.batch,
        seq: a.seq,
        epochs: a.epochs,
        steps_per_epoch: a.steps_per_epoch,
        valid_windows: a.valid_windows,
        lr: a.lr,
        warmup: a.warmup,
        seed: a.seed,
        devices: a.devices,
        dir: a.out.clone(),
        resume_epoch: a.resume_epoch,
        stop_after_epoch: a.stop_after_epoch,
        checksum_every: a.checksum_every,
        int8_weights: a.int8_weights,
        weights_dtype: a.weights_dtype.clone(),
        state_dtype: a.state_dtype.clone(),
        layerwise: a.layerwise,
        weight_decay: a.weight_decay,
        host_svd: a.host_svd,
        check_on_device: a.check_on_device,
    };
    if a.devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    eprintln!(
        "pretrain: {} on {:?}×{}, model {} ({} parameters), corpus {} bytes",
        run.optimizer,
        a.device,
        a.devices,
        run.shape.name,
        run.shape.param_count(),
        corpus.len()
    );
    let summary: Summary = match a.device {
        Device::Flex => {
            type B = burn::backend::Autodiff<burn::backend::Flex>;
            let devices = vec![Default::default(); a.devices];
            train::<B>(&run, &corpus, devices, false)?
        }
        #[cfg(feature = "wgpu")]
        Device::Wgpu => {
            type B = burn::backend::Autodiff<burn::backend::Wgpu>;
            let devices = (0..a.devices)
                .map(burn::backend::wgpu::WgpuDevice::DiscreteGpu)
                .collect();
            train::<B>(&run, &corpus, devices, false)?
        }
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            // burn's CUDA backend without its operation fusion, named explicitly: a build that
            // unifies burn's `fusion` feature in (e.g. together with `ember-bench/cuda-fusion`)
            // would otherwise turn `burn::backend::Cuda` into `Fusion<…>`, a different backend
            // (on which this model's first step failed to compile a fused kernel on the H100:
            // "Invalid vector size. Got 16 which should not be >8", 2026-11-24)
            type B = burn::backend::Autodiff<
                burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>,
            >;
            let devices = (0..a.devices)
                .map(burn::backend::cuda::CudaDevice::new)
                .collect();
            let summary = train::<B>(&run, &corpus, devices, true)?;
            // burn-train's Learner holds its model while the optimizer steps on a clone, so each
            // weight's update GEMM writes a fresh buffer (a copy updated in place, or cuBLASLt's
            // out-of-place GEMM); the other two are zero in an ordinary run (the fallback is
            // `EMBER_HELD_UPDATE=fallback`, a copied gradient is Fira's residual on a held one)
            let (fresh, weights, gradients) = ember::kernels::cublas::shared_outputs();
            eprintln!(
                "in-place outputs held elsewhere: {fresh} weight updates written to a fresh \
                 buffer, {weights} fell back, {gradients} gradients copied"
            );
            summary
        }
        #[allow(unreachable_patterns)]
        d => {
            return Err(format!(
                "this binary was built without {d:?}: rebuild with `--features {}`",
                format!("{d:?}").to_lowercase()
            ))
        }
    };
    std::fs::create_dir_all(&a.out).map_err(|e| e.to_string())?;
    let path = a.out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap())
        .map_err(|e| e.to_string())?;
    println!(
        "{}: final validation loss {:.4}, {:.0} tokens/s, peak {} , {:.1} s -> {}",
        run.optimizer,
        summary.final_valid_loss,
        summary.tokens_per_second,
        summary
            .peak_device_bytes
            .map_or("n/a".to_string(), |b| format!(
                "{:.2} GiB",
                b as f64 / (1u64 << 30) as f64
            )),
        summary.seconds,
        path.display()
    );
    Ok(())
}

fn run_report(dirs: Vec<PathBuf>, plot: Option<PathBuf>) -> Result<(), String> {
    let mut runs = vec![];
    for d in dirs {
        let p = d.join("summary.json");
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let s: Summary =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        runs.push(s);
    }
    println!(
        "| optimizer | params | weight MiB | devices | steps | final valid loss | best epoch valid loss | last-50 train loss | tokens/s | peak GPU memory | wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &runs {
        let tail = &s.train_loss[s.train_loss.len().saturating_sub(50)..];
        let mut name = match s.run.optimizer.as_str() {
            "frugal" => format!("frugal (ρ={})", s.run.density),
            "adamw" => "adamw".to_string(),
            o => format!("{o} (r={})", s.run.effective_rank()),
        };
        if s.run.int8_weights {
            name.push_str(", INT8 weights");
        }
        if s.run.weights_dtype != "f32" || s.run.state_dtype != "f32" {
            name.push_str(&format!(
                ", {} weights, {} state",
                s.run.weights_dtype, s.run.state_dtype
            ));
        }
        if s.run.layerwise {
            name.push_str(", layer-wise");
        }
        let best = s.valid_loss.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "| {name} | {:.1}M | {} | {} | {} | {:.4} | {best:.4} | {:.4} | {:.0} | {} | {:.0} |",
            s.params as f64 / 1e6,
            if s.weight_bytes > 0 {
                format!("{:.1}", s.weight_bytes as f64 / (1u64 << 20) as f64)
            } else {
                "–".into()
            },
            s.run.devices,
            s.train_loss.len(),
            s.final_valid_loss,
            tail.iter().sum::<f64>() / tail.len().max(1) as f64,
            s.tokens_per_second,
            s.peak_device_bytes.map_or("n/a".into(), |b| format!(
                "{:.2} GiB",
                b as f64 / (1u64 << 30) as f64
            )),
            s.seconds
        );
    }
    if let Some(path) = plot {
        ember_pretrain::plot::loss_curves(&runs, &path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    // GPU builds: CubeCL's compiled kernels and autotune results persist between runs
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    match ember_core::kernels::cache::configure(None) {
        Ok(dir) => eprintln!(
            "pretrain: CubeCL kernel and autotune caches in {}",
            dir.display()
        ),
        Err(e) => eprintln!("pretrain: kernel caches: {e}"),
    }
    #[cfg(feature = "profile")]
    profile::start();
    let r = match cli.command {
        Command::Train(a) => run_train(*a),
        Command::Report { dirs, plot } => run_report(dirs, plot),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
