//! Measurement: the real burn model, real forward/backward/optimizer steps on synthetic tokens.
//!
//! * weight and gradient bytes: `numel × dtype size` of the model's parameter tensors and of the
//!   gradients burn computed for them;
//! * optimizer-state bytes: `EmberOptimizer::state_bytes()`, the tensors the optimizer holds;
//! * step times: wall clock with the device synchronized (`Backend::sync`) before and after, the
//!   median over the timed steps (warm-up steps excluded), for the optimizer step alone and for
//!   the whole train step (forward + backward + optimizer);
//! * peak device memory (CUDA only): the largest "used" figure NVML reports for the device while
//!   the steps run (polled every 2 ms on a thread of its own, and at each step's end) — the CUDA
//!   context plus everything burn's allocator has reserved, like
//!   `torch.cuda.max_memory_reserved` plus the context.

use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use ember::recipe::Recipe;
use ember_core::{BlockModel, EmberOptimizer, LayerwiseConfig, LayerwiseTrainer, Stage};
use ember_llama::Tokens;
use serde::Serialize;

use crate::estimate::{Dtype, Settings};
use crate::llama::{Llama, LlamaShape};

/// Options of a measurement.
#[derive(Debug, Clone)]
pub struct MeasureOptions {
    /// Timed steps.
    pub steps: usize,
    /// Warm-up steps (not timed; the first includes projector refreshes and kernel compilation).
    pub warmup: usize,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Learning rate.
    pub lr: f64,
    /// Show progress on stderr (a bar on a terminal, one line per step otherwise).
    pub progress: bool,
    /// Weights dtype (`f32` or `bf16`).
    pub weights: Dtype,
    /// Layer-wise training (`ember_core::layerwise`): each block updated during the backward.
    pub layerwise: bool,
    /// Store the attention and MLP projections in INT8 (`QLinear`, groups of 256).
    pub int8_weights: bool,
    /// Refresh projectors on the device (`Recipe::with_device_projector`).
    pub device_projector: bool,
    /// Refresh with the exact SVD on the host on every backend (`Recipe::with_host_svd`).
    pub host_svd: bool,
    /// Parameter groups: the optimizer (instead of the settings' method).
    pub groups: Option<ember::groups::GroupsConfig>,
    /// Layer-wise: a JSON line per stage event appended to this file ([`StageTrace`]).
    pub stage_trace: Option<std::path::PathBuf>,
    /// The device is CUDA: the stage trace reads burn's CUDA pools and NVML.
    pub cuda: bool,
}

/// One line of `measure --stage-trace`: memory at a layer-wise stage event, read after a
/// synchronization of the device.
#[derive(Debug, Clone, Serialize)]
pub struct StageTrace {
    /// Method (or `groups`).
    pub method: String,
    /// Step (0-based, warm-up included).
    pub step: usize,
    /// `forward`, `backward` or `updated`.
    pub event: &'static str,
    /// `input`, `block k`, `output` (empty for `forward`).
    pub stage: String,
    /// Milliseconds since the step began.
    pub ms: f64,
    /// CUDA: bytes of live allocations in burn's pools.
    pub pool_in_use_bytes: Option<u64>,
    /// CUDA: bytes reserved by burn's pools.
    pub pool_reserved_bytes: Option<u64>,
    /// CUDA: NVML's used memory of the GPU (the context included).
    pub nvml_used_bytes: Option<usize>,
    /// CPU: heap bytes live (counting allocator).
    pub heap_live_bytes: Option<usize>,
    /// CPU: the heap's peak since the step began.
    pub heap_peak_bytes: Option<usize>,
    /// The heap's live bytes by allocation size class, classes of ≥ 64 MiB: `(k, bytes)` for
    /// allocations of `2^k ≤ size < 2^(k+1)` bytes (what holds host memory on a GPU backend).
    pub heap_by_size: Vec<(u32, usize)>,
    /// The process's resident set (`VmRSS`), bytes (Linux).
    pub rss_bytes: Option<usize>,
    /// The resident set's peak (`VmHWM`), bytes (Linux).
    pub rss_peak_bytes: Option<usize>,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Weight bytes of the model's tensors.
    pub weight_bytes: usize,
    /// Gradient bytes held at once: every gradient (ordinary step); the largest stage's
    /// (layer-wise: one stage's gradients exist at a time).
    pub grad_bytes: usize,
    /// Optimizer-state bytes.
    pub state_bytes: usize,
    /// Median optimizer step, milliseconds (NaN layer-wise: the updates interleave with the
    /// backward pass).
    pub optimizer_step_ms: f64,
    /// Median train step (forward + backward + optimizer), milliseconds.
    pub train_step_ms: f64,
    /// Peak device memory in use (CUDA, NVML), bytes.
    pub peak_device_bytes: Option<usize>,
    /// Peak heap bytes over the measured train steps (forward, backward, optimizer), measured
    /// by the counting allocator (CPU backends: every tensor is on the heap).
    pub peak_heap_bytes: Option<usize>,
    /// The same peak without page-aligned allocations (faer's per-thread GEMM workspaces,
    /// reserved at a thread's first matrix product and mostly never written: `heap`'s module
    /// docs) — what the estimate's peak is compared with.
    pub peak_heap_without_workspaces_bytes: Option<usize>,
    /// The page-aligned bytes live at the end of a measured step, the largest.
    pub workspace_heap_bytes: Option<usize>,
    /// Heap bytes live just before the optimizer step (weights, gradients, state, what the
    /// backward pass left), the largest over the measured steps.
    pub heap_before_step_bytes: Option<usize>,
    /// The largest peak of the heap during an optimizer step above the bytes live at its start:
    /// the step's temporaries (dequantized projectors, f32 copies, back-projection blocks, new
    /// moments before the old are freed).
    pub step_temporary_heap_bytes: Option<usize>,
    /// Loss at the first and the last step.
    pub loss_first: f32,
    /// Loss after the last step.
    pub loss_last: f32,
}

/// The recipe of `settings` for a model (target patterns, refresh gap, α).
pub fn recipe(s: &Settings, targets: Vec<String>, gap: usize, scale: Option<f64>) -> Recipe {
    Recipe::new(s.method)
        .with_rank(s.rank)
        .with_density(s.density)
        .with_gap(gap)
        .with_scale(scale)
        .with_targets(targets)
        .with_state(s.state.state())
}

/// The optimizer of `settings` for the LLaMA model (targets: attention and MLP linears).
pub fn optimizer<B: AutodiffBackend>(s: &Settings) -> EmberOptimizer<Llama<B>, B> {
    optimizer_with_gap(s, vec!["attn".to_string(), "mlp".to_string()], 200)
}

/// The optimizer of `settings` for any module, with target patterns and refresh gap.
pub fn optimizer_with_gap<B: AutodiffBackend, M: AutodiffModule<B>>(
    s: &Settings,
    targets: Vec<String>,
    gap: usize,
) -> EmberOptimizer<M, B> {
    try_optimizer_with(s, targets, gap, None).unwrap_or_else(|e| panic!("optimizer: {e}"))
}

/// The optimizer of `settings` with the update scale α of GaLore (`scale`), Fira (`alpha`) and
/// Q-GaLore (`scale`) set to `scale` when given (each method's default otherwise); the other
/// methods have no such option and refuse one.
pub fn try_optimizer_with<B: AutodiffBackend, M: AutodiffModule<B>>(
    s: &Settings,
    targets: Vec<String>,
    gap: usize,
    scale: Option<f64>,
) -> Result<EmberOptimizer<M, B>, String> {
    recipe(s, targets, gap, scale).build()
}

/// Synthetic but learnable token batches ([`ember_llama::Tokens::synthetic`]) on `device`.
pub fn tokens<B: Backend>(
    batch: usize,
    seq: usize,
    vocab: usize,
    step: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    ember_llama::Tokens::synthetic(batch, seq, vocab, step).tensor(device)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Runs the measurement on `device`.
pub fn measure<B: AutodiffBackend + ember_llama::ModelOps>(
    shape: &LlamaShape,
    s: &Settings,
    o: &MeasureOptions,
    device: &B::Device,
    peak: &mut dyn FnMut() -> Option<usize>,
) -> Measured
where
    B::InnerBackend: ember_core::EmberBackend,
    Llama<B>: AutodiffModule<B, InnerModule = Llama<B::InnerBackend>>,
{
    try_measure::<B>(shape, s, o, device, peak).unwrap_or_else(|e| panic!("measure: {e}"))
}

/// [`measure`], returning configuration errors.
pub fn try_measure<B: AutodiffBackend + ember_llama::ModelOps>(
    shape: &LlamaShape,
    s: &Settings,
    o: &MeasureOptions,
    device: &B::Device,
    peak: &mut dyn FnMut() -> Option<usize>,
) -> Result<Measured, String>
where
    B::InnerBackend: ember_core::EmberBackend,
    Llama<B>: AutodiffModule<B, InnerModule = Llama<B::InnerBackend>>,
{
    // release what earlier runs in this process left in the allocator's pool, so that the
    // device-memory peak below is this method's (burn keeps freed blocks pooled otherwise)
    B::memory_cleanup(device);
    B::seed(device, 0);
    let started = Instant::now();
    let phase = |name: String| {
        crate::progress::phase(name.clone());
        if o.progress {
            eprintln!("  {:>7.1} s  {name}", started.elapsed().as_secs_f64());
        }
    };
    phase("model initialization".into());
    let dtype = match o.weights {
        Dtype::Bf16 => DType::BF16,
        _ => DType::F32,
    };
    // the weights in CubeCL's persistent pool (exact-size pages, reused by later allocations of
    // the same sizes) rather than in its sliced pages; a no-op on other backends
    // with INT8 weights each block is quantized as soon as it is built (`init_int8`): the model
    // never holds all its projections in `dtype`
    if o.int8_weights {
        phase("(INT8 attention/MLP weights, each block quantized as it is built)".into());
    }
    let mut model = B::memory_persistent_allocations(device, (), |_| {
        if o.int8_weights {
            shape.init_int8::<B>(device, dtype, 256)
        } else {
            Ok(shape.init_with::<B>(device, dtype))
        }
    })?;
    let optim = match &o.groups {
        Some(g) => g.build::<B, Llama<B>>()?,
        None => recipe(s, vec!["attn".to_string(), "mlp".to_string()], 200, None)
            .with_device_projector(o.device_projector)
            .with_host_svd(
                o.host_svd
                    && s.method.has_device_projector()
                    && s.method != ember::recipe::Method::Qgalore,
            )
            .build::<B, Llama<B>>()?,
    };
    let weight_bytes = param_bytes(&model);
    // what building the model left in the allocator's pool is not part of the step's peak
    B::sync(device).ok();
    B::memory_cleanup(device);
    // the step and its start, read by the stage tracer
    let trace_clock = std::sync::Arc::new(std::sync::Mutex::new((0usize, Instant::now())));
    let mut trainer = if o.layerwise {
        let mut t = LayerwiseTrainer::new(optim, LayerwiseConfig::new());
        t.check(&model).map_err(|e| e.to_string())?;
        if let Some(path) = &o.stage_trace {
            let method = match &o.groups {
                Some(_) => "groups",
                None => s.method.name(),
            };
            let clock = trace_clock.clone();
            let mut trace = stage_tracer::<B>(path, method, device, o.cuda, clock)?;
            t.set_observer(move |e| match e {
                ember_core::StageEvent::Forward => trace("forward", String::new()),
                ember_core::StageEvent::Backward(s) => trace("backward", stage_name(s)),
                ember_core::StageEvent::Updated(s) => trace("updated", stage_name(s)),
            });
        }
        Stepper::Layerwise(Box::new(t))
    } else {
        Stepper::Ordinary(Box::new(optim))
    };
    let grad_bytes_layerwise = o.layerwise.then(|| largest_stage_bytes(&model));
    // an ordinary step's trace: after the forward pass, the backward pass and the update
    let mut trace = match (&o.stage_trace, o.layerwise) {
        (Some(path), false) => {
            let method = match &o.groups {
                Some(_) => "groups",
                None => s.method.name(),
            };
            let clock = trace_clock.clone();
            Some(stage_tracer::<B>(path, method, device, o.cuda, clock)?)
        }
        _ => None,
    };

    let name = if o.groups.is_some() {
        "groups"
    } else {
        s.method.name()
    };
    let progress = crate::progress::Progress::new(o.progress, name, o.warmup + o.steps);
    let (mut opt_ms, mut train_ms) = (vec![], vec![]);
    let (mut grad_bytes, mut loss_first, mut loss_last) = (0, f32::NAN, f32::NAN);
    let mut peak_bytes = peak();
    let (mut heap_peak, mut heap_before, mut heap_step) = (None, None, None);
    let (mut heap_peak_bare, mut workspaces) = (None, None);
    let max = |a: Option<usize>, b: Option<usize>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    for step in 0..o.warmup + o.steps {
        let tokens = Tokens::synthetic(o.batch, o.seq, shape.vocab_size, step);
        // the first step reports each phase (kernel compilation and projector fits happen there)
        let first = step == 0;
        if first {
            B::sync(device).ok();
            phase("step 1: forward".into());
        }
        B::sync(device).ok();
        crate::heap::reset_peak();
        let t0 = Instant::now();
        if let Ok(mut c) = trace_clock.lock() {
            *c = (step, t0);
        }
        let l = match &mut trainer {
            Stepper::Ordinary(optim) => {
                let loss = model.loss(tokens.tensor(device));
                if let Some(t) = &mut trace {
                    t("forward", String::new());
                }
                if first {
                    B::sync(device).ok();
                    phase("step 1: backward".into());
                }
                let grads = ember_core::quantized_grads(loss.backward(), &model);
                if let Some(t) = &mut trace {
                    t("backward", "all".into());
                }
                B::sync(device).ok();
                if first {
                    phase("step 1: optimizer step".into());
                }
                let t1 = Instant::now();
                let forward_backward_peak = crate::heap::peak();
                let forward_backward_bare = crate::heap::peak_without_page_aligned();
                if step == 0 {
                    grad_bytes = grads_bytes(&model, &grads);
                }
                let before = crate::heap::live();
                crate::heap::reset_peak();
                if first {
                    crate::heap::configure_backtraces();
                }
                model = optim
                    .try_step(o.lr, model, grads)
                    .map_err(|e| e.to_string())?;
                if let Some(t) = &mut trace {
                    t("updated", "all".into());
                }
                B::sync(device).ok();
                let t2 = Instant::now();
                let step_peak = crate::heap::peak();
                let step_bare = crate::heap::peak_without_page_aligned();
                if step >= o.warmup {
                    heap_peak_bare = max(heap_peak_bare, max(forward_backward_bare, step_bare));
                    workspaces = max(workspaces, crate::heap::page_aligned_live());
                    opt_ms.push((t2 - t1).as_secs_f64() * 1e3);
                    train_ms.push((t2 - t0).as_secs_f64() * 1e3);
                    heap_peak = max(heap_peak, max(forward_backward_peak, step_peak));
                    heap_before = max(heap_before, before);
                    heap_step = max(
                        heap_step,
                        step_peak.zip(before).map(|(p, b)| p.saturating_sub(b)),
                    );
                }
                loss.into_scalar().elem::<f32>()
            }
            Stepper::Layerwise(t) => {
                if first {
                    phase("step 1: layer-wise forward, backward and updates".into());
                    crate::heap::configure_backtraces();
                }
                let (m, loss) = t
                    .step(o.lr, model, std::slice::from_ref(&tokens))
                    .map_err(|e| e.to_string())?;
                model = m;
                B::sync(device).ok();
                let t1 = Instant::now();
                if step >= o.warmup {
                    train_ms.push((t1 - t0).as_secs_f64() * 1e3);
                    heap_peak = max(heap_peak, crate::heap::peak());
                    heap_peak_bare = max(heap_peak_bare, crate::heap::peak_without_page_aligned());
                    workspaces = max(workspaces, crate::heap::page_aligned_live());
                }
                grad_bytes = grad_bytes_layerwise.unwrap_or(0);
                loss.into_scalar().elem::<f32>()
            }
        };
        if step == 0 {
            loss_first = l;
        }
        loss_last = l;
        peak_bytes = max(peak_bytes, peak());
        if first {
            phase("steps".into());
        }
        progress.step(step, &format!("loss {l:.3}"));
    }
    progress.finish();
    let state_bytes = match &trainer {
        Stepper::Ordinary(o) => o.state_bytes(),
        Stepper::Layerwise(t) => t.optimizer().state_bytes(),
    };
    Ok(Measured {
        weight_bytes,
        grad_bytes,
        state_bytes,
        optimizer_step_ms: if opt_ms.is_empty() {
            f64::NAN
        } else {
            median(opt_ms)
        },
        train_step_ms: median(train_ms),
        peak_device_bytes: peak_bytes,
        peak_heap_bytes: heap_peak,
        peak_heap_without_workspaces_bytes: heap_peak_bare,
        workspace_heap_bytes: workspaces,
        heap_before_step_bytes: heap_before,
        step_temporary_heap_bytes: heap_step,
        loss_first,
        loss_last,
    })
}

enum Stepper<B: AutodiffBackend> {
    Ordinary(Box<EmberOptimizer<Llama<B>, B>>),
    Layerwise(Box<LayerwiseTrainer<Llama<B>, B>>),
}

/// The layer-wise observer of `measure --stage-trace`: after a synchronization, one
/// [`StageTrace`] line per event appended to `path` (`cuda`: burn's CUDA pools and NVML are read,
/// never on other devices). `clock`: the current step and its start, set by the step loop.
fn stage_tracer<B: AutodiffBackend>(
    path: &std::path::Path,
    method: &str,
    device: &B::Device,
    cuda: bool,
    clock: std::sync::Arc<std::sync::Mutex<(usize, Instant)>>,
) -> Result<impl FnMut(&'static str, String) + Send + 'static, String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let (method, dev) = (method.to_string(), device.clone());
    let nvml = cuda.then(|| Nvml::open(0));
    Ok(move |event: &'static str, stage: String| {
        B::sync(&dev).ok();
        let pool = if cuda {
            ember_kernels::nvml::cuda_pool_usage(0)
        } else {
            None
        };
        let (step, ms) = clock
            .lock()
            .map(|c| (c.0, c.1.elapsed().as_secs_f64() * 1e3))
            .unwrap_or((0, 0.0));
        let rss = crate::heap::resident();
        let line = StageTrace {
            method: method.clone(),
            step,
            event,
            stage,
            ms,
            pool_in_use_bytes: pool.map(|p| p.in_use),
            pool_reserved_bytes: pool.map(|p| p.reserved),
            nvml_used_bytes: nvml.as_ref().and_then(|n| n.used()),
            heap_live_bytes: crate::heap::live(),
            heap_peak_bytes: crate::heap::peak(),
            heap_by_size: crate::heap::live_by_size(64 << 20),
            rss_bytes: rss.map(|r| r.0),
            rss_peak_bytes: rss.map(|r| r.1),
        };
        let _ = writeln!(
            file,
            "{}",
            serde_json::to_string(&line).expect("plain data")
        );
    })
}

fn stage_name(s: Stage) -> String {
    match s {
        Stage::Input => "input".into(),
        Stage::Block(k) => format!("block {k}"),
        Stage::Output => "output".into(),
    }
}

/// `numel × dtype size` of every float and int parameter.
pub fn param_bytes<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Sum(usize);
    impl<B: Backend> ModuleVisitor<B> for Sum {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            self.0 += t.shape().num_elements() * t.dtype().size();
        }
        fn visit_int<const D: usize>(&mut self, p: &Param<Tensor<B, D, Int>>) {
            let t = p.val();
            self.0 += t.shape().num_elements() * t.dtype().size();
        }
    }
    let mut v = Sum(0);
    module.visit(&mut v);
    v.0
}

/// Bytes of the gradients burn returned (INT8 weights: the f32 gradient filed under `qparams`).
fn grads_bytes<B: AutodiffBackend>(model: &Llama<B>, grads: &GradientsParams) -> usize {
    struct G<'a>(&'a GradientsParams, usize);
    impl<B: AutodiffBackend> ModuleVisitor<B> for G<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            if let Some(t) = self.0.get::<B::InnerBackend, D>(p.id) {
                self.1 += t.shape().num_elements() * t.dtype().size();
            }
        }
    }
    let mut v = G(grads, 0);
    model.visit(&mut v);
    v.1
}

/// The gradient bytes of the largest stage (weights' dtype; INT8 weights' gradients are f32).
fn largest_stage_bytes<B: AutodiffBackend + ember_llama::ModelOps>(model: &Llama<B>) -> usize {
    struct Sum(usize);
    impl<B: Backend> ModuleVisitor<B> for Sum {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let t = p.val();
            if t.is_require_grad() {
                self.0 += t.shape().num_elements() * t.dtype().size();
            }
        }
        fn visit_int<const D: usize>(&mut self, p: &Param<Tensor<B, D, Int>>) {
            // packed INT8 codes: 4 weights a word, an f32 gradient each
            self.0 += 4 * 4 * p.val().shape().num_elements();
        }
    }
    let mut stages = vec![Stage::Input, Stage::Output];
    stages.extend((0..model.layers.len()).map(Stage::Block));
    stages
        .into_iter()
        .map(|stage| {
            let mut v = Sum(0);
            model.visit_stage(stage, &mut v);
            v.0
        })
        .max()
        .unwrap_or(0)
}

/// Device memory in use, from NVML (`ember_kernels::nvml`).
pub use ember_kernels::nvml::Nvml;
