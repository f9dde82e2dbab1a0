#!/bin/bash
# One device call (carry [".device"]; run from the repository root): whether the wait kernel
# that burn's stream runs during a cuBLAS window slows the window's GEMM. PyTorch's `mm` with and
# without a one-thread kernel spinning in another stream (scripts/anchors/spin_probe.py), then
# GaLore's step at 4096×11008 r512 with its cuBLAS timeline (`EMBER_CUBLAS_TIMELINE=1`), ordered
# by the device flags (a wait kernel spins on burn's stream during each GEMM) and by host
# synchronizations (`EMBER_CUBLAS=sync`: none spins), twice each.
PACKED=1
. scripts/lib_device.sh
(cd scripts/anchors && timeout 150 python3 spin_probe.py $OUT/spin.jsonl > $OUT/spin.log 2>&1; echo "spin: $?" >> $OUT/summary.txt)
tail -5 $OUT/spin.log >> $OUT/summary.txt
for mode in flags sync; do
 for k in 1 2; do
  EMBER_CUBLAS=$mode EMBER_CUBLAS_TIMELINE=1 timeout 90 $B step --device cuda --optimizer galore \
    --shapes 4096x11008 --ranks 512 --iters 20 --refreshes 0 > $OUT/tl_${mode}_$k.jsonl 2> $OUT/tl_${mode}_$k.err
  echo "tl $mode $k: exit $?" >> $OUT/summary.txt
  grep '^{"timeline"' $OUT/tl_${mode}_$k.err | cut -c1-1200 >> $OUT/summary.txt
 done
done
pack
cat $OUT/summary.txt
