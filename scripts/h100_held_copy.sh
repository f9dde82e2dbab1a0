#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18): the build whose update GEMM copies a
# weight held elsewhere into a fresh buffer of its row stride and updates that in place
# (crates/kernels/src/cube/cublas.rs `accumulate`, `Held::Copy`) instead of falling back to `up(N)`
# and an element-wise update into a dense buffer — after which the next steps' GEMMs at a row of
# 5461 f32 could no longer run over the padded width.
# 1. kernel checks bare and under burn's fusion backend (the held-weight checks, a row of 301);
# 2. f32 GaLore at 2048x5461 and 4096x11008, r128/512/1024, the copy against
#    EMBER_HELD_UPDATE=fallback (the old path), alternated twice;
# 3. the step table REPS times (default 2), each beside its own PyTorch run;
# 4. pretraining (f32, `small`) of every method after a warm-up, GaLore also with the old path,
#    each run's checksum and counts of held outputs.
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
grep -h "W held" $OUT/kernels_cuda.log | head -40 | tee -a $OUT/summary.txt
mkdir -p $OUT/held
SHAPES="--optimizer galore --shapes 2048x5461,4096x11008 --ranks 128,512,1024 --iters 40 --refreshes 0"
for k in 1 2; do
  step_run $OUT/held/copy_$k -- $SHAPES
  step_run $OUT/held/fallback_$k EMBER_HELD_UPDATE=fallback -- $SHAPES
done
step_summary $OUT/held step_unchecked_ms step_on_device_ms engine_ms step_ms
pack
[ "${REPS:-2}" -gt 0 ] && REPS=${REPS:-2} step_table_reps
pack
pretrain_setup
pretrain_warmup ${WARM:-adamw galore fira frugal dct}
RUNS=${RUNS:-adamw,galore,fira,frugal,dct,galore_fb EMBER_HELD_UPDATE=fallback,fira_2,galore_2,adamw_2}
IFS=, read -ra LIST <<< "$RUNS"
pretrain_counted "${LIST[@]}"
pack
cat $OUT/summary.txt
