//! # ember-bench: will this run fit on my GPU, and what does a step cost?
//!
//! `estimate` (analytic, `docs/memory.md`), `measure` (real burn model, real steps) and `plan`
//! (settings that fit a budget). See `ember-bench --help`.

pub mod estimate;
pub mod heap;
pub mod measure;
pub mod progress;
pub mod report;
pub mod soak;
pub mod steptime;

/// The LLaMA-style model (`ember-llama`).
pub use ember_llama as llama;
