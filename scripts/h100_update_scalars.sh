#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18, ≤ 0.6× at 4096×11008 r512): call 4 of
# this session found the f16-operand update GEMM at 0.26 ms where its scalars are read on the
# device (the checked policies) against 0.20 with host scalars (the unchecked step), and a
# cuBLASLt candidate at 0.158 ms for the device-scalar signature.
#  1. kernel checks on CUDA (the committed code's padded-R condition);
#  2. cuBLASLt's candidates timed with their configurations (tile, split-K, stages, cluster, …)
#     at 4096×11008 r128/512/1024, host scalars and EMBER_UPDATE_SCALARS=device;
#  3. three rounds at 4096×11008 r512: the default, EMBER_UPDATE_SCALARS=device, and that with
#     EMBER_CUBLASLT=tune — medians of 60, the last step's timeline each.
# (Call 5 of 2026-11-25 ran the same commands written out before they were folded into
# lib_device.sh's step_run/step_summary; its rounds' files are x/*_N.*, not x/ab/.)
PACKED=1
. scripts/lib_device.sh
kernel_checks
pack
mkdir -p $OUT/x
for sc in host device; do
  STEP_LIMIT=100 step_run $OUT/x/lt_$sc EMBER_UPDATE_SCALARS=$sc EMBER_CUBLASLT=tune -- --optimizer galore \
    --shapes 4096x11008 --ranks 128,512,1024 --iters 30 --refreshes 0
  grep -h cublas_tuning $OUT/x/lt_$sc.err | grep '"scratch": true' | tee -a $OUT/summary.txt
done
pack
mkdir -p $OUT/x/ab
for round in 1 2 3; do
  for v in default device device_lt; do
    case $v in
      default) envs="EMBER_CUBLAS_TIMELINE=1" ;;
      device) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_UPDATE_SCALARS=device" ;;
      device_lt) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_UPDATE_SCALARS=device EMBER_CUBLASLT=tune" ;;
    esac
    STEP_LIMIT=60 step_run $OUT/x/ab/${v}_$round $envs -- --optimizer galore --shapes 4096x11008 \
      --ranks 512 --iters 60 --refreshes 0
  done
done
step_summary $OUT/x/ab step_ms step_on_device_ms step_unchecked_ms engine_ms
pack
cat $OUT/summary.txt
