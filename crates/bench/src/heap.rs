//! Peak heap bytes, measured: a counting global allocator.
//!
//! `ember-bench` installs [`CountingAllocator`] as its global allocator (`src/main.rs`); it keeps
//! the bytes live now and the highest value since the last [`reset_peak`]. On the CPU backend
//! (`flex`) every tensor lives on the heap, so the peak of a step is what that step really
//! needed: weights, gradients, optimizer state, activations **and** every temporary (the
//! dequantized projector, gathered DCT columns, back-projection blocks, f32 copies of bf16
//! tensors). Without the allocator installed (e.g. in a test binary) the figures are `None`.
//!
//! Allocations aligned to a page (4096 bytes) or more are counted apart as well
//! ([`page_aligned_live`], [`peak_without_page_aligned`]). On x86-64 those are faer's matrix
//! products' workspaces (`private-gemm-x86`): one per thread that runs a product, of twice the
//! L3 cache's size (as the kernel reports it) per thread, reserved at the thread's first product
//! and kept for its life, mostly never written — on a machine that reports a large L3 they dwarf
//! a small model's tensors (a host SVD's first fit). No tensor of burn's CPU backend is
//! page-aligned, so the peak without them is the one the estimate of `docs/memory.md` is
//! compared with.
//!
//! Two diagnostics, for finding what holds host memory on a GPU backend (where the heap holds
//! no tensors): the bytes live per size class ([`live_by_size`], powers of two), and
//! `EMBER_HEAP_BACKTRACE=<bytes>[,<count>]`, which prints the backtrace of the first `count`
//! (default 8) allocations of at least `bytes` to stderr (`measure` arms it at the first
//! optimizer step, after the model is built).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Bytes live in page-aligned allocations, and the peak of the bytes live in all others.
static PAGED: AtomicUsize = AtomicUsize::new(0);
static UNPAGED: AtomicUsize = AtomicUsize::new(0);
static PEAK_UNPAGED: AtomicUsize = AtomicUsize::new(0);
/// The alignment from which an allocation counts as page-aligned.
const PAGE: usize = 4096;
/// Bytes live per size class: class `k` holds allocations of `2^k ≤ size < 2^(k+1)` bytes.
static BY_CLASS: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];
/// `EMBER_HEAP_BACKTRACE`'s threshold (`usize::MAX`: off) and the backtraces left to print.
static BACKTRACE_FROM: AtomicUsize = AtomicUsize::new(usize::MAX);
static BACKTRACES_LEFT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set while this thread prints a backtrace (whose own allocations are not reported).
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// The system allocator, counting live bytes and their peak.
pub struct CountingAllocator;

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size(), layout.align());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size(), layout.align());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        sub(layout.size(), layout.align());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            sub(layout.size(), layout.align());
            add(new_size, layout.align());
        }
        p
    }
}

fn class(n: usize) -> usize {
    (usize::BITS - 1 - n.max(1).leading_zeros()) as usize
}

fn add(n: usize, align: usize) {
    INSTALLED.store(true, Ordering::Relaxed);
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
    if align >= PAGE {
        PAGED.fetch_add(n, Ordering::Relaxed);
    } else {
        let unpaged = UNPAGED.fetch_add(n, Ordering::Relaxed) + n;
        PEAK_UNPAGED.fetch_max(unpaged, Ordering::Relaxed);
    }
    BY_CLASS[class(n)].fetch_add(n, Ordering::Relaxed);
    if n >= BACKTRACE_FROM.load(Ordering::Relaxed) {
        report(n);
    }
}

fn sub(n: usize, align: usize) {
    LIVE.fetch_sub(n, Ordering::Relaxed);
    if align >= PAGE {
        PAGED.fetch_sub(n, Ordering::Relaxed);
    } else {
        UNPAGED.fetch_sub(n, Ordering::Relaxed);
    }
    BY_CLASS[class(n)].fetch_sub(n, Ordering::Relaxed);
}

/// Prints where an allocation of `n` bytes comes from (`EMBER_HEAP_BACKTRACE`).
#[cold]
fn report(n: usize) {
    let _ = REPORTING.try_with(|busy| {
        if busy.get() {
            return;
        }
        let left = BACKTRACES_LEFT
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1));
        if left.is_err() {
            return;
        }
        busy.set(true);
        let trace = std::backtrace::Backtrace::force_capture();
        eprintln!(
            "ember-bench heap: an allocation of {n} bytes ({} live) at\n{trace}",
            LIVE.load(Ordering::Relaxed)
        );
        busy.set(false);
    });
}

/// Reads `EMBER_HEAP_BACKTRACE=<bytes>[,<count>]`: the first `count` (default 8) allocations of
/// at least `bytes` print their backtrace to stderr, from this call on.
pub fn configure_backtraces() {
    let Ok(v) = std::env::var("EMBER_HEAP_BACKTRACE") else {
        return;
    };
    let mut parts = v.split(',');
    let Some(Ok(bytes)) = parts.next().map(|b| b.trim().parse::<usize>()) else {
        eprintln!("ember-bench: EMBER_HEAP_BACKTRACE={v:?} is not `<bytes>[,<count>]`; ignored");
        return;
    };
    let count = parts
        .next()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .unwrap_or(8);
    BACKTRACES_LEFT.store(count, Ordering::Relaxed);
    BACKTRACE_FROM.store(bytes.max(1), Ordering::Relaxed);
}

/// Bytes live per size class, for the classes holding at least `min` bytes: `(k, bytes)` with
/// allocations of `2^k ≤ size < 2^(k+1)` bytes, largest first. Empty without the allocator.
pub fn live_by_size(min: usize) -> Vec<(u32, usize)> {
    let mut out: Vec<(u32, usize)> = BY_CLASS
        .iter()
        .enumerate()
        .map(|(k, b)| (k as u32, b.load(Ordering::Relaxed)))
        .filter(|&(_, b)| b >= min && b > 0)
        .collect();
    out.sort_by_key(|&(_, bytes)| std::cmp::Reverse(bytes));
    out
}

/// The resident set of this process and its peak (`VmRSS`, `VmHWM` of `/proc/self/status`,
/// Linux), in bytes.
pub fn resident() -> Option<(usize, usize)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<usize>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
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

/// Bytes live now in page-aligned allocations (the [module docs](self): faer's GEMM
/// workspaces).
pub fn page_aligned_live() -> Option<usize> {
    installed().then(|| PAGED.load(Ordering::Relaxed))
}

/// The peak since the last [`reset_peak`] of the bytes live outside page-aligned allocations.
pub fn peak_without_page_aligned() -> Option<usize> {
    installed().then(|| PEAK_UNPAGED.load(Ordering::Relaxed))
}

/// Starts a new peak window at the bytes live now (both peaks).
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    PEAK_UNPAGED.store(UNPAGED.load(Ordering::Relaxed), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_are_powers_of_two() {
        assert_eq!(class(0), 0);
        assert_eq!(class(1), 0);
        assert_eq!(class(2), 1);
        assert_eq!(class(3), 1);
        assert_eq!(class(4096), 12);
        assert_eq!(class(8191), 12);
        assert_eq!(class(usize::MAX), 63);
    }

    #[test]
    fn resident_set_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let (rss, hwm) = resident().expect("/proc/self/status");
            assert!(rss > 0 && hwm >= rss);
        }
    }
}
