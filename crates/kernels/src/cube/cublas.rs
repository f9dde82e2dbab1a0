//! The projection matmuls on cuBLAS (burn's CUDA backend): `cublasGemmEx` on burn's own buffers,
//! loaded at run time through `cudarc` (nothing CUDA at build time).
//!
//! **Operands** are read in place: a row-major tensor (rows possibly pitched, `ld ≥ cols`) is
//! cuBLAS's `N`, a transposed view (`p.transpose()`: strides `[1, ld]`) its `T`, a row slice
//! (`p.slice([rows, ..])`) a pointer offset; anything else falls back to burn's matmul. f32
//! operands run on TF32 tensor cores (`CUBLAS_COMPUTE_32F_FAST_TF32`, the precision of burn's
//! own f32 matmul on CUDA), bf16/f16 operands with f32 accumulation; the product has the operands'
//! dtype, as burn's. Products smaller than [`crate::vendor_gemm_min_macs`] multiply-adds stay on
//! burn's matmul (the ordering's fixed cost is not won back there).
//!
//! **Ordering.** CubeCL keeps its CUDA stream private, so cuBLAS runs on a stream of ours and the
//! two are ordered on the device, without the host (mode `flags`, the default):
//! 1. a one-thread CubeCL kernel on burn's stream writes the sequence number `s` to `flags[0]`
//!    once the operands are written (it is queued after the kernels that wrote them);
//! 2. on our stream a one-thread kernel of ours (PTX, loaded with the driver API) spins until
//!    `flags[0] ≥ s`, then the GEMM runs, then `cuMemsetD32Async` writes `s` to `flags[1]`;
//! 3. a one-thread CubeCL kernel on burn's stream spins until `flags[1] ≥ s`: whatever burn
//!    queues next (reads of the product, reuse of the operands' memory) runs after the GEMM.
//!
//! A GEMM under a step's skip flag (the deferred NaN/Inf check, [`accumulate`]) reads `α, β`
//! on the device: a one-thread kernel of ours queued on our stream after the waiter writes
//! `[α, β]`, or `[0, 1]` where the flag is set (the signal kernel is bound to the flag, so it
//! waits for the flag's writer) — no launch on burn's stream for it.
//!
//! Every wait is on work already on the device's queues when the wait is queued, so the two
//! streams cannot wait on each other: CubeCL launches from a server thread, so the whole window —
//! the signal, the device pointers, our waiter, the GEMMs, the release and the wait kernel — runs
//! on that thread, after everything queued before it; a window may hold several GEMMs (a linear
//! layer's two backward products, [`matmul_pair`]). The first window of each GEMM signature
//! (sizes, types, layouts) is one blocking round trip (`ComputeClient::exclusive`), so that an
//! error falls back to burn's matmul; later ones are queued on the device thread without
//! blocking the caller (`EMBER_CUBLAS_ASYNC=off` blocks on every window). Every kernel of the protocol is loaded once before any waiter spins (a module load can wait
//! for the device to go idle). (The driver's stream memory operations, `cuStreamWaitValue32`/`WriteValue32`,
//! would do steps 2 and 3's writes without kernels; a first version built on them fell back to
//! burn's matmul on every product on the H100 we measure on.) Mode `sync`
//! (`EMBER_CUBLAS=sync`, and the fallback when the waiter cannot be loaded) orders by the host
//! instead — burn's queue drained before, our stream synchronized after — and `EMBER_CUBLAS=off`
//! keeps burn's matmul. An error of the driver or of cuBLAS is logged once and turns cuBLAS off
//! for the process (that product and every later one take burn's matmul; [`status`] says why).

use std::any::Any;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Mutex, OnceLock};

use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::cuda::CudaRuntime;
use cubecl::device::Device as _;
use cubecl::device_handle::DeviceHandle;
use cubecl::prelude::{CubeCount, Runtime};
use cubecl::server::{Binding, ComputeServer};
use cubecl::stream_id::StreamId;
use cubecl::CubeDim;
use cudarc::cublas::{result as blas, sys as bsys};
use cudarc::driver::{result as drv, sys as dsys};

use super::{empty, kernels};

mod tune;
pub use tune::{report as tuning_report, update_gemm, Record as TuningRecord};

/// How cuBLAS is ordered with burn's stream ([module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// burn's matmul.
    Off,
    /// Host synchronizations around each GEMM.
    HostSync,
    /// Device-side flags (the default).
    DeviceFlags,
}

/// The mode of this process: `EMBER_CUBLAS` = `off`, `sync` or `flags` (default).
pub fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("EMBER_CUBLAS").as_deref() {
        Ok("off") | Ok("0") => Mode::Off,
        Ok("sync") => Mode::HostSync,
        Ok("flags") | Ok("") | Err(_) => Mode::DeviceFlags,
        Ok(other) => {
            log::warn!("EMBER_CUBLAS={other}: expected off, sync or flags; using flags");
            Mode::DeviceFlags
        }
    })
}

static FAILED: AtomicBool = AtomicBool::new(false);
static REASON: Mutex<Option<String>> = Mutex::new(None);

fn fail(what: &str) {
    if !FAILED.swap(true, AtomicOrdering::Relaxed) {
        log::warn!("ember-kernels: cuBLAS off for this process ({what}); burn's matmul instead");
        *REASON.lock().unwrap_or_else(|e| e.into_inner()) = Some(what.to_string());
    }
}

/// Where cuBLAS stands in this process: `"off"`, `"unused"` (no product yet), `"flags"`,
/// `"sync"` (the ordering in use; `"sync (…)"` says why the device flags could not be used), or
/// `"failed: …"` with the error that turned it off.
pub fn status() -> String {
    if let Some(e) = ASYNC_ERROR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return format!("failed (a queued product is invalid): {e}");
    }
    if let Some(reason) = REASON.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return format!("failed: {reason}");
    }
    if mode() == Mode::Off {
        return "off".into();
    }
    let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    match state.first() {
        None => "unused".into(),
        Some(b) => match &b.waiter {
            Ok(_) => "flags".into(),
            Err(e) if mode() == Mode::DeviceFlags => format!("sync ({e})"),
            Err(_) => "sync".into(),
        },
    }
}

/// Where a GEMM that writes in place found its output held elsewhere ([`shared_outputs`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum Shared {
    /// [`accumulate`]'s `C` (a weight) could not be written out of place either: the caller
    /// falls back to its own update.
    Accumulate = 0,
    /// Fira's residual `G ← G − α·up(R)`: the gradient is copied first.
    Residual = 1,
    /// [`accumulate`]'s `C` (a weight) was written to a fresh buffer `D` — copied there first and
    /// updated in place ([`Held::Copy`]), or cuBLASLt's `D = α·A·B + β·C` — (burn-train's
    /// `Learner` holds the model while the optimizer steps on a clone).
    OutOfPlace = 2,
}

static SHARED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

pub(super) fn note_shared(what: Shared) {
    SHARED[what as usize].fetch_add(1, AtomicOrdering::Relaxed);
}

/// How often, in this process, a GEMM that writes in place found its output still held
/// elsewhere: `(weights updated into a fresh buffer, weights whose update GEMM fell back,
/// gradients copied before Fira's residual)`. The first counts every weight update of
/// burn-train's `Learner`, which keeps its model while the optimizer steps on a clone; the second
/// is zero unless `EMBER_HELD_UPDATE=fallback` (or a weight's layout admits no copy), the third
/// in an ordinary training loop. A count that moves from run to run means a path that depends on
/// timing (diagnosis: `ember-pretrain` prints them on CUDA).
pub fn shared_outputs() -> (u64, u64, u64) {
    (
        SHARED[2].load(AtomicOrdering::Relaxed),
        SHARED[0].load(AtomicOrdering::Relaxed),
        SHARED[1].load(AtomicOrdering::Relaxed),
    )
}

/// The waiter of step 2 ([module docs](self)): spins until `*flag − value ≥ 0` as sequence
/// numbers (acquire loads at GPU scope; `sm_70` and later). And the guard of a skip-guarded GEMM
/// ([`accumulate`]), run on our stream after the waiter: `out = [α, β]`, or `[0, 1]` where
/// `*skip ≠ 0` (the step is skipped: `C` stays as it was) — cuBLAS reads `out` on the device.
const WAITER_PTX: &str = "
.version 7.0
.target sm_70
.address_size 64
.visible .entry ember_wait_geq(.param .u64 flag, .param .u32 value)
{
    .reg .pred %p;
    .reg .b32 %r<3>;
    .reg .b64 %rd<2>;
    ld.param.u64 %rd0, [flag];
    cvta.to.global.u64 %rd1, %rd0;
    ld.param.u32 %r0, [value];
SPIN:
    ld.acquire.gpu.global.u32 %r1, [%rd1];
    sub.s32 %r2, %r1, %r0;
    setp.lt.s32 %p, %r2, 0;
    @%p bra SPIN;
    ret;
}
.visible .entry ember_guard(.param .u64 skip, .param .u64 out, .param .f32 alpha, .param .f32 beta)
{
    .reg .pred %p;
    .reg .b32 %r<2>;
    .reg .f32 %f<5>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd0, [skip];
    cvta.to.global.u64 %rd1, %rd0;
    ld.param.u64 %rd2, [out];
    cvta.to.global.u64 %rd3, %rd2;
    ld.param.f32 %f0, [alpha];
    ld.param.f32 %f1, [beta];
    ld.acquire.gpu.global.b32 %r0, [%rd1];
    mov.b32 %f2, %r0;
    setp.neu.f32 %p, %f2, 0f00000000;
    selp.f32 %f3, 0f00000000, %f0, %p;
    selp.f32 %f4, 0f3F800000, %f1, %p;
    st.global.f32 [%rd3], %f3;
    st.global.f32 [%rd3+4], %f4;
    ret;
}
\0";

/// Queues a one-thread kernel of ours on `stream` with its parameters' addresses.
unsafe fn launch_one(
    function: dsys::CUfunction,
    stream: dsys::CUstream,
    params: &mut [*mut c_void],
    what: &str,
) -> Result<(), String> {
    let (grid, block) = ((1, 1, 1), (1, 1, 1));
    check(
        unsafe {
            dsys::cuLaunchKernel(
                function,
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                0,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        },
        what,
    )
}

/// Queues the waiter on `stream`: it returns once `*flag ≥ value` (sequence numbers).
unsafe fn launch_waiter(
    waiter: dsys::CUfunction,
    stream: dsys::CUstream,
    mut flag: u64,
    mut value: u32,
) -> Result<(), String> {
    let mut params = [
        &mut flag as *mut u64 as *mut c_void,
        &mut value as *mut u32 as *mut c_void,
    ];
    unsafe { launch_one(waiter, stream, &mut params, "launching the waiter") }
}

/// Queues the guard on `stream`: `[α, β]` or `[0, 1]` into `out` by the flag at `skip`.
unsafe fn launch_guard(
    guard: dsys::CUfunction,
    stream: dsys::CUstream,
    (mut skip, mut out): (u64, u64),
    (mut alpha, mut beta): (f32, f32),
) -> Result<(), String> {
    let mut params = [
        &mut skip as *mut u64 as *mut c_void,
        &mut out as *mut u64 as *mut c_void,
        &mut alpha as *mut f32 as *mut c_void,
        &mut beta as *mut f32 as *mut c_void,
    ];
    unsafe { launch_one(guard, stream, &mut params, "launching the guard") }
}

/// Our kernels on cuBLAS's stream (driver handles).
#[derive(Clone, Copy)]
struct OwnKernels {
    wait: dsys::CUfunction,
    guard: dsys::CUfunction,
}

fn load_waiter() -> Result<OwnKernels, String> {
    unsafe {
        let module = drv::module::load_data(WAITER_PTX.as_ptr() as *const c_void)
            .map_err(|e| format!("loading the waiter: {e:?}"))?;
        let function = |name: &std::ffi::CStr| {
            drv::module::get_function(module, name.to_owned())
                .map_err(|e| format!("the waiter's function: {e:?}"))
        };
        Ok(OwnKernels {
            wait: function(c"ember_wait_geq")?,
            guard: function(c"ember_guard")?,
        })
    }
}

/// One device's cuBLAS handle, stream and flags.
struct Blas {
    device: usize,
    context: dsys::CUcontext,
    handle: bsys::cublasHandle_t,
    stream: dsys::CUstream,
    /// `[u32; 4]` on the device: `flags[0]` written by burn's stream, `flags[1]` by ours.
    flags: CubeTensor<CudaRuntime>,
    flags_ptr: u64,
    seq: u32,
    /// The waiter kernel of step 2 and the guard, or why the device flags are not used
    /// (host-sync ordering).
    waiter: Result<OwnKernels, String>,
}

// the raw CUDA handles are used under the mutex only
unsafe impl Send for Blas {}

static STATE: Mutex<Vec<Blas>> = Mutex::new(Vec::new());

fn resource(t: &CubeTensor<CudaRuntime>) -> Option<u64> {
    match t.client.get_resource(t.handle.clone()) {
        Ok(r) => Some(r.resource().ptr),
        Err(e) => {
            fail(&format!("device pointer: {e:?}"));
            None
        }
    }
}

fn open(like: &CubeTensor<CudaRuntime>) -> Result<Blas, String> {
    let index = like.device.index;
    let flags = CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(vec![4]),
        like.client.create_from_slice(&[0u8; 16]),
        DType::U32,
    );
    let flags_ptr = resource(&flags).ok_or("flags pointer")?;
    unsafe {
        drv::init().map_err(|e| format!("cuInit: {e:?}"))?;
        let dev = drv::device::get(index as i32).map_err(|e| format!("cuDeviceGet: {e:?}"))?;
        // CubeCL runs on the device's primary context
        let context = drv::primary_ctx::retain(dev).map_err(|e| format!("retain: {e:?}"))?;
        drv::ctx::set_current(context).map_err(|e| format!("set_current: {e:?}"))?;
        let stream = drv::stream::create(drv::stream::StreamKind::NonBlocking)
            .map_err(|e| format!("stream: {e:?}"))?;
        let handle = blas::create_handle().map_err(|e| format!("cublasCreate: {e:?}"))?;
        blas::set_stream(handle, stream as _).map_err(|e| format!("cublasSetStream: {e:?}"))?;
        let waiter = match mode() {
            Mode::DeviceFlags => load_waiter(),
            _ => Err("EMBER_CUBLAS=sync".into()),
        };
        // every kernel of the protocol loaded before any waiter spins: run each once with
        // sequence number 0 (nothing waits), then drain both streams
        if let Ok(w) = waiter {
            let one = || CubeCount::Static(1, 1, 1);
            let arg = || flags.clone().into_array_arg();
            // the operand slots bound to a tensor of the caller's (never read)
            let any = || like.clone().into_array_arg();
            kernels::signal_flag::launch::<CudaRuntime>(
                &like.client,
                one(),
                CubeDim::new_single(),
                arg(),
                any(),
                any(),
                any(),
                any(),
                0,
            );
            kernels::wait_flag::launch::<CudaRuntime>(
                &like.client,
                one(),
                CubeDim::new_single(),
                arg(),
                any(),
                0,
            );
            cubecl::future::block_on(like.client.sync()).map_err(|e| format!("sync: {e:?}"))?;
            launch_waiter(w.wait, stream, flags_ptr, 0)?;
            // the guard reads `flags[0]` (0) and writes the unused `flags[2..4]`
            launch_guard(w.guard, stream, (flags_ptr, flags_ptr + 8), (1.0, 0.0))?;
            drv::stream::synchronize(stream).map_err(|e| format!("stream sync: {e:?}"))?;
        }
        if let Err(e) = &waiter {
            if mode() == Mode::DeviceFlags {
                log::warn!("ember-kernels: cuBLAS ordered by host synchronizations ({e})");
            }
        }
        Ok(Blas {
            waiter,
            device: index,
            context,
            handle,
            stream,
            flags,
            flags_ptr,
            seq: 0,
        })
    }
}

/// How cuBLAS reads a row-major `rows × cols` operand: `(transposed, ld)`.
fn layout(t: &CubeTensor<CudaRuntime>) -> Option<(bool, usize)> {
    let shape = t.meta.shape().to_vec();
    let strides = t.meta.strides().to_vec();
    let (rows, cols) = (shape[0], shape[1]);
    let (s0, s1) = (strides[0], strides[1]);
    if (s1 == 1 || cols == 1) && s0 >= cols.max(1) {
        Some((false, s0))
    } else if (s0 == 1 || rows == 1) && s1 >= rows.max(1) {
        Some((true, s1))
    } else {
        None
    }
}

fn types(dtype: DType) -> Option<(bsys::cudaDataType, bsys::cublasComputeType_t)> {
    use bsys::cublasComputeType_t as C;
    use bsys::cudaDataType as T;
    match dtype {
        DType::F32 => Some((T::CUDA_R_32F, C::CUBLAS_COMPUTE_32F_FAST_TF32)),
        DType::BF16 => Some((T::CUDA_R_16BF, C::CUBLAS_COMPUTE_32F)),
        DType::F16 => Some((T::CUDA_R_16F, C::CUBLAS_COMPUTE_32F)),
        _ => None,
    }
}

/// `A·B` (row-major `[m,k]·[k,n]`) on cuBLAS, or `None` where it does not apply (another
/// runtime, dtypes, layouts, sizes, cuBLAS off or failed): the caller then runs burn's matmul.
pub(super) fn matmul<R: CubeRuntime>(
    a: &CubeTensor<R>,
    b: &CubeTensor<R>,
    rows: Rows,
) -> Option<CubeTensor<R>> {
    let (a, b) = (cuda(a)?, cuda(b)?);
    // decided before the output is allocated: a product left to burn allocates nothing here
    let mut plan = plan(a, b)?;
    let out = output(a, b, &mut plan, a.dtype, rows);
    widen(&mut plan, b, &out);
    gemm(&plan, a, b, &out, Scalars::Host(1.0, 0.0)).then_some(())?;
    back::<R>(out)
}

/// `A·B` of bf16/f16 operands into an **f32** product (cuBLAS accumulates in f32 and writes it
/// without rounding to the operands' type): the down projection of a bf16 gradient. `None` where
/// [`matmul`] would not apply.
pub(super) fn matmul_f32_out<R: CubeRuntime>(
    a: &CubeTensor<R>,
    b: &CubeTensor<R>,
    rows: Rows,
) -> Option<CubeTensor<R>> {
    let (a, b) = (cuda(a)?, cuda(b)?);
    if !matches!(a.dtype, DType::BF16 | DType::F16) {
        return None;
    }
    let mut plan = plan(a, b)?;
    plan.c_dtype = bsys::cudaDataType::CUDA_R_32F;
    let out = output(a, b, &mut plan, DType::F32, rows);
    widen(&mut plan, b, &out);
    gemm(&plan, a, b, &out, Scalars::Host(1.0, 0.0)).then_some(())?;
    back::<R>(out)
}

/// How a fresh product's rows are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rows {
    /// `n` elements apart (a dense tensor): what the model's layers get.
    Dense,
    /// Padded to CubeCL's pitch where `n` elements are not a multiple of 16 bytes (a row of
    /// 5461 f32 or bf16) and `B` is padded too, so that the GEMM runs over the padded width
    /// ([`widen`]). Only for consumers that read strides (the subspace Adam kernel) or copy a
    /// padded input first (`float_in`).
    Aligned,
}

/// Whether products may get padded rows ([`Rows::Aligned`]): `EMBER_ALIGNED_ROWS=off` keeps every
/// product dense (the comparison).
pub(super) fn aligned_rows() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("EMBER_ALIGNED_ROWS").as_deref() != Ok("off"))
}

/// Whether a row of `cols` elements of `dtype` needs padding for cuBLAS's aligned kernels (16
/// bytes: the vector width of their loads and stores).
pub(super) fn unaligned(cols: usize, dtype: DType) -> bool {
    !(cols * dtype.size()).is_multiple_of(16)
}

/// The output of `plan`'s product `A·B`, `[m, n]` in `dtype`, laid out as `rows` says — padded
/// only where the GEMM can then run over the padded width ([`widen`]: `B` has the padding too;
/// a dense `B`, as the model's layers write gradients, keeps a dense product, which the kernels
/// read without a copy); `plan.ldc` set to its row stride.
fn output(
    like: &CubeTensor<CudaRuntime>,
    b: &CubeTensor<CudaRuntime>,
    plan: &mut Plan,
    dtype: DType,
    rows: Rows,
) -> CubeTensor<CudaRuntime> {
    let shape = vec![plan.m, plan.n];
    let padded = rows == Rows::Aligned
        && aligned_rows()
        && unaligned(plan.n, dtype)
        && !plan.b.0
        && holds_width(b, plan.k, plan.b.1, plan.n.next_multiple_of(64));
    let out = if padded {
        super::empty_pitched(like, shape, dtype)
    } else {
        empty(like, shape, dtype)
    };
    plan.ldc = match layout(&out) {
        Some((false, ld)) if ld >= plan.n => ld,
        _ => plan.n,
    };
    out
}

/// The extent the GEMM runs at in `n` (the product's contiguous dimension): where a row of `n`
/// elements is not a multiple of 16 bytes (`n` = 5461), cuBLAS's heuristics pick kernels that
/// run at a third of the rate of an extent of a multiple of 64 (PyTorch's `mm` at 2048×5461 r512
/// bf16: 111 µs at 5461, 36 µs at 5504; the update GEMM 138 against 44 µs —
/// `scripts/anchors/extent_probe.py`). So where `B` (row-major) and `C` both have rows padded to
/// at least `n` rounded up to 64 (CubeCL's pitched layout, [`Rows::Aligned`]) and their buffers
/// hold the last row's padding, the GEMM runs over the padded width: each extra column of `C`
/// is computed from the same column of `B`'s padding (whatever it holds) and lies in `C`'s
/// padding, which no tensor reads — `C` is a fresh product or not shared ([`accumulate`]'s
/// `can_mut`), so the padding is no other tensor's data either. Columns never mix in a GEMM, so
/// the product's own columns are those of the `n`-wide GEMM. `EMBER_ALIGNED_ROWS=off` keeps `n`.
fn widen(plan: &mut Plan, b: &CubeTensor<CudaRuntime>, c: &CubeTensor<CudaRuntime>) {
    if !aligned_rows() || plan.b.0 || !unaligned(plan.n, b.dtype) {
        return;
    }
    let wide = plan.n.next_multiple_of(64);
    if holds_width(b, plan.k, plan.b.1, wide)
        && holds_width(c, plan.m, plan.ldc, wide)
        && wide < i32::MAX as usize
    {
        plan.n = wide;
    }
}

/// Whether row-major `t` (`rows` rows `ld` apart) has at least `wide` elements in every row,
/// padding included, within its buffer.
fn holds_width(t: &CubeTensor<CudaRuntime>, rows: usize, ld: usize, wide: usize) -> bool {
    ld >= wide
        && rows > 0
        && ((rows - 1) * ld + wide) * t.dtype.size() <= t.handle.size_in_used() as usize
}

/// Whether an f32 weight's update GEMM may read f16 operands (`EMBER_UPDATE_OPERANDS`: `f16`,
/// the default, or `tf32`): see `EmberBackend::f16_update_operands`.
pub(super) fn f16_update_operands() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("EMBER_UPDATE_OPERANDS").as_deref() != Ok("tf32"))
}

/// A CUDA tensor as runtime `R`'s (`R` is CUDA wherever cuBLAS ran; `None` otherwise).
fn back<R: CubeRuntime>(t: CubeTensor<CudaRuntime>) -> Option<CubeTensor<R>> {
    (Box::new(t) as Box<dyn Any>)
        .downcast::<CubeTensor<R>>()
        .ok()
        .map(|t| *t)
}

/// Whether runtime `R` is CUDA with cuBLAS on (not `EMBER_CUBLAS=off`, not failed): where
/// [`accumulate`] and [`matmul_f32_out`] can run.
pub(super) fn available<R: CubeRuntime>() -> bool {
    std::any::TypeId::of::<R>() == std::any::TypeId::of::<CudaRuntime>()
        && mode() != Mode::Off
        && !FAILED.load(AtomicOrdering::Relaxed)
}

/// `α·A·B + β·C` in one GEMM (one pass over `C`: the back-projection and the weight update in
/// one call): in `C`'s own buffer where no one else holds `C` (`can_mut`). A held `C` (burn-train's
/// `Learner` holds its model while the optimizer steps on a clone, so there every weight is held;
/// likewise a model the caller keeps a clone of) is copied on our stream into a fresh buffer `D`
/// of `C`'s row stride, and `D` is updated in place by the same GEMM ([`Held::Copy`], the
/// default): the same algorithm and rounding as an unshared step, and `D` keeps `C`'s padded
/// rows, so that the next steps' GEMMs still run over the padded width ([`widen`]). With
/// `EMBER_OUT_OF_PLACE=on`, cuBLASLt reads `C` and writes `D` instead (no copy; another
/// algorithm). Returns the output (`C` or `D`), or `None` where [`matmul`] would not apply, `C` is
/// not row-major of the operands' dtype, or no `D` of `C`'s row stride could be made: nothing is
/// written then and the caller falls back. With the step's skip flag (f32 `[1]` on the device) the
/// scalars are made on the device — `α = 0, β = 1` where the flag is set (`D` is then `C`'s copy)
/// — and cuBLAS reads them there (`CUBLAS_POINTER_MODE_DEVICE`): nothing goes through the host.
pub(super) fn accumulate<R: CubeRuntime>(
    a: &CubeTensor<R>,
    b: &CubeTensor<R>,
    c: &CubeTensor<R>,
    alpha: f32,
    beta: f32,
    skip: Option<&CubeTensor<R>>,
) -> Option<CubeTensor<R>> {
    let (Some(a), Some(b), Some(c)) = (cuda(a), cuda(b), cuda(c)) else {
        return None;
    };
    // f16 operands may add into an f32 `C` (the update of an f32 weight on f16 tensor cores)
    let widened = c.dtype == DType::F32 && a.dtype == DType::F16;
    let zero;
    let skip = match skip {
        // the f32 weight's update GEMM reads its scalars on the device without a skip flag too
        // (a flag that is never set), as a guarded GEMM does: the pointer mode of the pinned
        // algorithm ([`tune::pinned_update`]); likewise any accumulating GEMM under the
        // diagnosis `EMBER_UPDATE_SCALARS=device`
        None if device_scalars() || (widened && tune::pinned_update()) => {
            zero = zero_flag(c);
            Some(&zero)
        }
        None => None,
        Some(s) => match cuda(s) {
            Some(s) if s.dtype == DType::F32 && s.device == a.device => Some(s),
            _ => return None,
        },
    };
    let plan = plan(a, b)?;
    // `C` row-major, its rows possibly padded (CUDA's pitched layouts): cuBLAS writes it in
    // place through its leading dimension
    let ldc = match layout(c) {
        Some((false, ld)) => ld,
        _ => return None,
    };
    let fits = c.meta.shape().to_vec() == [plan.m, plan.n]
        && (c.dtype == a.dtype || widened)
        && c.device == a.device
        && ldc < i32::MAX as usize;
    if !fits {
        return None;
    }
    // a held `C` is read, and the result written to a fresh `D` of `C`'s row stride
    let (d, copy_first) = if c.can_mut() {
        (None, 0)
    } else {
        let same_rows =
            |d: &CubeTensor<CudaRuntime>| matches!(layout(d), Some((false, ld)) if ld == ldc);
        let held = if out_of_place() {
            Held::OutOfPlace
        } else {
            held_update()
        };
        let d = match held {
            Held::Fallback => None,
            Held::OutOfPlace => (ldc == plan.n)
                .then(|| empty(c, vec![plan.m, plan.n], c.dtype))
                .filter(same_rows),
            // CubeCL's pitched layout where `C` has it (a weight made by burn's ops), else dense
            Held::Copy => Some(super::empty_pitched(c, vec![plan.m, plan.n], c.dtype))
                .filter(same_rows)
                .or_else(|| {
                    (ldc == plan.n)
                        .then(|| empty(c, vec![plan.m, plan.n], c.dtype))
                        .filter(same_rows)
                }),
        };
        // the bytes from `C`'s first element to its last (its last row's padding left out)
        let bytes = ((plan.m - 1) * ldc + plan.n) * c.dtype.size();
        let copy_first = match (&d, held) {
            (Some(d), Held::Copy)
                if bytes <= d.handle.size_in_used() as usize
                    && bytes <= c.handle.size_in_used() as usize =>
            {
                bytes
            }
            (Some(_), Held::Copy) | (None, _) => {
                note_shared(Shared::Accumulate);
                return None;
            }
            (Some(_), _) => 0,
        };
        (d, copy_first)
    };
    let c_dtype = if widened {
        bsys::cudaDataType::CUDA_R_32F
    } else {
        plan.c_dtype
    };
    let mut plan = Plan {
        ldc,
        c_dtype,
        out_of_place: d.is_some() && copy_first == 0,
        copy_first,
        ..plan
    };
    // the GEMM over the padded width where the buffer it writes in place is no one else's: `C`
    // (`can_mut` above), or the copy `D` (fresh: its padding columns are no one's data); not a
    // cuBLASLt `D` written from `C`
    match (&d, copy_first) {
        (None, _) => widen(&mut plan, b, c),
        (Some(d), 1..) => widen(&mut plan, b, d),
        (Some(_), 0) => {}
    }
    let scalars = match skip {
        None => Scalars::Host(alpha, beta),
        // `[α, β]` written on our stream by the guard, after the waiter (no launch of burn's)
        Some(skip) => Scalars::Guarded(Box::new(Guard {
            skip: skip.clone(),
            out: empty(c, vec![2], DType::F32),
            alpha,
            beta,
        })),
    };
    let out = d.as_ref().unwrap_or(c);
    if !gemms(&[Job {
        plan: &plan,
        a,
        b,
        c,
        d: d.as_ref(),
        scalars,
    }]) {
        return None;
    }
    if d.is_some() {
        note_shared(Shared::OutOfPlace);
    }
    back::<R>(out.clone())
}

/// What [`accumulate`] does with a `C` held elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// `D ← C` on our stream, then the in-place GEMM on `D` (the default).
    Copy,
    /// cuBLASLt's `D = α·A·B + β·C` (`EMBER_OUT_OF_PLACE=on`).
    OutOfPlace,
    /// Nothing: the caller's own update (`EMBER_HELD_UPDATE=fallback`; the behaviour before
    /// 2026-12-08, for comparisons).
    Fallback,
}

/// [`Held`] by `EMBER_HELD_UPDATE` (`copy`, the default, or `fallback`).
fn held_update() -> Held {
    static HELD: OnceLock<Held> = OnceLock::new();
    *HELD.get_or_init(|| match std::env::var("EMBER_HELD_UPDATE").as_deref() {
        Ok("fallback") => Held::Fallback,
        Ok("copy") | Ok("") | Err(_) => Held::Copy,
        Ok(other) => {
            log::warn!("EMBER_HELD_UPDATE={other}: expected copy or fallback; using copy");
            Held::Copy
        }
    })
}

/// Whether [`accumulate`] writes a held `C` with cuBLASLt out of place (`EMBER_OUT_OF_PLACE=on`).
/// Off by default: on an H200 (2026-12-07) it passed the kernel checks and wrote every Learner
/// update out of place, but pretraining the `small` model showed no gain beyond the run-to-run
/// spread (`docs/perf-notes.md`), and its algorithm rounds differently from the in-place GEMM's.
fn out_of_place() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        matches!(
            std::env::var("EMBER_OUT_OF_PLACE").as_deref(),
            Ok("on") | Ok("1")
        )
    })
}

/// Whether every accumulating GEMM without a skip flag reads its scalars on the device
/// (`EMBER_UPDATE_SCALARS=device`; diagnosis: cuBLAS's algorithms run at different speeds by
/// pointer mode, `docs/perf-notes.md`).
fn device_scalars() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("EMBER_UPDATE_SCALARS").as_deref() == Ok("device"))
}

/// A skip flag that is never set (f32 `[0]`), one a device, kept for the process.
fn zero_flag(like: &CubeTensor<CudaRuntime>) -> CubeTensor<CudaRuntime> {
    static ZEROS: Mutex<Vec<(usize, CubeTensor<CudaRuntime>)>> = Mutex::new(Vec::new());
    let mut zeros = ZEROS.lock().unwrap_or_else(|e| e.into_inner());
    let index = like.device.index;
    if let Some((_, z)) = zeros.iter().find(|(d, _)| *d == index) {
        return z.clone();
    }
    let z = CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(vec![1]),
        like.client.create_from_slice(&0f32.to_le_bytes()),
        DType::F32,
    );
    zeros.push((index, z.clone()));
    z
}

/// The device-side `α, β` of a skip-guarded GEMM, before they are written: the skip flag,
/// the buffer the guard writes, the scalars of a step that is not skipped.
#[derive(Clone)]
struct Guard {
    skip: CubeTensor<CudaRuntime>,
    out: CubeTensor<CudaRuntime>,
    alpha: f32,
    beta: f32,
}

impl Guard {
    /// `[α, β]` written by burn's stream (CubeCL's kernel): for host-synchronized windows,
    /// which have no guard of ours.
    fn written(&self) -> Scalars {
        kernels::guarded_scalars::launch::<CudaRuntime>(
            &self.out.client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_single(),
            self.skip.clone().into_array_arg(),
            self.out.clone().into_array_arg(),
            self.alpha,
            self.beta,
        );
        Scalars::Device(Box::new(self.out.clone()))
    }
}

/// The `α`, `β` of a GEMM: on the host, `[α, β]` (f32) in a device buffer, or that buffer
/// still to be written by the guard from the skip flag ([`Guard`]).
#[derive(Clone)]
enum Scalars {
    Host(f32, f32),
    Device(Box<CubeTensor<CudaRuntime>>),
    Guarded(Box<Guard>),
}

/// `t` as a CUDA tensor, if cuBLAS is on and `t` is one.
fn cuda<R: CubeRuntime>(t: &CubeTensor<R>) -> Option<&CubeTensor<CudaRuntime>> {
    if mode() == Mode::Off || FAILED.load(AtomicOrdering::Relaxed) {
        return None;
    }
    (t as &dyn Any).downcast_ref::<CubeTensor<CudaRuntime>>()
}

/// How cuBLAS runs `A·B`: sizes, types and each operand's `(transposed, ld)`.
#[derive(Clone)]
struct Plan {
    m: usize,
    k: usize,
    n: usize,
    dtype: bsys::cudaDataType,
    /// `C`'s type: the operands' ([`matmul`], [`accumulate`]) or f32 ([`matmul_f32_out`]).
    c_dtype: bsys::cudaDataType,
    /// `C`'s row stride (its leading dimension in cuBLAS's column-major view): `n` for a
    /// fresh product, the pitch of a padded `C` that [`accumulate`] writes in place.
    ldc: usize,
    compute: bsys::cublasComputeType_t,
    a: (bool, usize),
    b: (bool, usize),
    /// `D = α·A·B + β·C` into a separate output `D` of `C`'s layout ([`accumulate`] on a held
    /// `C`): cuBLASLt only (`cublasGemmEx` writes `C`).
    out_of_place: bool,
    /// Bytes of `C` copied into `D` on our stream before the GEMM, which then runs in place on
    /// `D` ([`Held::Copy`]); 0 for none.
    copy_first: usize,
}

/// The [`Plan`] of `A·B`, or `None` where cuBLAS does not take it: shapes or dtypes that do not
/// match, sizes beyond `i32`, layouts other than row-major/transposed, products under
/// [`crate::vendor_gemm_min_macs`].
fn plan(a: &CubeTensor<CudaRuntime>, b: &CubeTensor<CudaRuntime>) -> Option<Plan> {
    let (sa, sb) = (a.meta.shape().to_vec(), b.meta.shape().to_vec());
    if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[0] || a.dtype != b.dtype {
        return None;
    }
    if a.device != b.device || a.qparams.is_some() || b.qparams.is_some() {
        return None;
    }
    let (m, k, n) = (sa[0], sa[1], sb[1]);
    if m.saturating_mul(k).saturating_mul(n) < crate::vendor_gemm_min_macs() {
        return None;
    }
    let (dtype, compute) = types(a.dtype)?;
    let (la, lb) = (layout(a)?, layout(b)?);
    let fits = |x: usize| x > 0 && x < i32::MAX as usize;
    [m, k, n, la.1, lb.1]
        .iter()
        .all(|&x| fits(x))
        .then_some(Plan {
            m,
            k,
            n,
            dtype,
            c_dtype: dtype,
            ldc: n,
            compute,
            a: la,
            b: lb,
            out_of_place: false,
            copy_first: 0,
        })
}

/// `C ← α·A·B + β·C` on cuBLAS as `plan` says, ordered with burn's stream; `false` if it did not
/// run (the caller falls back).
fn gemm(
    plan: &Plan,
    a: &CubeTensor<CudaRuntime>,
    b: &CubeTensor<CudaRuntime>,
    c: &CubeTensor<CudaRuntime>,
    scalars: Scalars,
) -> bool {
    gemms(&[Job {
        plan,
        a,
        b,
        c,
        d: None,
        scalars,
    }])
}

/// Two products `A₁·B₁`, `A₂·B₂` (fresh outputs) in one ordering window: one signal, one waiter,
/// both GEMMs, one release, one round trip to CubeCL's server ([module docs](self)) — the two
/// products of a linear layer's backward pass. `None` where either would not run on cuBLAS (the
/// caller then runs both its own way).
pub(super) fn matmul_pair<R: CubeRuntime>(
    (a1, b1): (&CubeTensor<R>, &CubeTensor<R>),
    (a2, b2): (&CubeTensor<R>, &CubeTensor<R>),
) -> Option<(CubeTensor<R>, CubeTensor<R>)> {
    let (a1, b1, a2, b2) = (cuda(a1)?, cuda(b1)?, cuda(a2)?, cuda(b2)?);
    if a1.device != a2.device {
        return None;
    }
    let (p1, p2) = (plan(a1, b1)?, plan(a2, b2)?);
    let c1 = empty(a1, vec![p1.m, p1.n], a1.dtype);
    let c2 = empty(a2, vec![p2.m, p2.n], a2.dtype);
    let jobs = [
        Job {
            plan: &p1,
            a: a1,
            b: b1,
            c: &c1,
            d: None,
            scalars: Scalars::Host(1.0, 0.0),
        },
        Job {
            plan: &p2,
            a: a2,
            b: b2,
            c: &c2,
            d: None,
            scalars: Scalars::Host(1.0, 0.0),
        },
    ];
    gemms(&jobs).then_some(())?;
    Some((back(c1)?, back(c2)?))
}

/// The down projection `R = A·B` (a fresh f32 product; `A = Pᵀ`, `B = G` for a left basis,
/// `A = G`, `B = Pᵀ` for a right one) and Fira's residual `G ← G − α·up(R)` (`P·R` or `R·P`,
/// accumulated into `G` in place) in one ordering window: the two GEMMs run one after the other
/// on our stream, the second reading the first's output. `g` is the one of `A`, `B` that is the
/// gradient; it must be f32, row-major and not shared (`can_mut`). `None` where either GEMM would
/// not run on cuBLAS (nothing was queued then).
pub(super) fn down_residual<R: CubeRuntime>(
    (a, b): (&CubeTensor<R>, &CubeTensor<R>),
    p: &CubeTensor<R>,
    left: bool,
    g: &CubeTensor<R>,
    alpha: f32,
) -> Option<CubeTensor<R>> {
    let (a, b, p, g) = (cuda(a)?, cuda(b)?, cuda(p)?, cuda(g)?);
    if g.dtype != DType::F32 || a.dtype != DType::F32 || b.dtype != DType::F32 || !g.can_mut() {
        return None;
    }
    let first = plan(a, b)?;
    let r = empty(a, vec![first.m, first.n], DType::F32);
    let (u, v) = if left { (p, &r) } else { (&r, p) };
    let second = plan(u, v)?;
    let ldc = match layout(g) {
        Some((false, ld)) => ld,
        _ => return None,
    };
    if g.meta.shape().to_vec() != [second.m, second.n] || ldc >= i32::MAX as usize {
        return None;
    }
    let second = Plan { ldc, ..second };
    let jobs = [
        Job {
            plan: &first,
            a,
            b,
            c: &r,
            d: None,
            scalars: Scalars::Host(1.0, 0.0),
        },
        Job {
            plan: &second,
            a: u,
            b: v,
            c: g,
            d: None,
            scalars: Scalars::Host(-alpha, 1.0),
        },
    ];
    gemms(&jobs).then_some(())?;
    back::<R>(r)
}

/// One GEMM of an ordering window: `C ← α·A·B + β·C` as `plan` says (`D ← α·A·B + β·C` where it
/// has `D`: `plan.out_of_place`).
struct Job<'a> {
    plan: &'a Plan,
    a: &'a CubeTensor<CudaRuntime>,
    b: &'a CubeTensor<CudaRuntime>,
    c: &'a CubeTensor<CudaRuntime>,
    d: Option<&'a CubeTensor<CudaRuntime>>,
    scalars: Scalars,
}

/// What the device thread needs of a [`Job`] besides its operands' device pointers: the plan
/// and the scalars.
#[derive(Clone, Copy)]
struct Gemm<'a> {
    plan: &'a Plan,
    scalars: &'a Scalars,
}

impl Job<'_> {
    fn gemm(&self) -> Gemm<'_> {
        Gemm {
            plan: self.plan,
            scalars: &self.scalars,
        }
    }

    /// The tensors whose device pointers the GEMM takes, in [`Pointers`]' order: `A`, `B`, `C`,
    /// then the scalars' buffer and the skip flag where it has them, then `D` where it has one.
    fn operands(&self) -> [Option<&CubeTensor<CudaRuntime>>; 6] {
        let (scalars, skip) = match &self.scalars {
            Scalars::Device(t) => (Some(&**t), None),
            Scalars::Guarded(g) => (Some(&g.out), Some(&g.skip)),
            Scalars::Host(..) => (None, None),
        };
        [
            Some(self.a),
            Some(self.b),
            Some(self.c),
            scalars,
            skip,
            self.d,
        ]
    }
}

/// A [`Job`] as an asynchronous window carries it to CubeCL's device thread: its plan, its
/// scalars and its operands' **bindings**. A binding keeps the buffer alive (the pool does not
/// hand it out again) without counting as a holder of the tensor (CubeCL's `Handle::can_mut`),
/// as CubeCL's own queued kernels hold their buffers. With tensor handles instead, whether a
/// window's product or operand could be written in place right after it (a layer's weight
/// gradient by Fira's residual, a weight by its update GEMM) depended on whether the device
/// thread had run the window yet — a race that sent some steps down another path, with other
/// rounding, at random.
/// (`EMBER_WINDOW_HANDLES=on` carries the operands' handles too, as before: for comparisons. On
/// the H100 on 2026-12-07 one Fira run with it ended where the bindings' runs did, so it does not
/// reproduce the race on demand.)
struct OwnedJob {
    plan: Plan,
    scalars: Scalars,
    operands: [Option<Binding>; 6],
    _handles: Vec<CubeTensor<CudaRuntime>>,
}

impl OwnedJob {
    fn new(j: &Job) -> Self {
        static HANDLES: OnceLock<bool> = OnceLock::new();
        let handles = *HANDLES.get_or_init(|| {
            matches!(
                std::env::var("EMBER_WINDOW_HANDLES").as_deref(),
                Ok("on") | Ok("1")
            )
        });
        OwnedJob {
            plan: j.plan.clone(),
            scalars: j.scalars.clone(),
            operands: j.operands().map(|t| t.map(|t| t.handle.clone().binding())),
            _handles: if handles {
                vec![j.a.clone(), j.b.clone(), j.c.clone()]
            } else {
                Vec::new()
            },
        }
    }

    fn gemm(&self) -> Gemm<'_> {
        Gemm {
            plan: &self.plan,
            scalars: &self.scalars,
        }
    }
}

/// What identifies a GEMM for cuBLAS (sizes, types, layouts, where the scalars live): a window
/// of GEMMs that all ran once in a blocking window ([`gemms`]) runs asynchronously.
type Signature = (
    usize,
    usize,
    usize,
    u32,
    u32,
    usize,
    (bool, usize),
    (bool, usize),
    bool,
    u8,
);

fn signature(j: &Gemm) -> Signature {
    let p = j.plan;
    (
        p.m,
        p.k,
        p.n,
        p.dtype as u32,
        p.c_dtype as u32,
        p.ldc,
        p.a,
        p.b,
        !matches!(j.scalars, Scalars::Host(..)),
        // where the product goes: `C` in place, a cuBLASLt `D`, or `C` copied to `D` first
        match (p.out_of_place, p.copy_first) {
            (true, _) => 1,
            (false, 0) => 0,
            (false, _) => 2,
        },
    )
}

/// Signatures that ran once (blocking) without an error.
static VALIDATED: Mutex<Option<std::collections::HashSet<Signature>>> = Mutex::new(None);

/// The error of an asynchronous window (its product is invalid): the next product panics with it.
static ASYNC_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Whether windows whose GEMMs were validated run without blocking the caller (default on;
/// `EMBER_CUBLAS_ASYNC=off` blocks on every window).
fn async_windows() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("EMBER_CUBLAS_ASYNC").as_deref(),
            Ok("off") | Ok("0")
        )
    })
}

/// The waiter and guard kernels, movable to CubeCL's device thread (driver handles, used there
/// only).
#[derive(Clone, Copy)]
struct Waiter(OwnKernels);
unsafe impl Send for Waiter {}

/// What a window needs of a device's [`Blas`], copied out of it: raw driver handles (used on
/// CubeCL's device thread only) and the flags.
#[derive(Clone)]
struct Window {
    device: usize,
    context: dsys::CUcontext,
    handle: bsys::cublasHandle_t,
    stream: dsys::CUstream,
    flags: CubeTensor<CudaRuntime>,
    flags_ptr: u64,
    waiter: Option<Waiter>,
}

// the raw handles are only used on CubeCL's device thread, one window at a time
unsafe impl Send for Window {}

/// The device pointers of a job: `A`, `B`, `C` and, for device scalars, theirs (with the skip
/// flag's for a guard that is still to write them), `D` (a separate output, where it has one).
type Pointers = (u64, u64, u64, Option<u64>, Option<u64>, Option<u64>);

fn pointers<T>(
    operands: impl IntoIterator<Item = [Option<T>; 6]>,
    mut ptr: impl FnMut(T) -> Option<u64>,
) -> Result<Vec<Pointers>, String> {
    let mut p = |t: Option<T>| {
        t.map(|t| ptr(t).ok_or_else(|| "device pointer".to_string()))
            .transpose()
    };
    operands
        .into_iter()
        .map(|[a, b, c, scalars, skip, d]| {
            let operand = |x: Option<u64>| x.ok_or_else(|| "an operand".to_string());
            Ok((
                operand(p(a)?)?,
                operand(p(b)?)?,
                operand(p(c)?)?,
                p(scalars)?,
                p(skip)?,
                p(d)?,
            ))
        })
        .collect()
}

/// `jobs` (all on one device) on cuBLAS in one ordering window; `false` if they did not run (the
/// caller falls back; nothing of the products is used).
///
/// The first window of each GEMM signature runs whole on CubeCL's device thread in one blocking
/// round trip (`ComputeClient::exclusive`: the signal, the device pointers, our waiter, the GEMMs,
/// the release and the wait kernel), so that an error falls back to burn's matmul. Later ones
/// are queued without blocking the caller, in three parts that CubeCL's device thread runs in
/// order: the signal kernel, a task that reads the device pointers from the server and queues
/// our waiter, the GEMMs and the release on our stream (`DeviceHandle::submit`), and the wait
/// kernel; then CubeCL's task queue is flushed (its device thread runs queued tasks 32 at a time
/// or when a caller blocks, so a window of a short step would otherwise wait for the step's
/// final synchronization; `EMBER_CUBLAS_FLUSH=off` leaves it). An error in that task (the driver or cuBLAS failing on a GEMM that ran before) still
/// releases burn's stream, but leaves that product invalid: it is logged, and the next product
/// panics with the error ([`status`] reports it). The device's state stays locked while a window
/// is queued, so windows take their sequence numbers in the order they reach the device thread.
fn gemms(jobs: &[Job]) -> bool {
    let Some(first) = jobs.first() else {
        return true;
    };
    crate::host_trace::note("cuBLAS window requested");
    if let Some(e) = ASYNC_ERROR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        panic!("ember-kernels: cuBLAS failed on an earlier product, whose result is invalid: {e}");
    }
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let index = first.a.device.index;
    if !state.iter().any(|s| s.device == index) {
        match open(first.a) {
            Ok(s) => state.push(s),
            Err(e) => {
                fail(&e);
                return false;
            }
        }
    }
    let Some(blas) = state.iter_mut().find(|s| s.device == index) else {
        return false;
    };
    let window = Window {
        device: blas.device,
        context: blas.context,
        handle: blas.handle,
        stream: blas.stream,
        flags: blas.flags.clone(),
        flags_ptr: blas.flags_ptr,
        waiter: blas.waiter.as_ref().ok().copied().map(Waiter),
    };
    let seq = blas.seq.wrapping_add(1);
    blas.seq = seq;
    let signatures: Vec<Signature> = jobs.iter().map(|j| signature(&j.gemm())).collect();
    let validated = {
        let v = VALIDATED.lock().unwrap_or_else(|e| e.into_inner());
        v.as_ref()
            .is_some_and(|v| signatures.iter().all(|s| v.contains(s)))
    };
    if window.waiter.is_some() && validated && async_windows() {
        queue_window(&window, jobs, seq);
        crate::host_trace::note("cuBLAS window queued");
        return true;
    }
    crate::host_trace::note("cuBLAS window blocking");
    // without our kernels (host-synchronized windows) a guard's scalars are written by burn's
    // stream, before the synchronization below
    let written: Vec<Job>;
    let jobs = if window.waiter.is_none() {
        written = jobs
            .iter()
            .map(|j| Job {
                scalars: match &j.scalars {
                    Scalars::Guarded(g) => g.written(),
                    other => other.clone(),
                },
                ..*j
            })
            .collect();
        &written[..]
    } else {
        jobs
    };
    if window.waiter.is_none() {
        if let Err(e) = cubecl::future::block_on(first.a.client.sync()) {
            fail(&format!("sync: {e:?}"));
            return false;
        }
    }
    let client = first.a.client.clone();
    match client.exclusive(move || run_window(&window, jobs, seq)) {
        Ok((_, Ok(()))) => {
            VALIDATED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(Default::default)
                .extend(signatures);
            true
        }
        Ok((_, Err(e))) => {
            fail(&e);
            false
        }
        Err(e) => {
            fail(&format!("CubeCL's device thread: {e:?}"));
            false
        }
    }
}

/// Step 1 on burn's stream: `flags[0] ← seq` once the operands (and the first job's product and
/// scalars) are written — the kernel is bound to them, so queued after the kernels that wrote
/// them.
fn launch_signal(w: &Window, jobs: &[Job], seq: u32) {
    let bind: Vec<&CubeTensor<CudaRuntime>> = if jobs.len() == 1 {
        let j = &jobs[0];
        let scalars = match &j.scalars {
            Scalars::Device(t) => &**t,
            // the guard reads the flag on our stream: the signal waits for its writer
            Scalars::Guarded(g) => &g.skip,
            Scalars::Host(..) => j.c,
        };
        vec![j.a, j.b, j.c, scalars]
    } else {
        vec![jobs[0].a, jobs[0].b, jobs[1].a, jobs[1].b]
    };
    kernels::signal_flag::launch::<CudaRuntime>(
        &jobs[0].a.client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_single(),
        w.flags.clone().into_array_arg(),
        bind[0].clone().into_array_arg(),
        bind[1].clone().into_array_arg(),
        bind[2].clone().into_array_arg(),
        bind[3].clone().into_array_arg(),
        seq,
    );
}

/// Step 3 on burn's stream: spins until `flags[1] ≥ seq` (bound to the first product).
fn launch_wait(w: &Window, jobs: &[Job], seq: u32) {
    kernels::wait_flag::launch::<CudaRuntime>(
        &jobs[0].a.client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_single(),
        w.flags.clone().into_array_arg(),
        jobs[0].c.clone().into_array_arg(),
        seq,
    );
}

/// Step 2 on our stream: the waiter (device flags), the GEMMs, then `flags[1] ← seq` — written
/// whatever the GEMMs did, so that burn's stream is released. `(released, result)`; where the
/// release could not be queued, our stream is synchronized.
fn enqueue_gemms(
    w: &Window,
    jobs: &[Gemm],
    pointers: &Result<Vec<Pointers>, String>,
    seq: u32,
) -> (bool, Result<(), String>) {
    unsafe {
        let mut outcome =
            drv::ctx::set_current(w.context).map_err(|e| format!("set_current: {e:?}"));
        let timed = timeline::enabled() && outcome.is_ok();
        if timed {
            timeline::record(w.stream, timeline::Point::Queued);
        }
        if let (Ok(()), Some(Waiter(own))) = (&outcome, w.waiter) {
            outcome = launch_waiter(own.wait, w.stream, w.flags_ptr, seq);
        }
        if timed {
            timeline::record(w.stream, timeline::Point::Signaled);
        }
        if outcome.is_ok() {
            outcome = pointers.clone().and_then(|pointers| {
                for (j, &(pa, pb, pc, ps, skip, pd)) in jobs.iter().zip(&pointers) {
                    // a held `C` copied to `D` first: then everything as in place on `D`
                    let (pc, pd) = match (j.plan.copy_first, pd) {
                        (0, pd) => (pc, pd),
                        (bytes, Some(pd)) => {
                            check(
                                dsys::cuMemcpyDtoDAsync_v2(pd, pc, bytes, w.stream),
                                "cuMemcpyDtoDAsync (a held weight)",
                            )?;
                            (pd, None)
                        }
                        (_, None) => return Err("a copied GEMM without its output".into()),
                    };
                    if let (Scalars::Guarded(g), Some(skip), Some(out)) = (j.scalars, skip, ps) {
                        let Some(Waiter(own)) = w.waiter else {
                            return Err("a guarded GEMM without the guard kernel".into());
                        };
                        launch_guard(own.guard, w.stream, (skip, out), (g.alpha, g.beta))?;
                    }
                    // an out-of-place GEMM on cuBLASLt's algorithm for it ([`tune::out_of_place`]);
                    // cuBLASLt's timed choice where `EMBER_CUBLASLT=tune` ([`tune`]), else the
                    // pinned algorithm of an f32 weight's update GEMM
                    let choice = if j.plan.out_of_place {
                        let sig = signature(j);
                        Some(match tune::choice(&sig) {
                            Some(c) => c,
                            None => tune::out_of_place(w.device, sig, j, ps.is_some()),
                        })
                    } else if tune::enabled() {
                        let sig = signature(j);
                        Some(match tune::choice(&sig) {
                            Some(c) => c,
                            None => {
                                tune::tune(w.device, w.handle, w.stream, sig, j, (pa, pb, pc), ps)
                            }
                        })
                    } else if tune::pins(j, ps) {
                        let sig = signature(j);
                        Some(match tune::choice(&sig) {
                            Some(c) => c,
                            None => tune::pin(w.device, sig, j),
                        })
                    } else {
                        None
                    };
                    match (choice.as_deref(), pd) {
                        (Some(tune::Choice::Lt(t)), pd) => {
                            tune::run(t, w.stream, j, (pa, pb, pc), ps, pd.unwrap_or(pc))?
                        }
                        // no cuBLASLt algorithm for it: `D ← C` on our stream, then `D` in place
                        (_, Some(pd)) => {
                            let (_, size, _) =
                                tune::lt_type(j.plan.c_dtype).ok_or("output type")?;
                            let bytes = j.plan.ldc * j.plan.m * size;
                            check(
                                dsys::cuMemcpyDtoDAsync_v2(pd, pc, bytes, w.stream),
                                "cuMemcpyDtoDAsync",
                            )?;
                            run_gemm(w.handle, j, pa, pb, pd, ps)?
                        }
                        (_, None) => run_gemm(w.handle, j, pa, pb, pc, ps)?,
                    }
                }
                Ok(())
            });
        }
        if timed {
            timeline::record(w.stream, timeline::Point::Done);
        }
        let mut released = false;
        if w.waiter.is_some() {
            let written = check(
                dsys::cuMemsetD32Async(w.flags_ptr + 4, seq, 1, w.stream),
                "cuMemsetD32Async",
            );
            released = written.is_ok();
            outcome = outcome.and(written);
        }
        if !released {
            let synced =
                drv::stream::synchronize(w.stream).map_err(|e| format!("stream sync: {e:?}"));
            outcome = outcome.and(synced);
        }
        (released, outcome)
    }
}

/// One blocking window, whole on CubeCL's device thread ([`gemms`]): `(released, result)`.
fn run_window(w: &Window, jobs: &[Job], seq: u32) -> (bool, Result<(), String>) {
    let flags = w.waiter.is_some();
    if flags {
        launch_signal(w, jobs, seq);
    }
    let pointers = pointers(jobs.iter().map(Job::operands), resource);
    let gemms: Vec<Gemm> = jobs.iter().map(Job::gemm).collect();
    let (released, result) = enqueue_gemms(w, &gemms, &pointers, seq);
    if released {
        launch_wait(w, jobs, seq);
    }
    (released, result)
}

/// One window queued without blocking ([`gemms`]; device flags only).
fn queue_window(w: &Window, jobs: &[Job], seq: u32) {
    if timeline::enabled() {
        timeline::probe("device thread: before the signal");
    }
    launch_signal(w, jobs, seq);
    let owned: Vec<OwnedJob> = jobs.iter().map(OwnedJob::new).collect();
    let task_window = w.clone();
    let handle = DeviceHandle::<<CudaRuntime as Runtime>::Server>::new(jobs[0].a.device.to_id());
    let submitted = handle.clone();
    handle.submit(move |server| {
        // the device pointers from the server itself (this task holds it)
        let stream = StreamId::current();
        let pointers = pointers(owned.iter().map(|o| o.operands.clone()), |b| {
            server
                .get_resource(b, stream)
                .ok()
                .map(|r| r.resource().ptr)
        });
        let gemms: Vec<Gemm> = owned.iter().map(OwnedJob::gemm).collect();
        let (released, result) = enqueue_gemms(&task_window, &gemms, &pointers, seq);
        if let Err(e) = result {
            let e = if released {
                e
            } else {
                format!("{e}; burn's stream could not be released")
            };
            log::error!(
                "ember-kernels: cuBLAS failed on a queued product ({e}); its result is invalid"
            );
            // not `fail`: that would send the next products to burn's matmul quietly; the next
            // product panics with this error instead ([`gemms`])
            *ASYNC_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    });
    launch_wait(w, jobs, seq);
    // CubeCL's device thread runs queued tasks 32 at a time, or when a caller blocks: without
    // this the window (and the launches before it) could wait for 32 more ops or the next
    // synchronization while the GPU idles
    if flush_windows() {
        submitted.flush_queue();
    }
}

/// Whether a queued window flushes CubeCL's task queue (`EMBER_CUBLAS_FLUSH=off`: it does not,
/// for comparisons).
fn flush_windows() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("EMBER_CUBLAS_FLUSH").as_deref(),
            Ok("off") | Ok("0")
        )
    })
}

/// One `cublasGemmEx` of a job on the handle's stream (row-major `C = A·B` is column-major
/// `Cᵀ = Bᵀ·Aᵀ`: cuBLAS's first operand is `B`).
unsafe fn run_gemm(
    handle: bsys::cublasHandle_t,
    j: &Gemm,
    pa: u64,
    pb: u64,
    pc: u64,
    scalars_ptr: Option<u64>,
) -> Result<(), String> {
    let &Plan {
        m,
        k,
        n,
        dtype,
        c_dtype,
        ldc,
        compute,
        a: (a_t, lda),
        b: (b_t, ldb),
        ..
    } = j.plan;
    let (host_alpha, host_beta) = match *j.scalars {
        Scalars::Host(alpha, beta) => (alpha, beta),
        Scalars::Device(_) | Scalars::Guarded(_) => (0.0, 0.0),
    };
    let (p_alpha, p_beta) = match scalars_ptr {
        None => (
            &host_alpha as *const f32 as *const c_void,
            &host_beta as *const f32 as *const c_void,
        ),
        Some(p) => (p as *const c_void, (p + 4) as *const c_void),
    };
    let on_device = scalars_ptr.is_some();
    let op = |t: bool| {
        if t {
            bsys::cublasOperation_t::CUBLAS_OP_T
        } else {
            bsys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let pointer_mode = |device: bool| {
        let mode = if device {
            bsys::cublasPointerMode_t::CUBLAS_POINTER_MODE_DEVICE
        } else {
            bsys::cublasPointerMode_t::CUBLAS_POINTER_MODE_HOST
        };
        let status = unsafe { bsys::cublasSetPointerMode_v2(handle, mode) };
        if status == bsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            Ok(())
        } else {
            Err(format!("cublasSetPointerMode: {status:?}"))
        }
    };
    let mode_set = if on_device {
        pointer_mode(true)
    } else {
        Ok(())
    };
    let gemm = mode_set.and_then(|()| unsafe {
        blas::gemm_ex(
            handle,
            op(b_t),
            op(a_t),
            n as i32,
            m as i32,
            k as i32,
            p_alpha,
            pb as *const c_void,
            dtype,
            ldb as i32,
            pa as *const c_void,
            dtype,
            lda as i32,
            p_beta,
            pc as *mut c_void,
            c_dtype,
            ldc as i32,
            compute,
            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(|e| format!("cublasGemmEx: {e:?}"))
    });
    // back to host scalars (the handle's default) whatever the GEMM did
    match (gemm, on_device) {
        (Ok(()), true) => pointer_mode(false),
        (Err(e), true) => pointer_mode(false).and(Err(e)),
        (r, false) => r,
    }
}

fn check(r: dsys::CUresult, what: &str) -> Result<(), String> {
    if r == dsys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what}: {r:?}"))
    }
}

/// A timeline of the cuBLAS windows for diagnosis (`EMBER_CUBLAS_TIMELINE=1`; off by default, and
/// then nothing is recorded): CUDA events on our stream at each window's points — `Queued`
/// (CubeCL's device thread queued the window; our stream idle, so the event fires then),
/// `Signaled` (the waiter saw burn's stream reach the window: the operands were written) and
/// `Done` (the GEMMs finished) — with the host's clock at queueing, relative to a
/// [`mark`](timeline::mark) made after a device synchronization. [`report`](timeline::report)
/// synchronizes our stream and returns the times in ms since the mark: where a step's GPU
/// time goes between the products (ember-bench `step --timeline`).
pub mod timeline {
    use super::{drv, dsys, STATE};
    use std::sync::Mutex;
    use std::time::Instant;

    /// A window's recorded points.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Point {
        /// Queued on our stream by CubeCL's device thread.
        Queued,
        /// The waiter returned: burn's stream reached the window's signal.
        Signaled,
        /// The window's GEMMs finished.
        Done,
    }

    struct Event(dsys::CUevent, Point, f64);
    // the raw events are created, recorded and destroyed under the mutex only
    unsafe impl Send for Event {}

    struct State {
        base: Option<(dsys::CUevent, dsys::CUstream, Instant)>,
        events: Vec<Event>,
    }
    unsafe impl Send for State {}

    static TIMELINE: Mutex<State> = Mutex::new(State {
        base: None,
        events: Vec::new(),
    });

    /// Whether `EMBER_CUBLAS_TIMELINE=1`.
    pub fn enabled() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("EMBER_CUBLAS_TIMELINE").as_deref() == Ok("1"))
    }

    /// Records `point` on `stream` (CubeCL's device thread, the context current).
    pub(super) fn record(stream: dsys::CUstream, point: Point) {
        let mut t = TIMELINE.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, _, start)) = t.base else { return };
        // SAFETY: an event created and recorded on a live stream of the current context
        unsafe {
            let Ok(e) = drv::event::create(dsys::CUevent_flags::CU_EVENT_DEFAULT) else {
                return;
            };
            if drv::event::record(e, stream).is_ok() {
                let host = start.elapsed().as_secs_f64() * 1e3;
                t.events.push(Event(e, point, host));
            } else {
                let _ = drv::event::destroy(e);
            }
        }
    }

    /// Starts a timeline: an event on our stream now (call it with the device synchronized, so
    /// that it fires at once). Forgets an earlier timeline. A no-op unless [`enabled`] and
    /// cuBLAS has run on device 0.
    pub fn mark() {
        if !enabled() {
            return;
        }
        let Some((context, stream)) = STATE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .map(|b| (b.context, b.stream))
        else {
            return;
        };
        let mut t = TIMELINE.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as in `record`; earlier events are destroyed once
        unsafe {
            let _ = drv::ctx::set_current(context);
            for Event(e, ..) in t.events.drain(..) {
                let _ = drv::event::destroy(e);
            }
            if let Some((e, ..)) = t.base.take() {
                let _ = drv::event::destroy(e);
            }
            if let Ok(e) = drv::event::create(dsys::CUevent_flags::CU_EVENT_DEFAULT) {
                if drv::event::record(e, stream).is_ok() {
                    t.base = Some((e, stream, Instant::now()));
                }
            }
        }
    }

    /// Queues a task on CubeCL's device thread for device 0 that notes `label` in
    /// [`crate::host_trace`] when the thread runs it: how far that thread is behind the caller.
    pub fn probe(label: &'static str) {
        if !enabled() {
            return;
        }
        use cubecl::device::Device as _;
        let device = cubecl::cuda::CudaDevice::new(0);
        let handle = cubecl::device_handle::DeviceHandle::<
            <cubecl::cuda::CudaRuntime as cubecl::prelude::Runtime>::Server,
        >::new(device.to_id());
        handle.submit(move |_server| crate::host_trace::note(label));
    }

    /// For diagnosis only (`EMBER_KEEP_AWAKE=1`, `ember-bench step`): a thread that flushes
    /// CubeCL's task queue for device 0 (empty tasks up to the batch of 32 the device thread
    /// waits for) every 50 µs for as long as the returned guard lives, so that the device thread never reaches its 150 µs sleeps while the host
    /// waits for the GPU (cubecl-common 0.10 spins, yields, then sleeps in 150 µs steps when
    /// idle; a task queued during a sleep waits for its end). Costs a CPU core; not for training.
    pub fn keep_awake() -> Option<KeepAwake> {
        if std::env::var("EMBER_KEEP_AWAKE").as_deref() != Ok("1") {
            return None;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            use cubecl::device::Device as _;
            let device = cubecl::cuda::CudaDevice::new(0);
            let handle = cubecl::device_handle::DeviceHandle::<
                <cubecl::cuda::CudaRuntime as cubecl::prelude::Runtime>::Server,
            >::new(device.to_id());
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                // a flush: the device thread runs queued tasks only by 32 or on a flush
                handle.flush_queue();
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        });
        Some(KeepAwake {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops [`keep_awake`]'s thread when dropped.
    pub struct KeepAwake {
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for KeepAwake {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// The points recorded since [`mark`]: `(point, GPU ms since the mark, host ms since the
    /// mark when queued)`, in order; synchronizes our stream. Empty when nothing was recorded.
    pub fn report() -> Vec<(Point, f64, f64)> {
        let mut t = TIMELINE.lock().unwrap_or_else(|e| e.into_inner());
        let Some((base, stream, _)) = t.base else {
            return vec![];
        };
        let mut out = vec![];
        // SAFETY: as in `record`
        unsafe {
            if drv::stream::synchronize(stream).is_err() {
                return vec![];
            }
            for Event(e, point, host) in &t.events {
                if let Ok(ms) = drv::event::elapsed(base, *e) {
                    out.push((*point, ms as f64, *host));
                }
            }
            for Event(e, ..) in t.events.drain(..) {
                let _ = drv::event::destroy(e);
            }
        }
        out
    }
}
