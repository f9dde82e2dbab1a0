#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18): the f32 weight's update GEMM (f16
# operands into f32) on cuBLASLt's first 128×128-tile candidate with its scalars on the device
# (the pinned rule, `ember_kernels::cublas::update_gemm`; EMBER_UPDATE_GEMM=default is the build
# before). Most important first:
#  1. kernel checks on CUDA (bare);
#  2. the rule against EMBER_UPDATE_GEMM=default, alternating twice, f32 GaLore r128/512/1024 at
#     4096×11008, 4096², 2048×5461 and 2048², medians of 40, the last step's timeline each;
#  3. the step table REPS times (default 2), each beside its own PyTorch run;
#  4. kernel checks under burn's fusion backend.
PACKED=1
. scripts/lib_device.sh
kernel_checks
pack
mkdir -p $OUT/ab
for round in 1 2; do
  for rule in default pinned; do
    step_run $OUT/ab/${rule}_$round EMBER_UPDATE_GEMM=$rule EMBER_CUBLAS_TIMELINE=1 -- --optimizer galore \
      --shapes 4096x11008,4096x4096,2048x5461,2048x2048 --ranks 128,512,1024 --iters 40 --refreshes 0
  done
done
step_summary $OUT/ab step_ms step_on_device_ms step_unchecked_ms engine_ms update_rel_err update_gemm
tail -50 $OUT/summary.txt
pack
step_table_reps
kernel_checks cuda-fusion 100
pack
cat $OUT/summary.txt
