#!/bin/bash
# One short device call (carry [".device"]) after the CUDA build: GaLore's subspace Adam on
# 16-byte vectors (`kernels::subspace_adam_vec`) — kernel checks on bare CUDA, GaLore's step at
# 4096×11008 and 2048×5461 r512 alternating with `EMBER_ADAM_VECTORS=off` twice (`x/`), then the
# kernel checks under burn's fusion backend; packed after each part (a short budget).
PACKED=1
. scripts/lib_device.sh
kernel_checks cuda 100
pack
mkdir -p $OUT/x
for k in 1 2; do
  for vec in on off; do
    step_run $OUT/x/galore_${vec}_$k EMBER_ADAM_VECTORS=$vec -- --optimizer galore \
      --shapes 4096x11008,2048x5461 --ranks 512 --iters 40 --refreshes 0
  done
done
step_summary $OUT/x step_unchecked_ms engine_ms
pack
kernel_checks cuda-fusion 60
pack
cat $OUT/summary.txt
