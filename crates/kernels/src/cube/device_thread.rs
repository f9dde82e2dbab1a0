//! A synchronization that leaves CubeCL's device thread awake (CUDA).
//!
//! CubeCL 0.10 launches every kernel from one device thread, which, once idle, spins 8192 times,
//! yields 64 times, then sleeps in 150 µs steps; a task queued during a sleep waits for its end
//! (`docs/perf-notes.md`, "Where a single GaLore step's time goes"). `Backend::sync` returns a
//! fence that the *caller* waits on, so during a wait longer than the spin (any step of more than
//! ≈ 0.1 ms of GPU work) the device thread falls asleep, and the first launch after the
//! synchronization waits up to 150 µs (plus the OS's timer slack) before it reaches the GPU — at
//! every step of a loop that synchronizes each step (a benchmark's timing, a loss read each step).
//!
//! [`sync`] waits on the device thread itself: one blocking task that synchronizes the stream
//! and returns when the GPU is done, so the thread has just run a task and spins when the caller
//! queues the next one. The same wait as `Backend::sync` (every kernel queued before it has
//! finished); it does not flush burn's fusion queue — call `Backend::sync` after it for that (it
//! then finds the GPU idle and returns at once). For diagnosis (`ember-bench step` with
//! `EMBER_SYNC=device-thread`): on the H100 it bought no clear gain in the step table (one call,
//! 2026-11-25, `docs/perf-notes.md`), so nothing synchronizes this way by default.

use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::device::Device as _;
use cubecl::device_handle::DeviceHandle;
use cubecl::prelude::Runtime;

/// Waits, on CubeCL's device thread for `device`, until the GPU has finished every kernel queued
/// so far; `Err` with CubeCL's error where the synchronization failed.
pub fn sync(device: &CudaDevice) -> Result<(), String> {
    let client = CudaRuntime::client(device);
    let handle = DeviceHandle::<<CudaRuntime as Runtime>::Server>::new(device.to_id());
    handle
        .exclusive(move || cubecl::future::block_on(client.sync()))
        .map_err(|e| format!("CubeCL's device thread: {e:?}"))?
        .map_err(|e| format!("sync: {e:?}"))
}
