//! Host-side timestamps for diagnosis (`EMBER_CUBLAS_TIMELINE=1`; off by default, and then
//! [`note`] is one relaxed atomic load): labelled instants since a [`mark`], recorded wherever the
//! optimizer calls [`note`] (its step's phases, each cuBLAS window's request). `ember-bench step`
//! prints them beside the cuBLAS window timeline of the same step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
/// The trace's start and its notes (label, host ms since the start).
type Notes = (Option<Instant>, Vec<(&'static str, f64)>);

static NOTES: Mutex<Notes> = Mutex::new((None, Vec::new()));

/// Whether `EMBER_CUBLAS_TIMELINE=1`.
pub fn enabled() -> bool {
    static READ: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READ.get_or_init(|| {
        let on = std::env::var("EMBER_CUBLAS_TIMELINE").as_deref() == Ok("1");
        ON.store(on, Ordering::Relaxed);
        on
    })
}

/// Starts a trace now (forgets the notes before it). A no-op unless [`enabled`].
pub fn mark() {
    if !enabled() {
        return;
    }
    let mut n = NOTES.lock().unwrap_or_else(|e| e.into_inner());
    *n = (Some(Instant::now()), Vec::new());
}

/// Records `label` at the host's clock (ms since the [`mark`]); nothing before a mark.
pub fn note(label: &'static str) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let mut n = NOTES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(start) = n.0 {
        let ms = start.elapsed().as_secs_f64() * 1e3;
        n.1.push((label, ms));
    }
}

/// The notes since the [`mark`], in order; ends the trace.
pub fn take() -> Vec<(&'static str, f64)> {
    let mut n = NOTES.lock().unwrap_or_else(|e| e.into_inner());
    n.0 = None;
    std::mem::take(&mut n.1)
}
