//! A CPU profile of the run by thread, for diagnosis (feature `profile`, pprof-rs's sampler).
//!
//! `EMBER_PROFILE=FILE` starts a thread that waits `EMBER_PROFILE_AFTER_S` seconds (default 20:
//! past the model's set-up and the first kernels' compilation), samples every thread's stack
//! `EMBER_PROFILE_HZ` times a second of CPU time (default 997) for `EMBER_PROFILE_S` seconds
//! (default 20), and writes the samples folded, one line per distinct stack:
//! `THREAD;ROOT;…;LEAF COUNT` (`scripts/anchors/folded_profile.py` sums them per thread and
//! function). Only threads that run are sampled (a thread asleep or blocked in the kernel costs
//! no CPU time), so a thread's share of the samples is its share of the CPU; one that spins
//! waiting shows as the spinning function. Stacks inside libc, libgcc and the vDSO are left out
//! (unwinding from there inside a signal handler is not safe).

use std::io::Write;
use std::time::Duration;

fn var(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts the sampler when `EMBER_PROFILE` is set; it runs beside the training and writes its
/// file when its span ends (a run that ends first writes nothing).
pub fn start() {
    let Some(path) = std::env::var_os("EMBER_PROFILE") else {
        return;
    };
    let after = var("EMBER_PROFILE_AFTER_S", 20.0);
    let span = var("EMBER_PROFILE_S", 20.0);
    let hz = var("EMBER_PROFILE_HZ", 997.0) as i32;
    let spawned = std::thread::Builder::new()
        .name("ember-profile".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(after));
            let guard = match pprof::ProfilerGuardBuilder::default()
                .frequency(hz)
                .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                .build()
            {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("pretrain: profile: the sampler did not start: {e}");
                    return;
                }
            };
            eprintln!("pretrain: profile: sampling for {span} s at {hz} Hz");
            std::thread::sleep(Duration::from_secs_f64(span));
            let report = match guard.report().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("pretrain: profile: no report: {e}");
                    return;
                }
            };
            let written = std::fs::File::create(&path).and_then(|f| {
                let mut f = std::io::BufWriter::new(f);
                for (frames, count) in &report.data {
                    let mut line = frames.thread_name_or_id().replace(';', ":");
                    // pprof-rs lists the leaf first; folded stacks go from the root
                    for frame in frames.frames.iter().rev() {
                        for symbol in frame.iter().rev() {
                            line.push(';');
                            line.push_str(&symbol.name().replace(';', ":"));
                        }
                    }
                    writeln!(f, "{line} {count}")?;
                }
                f.flush()
            });
            match written {
                Ok(()) => eprintln!(
                    "pretrain: profile: {} stacks written to {}",
                    report.data.len(),
                    std::path::Path::new(&path).display()
                ),
                Err(e) => eprintln!("pretrain: profile: {e}"),
            }
        });
    if let Err(e) = spawned {
        eprintln!("pretrain: profile: {e}");
    }
}
