#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: the full-rank Adam step's
# vectorized kernel (16-byte loads and stores on dense inputs) against the one-element kernel
# (`EMBER_ADAM_VECTORS=off`). Kernel checks bare and under fusion; AdamW's step at the table's
# shapes, f32 and bf16 weights with bf16 state, alternating the two twice (`x/`). Then, with
# `TABLES=1`, the step table beside PyTorch and the pretraining runs of PRETRAIN
# (scripts/h100_tables_pretrain.sh, in the same call).
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
for k in 1 2; do
  for vec in on off; do
    step_run $OUT/x/adamw_f32_${vec}_$k EMBER_ADAM_VECTORS=$vec -- --optimizer adamw --iters 40 --refreshes 0
    step_run $OUT/x/adamw_bf16_${vec}_$k EMBER_ADAM_VECTORS=$vec -- --optimizer adamw --iters 40 \
      --refreshes 0 --weights-dtype bf16 --state-dtype bf16
  done
done
step_summary $OUT/x step_unchecked_ms engine_ms
pack
if [ "${TABLES:-0}" = 1 ]; then
  # the call's own $OUT (this script's OUT is /tmp/res): the nested script packs there
  OUT=$REAL_OUT BUDGET_S=$(left) REPS=${REPS:-1} bash scripts/h100_tables_pretrain.sh > /dev/null
fi
cat $OUT/summary.txt
