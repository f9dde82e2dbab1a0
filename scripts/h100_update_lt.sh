#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18, ≤ 0.6× at 4096×11008 r512): what is
# left of the f32 GaLore step there, measured on the current build.
#  1. cuBLASLt's candidates timed (EMBER_CUBLASLT=tune) for every GEMM signature of the f32 GaLore
#     step at 4096×11008 and 4096² (r128/512/1024) — the update GEMM now on f16 operands into an
#     f32 W, a signature the timing of call 1 (2026-11-25, third session) never saw;
#  2. three rounds at 4096×11008 r512 of: the default, EMBER_SYNC=device-thread (the step's
#     synchronization on CubeCL's device thread), EMBER_KEEP_AWAKE=1 (a thread that keeps it from
#     sleeping), EMBER_CUBLASLT=tune — medians of 60, each with the last step's timeline.
# (Call 4 of 2026-11-25 ran the same commands written out before they were folded into
# lib_device.sh's step_run/step_summary; its rounds' files are x/*_N.*, not x/ab/.)
PACKED=1
. scripts/lib_device.sh
mkdir -p $OUT/x
STEP_LIMIT=120 step_run $OUT/x/lt_tune EMBER_CUBLASLT=tune -- --optimizer galore \
  --shapes 4096x11008,4096x4096 --ranks 128,512,1024 --iters 30 --refreshes 0
grep -h cublas_tuning $OUT/x/lt_tune.err | tee -a $OUT/summary.txt
pack
mkdir -p $OUT/x/ab
for round in 1 2 3; do
  for v in default sync awake lt; do
    case $v in
      default) envs="EMBER_CUBLAS_TIMELINE=1" ;;
      sync) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_SYNC=device-thread" ;;
      awake) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_KEEP_AWAKE=1" ;;
      lt) envs="EMBER_CUBLAS_TIMELINE=1 EMBER_CUBLASLT=tune" ;;
    esac
    STEP_LIMIT=60 step_run $OUT/x/ab/${v}_$round $envs -- --optimizer galore --shapes 4096x11008 \
      --ranks 512 --iters 60 --refreshes 0
  done
done
step_summary $OUT/x/ab step_unchecked_ms engine_ms down_ms up_ms
pack
cat $OUT/summary.txt
