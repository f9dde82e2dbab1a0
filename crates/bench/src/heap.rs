//! Peak heap bytes, measured: a counting global allocator.
//!
//! `ember-bench` installs [`CountingAllocator`] as its global allocator (`src/main.rs`); it keeps
//! the bytes live now and the highest value since the last [`reset_peak`]. On the CPU backend
//! (`flex`) every tensor lives on the heap, so the peak of a step is what that step really
//! needed: weights, gradients, optimizer state, activations **and** every temporary (the
//! dequantized projector, gathered DCT columns, back-projection blocks, f32 copies of bf16
//! tensors). Without the allocator installed (e.g. in a test binary) the figures are `None`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting live bytes and their peak.
pub struct CountingAllocator;

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            add(new_size);
        }
        p
    }
}

fn add(n: usize) {
    INSTALLED.store(true, Ordering::Relaxed);
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// Whether the counting allocator is the global allocator of this process.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Heap bytes live now.
pub fn live() -> Option<usize> {
    installed().then(|| LIVE.load(Ordering::Relaxed))
}

/// The peak since the last [`reset_peak`].
pub fn peak() -> Option<usize> {
    installed().then(|| PEAK.load(Ordering::Relaxed))
}

/// Starts a new peak window at the bytes live now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}
