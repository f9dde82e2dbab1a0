#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18): where a Fira step's GPU time goes at
# the pretraining model's shapes — per-kernel GPU time under Nsight Compute (`ncu`, caches and
# clocks left as they run: `--cache-control none --clock-control none`) of `ember-bench step` at
# 512×1376 and 1376×512 r128 for METHODS (default "fira galore adamw"; the first run of each
# compiles its kernels, unprofiled), then the GPU's utilization (nvidia-smi every 100 ms) during
# pretraining runs of PRETRAIN (default "fira adamw"), after a warm-up of each.
PACKED=1
. scripts/lib_device.sh
NCU=${NCU:-/usr/local/cuda/bin/ncu}
for o in ${METHODS:-fira galore adamw}; do
  ARGS="step --device cuda --optimizer $o --shapes 512x1376,1376x512 --ranks 128 --iters 3 --warmup 0 --refreshes 0"
  timeout 60 $B $ARGS > /dev/null 2>&1
  timeout ${NCU_LIMIT:-120} $NCU --metrics gpu__time_duration.sum --cache-control none --clock-control none \
    --csv --log-file $OUT/ncu_$o.csv $B $ARGS > $OUT/ncu_$o.txt 2>&1
  echo "ncu $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  python3 scripts/ncu_table.py $OUT/ncu_$o.csv > $OUT/ncu_$o.table 2>&1
  head -25 $OUT/ncu_$o.table | tee -a $OUT/summary.txt
  gzip -f $OUT/ncu_$o.csv
  pack
done
RUNS=${PRETRAIN:-fira adamw}
pretrain_setup
pretrain_warmup $RUNS
for m in $RUNS; do
  nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader -lms 100 > $OUT/smi_$m.csv 2>&1 &
  SMI=$!
  pretrain $m -- --optimizer $m
  kill $SMI 2>/dev/null
  python3 scripts/anchors/smi_util.py $OUT/smi_$m.csv | tee -a $OUT/summary.txt
  pack
done
cat $OUT/summary.txt
