#!/bin/bash
# One device call (carry [".device"]) after the CUDA build: where a GaLore step's time goes
# between its products (issue 18's ≤ 0.6× at 4096×11008 r512). `EMBER_CUBLAS_TIMELINE=1` makes
# `ember-bench step` print, for the last timed step of each policy and of the engine alone, the
# GPU and host times of each cuBLAS window's points (queued, signaled, done) since the step
# started (`timeline_*.err`, one JSON line each); the same runs without it show what the events
# cost. Then the checked, device-checked and unchecked steps at every shape and rank of the
# table, f32 and bf16, beside the PyTorch anchor of the same call.
PACKED=1
. scripts/lib_device.sh
for dt in f32 bf16; do
  EMBER_CUBLAS_TIMELINE=1 timeout 90 $B step --device cuda --optimizer galore \
    --shapes 4096x11008,2048x2048,2048x5461 --ranks 512 --iters 20 --refreshes 0 --weights-dtype $dt \
    > $OUT/timeline_$dt.jsonl 2> $OUT/timeline_$dt.err
  echo "timeline $dt: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  grep '^{"timeline"' $OUT/timeline_$dt.err | cut -c1-900 | tee -a $OUT/summary.txt
done
pack
for o in galore adamw; do
  [ $(left) -lt 150 ] && break
  timeout 120 $B step --device cuda --optimizer $o --ranks 128,512,1024 --iters 40 --refreshes 0 \
    > $OUT/step_f32_$o.jsonl 2>> $OUT/step.err
  echo "step f32 $o: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
done
SVD=0 RANKS=128,512,1024 TF32=1 PYTHONUNBUFFERED=1 timeout 100 python3 .device/torch_anchor.py .device/whl \
  $OUT/anchor_tf32.json > $OUT/anchor_tf32.log 2>&1
echo "anchor f32 (TF32): exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
python3 scripts/step_table.py $OUT > $OUT/step_table.md 2>&1; cat $OUT/step_table.md | tee -a $OUT/summary.txt
pack
cat $OUT/summary.txt
