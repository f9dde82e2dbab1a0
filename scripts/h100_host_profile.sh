#!/bin/bash
# One device call (carry [".device", ".device4"]; `.device4/pretrain.gz` built with
# `--features ember-pretrain/cuda,ember-pretrain/profile` and kept with its symbols:
# `strip --strip-debug`): where the host's CPU time goes in a pretraining step, by thread.
# For each method of METHODS (default "fira galore adamw"): the run of docs/benchmarks.md's
# pretraining table, longer (PROFILE_EPOCHS, default 10, of 100 steps), with the sampler on
# (`EMBER_PROFILE`: after PROFILE_AFTER_S seconds, default 12, for PROFILE_S, default 14, at
# 997 Hz of CPU time) into $OUT/METHOD.folded; `scripts/anchors/folded_profile.py` sums them.
# (The first version of this script sampled with cuda-gdb attaching to the run: the debugger's
# library then sits in every kernel launch and the run slowed to a crawl — call 2's samples.)
PACKED=1
. scripts/lib_device.sh
pretrain_setup
pretrain_warmup fira
for m in ${METHODS:-fira galore adamw}; do
  [ $(left) -lt 60 ] && { echo "$m: skipped (deadline)" | tee -a $OUT/summary.txt; continue; }
  args="--device cuda --model small --batch 32 --seq 256 --epochs ${PROFILE_EPOCHS:-10} \
    --steps-per-epoch 100 --valid-windows 64 --lr 2e-3 --warmup 40 --gap 200 --seed 42"
  EMBER_PROFILE=$OUT/$m.folded EMBER_PROFILE_AFTER_S=${PROFILE_AFTER_S:-12} \
    EMBER_PROFILE_S=${PROFILE_S:-14} EMBER_STEP_TIMING=100 \
    timeout $(( $(left) - 15 )) $P train $args --optimizer $m --out /tmp/prof_$m > $OUT/prof_$m.log 2>&1
  echo "$m: exit $? at $(( $(date +%s) - T0 )) s; $(grep 'profile:' $OUT/prof_$m.log | tail -1); $(tail -1 $OUT/prof_$m.log | cut -c1-200)" | tee -a $OUT/summary.txt
  rm -rf /tmp/prof_$m
  pack
done
pack
cat $OUT/summary.txt
