//! Optimizer-step and projector-refresh time on single matrices (the layer shapes of LLaMA-1B/7B),
//! for side-by-side comparison with the PyTorch originals.
//!
//! Method: one `m × n` parameter (f32, or bf16 with a bf16 gradient) and a fixed gradient; the optimizer is stepped once (projector
//! computed), then `warmup` untimed and `iters` timed steps with `update_proj_gap` larger than the
//! run, so the timed steps are steady-state steps without refresh; each step is timed with the
//! device synchronized before and after (`Backend::sync`); the median is reported. The refresh is
//! timed separately: the projector's `fit` on the same gradient, synchronized, median of `refreshes`.

use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Distribution;
use ember_core::{ProjType, ProjectorKind, SharedBases};
use serde::Serialize;

use crate::estimate::{Dtype, Method, Settings};

/// A module with one matrix.
#[derive(Module, Debug)]
pub struct Single<B: Backend> {
    /// The parameter.
    pub w: Param<Tensor<B, 2>>,
}

/// One timing.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    /// Method.
    pub optimizer: &'static str,
    /// `fused` (the CubeCL kernels of `ember-kernels`) or `portable` (burn ops).
    pub kernels: &'static str,
    /// Rows.
    pub m: usize,
    /// Columns.
    pub n: usize,
    /// Rank.
    pub rank: usize,
    /// The parameter's and its gradient's dtype (`f32`, `bf16`).
    pub weights: &'static str,
    /// The optimizer state's dtype (`f32`, `bf16`, `int8`).
    pub state: &'static str,
    /// Median optimizer step (ms), no refresh: burn's `Optimizer::step` on a module, everything
    /// included (gradient collection, the non-finite check, the update, the module mapping).
    pub step_ms: f64,
    /// The same median with `NonFinitePolicy::SkipStepOnDevice` (`step_ms` runs burn's
    /// `Optimizer::step` under the default policy, which reads the NaN/Inf flags back to the host
    /// every step): the check stays on the device, the step only enqueues work. Same method: the
    /// device synchronized before and after each step.
    pub step_on_device_ms: f64,
    /// The same median with `NonFinitePolicy::Unchecked` (no NaN/Inf check, as burn's and
    /// PyTorch's AdamW): the work the PyTorch originals do.
    pub step_unchecked_ms: f64,
    /// Median of the engine's step alone (ms): the same update on the parameter's tensors
    /// (projection, Adam, back-projection and apply: the kernels), without the optimizer's
    /// plumbing.
    pub engine_ms: f64,
    /// Median of the projection `down(G)` alone (one `EmberBackend::projection_matmul`: cuBLAS on
    /// CUDA above `ember_kernels::vendor_gemm_min_macs`, else burn's matmul), if the projector is
    /// dense and the weights f32 (the products, the check and the refreshes below are timed on
    /// f32 parameters only).
    pub down_ms: Option<f64>,
    /// Median of the whole back-projection `up(N)` alone (one product, `m×n` output).
    pub up_ms: Option<f64>,
    /// Relative error `‖C − C₆₄‖/‖C₆₄‖` of the `down(G)` product on 512 sampled entries, against
    /// f64 dot products on the host: ~1e-7 in f32, ~1e-4 when the matmul ran in TF32.
    pub down_rel_err: Option<f64>,
    /// The same for `up(N)`.
    pub up_rel_err: Option<f64>,
    /// Relative error (sampled against f64, as above) of the update's back-projection as the
    /// engine runs it for an f32 weight on this backend — one `projected_update` from `W = 0`
    /// with step 1 and α = 1, so `−up(N)` — against `up(N)` of the f32 `N`: with f16 operands
    /// ([`update_operands`](Self::update_operands)) their rounding counts, as TF32's does.
    pub update_rel_err: Option<f64>,
    /// The operands of that update GEMM: `f16` (`EmberBackend::f16_update_operands`: `N` written
    /// in f16 by Adam, `P` rounded to f16, f32 accumulation into the f32 weight) or `f32` (TF32
    /// tensor cores on CUDA).
    pub update_operands: Option<&'static str>,
    /// What ran that update GEMM with f16 operands on CUDA (`ember_kernels::cublas::update_gemm`:
    /// the pinned cuBLASLt algorithm with 128×128 tiles and device scalars, or `cublasGemmEx`'s
    /// default); `None` elsewhere.
    pub update_gemm: Option<&'static str>,
    /// The precision the projection matmuls ran in, read off those errors (`f32` below 2e-5,
    /// else `tf32`): cuBLAS runs f32 products on TF32 tensor cores, as burn's CUDA matmul does.
    pub matmul_precision: Option<&'static str>,
    /// Median of the non-finite check alone (ms): the pass over `G` and the read-back of its
    /// flag, one device sync (part of `step_ms`).
    pub check_ms: f64,
    /// Median refresh (ms), if timed: exact SVD on the host (DCT: its selection).
    pub refresh_ms: Option<f64>,
    /// Median refresh (ms) of the device projector (warm start, 1 power iteration), if timed.
    pub refresh_device_ms: Option<f64>,
    /// Energy captured by the device projector relative to the exact one, `‖down(G)‖²` ratio.
    pub device_energy_ratio: Option<f64>,
    /// CUDA builds on a CUDA device: how the projection products ran
    /// (`ember_kernels::cublas::status`: `flags`, `sync`, `off`, `failed: …`).
    pub cublas: Option<String>,
}

/// Waits for the device before and after each timed step: burn's `sync` (the caller waits for
/// the GPU). `EMBER_SYNC=device-thread` (CUDA, for diagnosis) waits first on CubeCL's device
/// thread (`ember_kernels::device_thread::sync`), so that the next step's first launch is not
/// held by that thread's idle sleep; measured on the H100 without a clear gain (2026-11-25,
/// `docs/perf-notes.md`), so it is not the default.
fn sync<B: Backend>(device: &B::Device) {
    #[cfg(feature = "cuda")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var("EMBER_SYNC").as_deref() == Ok("device-thread"));
        if on {
            if let Some(d) =
                (device as &dyn std::any::Any).downcast_ref::<cubecl::cuda::CudaDevice>()
            {
                let _ = ember_kernels::device_thread::sync(d);
            }
        }
    }
    B::sync(device).ok();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Times `method` on an `m × n` parameter at `rank`.
pub fn time_step<B: AutodiffBackend>(
    method: Method,
    (m, n): (usize, usize),
    rank: usize,
    (warmup, iters, refreshes): (usize, usize, usize),
    (weights, state): (Dtype, Dtype),
    device: &B::Device,
) -> StepTiming
where
    B::InnerBackend: ember_core::EmberBackend,
{
    B::seed(device, 0);
    // diagnosis: CubeCL's device thread kept from sleeping (`EMBER_KEEP_AWAKE=1`, CUDA)
    #[cfg(feature = "cuda")]
    let _awake = ember_kernels::cublas::timeline::keep_awake();
    let dtype = match weights {
        Dtype::Bf16 => burn::tensor::DType::BF16,
        _ => burn::tensor::DType::F32,
    };
    let f32_only = dtype == burn::tensor::DType::F32;
    let w = Tensor::<B, 2>::random([m, n], Distribution::Normal(0.0, 0.02), device).cast(dtype);
    let g = Tensor::<B::InnerBackend, 2>::random([m, n], Distribution::Normal(0.0, 1e-3), device)
        .cast(dtype);
    let mut model = Single {
        w: Param::from_tensor(w),
    };
    let s = Settings {
        method,
        rank,
        density: 0.25,
        weights,
        state,
    };
    let build = |policy| {
        crate::measure::recipe(&s, vec![], 1_000_000, None)
            .with_non_finite(policy)
            .build::<B, Single<B>>()
            .unwrap_or_else(|e| panic!("optimizer: {e}"))
    };
    // the step through burn's `Optimizer::step`, medians of `iters` after the first step (which
    // fits the projector) and `warmup` steps
    let time_steps = |optim: &mut ember_core::EmberOptimizer<Single<B>, B>,
                      mut model: Single<B>| {
        let mut times = vec![];
        for i in 0..1 + warmup + iters {
            let mut grads = GradientsParams::new();
            grads.register(model.w.id, g.clone());
            let last = i == warmup + iters;
            sync::<B>(device);
            timeline_mark(last);
            let t = Instant::now();
            model = optim.step(1e-3, model, grads);
            sync::<B>(device);
            if i > warmup {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if last {
                timeline_print("optimizer step", (m, n), rank, t.elapsed());
            }
        }
        (median(times), model)
    };
    let step_on_device_ms = {
        let mut optim = build(ember_core::NonFinitePolicy::SkipStepOnDevice);
        time_steps(&mut optim, model.clone()).0
    };
    let step_unchecked_ms = {
        let mut optim = build(ember_core::NonFinitePolicy::Unchecked);
        time_steps(&mut optim, model.clone()).0
    };
    let mut optim = build(ember_core::NonFinitePolicy::Error);
    let (step_ms, stepped) = time_steps(&mut optim, model);
    model = stepped;
    // the engine alone, from the optimizer's state (no refresh: the gap exceeds the run)
    let engine = optim.target_engine().clone();
    let mut state = optim.param_state(model.w.id).cloned();
    let w0 = model.w.val().inner();
    let mut engine_times = vec![];
    let shape = [m, n];
    for i in 0..1 + warmup + iters {
        let ctx = ember_core::StepContext::new(&shape, optim.shared_bases());
        // a weight of the step's own, copied before the clock starts: a shared one could not be
        // updated in place (cuBLAS's accumulating GEMM), which the optimizer's step can
        let w = w0.clone().add_scalar(0.0);
        let last = i == warmup + iters;
        sync::<B>(device);
        timeline_mark(last);
        let t = Instant::now();
        let (w1, s) = engine
            .step(1e-3, w, g.clone(), state.take(), &ctx)
            .expect("engine step");
        sync::<B>(device);
        if i > warmup {
            engine_times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if last {
            timeline_print("engine", (m, n), rank, t.elapsed());
        }
        drop(w1);
        state = Some(s);
    }
    // the two projection products alone, for the FLOP count in the notes
    let basis = state
        .as_ref()
        .filter(|_| f32_only)
        .and_then(|s| s.projector.materialize(optim.shared_bases()).basis());
    let time_op = |f: &dyn Fn() -> Tensor<B::InnerBackend, 2>| -> f64 {
        let mut v = vec![];
        for i in 0..1 + warmup + iters {
            sync::<B>(device);
            let t = Instant::now();
            let out = f();
            sync::<B>(device);
            if i > warmup {
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
            drop(out);
        }
        median(v)
    };
    let (down_ms, up_ms) = match &basis {
        Some(b) => {
            let low = b.down(g.clone());
            (
                Some(time_op(&|| b.down(g.clone()))),
                Some(time_op(&|| b.up(low.clone()))),
            )
        }
        None => (None, None),
    };
    let (down_rel_err, up_rel_err) = match &basis {
        Some(b) => {
            let low = b.down(g.clone());
            let pt = b.p.clone().transpose();
            let (down, up) = if b.left {
                ((pt, g.clone()), (b.p.clone(), low.clone()))
            } else {
                ((g.clone(), pt), (low.clone(), b.p.clone()))
            };
            (
                Some(sampled_rel_err(down, low.clone())),
                Some(sampled_rel_err(up, b.up(low))),
            )
        }
        None => (None, None),
    };
    let f16_update = <B::InnerBackend as ember_kernels::EmberBackend>::f16_update_operands();
    let update_operands = basis
        .as_ref()
        .map(|_| if f16_update { "f16" } else { "f32" });
    #[cfg(feature = "cuda")]
    let update_gemm = (update_operands == Some("f16")).then(ember_kernels::cublas::update_gemm);
    #[cfg(not(feature = "cuda"))]
    let update_gemm = None;
    let update_rel_err = basis.as_ref().map(|b| {
        let low = b.down(g.clone());
        let n_low = Tensor::<B::InnerBackend, 2>::random(
            low.dims(),
            Distribution::Normal(0.0, 1.0),
            device,
        );
        let n_in = if f16_update {
            n_low.clone().cast(burn::tensor::DType::F16)
        } else {
            n_low.clone()
        };
        let coef = ember_kernels::UpdateCoefficients {
            decay_before: 0.0,
            scale: 1.0,
            step: 1.0,
            decay_after: 0.0,
        };
        let zero = Tensor::<B::InnerBackend, 2>::zeros([m, n], device);
        let (w, _) = <B::InnerBackend as ember_kernels::EmberBackend>::projected_update(
            zero,
            g.clone(),
            b,
            n_in,
            low,
            coef,
            ember_kernels::ResidualUpdate::None,
            None,
            None,
        );
        let up = if b.left {
            (b.p.clone(), n_low)
        } else {
            (n_low, b.p.clone())
        };
        sampled_rel_err(up, w.neg())
    });
    let matmul_precision =
        down_rel_err
            .zip(up_rel_err)
            .map(|(d, u)| if d.max(u) < 2e-5 { "f32" } else { "tf32" });
    let check_ms = {
        let mut v = vec![];
        for i in 0..1 + warmup + iters {
            sync::<B>(device);
            let t = Instant::now();
            let flags = <B::InnerBackend as ember_kernels::EmberBackend>::non_finite_flags(
                vec![g.clone()],
                device,
            );
            let _ = flags.into_data();
            sync::<B>(device);
            if i > warmup {
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        median(v)
    };
    let refresh_ms = (f32_only && refreshes > 0 && method != Method::Adamw).then(|| {
        let kind = match method {
            Method::Dct => ProjectorKind::Dct(ProjType::Std),
            _ => ProjectorKind::ExactSvd(ProjType::Std),
        };
        let bases = SharedBases::new();
        let r = match method {
            Method::Frugal => ((0.25 * m.min(n) as f64).round_ties_even() as usize).max(1),
            _ => rank,
        };
        let mut v = vec![];
        for i in 0..refreshes + 1 {
            sync::<B>(device);
            let t = Instant::now();
            let p = kind.fit(&g, r, &bases, 0, 0).expect("refresh");
            let _ = p.bytes();
            sync::<B>(device);
            if i > 0 || refreshes == 1 {
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        median(v)
    });
    let device_refresh =
        (f32_only && refreshes > 0 && !matches!(method, Method::Adamw | Method::Dct)).then(|| {
            let r = match method {
                Method::Frugal => ((0.25 * m.min(n) as f64).round_ties_even() as usize).max(1),
                _ => rank,
            };
            let bases = SharedBases::new();
            let exact = ProjectorKind::ExactSvd(ProjType::Std)
                .fit(&g, r, &bases, 0, 0)
                .expect("svd");
            let kind = ProjectorKind::DeviceRange {
                proj_type: ProjType::Std,
                power_iters: 1,
            };
            let mut v = vec![];
            let mut last = None;
            for i in 0..refreshes + 1 {
                sync::<B>(device);
                let t = Instant::now();
                let (p, _) = kind
                    .fit_warm(&g, r, &bases, 0, 0, Some(&exact))
                    .expect("device projector");
                sync::<B>(device);
                if i > 0 || refreshes == 1 {
                    v.push(t.elapsed().as_secs_f64() * 1e3);
                }
                last = Some(p);
            }
            let energy = |p: &ember_core::ProjectorState<B::InnerBackend>| -> f64 {
                p.down(g.clone(), &bases)
                    .powi_scalar(2)
                    .sum()
                    .into_scalar()
                    .elem::<f64>()
            };
            (median(v), energy(last.as_ref().unwrap()) / energy(&exact))
        });
    StepTiming {
        refresh_device_ms: device_refresh.map(|d| d.0),
        device_energy_ratio: device_refresh.map(|d| d.1),
        cublas: None,
        optimizer: method.name(),
        kernels: if <B::InnerBackend as ember_kernels::EmberBackend>::fused_kernels() {
            "fused"
        } else {
            "portable"
        },
        m,
        n,
        rank,
        weights: if f32_only { "f32" } else { "bf16" },
        state: match s.state {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
        },
        step_ms,
        step_on_device_ms,
        step_unchecked_ms,
        engine_ms: median(engine_times),
        down_ms,
        up_ms,
        down_rel_err,
        up_rel_err,
        update_rel_err,
        update_operands,
        update_gemm,
        matmul_precision,
        check_ms,
        refresh_ms,
    }
}

/// Starts a cuBLAS window timeline when `on` (`EMBER_CUBLAS_TIMELINE=1`, CUDA builds; see
/// `ember_kernels::cublas::timeline`).
fn timeline_mark(on: bool) {
    #[cfg(feature = "cuda")]
    if on {
        ember_kernels::cublas::timeline::mark();
    }
    if on {
        ember_kernels::host_trace::mark();
    }
    // when CubeCL's device thread first runs a task after the synchronization
    #[cfg(feature = "cuda")]
    if on {
        ember_kernels::cublas::timeline::probe("device thread: first task");
    }
}

/// Prints the timeline of the step just synchronized as one JSON line on stderr: each cuBLAS
/// window's points (GPU ms and host ms since the step started) and the step's wall clock.
fn timeline_print(what: &str, (m, n): (usize, usize), rank: usize, wall: std::time::Duration) {
    #[cfg(feature = "cuda")]
    {
        use ember_kernels::cublas::timeline;
        if !timeline::enabled() {
            return;
        }
        let points: Vec<String> = timeline::report()
            .into_iter()
            .map(|(p, gpu, host)| format!("[\"{p:?}\", {gpu:.4}, {host:.4}]"))
            .collect();
        let notes: Vec<String> = ember_kernels::host_trace::take()
            .into_iter()
            .map(|(label, host)| format!("[\"{label}\", {host:.4}]"))
            .collect();
        eprintln!(
            "{{\"timeline\": \"{what}\", \"m\": {m}, \"n\": {n}, \"rank\": {rank}, \"wall_ms\": {:.4}, \"points\": [{}], \"host\": [{}]}}",
            wall.as_secs_f64() * 1e3,
            points.join(", "),
            notes.join(", ")
        );
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (what, m, n, rank, wall);
}

/// `‖C − A·B‖/‖A·B‖` over 512 sampled entries of `C`, the reference in f64 on the host.
fn sampled_rel_err<B: Backend>((a, b): (Tensor<B, 2>, Tensor<B, 2>), c: Tensor<B, 2>) -> f64 {
    let [rows, k] = a.dims();
    let [_, cols] = b.dims();
    let host = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let (a, b, c) = (host(a), host(b), host(c));
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..512 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (i, j) = ((state >> 33) as usize % rows, (state >> 11) as usize % cols);
        let exact: f64 = (0..k)
            .map(|l| a[i * k + l] as f64 * b[l * cols + j] as f64)
            .sum();
        num += (c[i * cols + j] as f64 - exact).powi(2);
        den += exact * exact;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}
