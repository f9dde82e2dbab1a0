#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18): the build whose update GEMM writes a
# weight held elsewhere out of place (`D = α·A·B + β·C` on cuBLASLt, crates/kernels/src/cube/
# cublas.rs `accumulate`) instead of falling back to `up(N)` and an element-wise update —
# burn-train's `Learner` holds its model while the optimizer steps on a clone, so every weight
# update of `ember-pretrain` is such a case (33,600 of 33,600 fell back on 2026-12-07, call 1).
# Kernel checks bare and under burn's fusion backend (with the held-weight checks); pretraining
# (f32, `small`) after a warm-up of each method, GaLore/Fira/DCT beside EMBER_OUT_OF_PLACE=on
# (opt-in until measured), each run's checksum and counts; GaLore's bf16 projector against the f32
# one (BF16_AB); then the step table REPS times (default 1).
# RUNS and WARM change the runs (`NAME [VAR=VALUE]`, comma-separated) and the warm-ups.
PACKED=1
. scripts/lib_device.sh
# the kernel checks on the out-of-place path (the held-weight checks reach it only when on)
export EMBER_OUT_OF_PLACE=on
kernel_checks_both
unset EMBER_OUT_OF_PLACE
grep -h "W held" $OUT/kernels_cuda.log $OUT/kernels_cuda-fusion.log | head -24 | tee -a $OUT/summary.txt
pretrain_setup
pretrain_warmup ${WARM:-adamw galore fira dct}
RUNS=${RUNS:-adamw,galore,fira,galore_on EMBER_OUT_OF_PLACE=on,fira_on EMBER_OUT_OF_PLACE=on,dct,fira_2,dct_on EMBER_OUT_OF_PLACE=on,galore_2,adamw_2}
IFS=, read -ra LIST <<< "$RUNS"
pretrain_counted "${LIST[@]}"
pack
# GaLore's projector of bf16 weights stored in bf16 (the default since the twelfth session,
# `Engine::projector_dtype`) against the state's f32 and two casts a step
# (EMBER_KEEP_PROJECTOR_DTYPE=off), alternated twice at the table's bf16 shapes (BF16_AB=0: not)
if [ "${BF16_AB:-1}" = 1 ]; then
  mkdir -p $OUT/bf16
  for k in 1 2; do
    step_run $OUT/bf16/kept_$k -- --optimizer galore --ranks 512 --iters 60 --refreshes 0 --weights-dtype bf16
    step_run $OUT/bf16/f32_$k EMBER_KEEP_PROJECTOR_DTYPE=off -- --optimizer galore --ranks 512 --iters 60 \
      --refreshes 0 --weights-dtype bf16
  done
  step_summary $OUT/bf16 step_unchecked_ms engine_ms step_ms
  pack
fi
[ "${REPS:-1}" -gt 0 ] && REPS=${REPS:-1} step_table_reps
pack
cat $OUT/summary.txt
