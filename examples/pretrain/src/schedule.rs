//! The learning-rate schedule.

use burn::optim::lr_scheduler::LrScheduler;
use burn::prelude::*;

/// Linear warm-up to `lr` over `warmup` steps, then cosine decay to `lr·min_ratio` at `total`.
#[derive(Clone, Debug)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
    /// Final fraction of `lr`.
    pub min_ratio: f64,
    /// Steps taken.
    pub step: usize,
}

impl WarmupCosine {
    /// The rate of step `k` (1-based).
    pub fn at(&self, k: usize) -> f64 {
        if k <= self.warmup {
            return self.lr * k as f64 / self.warmup.max(1) as f64;
        }
        let p = ((k - self.warmup) as f64 / (self.total.saturating_sub(self.warmup)).max(1) as f64)
            .min(1.0);
        let c = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        self.lr * (self.min_ratio + (1.0 - self.min_ratio) * c)
    }
}

impl LrScheduler for WarmupCosine {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        self.step += 1;
        self.at(self.step)
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}
