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

    /// Bytes in use on the device now.
    pub fn used(&self) -> Option<usize> {
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
            (f(self.device, &mut m) == 0).then_some(m.used as usize)
        }
    }
}

/// NVML's used memory of one GPU, polled every `period` on a thread of its own; keeps the
/// largest value since the last [`reset`](Self::reset). Catches the device peak of a step even
/// when memory is returned before the step ends (layer-wise training releases the pools' free
/// pages after its output and input stages), for allocations that live a period or longer.
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
