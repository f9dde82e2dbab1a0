#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18): the build whose Fira kernels reduce
# in cubes (φ one cube an output, the Ψ² pass one partial sum a cube) — kernel checks bare and
# under burn's fusion backend; per-kernel GPU time of Fira's step at 512×1376 and 1376×512 r128
# under `ncu` (as scripts/h100_fira_gpu_time.sh); the step table REPS times (default 1) beside
# PyTorch; pretraining (f32, `small`) of PRETRAIN's runs after a warm-up of every method in it,
# with the GPU's utilization (nvidia-smi every 100 ms) beside each run.
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
NCU=${NCU:-/usr/local/cuda/bin/ncu}
ARGS="step --device cuda --optimizer fira --shapes 512x1376,1376x512 --ranks 128 --iters 3 --warmup 0 --refreshes 0"
timeout 60 $B $ARGS > /dev/null 2>&1
timeout 120 $NCU --metrics gpu__time_duration.sum --cache-control none --clock-control none \
  --csv --log-file $OUT/ncu_fira.csv $B $ARGS > $OUT/ncu_fira.txt 2>&1
echo "ncu fira: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
python3 scripts/ncu_table.py $OUT/ncu_fira.csv > $OUT/ncu_fira.table 2>&1
grep -E "fira_|ember_wait|subspace_adam" $OUT/ncu_fira.table | tee -a $OUT/summary.txt
gzip -f $OUT/ncu_fira.csv
pack
REPS=${REPS:-1} step_table_reps
RUNS=${PRETRAIN:-adamw galore fira frugal dct fira adamw}
pretrain_setup
pretrain_warmup $RUNS
declare -A seen
for m in $RUNS; do
  seen[$m]=$(( ${seen[$m]:-0} + 1 ))
  name=$m; [ ${seen[$m]} -gt 1 ] && name=${m}_${seen[$m]}
  nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader -lms 100 > $OUT/smi_$name.csv 2>&1 &
  SMI=$!
  pretrain $name -- --optimizer $m
  kill $SMI 2>/dev/null
  python3 scripts/anchors/smi_util.py $OUT/smi_$name.csv | tee -a $OUT/summary.txt
done
pack
cat $OUT/summary.txt
