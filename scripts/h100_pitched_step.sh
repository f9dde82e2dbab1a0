#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18): the build whose full-rank Adam step
# runs pitched rows (2048×5461) on the vectorized kernel — kernel checks bare and under burn's
# fusion backend; AdamW steps at 2048×5461 and 4096² with that path and without it
# (EMBER_PITCHED_STEP=off: the strided one-element kernel), alternating, bf16 weights and state
# and f32; the step table REPS times (default 1) beside PyTorch; then pretraining (f32, `small`)
# of PRETRAIN's runs after a warm-up run of every method in it.
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
for i in 1 2; do
  for mode in on off; do
    step_run $OUT/x/adamw_bf16_${mode}_$i EMBER_PITCHED_STEP=$mode -- --optimizer adamw \
      --shapes 2048x5461,4096x4096 --iters 40 --refreshes 0 --weights-dtype bf16 --state-dtype bf16
    step_run $OUT/x/adamw_f32_${mode}_$i EMBER_PITCHED_STEP=$mode -- --optimizer adamw \
      --shapes 2048x5461,4096x4096 --iters 40 --refreshes 0
  done
done
step_summary $OUT/x step_unchecked_ms engine_ms
pack
REPS=${REPS:-1} step_table_reps
RUNS=${PRETRAIN:-adamw galore fira frugal dct}
if [ "$RUNS" != none ]; then
  pretrain_setup
  pretrain_warmup $RUNS
  pretrain_runs $RUNS
  pack
fi
cat $OUT/summary.txt
