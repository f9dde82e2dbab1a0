#!/bin/bash
# One device call (carry [".device"]): the cuBLAS window timeline of scripts/h100_timeline.sh
# with the host's notes beside it (`EMBER_CUBLAS_TIMELINE=1`: the optimizer's phases, the
# engine's step, each window requested and queued, the Adam and update launches), GaLore r512
# f32 at 4096×11008 and 2048², and with EMBER_CUBLAS_ASYNC=off (every window blocking) for
# comparison.
PACKED=1
. scripts/lib_device.sh
for shapes in 4096x11008 2048x2048; do
  EMBER_CUBLAS_TIMELINE=1 timeout 60 $B step --device cuda --optimizer galore --shapes $shapes \
    --ranks 512 --iters 20 --refreshes 0 > $OUT/timeline_$shapes.jsonl 2> $OUT/timeline_$shapes.err
  echo "timeline $shapes: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  grep '^{"timeline"' $OUT/timeline_$shapes.err | tee -a $OUT/summary.txt
done
pack
cat $OUT/summary.txt
