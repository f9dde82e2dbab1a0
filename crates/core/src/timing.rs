//! Host time of an optimizer step by phase, for finding where a step's host time goes on a GPU
//! backend (where the host only queues work and waits at the NaN/Inf check's read-back).
//!
//! Off unless `EMBER_STEP_TIMING=<steps>` is set: then every `steps` optimizer steps (or parts)
//! one line goes to the log (`log::info!`) and to stderr with the mean host milliseconds of
//! each phase — collecting the gradients, the projections issued before the check, the check
//! (with the host policies its wait for the device), the preparation of the updates (clipping,
//! FRUGAL's block selection) and the updates themselves (queued, not run, on a GPU backend).
//! Timing reads the clock only; it does not synchronize the device.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Instant;

/// The phases of [`crate::EmberOptimizer`]'s step, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking every gradient from burn's container, checking shapes and dtypes.
    Collect,
    /// `R = down(G)` issued before the check (GaLore family; Fira and FRUGAL, early projection).
    ProjectFirst,
    /// The NaN/Inf check (on the host: its pass, and the wait for the device to read the flags).
    Check,
    /// Clipping and FRUGAL's block selection.
    Prepare,
    /// Every parameter's update.
    Update,
    /// The deferred check's read-back (waits for the device to run the whole step).
    Verdict,
}

const PHASES: usize = 6;
const NAMES: [&str; PHASES] = [
    "collect",
    "project-first",
    "check",
    "prepare",
    "update",
    "verdict",
];

/// When the last timed step ended (for the time between steps).
static LAST_END: Mutex<Option<Instant>> = Mutex::new(None);

/// Steps per report (`EMBER_STEP_TIMING`), `None` when off.
fn every() -> Option<usize> {
    static EVERY: OnceLock<Option<usize>> = OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var("EMBER_STEP_TIMING")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
    })
}

/// Sums of the phases over the steps since the last report, the time between steps and the
/// number of steps.
static SUMS: Mutex<([f64; PHASES], f64, usize)> = Mutex::new(([0.0; PHASES], 0.0, 0));

/// The timer of one step: a no-op when `EMBER_STEP_TIMING` is unset.
pub struct StepTimer {
    last: Option<Instant>,
    laps: [f64; PHASES],
    /// Host ms since the previous timed step ended (0 for the first).
    between: f64,
}

impl StepTimer {
    /// Starts timing a step (if timing is on).
    pub fn start() -> Self {
        let last = every().map(|_| Instant::now());
        let between = match last {
            Some(now) => LAST_END
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map_or(0.0, |end| (now - end).as_secs_f64() * 1e3),
            None => 0.0,
        };
        Self {
            last,
            laps: [0.0; PHASES],
            between,
        }
    }

    /// Ends `phase` now: the time since the previous lap is added to it.
    pub fn lap(&mut self, phase: Phase) {
        ember_kernels::host_trace::note(NAMES[phase as usize]);
        if let Some(last) = self.last {
            let now = Instant::now();
            self.laps[phase as usize] += (now - last).as_secs_f64() * 1e3;
            self.last = Some(now);
        }
    }

    /// Adds this step to the running sums and reports every `EMBER_STEP_TIMING` steps.
    pub fn finish(self) {
        let (Some(_), Some(every)) = (self.last, every()) else {
            return;
        };
        *LAST_END.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let mut sums = SUMS.lock().unwrap_or_else(|e| e.into_inner());
        for (s, l) in sums.0.iter_mut().zip(self.laps) {
            *s += l;
        }
        sums.1 += self.between;
        sums.2 += 1;
        if sums.2 >= every {
            let n = sums.2 as f64;
            let parts: Vec<String> = NAMES
                .iter()
                .zip(sums.0)
                .map(|(name, s)| format!("{name} {:.3}", s / n))
                .collect();
            let total: f64 = sums.0.iter().sum::<f64>() / n;
            let line = format!(
                "ember step timing (host ms, mean of {} steps): {} | total {total:.3} | \
                 between steps {:.3}",
                sums.2,
                parts.join(", "),
                sums.1 / n
            );
            log::info!("{line}");
            eprintln!("{line}");
            *sums = ([0.0; PHASES], 0.0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_the_variable() {
        // the test process does not set EMBER_STEP_TIMING: no clock, no report
        if std::env::var("EMBER_STEP_TIMING").is_err() {
            let mut t = StepTimer::start();
            t.lap(Phase::Collect);
            assert!(t.last.is_none());
            assert_eq!(t.laps, [0.0; PHASES]);
            t.finish();
        }
    }
}
