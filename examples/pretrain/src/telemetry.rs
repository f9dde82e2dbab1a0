//! Per-step hooks of the train step: peak device memory and replica checksums.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use burn::prelude::*;

use crate::*;

use std::collections::HashMap;

#[derive(Default)]
struct Record {
    every: usize,
    /// Train steps seen per device (replicas sharing a device, e.g. two `flex` devices,
    /// are told apart by `devices_per_key`).
    steps: Vec<(String, usize)>,
    devices_per_key: usize,
    checksums: Vec<ReplicaChecksum>,
}

static NEXT: AtomicUsize = AtomicUsize::new(1);
static RUNS: Mutex<Option<HashMap<u64, Record>>> = Mutex::new(None);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static NVML: Mutex<Option<ember_core::kernels::nvml::Nvml>> = Mutex::new(None);

/// Starts the records of a new run (opens NVML if `gpu`); returns its tag.
pub fn reset(checksum_every: usize, gpu: bool, devices_per_key: usize) -> u64 {
    let tag = NEXT.fetch_add(1, Ordering::SeqCst) as u64;
    RUNS.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(
            tag,
            Record {
                every: checksum_every,
                devices_per_key: devices_per_key.max(1),
                ..Default::default()
            },
        );
    if gpu {
        PEAK.store(0, Ordering::SeqCst);
        *NVML.lock().unwrap() = Some(ember_core::kernels::nvml::Nvml::open(0));
    }
    tag
}

/// Called by every replica at every train step.
pub fn on_step<B: Backend, M: Module<B>>(tag: u64, model: &M) {
    if let Some(nvml) = NVML.lock().unwrap().as_ref() {
        if let Some(used) = nvml.used() {
            PEAK.fetch_max(used, Ordering::SeqCst);
        }
    }
    let device = format!("{:?}", model.devices()[0]);
    let key = device.clone();
    let step = {
        let mut runs = RUNS.lock().unwrap();
        let Some(rec) = runs.as_mut().and_then(|r| r.get_mut(&tag)) else {
            return;
        };
        if rec.every == 0 {
            return;
        }
        let i = match rec.steps.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                rec.steps.push((key, 0));
                rec.steps.len() - 1
            }
        };
        rec.steps[i].1 += 1;
        let step = (rec.steps[i].1 - 1) / rec.devices_per_key;
        if !step.is_multiple_of(rec.every) {
            return;
        }
        step
    };
    let c = weights_hash::<B, M>(model);
    if let Some(rec) = RUNS.lock().unwrap().as_mut().and_then(|r| r.get_mut(&tag)) {
        rec.checksums.push(ReplicaChecksum {
            device,
            step,
            checksum: c,
        });
    }
}

/// `(peak bytes, checksums sorted by step)` of run `tag` (its records are dropped).
pub fn take(tag: u64) -> (Option<usize>, Vec<ReplicaChecksum>) {
    let peak = PEAK.load(Ordering::SeqCst);
    let rec = RUNS
        .lock()
        .unwrap()
        .as_mut()
        .and_then(|r| r.remove(&tag))
        .unwrap_or_default();
    let mut c = rec.checksums;
    c.sort_by(|a, b| a.step.cmp(&b.step).then(a.device.cmp(&b.device)));
    ((peak > 0).then_some(peak), c)
}
