//! Device memory in use, from NVIDIA's management library, loaded at run time (no build-time
//! dependency; `None` where there is no NVIDIA driver).

/// Device memory in use, from NVML (loaded at run time; `None` where there is no NVIDIA driver).
pub struct Nvml {
    lib: Option<libloading::Library>,
    device: usize,
}

#[repr(C)]
struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

impl Nvml {
    /// Opens NVML for GPU `index`.
    pub fn open(index: u32) -> Self {
        // SAFETY: loading the NVIDIA management library and calling its documented C entry points.
        unsafe {
            let Ok(lib) = libloading::Library::new("libnvidia-ml.so.1") else {
                return Self {
                    lib: None,
                    device: 0,
                };
            };
            let init: Result<libloading::Symbol<unsafe extern "C" fn() -> i32>, _> =
                lib.get(b"nvmlInit_v2");
            let get: Result<libloading::Symbol<unsafe extern "C" fn(u32, *mut usize) -> i32>, _> =
                lib.get(b"nvmlDeviceGetHandleByIndex_v2");
            let (Ok(init), Ok(get)) = (init, get) else {
                return Self {
                    lib: None,
                    device: 0,
                };
            };
            let mut handle = 0usize;
            if init() != 0 || get(index, &mut handle) != 0 {
                return Self {
                    lib: None,
                    device: 0,
                };
            }
            Self {
                lib: Some(lib),
                device: handle,
            }
        }
    }

    /// Bytes in use on the device now. NVML's `used` is its total minus free, and NVML's total
    /// counts the memory the driver reserves for itself (503 MB on the H100 we measure on),
    /// which CUDA's `cuMemGetInfo` — and so `torch.cuda.mem_get_info` — leaves out of its total:
    /// set it beside PyTorch's figures through [`cuda_counted`].
    pub fn used(&self) -> Option<usize> {
        self.info().map(|m| m.used as usize)
    }

    /// NVML's total device memory (the driver's reserve included).
    pub fn total(&self) -> Option<usize> {
        self.info().map(|m| m.total as usize)
    }

    fn info(&self) -> Option<NvmlMemory> {
        let lib = self.lib.as_ref()?;
        // SAFETY: see `open`; `nvmlDeviceGetMemoryInfo` fills a `{total, free, used}` struct.
        unsafe {
            let f: libloading::Symbol<unsafe extern "C" fn(usize, *mut NvmlMemory) -> i32> =
                lib.get(b"nvmlDeviceGetMemoryInfo").ok()?;
            let mut m = NvmlMemory {
                total: 0,
                free: 0,
                used: 0,
            };
            (f(self.device, &mut m) == 0).then_some(m)
        }
    }
}

/// NVML's used memory of one GPU, polled every `period` on a thread of its own; keeps the
/// largest value since the last [`reset`](Self::reset). Catches the device peak of a step even
/// when memory is returned before the step ends (layer-wise training releases the pools' free
/// pages after its output and input stages), for allocations that live a period or longer.
/// ([`Nvml::used`] says how to set it beside PyTorch's figures.)
pub struct PeakSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl PeakSampler {
    /// Starts polling GPU `index` (`None` where NVML is not available).
    pub fn start(index: u32, period: std::time::Duration) -> Option<Self> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let nvml = Nvml::open(index);
        let first = nvml.used()?;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(first));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::Builder::new()
            .name("nvml-peak".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Some(u) = nvml.used() {
                        p.fetch_max(u, Ordering::Relaxed);
                    }
                    std::thread::sleep(period);
                }
            })
            .ok()?;
        Some(Self {
            stop,
            peak,
            handle: Some(handle),
        })
    }

    /// Forgets the values seen so far (the next poll starts the new maximum).
    pub fn reset(&self) {
        self.peak.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// The largest used memory seen since the start or the last reset.
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// NVML's used bytes `nvml_used` as CUDA's `cuMemGetInfo` counts the same state: less the
/// driver's reserve, the difference of the two totals (`None` where either total is unknown).
/// Measured on the H100 (`docs/perf-notes.md`): equal to the byte to `cuMemGetInfo`'s
/// `total − free` polled at the same moments.
pub fn cuda_counted(nvml_used: usize, nvml_total: usize, cuda_total: usize) -> usize {
    nvml_used.saturating_sub(nvml_total.saturating_sub(cuda_total))
}

/// CUDA's `cuMemGetInfo` for device `index`: `(free, total)` bytes, total without the driver's
/// reserve (what `torch.cuda.mem_get_info` returns). Makes the device's primary context current
/// on the calling thread. `None` without the `cuda` feature or on an error.
#[cfg(feature = "cuda")]
pub fn cuda_mem_info(index: usize) -> Option<(usize, usize)> {
    use cudarc::driver::{result as drv, sys as dsys};
    // SAFETY: documented driver entry points; the primary context CubeCL runs on is retained
    // once per thread and made current there; the out pointers are live locals.
    unsafe {
        thread_local! {
            static CTX: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        if !CTX.with(|c| c.get()) {
            drv::init().ok()?;
            let dev = drv::device::get(index as i32).ok()?;
            let ctx = drv::primary_ctx::retain(dev).ok()?;
            drv::ctx::set_current(ctx).ok()?;
            CTX.with(|c| c.set(true));
        }
        let (mut free, mut total) = (0usize, 0usize);
        dsys::cuMemGetInfo_v2(&mut free, &mut total).result().ok()?;
        Some((free, total))
    }
}

/// CUDA's `cuMemGetInfo` (`None` without the `cuda` feature).
#[cfg(not(feature = "cuda"))]
pub fn cuda_mem_info(_index: usize) -> Option<(usize, usize)> {
    None
}

/// burn's own report of device memory (CubeCL's memory management): bytes held by live tensors
/// and bytes reserved in its pools (what the driver sees, less the CUDA context).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolUsage {
    /// Bytes of live allocations.
    pub in_use: u64,
    /// Bytes reserved by the pools.
    pub reserved: u64,
}

/// [`PoolUsage`] of CUDA device `index` (`None` without the `cuda` feature).
#[cfg(feature = "cuda")]
pub fn cuda_pool_usage(index: usize) -> Option<PoolUsage> {
    use cubecl::Runtime;
    let client = cubecl::cuda::CudaRuntime::client(&cubecl::cuda::CudaDevice::new(index));
    let u = client.memory_usage().ok()?;
    Some(PoolUsage {
        in_use: u.bytes_in_use,
        reserved: u.bytes_reserved,
    })
}

/// [`PoolUsage`] of CUDA device `index` (`None` without the `cuda` feature).
#[cfg(not(feature = "cuda"))]
pub fn cuda_pool_usage(_index: usize) -> Option<PoolUsage> {
    None
}

/// What the CUDA driver says about the process's device memory, beside burn's [`PoolUsage`]:
/// CubeCL allocates its pool pages with `cuMemAllocAsync` from the device's current memory pool,
/// so that pool's high-water marks are the true peaks of burn's pages (not samples), and what
/// NVML counts beyond the pool's reserve is the context and everything allocated outside burn's
/// pools (cuBLAS's workspace, loaded modules, local memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriverMemory {
    /// Bytes the driver's pool holds now (`CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`).
    pub pool_reserved: u64,
    /// Its high-water mark since the process started (`…_RESERVED_MEM_HIGH`).
    pub pool_reserved_high: u64,
    /// Bytes of the pool handed out (burn's pages) now (`…_USED_MEM_CURRENT`).
    pub pool_used: u64,
    /// Their high-water mark (`…_USED_MEM_HIGH`): the peak of burn's pages.
    pub pool_used_high: u64,
    /// `cuMemGetInfo`: total minus free on the device, now (every process).
    pub device_used: u64,
    /// The context's per-thread stack size (`CU_LIMIT_STACK_SIZE`).
    pub stack_size: u64,
}

/// [`DriverMemory`] of CUDA device `index` (`None` without the `cuda` feature or on an error).
#[cfg(feature = "cuda")]
pub fn cuda_driver_memory(index: usize) -> Option<DriverMemory> {
    use cudarc::driver::{result as drv, sys as dsys};
    // SAFETY: documented driver entry points on the primary context CubeCL runs on; every out
    // pointer is a live local of the type the call writes.
    unsafe {
        drv::init().ok()?;
        let dev = drv::device::get(index as i32).ok()?;
        let ctx = drv::primary_ctx::retain(dev).ok()?;
        drv::ctx::set_current(ctx).ok()?;
        let mut pool: dsys::CUmemoryPool = std::ptr::null_mut();
        dsys::cuDeviceGetMemPool(&mut pool, dev).result().ok()?;
        let attr = |a: dsys::CUmemPool_attribute| -> Option<u64> {
            let mut v: u64 = 0;
            dsys::cuMemPoolGetAttribute(pool, a, &mut v as *mut u64 as *mut std::ffi::c_void)
                .result()
                .ok()?;
            Some(v)
        };
        use dsys::CUmemPool_attribute as A;
        let (mut free, mut total) = (0usize, 0usize);
        dsys::cuMemGetInfo_v2(&mut free, &mut total).result().ok()?;
        let mut stack = 0usize;
        dsys::cuCtxGetLimit(&mut stack, dsys::CUlimit::CU_LIMIT_STACK_SIZE)
            .result()
            .ok()?;
        let m = DriverMemory {
            pool_reserved: attr(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?,
            pool_reserved_high: attr(A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
            pool_used: attr(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            pool_used_high: attr(A::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            device_used: (total - free) as u64,
            stack_size: stack as u64,
        };
        drv::primary_ctx::release(dev).ok()?;
        Some(m)
    }
}

/// [`DriverMemory`] of CUDA device `index` (`None` without the `cuda` feature).
#[cfg(not(feature = "cuda"))]
pub fn cuda_driver_memory(_index: usize) -> Option<DriverMemory> {
    None
}

/// Resets the high-water marks of [`DriverMemory`] to the current values (the driver's
/// `cuMemPoolSetAttribute(…_HIGH, 0)`); `false` where that failed or there is no CUDA.
#[cfg(feature = "cuda")]
pub fn reset_cuda_driver_peaks(index: usize) -> bool {
    use cudarc::driver::{result as drv, sys as dsys};
    // SAFETY: as in `cuda_driver_memory`; the attribute value is a live local `u64` (0 resets).
    unsafe {
        let Ok(()) = drv::init() else { return false };
        let Ok(dev) = drv::device::get(index as i32) else {
            return false;
        };
        let mut pool: dsys::CUmemoryPool = std::ptr::null_mut();
        if dsys::cuDeviceGetMemPool(&mut pool, dev).result().is_err() {
            return false;
        }
        use dsys::CUmemPool_attribute as A;
        [
            A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
            A::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        ]
        .into_iter()
        .all(|a| {
            let mut zero: u64 = 0;
            dsys::cuMemPoolSetAttribute(pool, a, &mut zero as *mut u64 as *mut std::ffi::c_void)
                .result()
                .is_ok()
        })
    }
}

/// Resets the high-water marks of [`DriverMemory`] (`false`: no CUDA).
#[cfg(not(feature = "cuda"))]
pub fn reset_cuda_driver_peaks(_index: usize) -> bool {
    false
}
