//! `measure`: the real model, real steps; tensors held and measured peaks beside the estimate.
//!
//! Each method runs in a fresh process of this binary (`--in-process` is what the children
//! run), so that a peak belongs to one method and not to the allocator pools of the one before.

use clap::Args;
use ember::recipe::Method;
use ember_bench::estimate::{estimate_groups, estimate_run, Breakdown, Dtype, RunShape, Settings};
use ember_bench::llama::LlamaShape;
use ember_bench::measure::{MeasureOptions, Measured, Nvml};
use ember_bench::report::{csv, human, markdown, plot};
use serde::{Deserialize, Serialize};

use super::{rank_cell, settings};
use crate::{Common, Device};

/// Options of a measurement run.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// Device.
    #[arg(long, value_enum, default_value = "flex")]
    pub device: Device,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Measure every method in this process (default: a fresh process per method).
    #[arg(long, hide = true)]
    pub in_process: bool,
    /// Where GaLore, Fira and FRUGAL refresh their projectors: `device` (randomized subspace
    /// iteration on the device), `svd` (exact SVD on the host, as the official packages), `auto`
    /// (device on GPU backends, svd on the CPU). Q-GaLore and DCT always use their own.
    #[arg(long, value_enum, default_value = "auto")]
    pub projector: ProjectorChoice,
    /// CUDA/wgpu: exact-size memory pools (CubeCL's persistent memory enforced, same as
    /// `EMBER_EXACT_POOLS=1`): less device memory for layer-wise runs (LLaMA-7B on the H100:
    /// 24.2 instead of 28.9 GB), a little more for ordinary steps.
    #[arg(long)]
    pub exact_pools: bool,
    /// Append one JSON line per event of every step to this file — layer-wise: the forward pass,
    /// each stage's backward and update; ordinary: after the forward pass, the backward pass and
    /// the update (stage `all`) — with the device memory in use and reserved by burn's pools and
    /// NVML's reading (CUDA; after a synchronization, which the step's time then includes), heap
    /// bytes live and their peak so far (CPU): where a step's memory goes.
    #[arg(long)]
    pub stage_trace: Option<std::path::PathBuf>,
}

/// Where projectors are refreshed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectorChoice {
    /// Device on GPU backends, exact SVD on the CPU.
    Auto,
    /// Exact SVD on the host.
    Svd,
    /// Randomized subspace iteration on the device.
    Device,
}

impl ProjectorChoice {
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Svd => "svd",
            Self::Device => "device",
        }
    }
}

impl RunArgs {
    /// The main job's run: 2 warm-up and 8 timed steps on the CPU.
    pub fn main_job() -> Self {
        Self {
            device: Device::Flex,
            steps: 8,
            warmup: 2,
            quiet: false,
            in_process: false,
            projector: ProjectorChoice::Auto,
            exact_pools: false,
            stage_trace: None,
        }
    }
}

/// The main job's options: every method on the `tiny` model, f32, 8×64 tokens.
pub fn default_common() -> Common {
    Common {
        groups: None,
        layerwise: false,
        int8_weights: false,
        batch: Some(8),
        seq: Some(64),
        model: "tiny".into(),
        optimizer: "all".into(),
        rank: None,
        density: 0.25,
        weights_dtype: Dtype::F32,
        state_dtype: Dtype::F32,
        json: false,
        csv: false,
        plot: None,
    }
}

/// One measured method.
#[derive(Serialize, Deserialize)]
pub struct MeasureRow {
    optimizer: String,
    rank: Option<usize>,
    density: Option<f64>,
    device: String,
    weights_dtype: Dtype,
    state_dtype: Dtype,
    /// Where projectors were refreshed: `device`, `svd` (host), or `none` (the method's own).
    projector: String,
    param_count: usize,
    /// `numel × dtype size` of the model's parameters (tensors held, not a peak).
    weight_bytes: usize,
    /// `numel × dtype size` of the gradients burn returned.
    grad_bytes: usize,
    /// `numel × dtype size` of every tensor the optimizer holds (tensors held).
    state_bytes: usize,
    /// weights + grads + state (tensors held).
    total_bytes: usize,
    /// Measured: the largest device-memory use NVML reported during the steps (CUDA; polled every
    /// 2 ms and at each step's end). NVML's total counts the driver's own reserve (≈ 0.5 GB on an
    /// H100), so this is that much above what CUDA's API and PyTorch report for the same state.
    peak_device_bytes: Option<usize>,
    /// Measured: the same peak as CUDA's `cuMemGetInfo` counts it — NVML's less the driver's
    /// reserve, the difference of the two totals below (`ember_kernels::nvml::cuda_counted`):
    /// the figure PyTorch's `torch.cuda.mem_get_info` gives, so the one to set beside a PyTorch
    /// run's device use.
    #[serde(default)]
    peak_device_bytes_cuda: Option<usize>,
    /// Measured (CUDA): burn's own memory report — the largest bytes held by live tensors at a
    /// step's end (before the model: after it was built), and the largest bytes its pools reserved
    /// at a step's end (layer-wise training returns free pages after its input stage, so there
    /// this is not the step's peak; NVML's polled figure is).
    #[serde(default)]
    burn_in_use_bytes: Option<usize>,
    #[serde(default)]
    burn_reserved_bytes: Option<usize>,
    /// Measured (CUDA), true peaks rather than samples: the high-water mark of the bytes burn's
    /// pages take from the CUDA driver's memory pool (CubeCL allocates every page with
    /// `cuMemAllocAsync`) during the steps, and of what that pool reserved. NVML's peak minus
    /// the latter is the context and what lies outside burn's pools.
    #[serde(default)]
    driver_pool_used_peak_bytes: Option<usize>,
    #[serde(default)]
    driver_pool_reserved_peak_bytes: Option<usize>,
    /// Measured (CUDA): NVML's device memory in use once burn's CUDA client exists, before the
    /// model is built (the context and CubeCL's start).
    #[serde(default)]
    device_bytes_at_start: Option<usize>,
    /// The same, as CUDA's `cuMemGetInfo` counts it.
    #[serde(default)]
    device_bytes_at_start_cuda: Option<usize>,
    /// The device's total memory as NVML counts it and as CUDA's `cuMemGetInfo` does (their
    /// difference is the driver's reserve, inside NVML's used memory).
    #[serde(default)]
    nvml_total_bytes: Option<usize>,
    #[serde(default)]
    cuda_total_bytes: Option<usize>,
    /// The CUDA context's per-thread stack size (`CU_LIMIT_STACK_SIZE`) at the end of the run.
    #[serde(default)]
    cuda_stack_size_bytes: Option<usize>,
    /// Measured: the peak heap bytes of a train step (counting allocator: bytes requested from
    /// the allocator; on CPU backends every tensor). Address space a library reserves without
    /// touching it counts too: on a GPU backend this is mostly faer's per-thread GEMM workspaces
    /// (twice the L3 size per thread, kept for the thread's life, from the projector fits' small
    /// eigendecompositions); `peak_rss_bytes` is what was resident.
    peak_heap_bytes: Option<usize>,
    /// Measured: the same peak without page-aligned allocations, which on x86-64 are faer's
    /// per-thread GEMM workspaces (reserved at a thread's first matrix product, twice the L3
    /// size the kernel reports per thread, mostly never written): the figure the estimate's
    /// peak is compared with on CPU backends.
    #[serde(default)]
    peak_heap_without_workspaces_bytes: Option<usize>,
    /// Measured: those workspaces' bytes live at the end of a measured step (the largest).
    #[serde(default)]
    workspace_heap_bytes: Option<usize>,
    /// Measured: the process's resident-set peak (`VmHWM`, Linux) at the end of the run: the
    /// host memory actually touched, model building included.
    #[serde(default)]
    peak_rss_bytes: Option<usize>,
    /// Measured: heap bytes live when the optimizer step starts.
    heap_before_step_bytes: Option<usize>,
    /// Measured: the optimizer step's peak heap above its start (its temporaries).
    step_temporary_heap_bytes: Option<usize>,
    /// Median optimizer step (none layer-wise: the updates interleave with the backward pass).
    optimizer_step_ms: Option<f64>,
    train_step_ms: f64,
    loss_first: f32,
    loss_last: f32,
    estimate: Breakdown,
    /// (tensors held − estimate) / estimate, of the optimizer state.
    state_diff: f64,
}

fn diff(measured: usize, estimate: usize) -> f64 {
    (measured as f64 - estimate as f64) / (estimate.max(1) as f64)
}

/// Runs `measure`.
pub fn run(c: &Common, r: &RunArgs) -> Result<(), String> {
    let shape = LlamaShape::resolve(&c.model)?;
    let (batch, seq) = (c.batch.unwrap_or(4), c.seq.unwrap_or(64));
    if r.steps == 0 || batch == 0 || seq < 2 {
        return Err("--steps and --batch must be positive and --seq at least 2".into());
    }
    if seq > shape.max_sequence_length {
        return Err(format!(
            "--seq {seq} exceeds the model's {}",
            shape.max_sequence_length
        ));
    }
    // burn 0.21's fusion backend fails on this model's ordinary step in half precision: its fused
    // reduce kernels index past their inputs (`burn-cubecl-fusion`, codegen/ir.rs; reproduced on
    // wgpu with f16 weights, and on CUDA with bf16: `docs/perf-notes.md`), and the panic on its
    // device thread surfaces as `CallError` — a clear error here instead
    if r.device == Device::CudaFusion && c.weights_dtype != Dtype::F32 && !c.layerwise {
        return Err(format!(
            "--device cuda-fusion with --weights-dtype {} fails inside burn 0.21's fusion backend \
             (its fused reduce kernels on half-precision tensors, not Ember's ops); use --device \
             cuda (burn's CUDA backend without fusion) for half-precision weights",
            c.weights_dtype.name()
        ));
    }
    // whether this backend keeps GaLore's projector of bf16 weights in bf16 (bare CUDA with the
    // fused kernels and cuBLAS): what the optimizer state holds
    let native_bf16 = on_device!(r.device, B => {
        type Inner = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        <Inner as ember_kernels::EmberBackend>::native_dtype(burn::tensor::DType::BF16)
    });
    let run = RunShape {
        layerwise: c.layerwise,
        int8_weights: c.int8_weights,
        tokens: Some((batch, seq)),
        native_bf16,
    };
    let groups = c
        .groups
        .as_ref()
        .map(ember::groups::GroupsConfig::load)
        .transpose()?;
    let (list, estimates): (Vec<Settings>, Vec<Breakdown>) = match &groups {
        // one optimizer of several groups, measured in this process
        Some(g) => (
            vec![Settings {
                method: Method::Adamw,
                rank: 0,
                density: 0.0,
                weights: c.weights_dtype,
                state: c.state_dtype,
            }],
            vec![estimate_groups(&shape, g, c.weights_dtype, run)?],
        ),
        None => {
            let list = settings(c, &shape)?;
            let estimates = list
                .iter()
                .map(|s| estimate_run(&shape, *s, run))
                .collect::<Result<_, _>>()?;
            (list, estimates)
        }
    };
    let rows = if list.len() > 1 && !r.in_process {
        let mut rows = vec![];
        for s in &list {
            rows.extend(child(c, r, s.method.name())?);
        }
        rows
    } else {
        let opts = MeasureOptions {
            steps: r.steps,
            warmup: r.warmup,
            batch,
            seq,
            lr: 3e-3,
            progress: !r.quiet,
            weights: c.weights_dtype,
            layerwise: c.layerwise,
            int8_weights: c.int8_weights,
            device_projector: false,
            host_svd: false,
            groups: groups.clone(),
            stage_trace: r.stage_trace.clone(),
            cuda: r.device.is_cuda(),
        };
        let mut rows = vec![];
        for (s, est) in list.iter().zip(estimates) {
            let mut pool: Option<(u64, u64)> = None;
            let start_bytes: Option<(Option<usize>, Option<usize>)>;
            let device_projector = match r.projector {
                ProjectorChoice::Svd => false,
                ProjectorChoice::Device => true,
                ProjectorChoice::Auto => {
                    !matches!(r.device, Device::Flex) && s.method.has_device_projector()
                }
            };
            let opts = MeasureOptions {
                device_projector,
                host_svd: r.projector == ProjectorChoice::Svd,
                ..opts.clone()
            };
            let device = r.device;
            let m: Measured = on_device!(device, B => {
                // device memory from NVML where there is an NVIDIA driver (CUDA); none elsewhere
                let nvml = device.is_cuda().then(|| Nvml::open(0));
                let cuda = device.is_cuda();
                // NVML polled every 2 ms during the steps (the first call below starts them):
                // a step's peak even where memory is returned before the step ends
                // what the device holds once burn's client exists, as NVML and as CUDA count it
                let cuda_used = || ember_kernels::nvml::cuda_mem_info(0).map(|(f, t)| t - f);
                start_bytes = cuda.then(|| {
                    ember_kernels::nvml::cuda_pool_usage(0);
                    (nvml.as_ref().and_then(Nvml::used), cuda_used())
                });
                let sampler = cuda
                    .then(|| ember_kernels::nvml::PeakSampler::start(0, std::time::Duration::from_millis(2)))
                    .flatten();
                let mut started = false;
                let mut peak = || {
                    if let (Some(s), false) = (&sampler, started) {
                        s.reset();
                    }
                    if cuda && !started {
                        ember_kernels::nvml::reset_cuda_driver_peaks(0);
                    }
                    started = true;
                    if cuda {
                        if let Some(u) = ember_kernels::nvml::cuda_pool_usage(0) {
                            let p = pool.get_or_insert((0, 0));
                            *p = (p.0.max(u.in_use), p.1.max(u.reserved));
                        }
                    }
                    let now = nvml.as_ref().and_then(Nvml::used);
                    match (now, sampler.as_ref().map(|s| s.peak())) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    }
                };
                ember_bench::measure::try_measure::<B>(&shape, s, &opts, &Default::default(), &mut peak)
            })?;
            let driver = device
                .is_cuda()
                .then(|| ember_kernels::nvml::cuda_driver_memory(0))
                .flatten();
            // the device's total as NVML and as CUDA count it (NVML's adds the driver's reserve)
            let totals = device
                .is_cuda()
                .then(|| {
                    Nvml::open(0)
                        .total()
                        .zip(ember_kernels::nvml::cuda_mem_info(0).map(|(_, t)| t))
                })
                .flatten();
            rows.push(MeasureRow {
                optimizer: est.optimizer.clone(),
                rank: est.rank,
                density: est.density,
                device: device.name().into(),
                weights_dtype: c.weights_dtype,
                state_dtype: c.state_dtype,
                projector: if device_projector {
                    "device"
                } else if s.method.has_device_projector() {
                    "svd"
                } else {
                    "none"
                }
                .into(),
                param_count: est.param_count,
                weight_bytes: m.weight_bytes,
                grad_bytes: m.grad_bytes,
                state_bytes: m.state_bytes,
                total_bytes: m.weight_bytes + m.grad_bytes + m.state_bytes,
                peak_device_bytes: m.peak_device_bytes,
                burn_in_use_bytes: pool.map(|p| p.0 as usize),
                burn_reserved_bytes: pool.map(|p| p.1 as usize),
                driver_pool_used_peak_bytes: driver.map(|d| d.pool_used_high as usize),
                driver_pool_reserved_peak_bytes: driver.map(|d| d.pool_reserved_high as usize),
                cuda_stack_size_bytes: driver.map(|d| d.stack_size as usize),
                device_bytes_at_start: start_bytes.and_then(|s| s.0),
                device_bytes_at_start_cuda: start_bytes.and_then(|s| s.1),
                peak_device_bytes_cuda: m
                    .peak_device_bytes
                    .zip(totals)
                    .map(|(p, (n, c))| ember_kernels::nvml::cuda_counted(p, n, c)),
                nvml_total_bytes: totals.map(|t| t.0),
                cuda_total_bytes: totals.map(|t| t.1),
                peak_heap_bytes: m.peak_heap_bytes,
                peak_heap_without_workspaces_bytes: m.peak_heap_without_workspaces_bytes,
                workspace_heap_bytes: m.workspace_heap_bytes,
                peak_rss_bytes: ember_bench::heap::resident().map(|r| r.1),
                heap_before_step_bytes: m.heap_before_step_bytes,
                step_temporary_heap_bytes: m.step_temporary_heap_bytes,
                optimizer_step_ms: m
                    .optimizer_step_ms
                    .is_finite()
                    .then_some(m.optimizer_step_ms),
                train_step_ms: m.train_step_ms,
                loss_first: m.loss_first,
                loss_last: m.loss_last,
                state_diff: diff(m.state_bytes, est.state_bytes),
                estimate: est,
            });
        }
        rows
    };
    report(c, r, &shape, &rows)
}

/// Measures one method in a fresh process of this binary; its progress goes to our stderr.
fn child(c: &Common, r: &RunArgs, method: &str) -> Result<Vec<MeasureRow>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut args: Vec<String> = vec![
        "measure".into(),
        "--in-process".into(),
        "--json".into(),
        "--model".into(),
        c.model.clone(),
        "--optimizer".into(),
        method.into(),
        "--density".into(),
        c.density.to_string(),
        "--weights-dtype".into(),
        c.weights_dtype.name().into(),
        "--state-dtype".into(),
        c.state_dtype.name().into(),
        "--device".into(),
        r.device.name().into(),
        "--steps".into(),
        r.steps.to_string(),
        "--warmup".into(),
        r.warmup.to_string(),
        "--batch".into(),
        c.batch.unwrap_or(4).to_string(),
        "--seq".into(),
        c.seq.unwrap_or(64).to_string(),
        "--projector".into(),
        r.projector.name().into(),
    ];
    if let Some(rank) = c.rank {
        args.extend(["--rank".into(), rank.to_string()]);
    }
    if let Some(t) = &r.stage_trace {
        args.extend(["--stage-trace".into(), t.display().to_string()]);
    }
    for (on, flag) in [
        (r.quiet, "--quiet"),
        (c.layerwise, "--layerwise"),
        (c.int8_weights, "--int8-weights"),
        (r.exact_pools, "--exact-pools"),
    ] {
        if on {
            args.push(flag.into());
        }
    }
    let out = std::process::Command::new(exe)
        .args(&args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running the {method} measurement: {e}"))?;
    if !out.status.success() {
        return Err(format!("the {method} measurement failed ({})", out.status));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("reading the {method} measurement: {e}"))
}

fn report(c: &Common, r: &RunArgs, shape: &LlamaShape, rows: &[MeasureRow]) -> Result<(), String> {
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
            &format!("{} (tensors held on {})", shape.name, rows[0].device),
            &measured,
        )?;
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap());
        return Ok(());
    }
    let header = [
        "optimizer",
        "rank",
        "state held",
        "state estimate",
        "diff",
        "weights+grads held",
        "peak (measured)",
        "peak (estimate)",
        "step temporaries (measured)",
        "optimizer step (median ms)",
        "train step (median ms)",
        "loss first → last",
    ];
    let opt = |v: Option<usize>| v.map(human).unwrap_or_else(|| "n/a".into());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.optimizer.clone(),
                rank_cell(&r.estimate),
                format!("{} ({})", human(r.state_bytes), r.state_bytes),
                format!(
                    "{} ({})",
                    human(r.estimate.state_bytes),
                    r.estimate.state_bytes
                ),
                format!("{:+.3}%", 100.0 * r.state_diff),
                human(r.weight_bytes + r.grad_bytes),
                match (r.peak_device_bytes_cuda, r.peak_device_bytes) {
                    (Some(c), Some(d)) => format!("{} device ({} NVML)", human(c), human(d)),
                    (None, Some(d)) => format!("{} device (NVML)", human(d)),
                    _ => match (r.peak_heap_without_workspaces_bytes, r.workspace_heap_bytes) {
                        // a workspace of over 1% of the peak is named apart
                        (Some(bare), Some(w)) if 100 * w > r.peak_heap_bytes.unwrap_or(0) => {
                            format!(
                                "{} heap ({} + {} GEMM workspaces)",
                                opt(r.peak_heap_bytes),
                                human(bare),
                                human(w)
                            )
                        }
                        _ => format!("{} heap", opt(r.peak_heap_bytes)),
                    },
                },
                opt(r.estimate.peak_bytes),
                opt(r.step_temporary_heap_bytes),
                r.optimizer_step_ms
                    .map(|t| format!("{t:.2}"))
                    .unwrap_or_else(|| "layer-wise".into()),
                format!("{:.2}", r.train_step_ms),
                format!("{:.3} → {:.3}", r.loss_first, r.loss_last),
            ]
        })
        .collect();
    if c.csv {
        print!("{}", csv(&header, &cells));
    } else {
        println!(
            "Measured on {} for {} ({} parameters; weights {}{}, state {}{}): batch {}×{} tokens, {} warm-up + {} timed steps, one process per method.\n\
             \"held\" = numel × dtype size of the tensors held (accounting); \"peak\" = measured: the heap's peak during a train step \
             (counting allocator) on the CPU — \"A + W GEMM workspaces\": W of it is faer's per-thread matrix-product workspaces, address space reserved at a thread's first product (twice the L3 size the kernel reports, per thread) and mostly never written, which the estimate leaves out; A is what the estimate is compared with — the device-memory peak on CUDA as CUDA's API counts it (PyTorch's figure; NVML's, which adds the driver's reserve, beside it); its estimate adds activations and step temporaries (docs/memory.md); \"step temporaries\" = the optimizer step's heap peak above its start. \
             Times: medians with the device synchronized (crates/bench/src/measure.rs)\n",
            rows[0].device,
            shape.name,
            shape.param_count(),
            c.weights_dtype.name(),
            if c.int8_weights { ", INT8 projections" } else { "" },
            c.state_dtype.name(),
            if c.layerwise { ", layer-wise" } else { "" },
            c.batch.unwrap_or(4),
            c.seq.unwrap_or(64),
            r.warmup,
            r.steps,
        );
        print!("{}", markdown(&header, &cells));
    }
    Ok(())
}
