#!/bin/bash
# One device call (carry [".device"]): per-kernel GPU time of a Fira r512 step at 4096×11008
# under Nsight Compute (`ncu`; the device machine has no `nsys`). The first plain run compiles
# the kernels; the profiled run writes $OUT/ncu.csv (one row per kernel launch,
# gpu__time_duration in ns) and prints the kernels by total time.
gzip -dc .device/ember-bench.gz > /tmp/eb && chmod +x /tmp/eb
export EMBER_KERNEL_CACHE=/tmp/kc
ARGS="step --device cuda --optimizer fira --shapes 4096x11008 --ranks 512 --iters 2 --warmup 0 --refreshes 0"
timeout 100 /tmp/eb $ARGS > /dev/null 2>&1
timeout 400 /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu.csv \
  /tmp/eb $ARGS > $OUT/step.txt 2> $OUT/err.txt
python3 scripts/ncu_table.py $OUT/ncu.csv
