//! The pretraining example on `flex` with a tiny model: every method trains through burn-train's
//! `Learner`, resuming from a checkpoint reproduces the uninterrupted run bit for bit, and two
//! devices train data-parallel with identical replicas.

use std::path::PathBuf;

use ember_pretrain::{train, Corpus, Run, Summary};

type B = burn::backend::Autodiff<burn::backend::Flex>;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ember-pretrain-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(r: &Run, devices: usize) -> Summary {
    train::<B>(
        r,
        &Corpus::embedded(),
        vec![Default::default(); devices],
        false,
    )
    .unwrap()
}

/// A few steps of one method: the validation loss goes down and every step's loss was logged.
fn trains(optimizer: &str) {
    let r = Run::tiny(optimizer, dir(optimizer));
    let s = run(&r, 1);
    assert_eq!(s.train_loss.len(), r.epochs * r.steps_per_epoch);
    assert_eq!(s.valid_loss.len(), r.epochs);
    assert!(
        s.final_valid_loss < s.initial_valid_loss - 0.05,
        "{optimizer}: validation loss {} -> {}",
        s.initial_valid_loss,
        s.final_valid_loss
    );
    let first = s.train_loss[0];
    let last: f64 = s.train_loss[s.train_loss.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < first, "{optimizer}: train loss {first} -> {last}");
}

#[test]
fn adamw_trains() {
    trains("adamw");
}
#[test]
fn galore_trains() {
    trains("galore");
}
#[test]
fn qgalore_trains() {
    trains("qgalore");
}
#[test]
fn fira_trains() {
    trains("fira");
}
#[test]
fn frugal_trains() {
    trains("frugal");
}
#[test]
fn dct_trains() {
    trains("dct");
}

/// Q-GaLore with the attention and MLP weights stored in INT8 (`QLinear`) in the model: it trains,
/// the stored codes change, and resuming is bit-exact too (codes, scales, optimizer state and the
/// stochastic rounding's stream all come back).
#[test]
fn qgalore_int8_weights_train_and_resume() {
    let mut full = Run::tiny("qgalore", dir("int8-full"));
    full.int8_weights = true;
    let s = run(&full, 1);
    assert!(
        s.final_valid_loss < s.initial_valid_loss - 0.05,
        "INT8: {} -> {}",
        s.initial_valid_loss,
        s.final_valid_loss
    );
    let d = dir("int8-split");
    let mut first = full.clone();
    first.dir = d.clone();
    first.stop_after_epoch = Some(1);
    run(&first, 1);
    let mut second = full.clone();
    second.dir = d;
    second.resume_epoch = Some(1);
    let part2 = run(&second, 1);
    assert_eq!(part2.train_loss[..], s.train_loss[full.steps_per_epoch..]);
    assert_eq!(part2.final_checksum, s.final_checksum);
    // two devices through burn's multi-device strategy: the INT8 weights' gradients (filed
    // under their float `qparams`) reach the optimizer, the replicas stay identical and it trains
    let mut multi = full.clone();
    multi.dir = dir("int8-multi");
    multi.devices = 2;
    multi.checksum_every = 1;
    let m = run(&multi, 2);
    assert!(
        m.final_valid_loss < m.initial_valid_loss - 0.05,
        "INT8 on 2 devices: {} -> {}",
        m.initial_valid_loss,
        m.final_valid_loss
    );
    for pair in m.replica_checksums.chunks(2) {
        assert_eq!(pair[0].checksum, pair[1].checksum, "{pair:?}");
    }
}

/// Stop after epoch 1, resume from its checkpoint: the second epoch's losses and the final
/// weights equal the uninterrupted run's exactly (GaLore: projector, moments, refresh counters
/// and the learning-rate schedule all come back from the checkpoint).
#[test]
fn resume_from_checkpoint_is_bit_exact() {
    for optimizer in ["galore", "fira"] {
        let full = Run::tiny(optimizer, dir(&format!("full-{optimizer}")));
        let uninterrupted = run(&full, 1);

        let d = dir(&format!("split-{optimizer}"));
        let mut first = Run::tiny(optimizer, d.clone());
        first.stop_after_epoch = Some(1);
        let part1 = run(&first, 1);
        let mut second = Run::tiny(optimizer, d);
        second.resume_epoch = Some(1);
        let part2 = run(&second, 1);

        let n = full.steps_per_epoch;
        assert_eq!(part1.train_loss[..], uninterrupted.train_loss[..n]);
        assert_eq!(
            part2.train_loss[..],
            uninterrupted.train_loss[n..],
            "{optimizer}"
        );
        assert_eq!(
            part2.final_checksum, uninterrupted.final_checksum,
            "{optimizer}"
        );
        assert_eq!(part2.final_valid_loss, uninterrupted.final_valid_loss);
    }
}

/// Two `flex` devices through burn's multi-device strategy with an Ember optimizer: every replica
/// holds bit-identical weights at every step (hashes of the weights each replica used), and the
/// model trains.
#[test]
fn two_devices_keep_identical_replicas() {
    let mut r = Run::tiny("galore", dir("multi"));
    r.checksum_every = 1;
    r.devices = 2;
    let s = run(&r, 2);
    assert_eq!(s.train_loss.len(), r.epochs * r.steps_per_epoch);
    assert!(s.final_valid_loss < s.initial_valid_loss);
    let c = &s.replica_checksums;
    assert_eq!(c.len(), 2 * r.epochs * r.steps_per_epoch, "{c:?}");
    for pair in c.chunks(2) {
        assert_eq!(pair[0].step, pair[1].step);
        assert_eq!(pair[0].checksum, pair[1].checksum, "{pair:?}");
    }
    // and the replicas changed from step to step (the optimizer did update them)
    assert_ne!(c[0].checksum, c[c.len() - 1].checksum);
}

/// `--scale` reaches the method (a larger α moves the targeted weights further) and is refused by
/// a method without it.
#[test]
fn scale_option() {
    let mut a = Run::tiny("galore", dir("scale-a"));
    a.epochs = 1;
    let mut b = a.clone();
    b.dir = dir("scale-b");
    b.scale = Some(1.0);
    assert_ne!(run(&a, 1).final_checksum, run(&b, 1).final_checksum);
    let mut c = Run::tiny("frugal", dir("scale-c"));
    c.scale = Some(1.0);
    let err = train::<B>(&c, &Corpus::embedded(), vec![Default::default()], false)
        .err()
        .unwrap();
    assert!(err.contains("scale"), "{err}");
}

/// Layer-wise training (`--layerwise`) is the Learner's run computed another way: the same data,
/// schedule and optimizer give the same per-step losses (within float reordering of the
/// backward) and it trains; with bf16 weights and 8-bit state it trains too; resuming it from a
/// checkpoint is bit-exact (bf16 weights come back as bf16).
#[test]
fn layerwise_runs_match_the_learner_and_resume_bit_exact() {
    let learner = run(&Run::tiny("galore", dir("lw-learner")), 1);
    let mut lw = Run::tiny("galore", dir("lw"));
    lw.layerwise = true;
    let s = run(&lw, 1);
    assert_eq!(s.train_loss.len(), learner.train_loss.len());
    for (k, (a, b)) in s.train_loss.iter().zip(&learner.train_loss).enumerate() {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "step {k}: {a} vs {b}");
    }
    assert!(s.final_valid_loss < s.initial_valid_loss - 0.05);

    for (weights, state) in [("bf16", "int8"), ("f32", "bf16")] {
        let mut full = lw.clone();
        full.weights_dtype = weights.into();
        full.state_dtype = state.into();
        full.dir = dir(&format!("lw-{weights}-{state}-full"));
        let uninterrupted = run(&full, 1);
        assert!(
            uninterrupted.final_valid_loss < uninterrupted.initial_valid_loss - 0.05,
            "{weights}/{state}: {} -> {}",
            uninterrupted.initial_valid_loss,
            uninterrupted.final_valid_loss
        );
        let d = dir(&format!("lw-{weights}-{state}-split"));
        let mut first = full.clone();
        first.dir = d.clone();
        first.stop_after_epoch = Some(1);
        run(&first, 1);
        let mut second = full.clone();
        second.dir = d;
        second.resume_epoch = Some(1);
        let part2 = run(&second, 1);
        assert_eq!(
            part2.train_loss[..],
            uninterrupted.train_loss[full.steps_per_epoch..],
            "{weights}/{state}"
        );
        assert_eq!(part2.final_checksum, uninterrupted.final_checksum);
    }
    // one device only
    let mut multi = lw.clone();
    multi.devices = 2;
    let err = train::<B>(
        &multi,
        &Corpus::embedded(),
        vec![Default::default(); 2],
        false,
    )
    .err()
    .unwrap();
    assert!(err.contains("one device"), "{err}");
}
