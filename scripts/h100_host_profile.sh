#!/bin/bash
# One device call (carry [".device", ".device4"]; `.device4/pretrain.gz` built with symbols:
# `strip --strip-debug`): where the host's time goes in a pretraining step, by sampling.
# For each method of METHODS (default "fira adamw"): the pretraining run of docs/benchmarks.md's
# table, longer (PROFILE_EPOCHS, default 16, of 100 steps), started in the background; after
# PROFILE_DELAY seconds (default 15: model set-up and the first steps) cuda-gdb attaches every
# ≈ 0.5 s, prints every thread's stack (`thread apply all bt`) and detaches, up to SAMPLES
# (default 40) times, into $OUT/stacks_METHOD.txt. Nothing else runs beside it, so the samples
# land at random points of the steps. `scripts/anchors/stack_profile.py` folds them per thread.
PACKED=1
. scripts/lib_device.sh
pretrain_setup
pretrain_warmup fira
which cuda-gdb >> $OUT/summary.txt 2>&1
for m in ${METHODS:-fira adamw}; do
  [ $(left) -lt 60 ] && { echo "$m: skipped (deadline)" | tee -a $OUT/summary.txt; continue; }
  args="--device cuda --model small --batch 32 --seq 256 --epochs ${PROFILE_EPOCHS:-16} \
    --steps-per-epoch 100 --valid-windows 64 --lr 2e-3 --warmup 40 --gap 200 --seed 42"
  timeout $(( $(left) - 20 )) $P train $args --optimizer $m --out /tmp/prof_$m > $OUT/prof_$m.log 2>&1 &
  tpid=$!
  sleep ${PROFILE_DELAY:-15}
  # the run itself, not `timeout`
  pid=$(pgrep -P $tpid 2>/dev/null | head -1); [ -z "$pid" ] && pid=$(ps -o pid= --ppid $tpid | head -1 | tr -d " ")
  [ -z "$pid" ] && { echo "$m: no process to sample" | tee -a $OUT/summary.txt; wait $tpid; continue; }
  n=0
  while kill -0 $pid 2>/dev/null && [ $n -lt ${SAMPLES:-40} ] && [ $(left) -gt 40 ]; do
    echo "=== sample $n at $(date +%s.%N)" >> $OUT/stacks_$m.txt
    timeout 30 cuda-gdb -p $pid -batch -nx -ex "set pagination off" -ex "thread apply all bt 48" \
      >> $OUT/stacks_$m.txt 2>&1
    n=$((n + 1))
    sleep 0.5
  done
  echo "$m: $n samples at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  kill $pid 2>/dev/null; wait $tpid
  tail -3 $OUT/prof_$m.log | cut -c1-300 >> $OUT/summary.txt
  rm -rf /tmp/prof_$m
  pack
done
pack
cat $OUT/summary.txt
