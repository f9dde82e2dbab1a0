#!/bin/bash
# (The reserve was measured to change nothing and reverted: on later builds EMBER_CUBLAS_SM_RESERVE
# is not read, and both halves of the A/B run the same code.)
# One device call (carry [".device"]) after the CUDA build: cuBLAS's GEMMs planned for the
# device's SMs minus one (`EMBER_CUBLAS_SM_RESERVE`, default 1: the SM that burn's stream's wait
# kernel holds during a window) against every SM (`=0`). Kernel checks bare and under fusion;
# GaLore's step at three shapes, r512, alternating the two twice; the cuBLAS timelines of both at
# 4096×11008 r512; then one step table beside PyTorch's anchors (default reserve).
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
for k in 1 2; do
  for res in 1 0; do
    step_run $OUT/x/galore_res${res}_$k EMBER_CUBLAS_SM_RESERVE=$res -- --optimizer galore \
      --shapes 4096x11008,2048x5461,2048x2048 --ranks 512 --iters 40 --refreshes 0
  done
done
step_summary $OUT/x step_ms step_on_device_ms step_unchecked_ms engine_ms down_ms cublas_sm_target
mkdir -p $OUT/tl
for res in 1 0 1 0; do
  EMBER_CUBLAS_SM_RESERVE=$res EMBER_CUBLAS_TIMELINE=1 timeout 90 $B step --device cuda --optimizer galore \
    --shapes 4096x11008 --ranks 512 --iters 20 --refreshes 0 >> $OUT/tl/res$res.jsonl 2>> $OUT/tl/res$res.err
  echo "timeline reserve $res: exit $?" >> $OUT/summary.txt
done
python3 - $OUT/tl >> $OUT/summary.txt <<'PY'
import json, sys, glob
for f in sorted(glob.glob(sys.argv[1] + "/*.err")):
    for line in open(f):
        if line.startswith('{"timeline"'):
            t = json.loads(line)
            p = [x[1] for x in t["points"]]
            gemms = [round(p[i + 2] - p[i + 1], 3) for i in range(0, len(p) - 2, 3)]
            print(f.split("/")[-1], t["timeline"], "wall", t["wall_ms"], "gemms", gemms)
PY
pack
REPS=1 step_table_reps
cat $OUT/summary.txt
