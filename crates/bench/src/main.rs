//! `ember-bench`: memory footprint and step time of Ember's optimizers.
//!
//! With no arguments: `measure` of the `tiny` LLaMA-style model for every method on the CPU.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ember_bench::estimate::{estimate, Breakdown, Dtype, Method, Settings};
use ember_bench::llama::LlamaShape;
use ember_bench::measure::{measure, MeasureOptions, Measured, Nvml};
use ember_bench::report::{csv, human, markdown, parse_bytes, plot};
use serde::Serialize;

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
    /// Build the model, run real steps, report measured bytes and times beside the estimate.
    Measure {
        #[command(flatten)]
        common: Common,
        /// Device.
        #[arg(long, value_enum, default_value = "flex")]
        device: Device,
        /// Timed steps.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Sequences per batch.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 64)]
        seq: usize,
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
    Plan {
        /// Preset (tiny, 60m, 130m, 350m, 1b, 7b) or a JSON config file.
        #[arg(long, default_value = "7b")]
        model: String,
        /// Memory budget, e.g. 24GiB.
        #[arg(long)]
        budget: String,
        /// Output JSON.
        #[arg(long)]
        json: bool,
        /// Output CSV.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Preset (tiny, 60m, 130m, 350m, 1b, 7b) or a JSON config file (HF LLaMA keys).
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Optimizer, or `all`.
    #[arg(long, default_value = "all")]
    optimizer: String,
    /// Rank (GaLore, Fira, DCT); default: the GaLore paper's for presets, hidden/4 otherwise.
    #[arg(long)]
    rank: Option<usize>,
    /// FRUGAL's density ρ.
    #[arg(long, default_value_t = 0.25)]
    density: f64,
    /// Weights (and gradients) dtype.
    #[arg(long, value_enum, default_value = "f32")]
    weights_dtype: Dtype,
    /// Optimizer-state dtype.
    #[arg(long, value_enum, default_value = "f32")]
    state_dtype: Dtype,
    /// Output JSON (one array of objects).
    #[arg(long)]
    json: bool,
    /// Output CSV.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// Draw the breakdown as stacked bars (SVG).
    #[arg(long)]
    plot: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Device {
    Flex,
    Wgpu,
    Cuda,
}

impl Device {
    fn name(self) -> &'static str {
        match self {
            Device::Flex => "flex",
            Device::Wgpu => "wgpu",
            Device::Cuda => "cuda",
        }
    }
}

/// Runs `$body` with `$B` bound to the autodiff backend of `$device`; a device this binary was
/// built without returns an error from the enclosing function.
macro_rules! on_device {
    ($device:expr, $B:ident => $body:expr) => {
        match $device {
            Device::Flex => {
                type $B = burn::backend::Autodiff<burn::backend::Flex>;
                $body
            }
            #[cfg(feature = "wgpu")]
            Device::Wgpu => {
                type $B = burn::backend::Autodiff<burn::backend::Wgpu>;
                $body
            }
            #[cfg(feature = "cuda")]
            Device::Cuda => {
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

fn default_rank(shape: &LlamaShape) -> usize {
    match shape.name.as_str() {
        "tiny" => 64,
        "60m" => 128,
        "130m" | "350m" => 256,
        "1b" => 512,
        "7b" => 1024,
        _ => (shape.hidden_size / 4).max(1),
    }
}

fn methods(name: &str) -> Result<Vec<Method>, String> {
    if name == "all" {
        return Ok(Method::ALL.to_vec());
    }
    Method::ALL
        .into_iter()
        .find(|m| m.name() == name)
        .map(|m| vec![m])
        .ok_or_else(|| {
            format!("unknown optimizer `{name}` (adamw, galore, fira, frugal, dct, qgalore, all)")
        })
}

fn settings(c: &Common, shape: &LlamaShape) -> Result<Vec<Settings>, String> {
    if !(c.density > 0.0 && c.density <= 1.0) {
        return Err(format!("--density {} must be in (0, 1]", c.density));
    }
    Ok(methods(&c.optimizer)?
        .into_iter()
        .map(|method| Settings {
            method,
            rank: c.rank.unwrap_or_else(|| default_rank(shape)),
            density: c.density,
            weights: c.weights_dtype,
            state: c.state_dtype,
        })
        .collect())
}

fn rank_cell(b: &Breakdown) -> String {
    match (b.rank, b.density) {
        (Some(r), _) => r.to_string(),
        (_, Some(d)) => format!("ρ={d}"),
        _ => "-".into(),
    }
}

fn run_estimate(c: &Common) -> Result<(), String> {
    let shape = LlamaShape::resolve(&c.model)?;
    let rows: Vec<Breakdown> = settings(c, &shape)?
        .into_iter()
        .map(|s| estimate(&shape, s))
        .collect::<Result<_, _>>()?;
    if let Some(p) = &c.plot {
        plot(p, &format!("{} (estimate)", shape.name), &rows)?;
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap());
        return Ok(());
    }
    let header = [
        "optimizer",
        "rank",
        "params",
        "weights",
        "grads",
        "optimizer state",
        "total",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|b| {
            vec![
                b.optimizer.to_string(),
                rank_cell(b),
                b.param_count.to_string(),
                human(b.weight_bytes),
                human(b.grad_bytes),
                human(b.state_bytes),
                human(b.total_bytes),
            ]
        })
        .collect();
    if c.csv {
        let raw: Vec<Vec<String>> = rows
            .iter()
            .map(|b| {
                vec![
                    b.optimizer.to_string(),
                    rank_cell(b),
                    b.param_count.to_string(),
                    b.weight_bytes.to_string(),
                    b.grad_bytes.to_string(),
                    b.state_bytes.to_string(),
                    b.total_bytes.to_string(),
                ]
            })
            .collect();
        print!("{}", csv(&header, &raw));
    } else {
        println!(
            "Estimate for {} ({} parameters; weights {:?}, state {:?}); method: docs/memory.md\n",
            shape.name,
            shape.param_count(),
            c.weights_dtype,
            c.state_dtype
        );
        print!("{}", markdown(&header, &cells));
    }
    Ok(())
}

#[derive(Serialize)]
struct MeasureRow {
    optimizer: &'static str,
    rank: Option<usize>,
    density: Option<f64>,
    device: &'static str,
    param_count: usize,
    weight_bytes: usize,
    grad_bytes: usize,
    state_bytes: usize,
    total_bytes: usize,
    peak_device_bytes: Option<usize>,
    optimizer_step_ms: f64,
    train_step_ms: f64,
    loss_first: f32,
    loss_last: f32,
    estimate: Breakdown,
    state_diff: f64,
}

fn diff(measured: usize, estimate: usize) -> f64 {
    (measured as f64 - estimate as f64) / (estimate.max(1) as f64)
}

#[allow(clippy::too_many_arguments)]
fn run_measure(
    c: &Common,
    device: Device,
    steps: usize,
    warmup: usize,
    batch: usize,
    seq: usize,
) -> Result<(), String> {
    let shape = LlamaShape::resolve(&c.model)?;
    if c.weights_dtype != Dtype::F32 || c.state_dtype != Dtype::F32 {
        return Err("measure runs f32 weights and state; use `estimate` for bf16".into());
    }
    if steps == 0 || batch == 0 || seq < 2 {
        return Err("--steps and --batch must be positive and --seq at least 2".into());
    }
    if seq > shape.max_sequence_length {
        return Err(format!(
            "--seq {seq} exceeds the model's {}",
            shape.max_sequence_length
        ));
    }
    let list = settings(c, &shape)?;
    let estimates: Vec<Breakdown> = list
        .iter()
        .map(|s| estimate(&shape, *s))
        .collect::<Result<_, _>>()?;
    let opts = MeasureOptions {
        steps,
        warmup,
        batch,
        seq,
        lr: 3e-3,
        progress: !c.json && !c.csv && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let mut rows = vec![];
    for (s, est) in list.iter().zip(estimates) {
        let name = device.name();
        let m: Measured = on_device!(device, B => {
            // device memory from NVML where there is an NVIDIA driver (CUDA); none elsewhere
            let nvml = matches!(device, Device::Cuda).then(|| Nvml::open(0));
            let mut peak = || nvml.as_ref().and_then(Nvml::used);
            measure::<B>(&shape, s, &opts, &Default::default(), &mut peak)
        });
        rows.push(MeasureRow {
            optimizer: est.optimizer,
            rank: est.rank,
            density: est.density,
            device: name,
            param_count: est.param_count,
            weight_bytes: m.weight_bytes,
            grad_bytes: m.grad_bytes,
            state_bytes: m.state_bytes,
            total_bytes: m.weight_bytes + m.grad_bytes + m.state_bytes,
            peak_device_bytes: m.peak_device_bytes,
            optimizer_step_ms: m.optimizer_step_ms,
            train_step_ms: m.train_step_ms,
            loss_first: m.loss_first,
            loss_last: m.loss_last,
            state_diff: diff(m.state_bytes, est.state_bytes),
            estimate: est,
        });
    }
    if let Some(p) = &c.plot {
        let measured: Vec<Breakdown> = rows
            .iter()
            .map(|r| Breakdown {
                weight_bytes: r.weight_bytes,
                grad_bytes: r.grad_bytes,
                state_bytes: r.state_bytes,
                total_bytes: r.total_bytes,
                ..r.estimate.clone()
            })
            .collect();
        plot(
            p,
            &format!("{} (measured on {})", shape.name, rows[0].device),
            &measured,
        )?;
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap());
        return Ok(());
    }
    let header = [
        "optimizer",
        "rank",
        "state measured",
        "state estimate",
        "diff",
        "weights+grads measured",
        "weights+grads estimate",
        "peak device memory",
        "optimizer step (median ms)",
        "train step (median ms)",
        "loss first → last",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.optimizer.to_string(),
                rank_cell(&r.estimate),
                format!("{} ({})", human(r.state_bytes), r.state_bytes),
                format!(
                    "{} ({})",
                    human(r.estimate.state_bytes),
                    r.estimate.state_bytes
                ),
                format!("{:+.3}%", 100.0 * r.state_diff),
                human(r.weight_bytes + r.grad_bytes),
                human(r.estimate.weight_bytes + r.estimate.grad_bytes),
                r.peak_device_bytes
                    .map(human)
                    .unwrap_or_else(|| "n/a".into()),
                format!("{:.2}", r.optimizer_step_ms),
                format!("{:.2}", r.train_step_ms),
                format!("{:.3} → {:.3}", r.loss_first, r.loss_last),
            ]
        })
        .collect();
    if c.csv {
        print!("{}", csv(&header, &cells));
    } else {
        println!(
            "Measured on {} for {} ({} parameters): batch {batch}×{seq} tokens, {warmup} warm-up + {steps} timed steps; \
             state = tensors the optimizer holds, times = medians with the device synchronized (method: crates/bench/src/measure.rs)\n",
            rows[0].device,
            shape.name,
            shape.param_count()
        );
        print!("{}", markdown(&header, &cells));
    }
    Ok(())
}

#[derive(Serialize)]
struct PlanRow {
    optimizer: &'static str,
    rank: Option<usize>,
    density: Option<f64>,
    weights_dtype: Dtype,
    state_dtype: Dtype,
    total_bytes: usize,
    state_bytes: usize,
    fits: bool,
}

fn run_plan(model: &str, budget: &str, json: bool, as_csv: bool) -> Result<(), String> {
    let shape = LlamaShape::resolve(model)?;
    let budget = parse_bytes(budget)?;
    let min_dim = shape.hidden_size.min(shape.intermediate_size);
    let mut rows = vec![];
    for method in Method::ALL {
        for weights in [Dtype::F32, Dtype::Bf16] {
            for state in [Dtype::F32, Dtype::Bf16] {
                let candidates: Vec<(usize, f64)> = match method {
                    Method::Adamw => vec![(0, 0.0)],
                    Method::Frugal => [1.0, 0.5, 0.25, 0.125, 0.0625]
                        .iter()
                        .map(|&d| (0, d))
                        .collect(),
                    _ => (4..=20)
                        .rev()
                        .map(|p| 1usize << p)
                        .filter(|&r| r <= min_dim)
                        .map(|r| (r, 0.0))
                        .collect(),
                };
                // the largest rank (or density) that fits, for this dtype pair
                let best = candidates.into_iter().find_map(|(rank, density)| {
                    let s = Settings {
                        method,
                        rank,
                        density,
                        weights,
                        state,
                    };
                    estimate(&shape, s).ok().filter(|b| b.total_bytes <= budget)
                });
                if let Some(b) = best {
                    rows.push(PlanRow {
                        optimizer: b.optimizer,
                        rank: b.rank,
                        density: b.density,
                        weights_dtype: weights,
                        state_dtype: state,
                        total_bytes: b.total_bytes,
                        state_bytes: b.state_bytes,
                        fits: true,
                    });
                }
            }
        }
    }
    if rows.is_empty() {
        return Err(format!(
            "a budget of {} fits no method for {} (weights and gradients alone need {} in bf16)",
            human(budget),
            shape.name,
            human(4 * shape.param_count())
        ));
    }
    rows.sort_by(|a, b| {
        (
            a.optimizer,
            std::cmp::Reverse(a.rank),
            std::cmp::Reverse((a.density.unwrap_or(0.0) * 1e6) as u64),
        )
            .cmp(&(
                b.optimizer,
                std::cmp::Reverse(b.rank),
                std::cmp::Reverse((b.density.unwrap_or(0.0) * 1e6) as u64),
            ))
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap());
        return Ok(());
    }
    let header = [
        "optimizer",
        "rank",
        "weights",
        "state",
        "optimizer state",
        "total",
        "budget left",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.optimizer.to_string(),
                match (r.rank, r.density) {
                    (Some(k), _) => k.to_string(),
                    (_, Some(d)) => format!("ρ={d}"),
                    _ => "-".into(),
                },
                format!("{:?}", r.weights_dtype).to_lowercase(),
                format!("{:?}", r.state_dtype).to_lowercase(),
                human(r.state_bytes),
                human(r.total_bytes),
                human(budget - r.total_bytes),
            ]
        })
        .collect();
    if as_csv {
        print!("{}", csv(&header, &cells));
    } else {
        println!(
            "Settings of {} that fit {} by the estimate (weights + gradients + optimizer state; activations not included), largest rank first\n",
            shape.name,
            human(budget)
        );
        print!("{}", markdown(&header, &cells));
    }
    Ok(())
}

fn parse_list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|_| format!("cannot read {what} `{x}`"))
        })
        .collect()
}

fn run_step(
    optimizer: &str,
    shapes: &str,
    ranks: &str,
    device: Device,
    (iters, warmup, refreshes): (usize, usize, usize),
) -> Result<(), String> {
    use ember_bench::steptime::time_step;
    let shapes: Vec<(usize, usize)> = shapes
        .split(',')
        .map(|s| {
            let (a, b) = s
                .trim()
                .split_once('x')
                .ok_or(format!("shape `{s}` is not MxN"))?;
            Ok((
                a.parse().map_err(|_| format!("shape `{s}`"))?,
                b.parse().map_err(|_| format!("shape `{s}`"))?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let ranks: Vec<usize> = parse_list(ranks, "rank")?;
    if iters == 0 {
        return Err("--iters must be positive".into());
    }
    for method in methods(optimizer)? {
        for &(m, n) in &shapes {
            for &r in &ranks {
                if r == 0 || r > m.min(n) {
                    return Err(format!("rank {r} does not fit a {m}x{n} matrix"));
                }
                let cfg = (warmup, iters, refreshes);
                let t = on_device!(device, B => {
                    time_step::<B>(method, (m, n), r, cfg, &Default::default())
                });
                println!("{}", serde_json::to_string(&t).unwrap());
                if method == Method::Adamw {
                    break; // rank does not matter
                }
            }
        }
    }
    Ok(())
}

fn run_kernels(device: Device, seed: u64) -> Result<(), String> {
    use burn::tensor::backend::{AutodiffBackend, Backend};
    use ember_kernels::{selfcheck, EmberBackend};
    let failed = on_device!(device, B => {
        type I = <B as AutodiffBackend>::InnerBackend;
        let dev = Default::default();
        println!(
            "backend {} — fused kernels: {}",
            <I as Backend>::name(&dev),
            <I as EmberBackend>::fused_kernels()
        );
        selfcheck::report(&selfcheck::run_all::<I>(&dev, seed))
    });
    if failed > 0 {
        return Err(format!("{failed} kernel checks failed"));
    }
    Ok(())
}

fn main() -> ExitCode {
    // a panic is a bug: one line, no backtrace
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ember-bench: internal error: {info}");
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        None => {
            let common = Common {
                model: "tiny".into(),
                optimizer: "all".into(),
                rank: None,
                density: 0.25,
                weights_dtype: Dtype::F32,
                state_dtype: Dtype::F32,
                json: false,
                csv: false,
                plot: None,
            };
            run_measure(&common, Device::Flex, 8, 2, 8, 64)
        }
        Some(Command::Estimate(c)) => run_estimate(&c),
        Some(Command::Measure {
            common,
            device,
            steps,
            warmup,
            batch,
            seq,
        }) => run_measure(&common, device, steps, warmup, batch, seq),
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
        }) => {
            ember_kernels::set_fused(!portable);
            if let Some(n) = block_elements {
                ember_kernels::set_block_elements(n);
            }
            run_step(
                &optimizer,
                &shapes,
                &ranks,
                device,
                (iters, warmup, refreshes),
            )
        }
        Some(Command::Kernels { device, seed }) => run_kernels(device, seed),
        Some(Command::Plan {
            model,
            budget,
            json,
            csv,
        }) => run_plan(&model, &budget, json, csv),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember-bench: error: {e}");
            ExitCode::from(2)
        }
    }
}
