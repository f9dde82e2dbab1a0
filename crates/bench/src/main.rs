//! `ember-bench`: memory footprint and step time of Ember's optimizers.
//!
//! With no arguments: `measure` of the `tiny` LLaMA-style model for every method on the CPU.
//! One module per subcommand under `cmd/`.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ember_bench::estimate::Dtype;

/// Peak heap bytes of every measurement come from this allocator (`ember_bench::heap`).
#[global_allocator]
static ALLOCATOR: ember_bench::heap::CountingAllocator = ember_bench::heap::CountingAllocator;

#[derive(Parser)]
#[command(
    name = "ember-bench",
    version,
    about = "Memory footprint and step time of Ember's optimizers: estimate, measure, plan"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Analytic breakdown: parameters, gradients, optimizer state, total (docs/memory.md).
    Estimate(Common),
    /// Build the model, run real steps, report the tensors held and the measured peaks beside
    /// the estimate.
    Measure {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        run: cmd::measure::RunArgs,
    },
    /// Optimizer-step and refresh time on single matrices (LLaMA layer shapes), JSON lines.
    Step {
        /// Optimizer, or `all`.
        #[arg(long, default_value = "galore")]
        optimizer: String,
        /// Shapes, e.g. 2048x2048,4096x11008.
        #[arg(long, default_value = "2048x2048,2048x5461,4096x4096,4096x11008")]
        shapes: String,
        /// Ranks, e.g. 128,512,1024.
        #[arg(long, default_value = "128,512,1024")]
        ranks: String,
        /// Device.
        #[arg(long, value_enum, default_value = "flex")]
        device: Device,
        /// Timed steps.
        #[arg(long, default_value_t = 50)]
        iters: usize,
        /// Warm-up steps.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Timed refreshes (0: none).
        #[arg(long, default_value_t = 3)]
        refreshes: usize,
        /// Run the portable path (burn ops) instead of the fused kernels.
        #[arg(long)]
        portable: bool,
        /// Elements of W per block of the fused back-projection (default 2^23).
        #[arg(long)]
        block_elements: Option<usize>,
        /// The parameter's and its gradient's dtype: f32 or bf16.
        #[arg(long, value_enum, default_value = "f32")]
        weights_dtype: Dtype,
        /// The optimizer state's dtype: f32, bf16 or int8.
        #[arg(long, value_enum, default_value = "f32")]
        state_dtype: Dtype,
    },
    /// CUDA builds: GaLore's projection products as the optimizer runs them (cuBLAS on burn's
    /// buffers, ordered by `EMBER_CUBLAS`) beside burn's matmul (f32/TF32 and bf16), JSON lines.
    #[cfg(feature = "cuda")]
    Cublas {
        /// Shapes, e.g. 4096x11008.
        #[arg(long, default_value = "4096x4096,4096x11008")]
        shapes: String,
        /// Ranks.
        #[arg(long, default_value = "512,1024")]
        ranks: String,
        /// Timed calls.
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
    /// Checks every fused kernel against the portable path on a device (exit status 1 if any
    /// check fails).
    Kernels {
        /// Device.
        #[arg(long, value_enum, default_value = "flex")]
        device: Device,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// For each method, the settings (rank, dtypes) that fit a memory budget, largest rank first.
    Plan(cmd::plan::PlanArgs),
    /// Many steps of each method on the CPU: heap peaks, projector orthonormality, non-finite
    /// steps, loss (JSON with --json).
    Soak(cmd::soak::SoakArgs),
}

/// Options shared by `estimate` and `measure`.
#[derive(Args, Clone)]
pub struct Common {
    /// Preset (tiny, 60m, 130m, 350m, 1b, 7b) or a JSON config file (HF LLaMA keys).
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Parameter groups (a JSON file, `ember::groups`: per-group method, rank, state dtype…):
    /// one optimizer instead of --optimizer/--rank/--density/--state-dtype.
    #[arg(long)]
    pub groups: Option<std::path::PathBuf>,
    /// Optimizer, or `all`.
    #[arg(long, default_value = "all")]
    pub optimizer: String,
    /// Rank (GaLore, Fira, DCT); default: the GaLore paper's for presets, hidden/4 otherwise.
    #[arg(long)]
    pub rank: Option<usize>,
    /// FRUGAL's density ρ.
    #[arg(long, default_value_t = 0.25)]
    pub density: f64,
    /// Weights (and gradients) dtype: f32 or bf16.
    #[arg(long, value_enum, default_value = "f32")]
    pub weights_dtype: Dtype,
    /// Optimizer-state dtype: f32, bf16 or int8 (blockwise 8-bit moments).
    #[arg(long, value_enum, default_value = "f32")]
    pub state_dtype: Dtype,
    /// Output JSON (one array of objects).
    #[arg(long)]
    pub json: bool,
    /// Output CSV.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Draw the breakdown as stacked bars (SVG).
    #[arg(long)]
    pub plot: Option<String>,
    /// Layer-wise training: one stage's gradients at a time, block inputs kept, each block
    /// updated during the backward pass (`ember_core::layerwise`).
    #[arg(long)]
    pub layerwise: bool,
    /// Attention and MLP projections stored in INT8 (`QLinear`, Q-GaLore's weights).
    #[arg(long)]
    pub int8_weights: bool,
    /// Sequences per step (`estimate`: with `--seq`, adds activations and step temporaries;
    /// `measure`: default 4).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per sequence (`measure`: default 64).
    #[arg(long)]
    pub seq: Option<usize>,
}

/// Where a measurement runs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// burn's CPU backend.
    Flex,
    /// burn's wgpu backend (CubeCL).
    Wgpu,
    /// burn's CUDA backend (CubeCL), without operation fusion.
    Cuda,
    /// burn's CUDA backend under burn's operation fusion (`Fusion<…>`: what `burn::backend::Cuda`
    /// is with burn's default features); built with `--features cuda-fusion`.
    CudaFusion,
}

impl Device {
    fn name(self) -> &'static str {
        match self {
            Device::Flex => "flex",
            Device::Wgpu => "wgpu",
            Device::Cuda => "cuda",
            Device::CudaFusion => "cuda-fusion",
        }
    }

    /// A CUDA device (NVML and burn's CUDA memory report apply).
    fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda | Device::CudaFusion)
    }
}

/// burn's CUDA backend without operation fusion, whatever burn's `fusion` feature.
#[cfg(feature = "cuda")]
pub type BareCuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// Runs `$body` with `$B` bound to the autodiff backend of `$device`; a device this binary was
/// built without returns an error from the enclosing function.
macro_rules! on_device {
    ($device:expr, $B:ident => $body:expr) => {
        match $device {
            $crate::Device::Flex => {
                type $B = burn::backend::Autodiff<burn::backend::Flex>;
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::Device::Wgpu => {
                type $B = burn::backend::Autodiff<burn::backend::Wgpu>;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::Device::Cuda => {
                type $B = burn::backend::Autodiff<$crate::BareCuda>;
                $body
            }
            #[cfg(feature = "cuda-fusion")]
            $crate::Device::CudaFusion => {
                type $B = burn::backend::Autodiff<burn::backend::Cuda>;
                $body
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(format!(
                    "this ember-bench was built without the {} device: rebuild with `--features {}`",
                    $device.name(),
                    $device.name()
                ))
            }
        }
    };
}

mod cmd;

/// Ember's warnings on stderr (the fallbacks of `ember-kernels` and `ember-core` are logged:
/// without a logger they would be silent). `RUST_LOG=info` or `debug` shows more.
struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0 && m.target().starts_with("ember")
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{} {}: {}", r.level(), r.target(), r.args());
        }
    }

    fn flush(&self) {}
}

fn init_log() {
    let level = match std::env::var("RUST_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        Ok("error") => log::LevelFilter::Error,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Warn,
    };
    static LOG: std::sync::OnceLock<StderrLog> = std::sync::OnceLock::new();
    if log::set_logger(LOG.get_or_init(|| StderrLog(level))).is_ok() {
        log::set_max_level(level);
    }
}

fn main() -> ExitCode {
    init_log();
    // a panic is a bug: one line, no backtrace
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ember-bench: internal error: {info}");
    }));
    let cli = Cli::parse();
    if let Some(Command::Measure { run, .. }) = &cli.command {
        if run.exact_pools {
            // read by `ember_kernels::cache::configure` (below) and by the per-method children
            std::env::set_var("EMBER_EXACT_POOLS", "1");
        }
    }
    // GPU builds: CubeCL's compiled kernels and autotune results persist between runs
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    match ember_kernels::cache::configure(None) {
        Ok(dir) => eprintln!(
            "ember-bench: CubeCL kernel and autotune caches in {} (EMBER_KERNEL_CACHE moves them)",
            dir.display()
        ),
        Err(e) => eprintln!("ember-bench: kernel caches: {e}"),
    }
    let result = match cli.command {
        None => cmd::measure::run(
            &cmd::measure::default_common(),
            &cmd::measure::RunArgs::main_job(),
        ),
        Some(Command::Estimate(c)) => cmd::estimate::run(&c),
        Some(Command::Measure { common, run }) => cmd::measure::run(&common, &run),
        Some(Command::Step {
            optimizer,
            shapes,
            ranks,
            device,
            iters,
            warmup,
            refreshes,
            portable,
            block_elements,
            weights_dtype,
            state_dtype,
        }) => {
            ember_kernels::set_fused(!portable);
            if let Some(n) = block_elements {
                ember_kernels::set_block_elements(n);
            }
            cmd::step::run(
                &optimizer,
                &shapes,
                &ranks,
                device,
                (iters, warmup, refreshes),
                (weights_dtype, state_dtype),
            )
        }
        #[cfg(feature = "cuda")]
        Some(Command::Cublas {
            shapes,
            ranks,
            iters,
        }) => cmd::step::parse_shapes(&shapes)
            .and_then(|s| cmd::cublas::run(&s, &cmd::parse_list(&ranks, "rank")?, iters.max(1))),
        Some(Command::Kernels { device, seed }) => cmd::kernels::run(device, seed),
        Some(Command::Plan(args)) => cmd::plan::run(&args),
        Some(Command::Soak(args)) => cmd::soak::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember-bench: error: {e}");
            ExitCode::from(2)
        }
    }
}
