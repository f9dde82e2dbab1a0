//! FRUGAL's blockwise mode: whole parameters take turns being state-full.
//!
//! Every `gap` optimizer steps (from the first), `k = round(ρ·n)` of the `n` targeted parameters
//! are chosen *active*: they get the method's AdamW with fresh state; the others are updated by
//! the state-free rule on their whole gradient and hold **no** state. The choice is a pure
//! function of `(seed, epoch = step / gap, the targets in module order)`, so data-parallel replicas
//! agree and a resumed run (the step is in the record) makes the same choices.
//!
//! When `round(ρ·n)` is 0 (e.g. a model with a single targeted parameter and ρ < 0.5), one
//! parameter is made active anyway and a warning is logged: a blockwise optimizer that never
//! uses its state-full optimizer is almost surely a mistake.

use serde::{Deserialize, Serialize};

use crate::residual::ResidualRule;
use crate::rng::SplitMix64;

/// In which order the active blocks are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockOrder {
    /// A seeded random choice each epoch.
    Random,
    /// Cycle through the parameters in module order.
    Ascending,
    /// Cycle through them in reverse module order.
    Descending,
    /// Ascending, then descending, and so on.
    Mirror,
}

/// The block schedule of a blockwise optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockSchedule {
    /// Fraction ρ of the targeted parameters that are active.
    pub density: f64,
    /// Steps between re-selections.
    pub gap: usize,
    /// Selection order.
    pub order: BlockOrder,
    /// Seed of the random order.
    pub seed: u64,
    /// The state-free rule of inactive parameters (`SignSgd`, `Sgd`, or `Discard` = no update).
    pub inactive: ResidualRule,
}

impl BlockSchedule {
    /// Number of active parameters among `n`.
    pub fn active_count(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let k = (self.density * n as f64).round_ties_even() as usize;
        if k == 0 {
            log::warn!(
                "ember: blockwise density {} of {n} parameter(s) rounds to 0 active blocks; using 1",
                self.density
            );
        }
        k.clamp(1, n)
    }

    /// Which of the `n` targets (in module order) are active at optimizer step `step` (from 0).
    pub fn active(&self, n: usize, step: usize) -> Vec<bool> {
        let k = self.active_count(n);
        let epoch = step / self.gap;
        let mut active = vec![false; n];
        if n == 0 {
            return active;
        }
        let picks: Vec<usize> = match self.order {
            BlockOrder::Random => SplitMix64::new(self.seed, &[epoch as u64]).sample(n, k),
            BlockOrder::Ascending => (0..k).map(|i| (epoch * k + i) % n).collect(),
            BlockOrder::Descending => (0..k).map(|i| n - 1 - (epoch * k + i) % n).collect(),
            BlockOrder::Mirror => (0..k)
                .map(|i| {
                    let p = (epoch * k + i) % (2 * n);
                    if p < n {
                        p
                    } else {
                        2 * n - 1 - p
                    }
                })
                .collect(),
        };
        for p in picks {
            active[p] = true;
        }
        active
    }

    /// Validates the schedule.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.density > 0.0 && self.density <= 1.0) {
            return Err(format!("density ρ = {} must be in (0, 1]", self.density));
        }
        if self.gap == 0 {
            return Err("update_gap must be at least 1".into());
        }
        if matches!(self.inactive, ResidualRule::Custom(_)) {
            return Err(
                "inactive blocks take a built-in state-free rule (signSGD, SGD or none)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(order: BlockOrder) -> BlockSchedule {
        BlockSchedule {
            density: 0.5,
            gap: 3,
            order,
            seed: 7,
            inactive: ResidualRule::SignSgd(crate::residual::SignSgd { lr_scale: 1.0 }),
        }
    }

    #[test]
    fn orders_cover_every_block_and_are_deterministic() {
        for order in [
            BlockOrder::Random,
            BlockOrder::Ascending,
            BlockOrder::Descending,
            BlockOrder::Mirror,
        ] {
            let s = schedule(order);
            let mut seen = [false; 4];
            for step in 0..24 {
                let a = s.active(4, step);
                assert_eq!(a, s.active(4, step), "deterministic");
                assert_eq!(a.iter().filter(|&&x| x).count(), 2);
                assert_eq!(a, s.active(4, step - step % 3), "constant within an epoch");
                for (i, &x) in a.iter().enumerate() {
                    seen[i] |= x;
                }
            }
            assert!(
                seen.iter().all(|&x| x),
                "{order:?} never activates some block"
            );
        }
        assert_eq!(
            schedule(BlockOrder::Ascending).active(4, 0),
            [true, true, false, false]
        );
        assert_eq!(
            schedule(BlockOrder::Descending).active(4, 0),
            [false, false, true, true]
        );
    }

    #[test]
    fn a_single_parameter_is_always_active() {
        let s = BlockSchedule {
            density: 0.25,
            ..schedule(BlockOrder::Random)
        };
        assert_eq!(s.active(1, 0), [true]);
    }
}
