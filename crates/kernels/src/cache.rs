//! Persistent caches of CubeCL's compiled kernels and autotune results.
//!
//! burn 0.21 compiles every CubeCL kernel at run time (NVRTC on CUDA) on first use, on one CPU
//! thread, and picks matmul kernels by autotuning; by default CubeCL keeps neither the compiled
//! kernels nor the autotune results between processes (its `[compilation] cache` is unset unless
//! a `cubecl.toml` says otherwise). [`configure`] points both caches at one directory, so that a
//! second run of an Ember binary reuses what the first compiled and tuned.
//!
//! With `EMBER_EXACT_POOLS=1` it also sets CubeCL's `[memory] persistent_memory = "enforced"`:
//! every device allocation in an exact-size page, reused by later allocations of that size,
//! instead of CubeCL's sliced pages. On the H100 that cut the device peak of a layer-wise
//! LLaMA-7B step from 28.9 GB to 24.2 GB (NVML) and made an ordinary LLaMA-1B step 0.7 GB larger
//! (`docs/benchmarks.md`), so it is an option, not the default.

use std::path::PathBuf;

use cubecl::config::cache::CacheConfig;
use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

/// Where the caches go: `$EMBER_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ember/cubecl`, else
/// `~/.cache/ember/cubecl`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EMBER_KERNEL_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ember").join("cubecl")
}

/// Whether `EMBER_EXACT_POOLS` asks for exact-size memory pools (`1` or `true`).
pub fn exact_pools_requested() -> bool {
    matches!(
        std::env::var("EMBER_EXACT_POOLS").as_deref(),
        Ok("1") | Ok("true")
    )
}

/// Configures CubeCL's compilation and autotune caches in `dir` (see [`default_dir`]), on top of
/// whatever a `cubecl.toml`/`burn.toml` in the working directory or its parents sets (their
/// cache settings win) and CubeCL's environment variables. Must run before the first CubeCL
/// kernel; returns the directory, or why nothing was changed (the configuration was already
/// read or set).
pub fn configure(dir: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = dir.unwrap_or_else(default_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create the kernel cache {}: {e}", dir.display()))?;
    if CubeClRuntimeConfig::storage().lock().is_some() {
        return Err("CubeCL's configuration was already read; caches unchanged".into());
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if exact_pools_requested() {
        config.memory.persistent_memory = cubecl::config::memory::PersistentMemory::Enforced;
    }
    let from_file = config.compilation.cache.is_some();
    if !from_file {
        config.compilation.cache = Some(CacheConfig::File(dir.clone()));
        config.autotune.cache = CacheConfig::File(dir.clone());
    }
    CubeClRuntimeConfig::set(config);
    Ok(dir)
}
