//! Progress on stderr: a bar on a terminal, plain lines otherwise (a log, a pipe, a remote run),
//! so a long first step (kernel compilation on CUDA) never looks like a hang.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the run is doing now, and since when (read by the watchdog thread).
static PHASE: Mutex<Option<(String, Instant)>> = Mutex::new(None);
static WATCHDOG: std::sync::Once = std::sync::Once::new();

/// Names what the run does from now on (`"step 1: backward"`); while progress lines are on, a
/// phase that lasts longer than 20 s is reported every 20 s, so that a long first step says
/// where its time goes (model initialization, forward, backward, optimizer step).
pub fn phase(name: impl Into<String>) {
    if let Ok(mut p) = PHASE.lock() {
        *p = Some((name.into(), Instant::now()));
    }
}

/// Starts the thread that reports long phases on stderr (once per process).
fn start_watchdog(start: Instant) {
    WATCHDOG.call_once(|| {
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(20));
            if let Ok(p) = PHASE.lock() {
                if let Some((name, since)) = p.as_ref() {
                    let t = since.elapsed().as_secs_f64();
                    if t >= 20.0 {
                        eprintln!(
                            "  … {name}: {t:.0} s so far (run at {:.0} s)",
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
            }
        });
    });
}

/// Progress of one run of `total` steps.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    name: String,
    total: usize,
    start: Instant,
}

impl Progress {
    /// Shows progress if `on`: a bar when stderr is a terminal, else one line per step.
    pub fn new(on: bool, name: &str, total: usize) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (on && terminal).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            bar
        });
        let p = Self {
            bar,
            plain: on && !terminal,
            name: name.into(),
            total,
            start: Instant::now(),
        };
        if p.plain {
            start_watchdog(p.start);
            eprintln!(
                "{}: starting ({} steps; the first compiles kernels on GPU backends)",
                p.name, total
            );
        }
        p
    }

    /// Step `k` (0-based) is done.
    pub fn step(&self, k: usize, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_string());
            bar.set_position((k + 1) as u64);
        } else if self.plain {
            eprintln!(
                "{}: step {}/{} done at {:.1} s, {msg}",
                self.name,
                k + 1,
                self.total,
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    /// The run is over.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
