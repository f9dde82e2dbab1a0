#!/bin/bash
# One device call (carry [".device", ".device4"]) on the session's final build (issue 18: the f32
# weight's update GEMM on f16 tensor cores by default, cuBLASLt timing opt-in). Most important
# first:
#  1. kernel checks on CUDA, bare and under burn's fusion backend;
#  2. the step table REPS times (default 2; f32: GaLore r128/512/1024, AdamW; bf16: GaLore r512, AdamW with bf16
#     state), each beside a PyTorch anchor run right after it (PyTorch's side moves between
#     calls, so each Ember table has its own);
#  3. pretraining (f32, `small`): AdamW, GaLore, Fira, FRUGAL, DCT after a warm-up run (PRETRAIN
#     names the runs in order; a repeated method's run is NAME_2, …).
PACKED=1
. scripts/lib_device.sh
kernel_checks
kernel_checks cuda-fusion 100
pack
step_table_reps
pretrain_setup
pretrain_warmup galore
# PRETRAIN="adamw galore fira frugal dct adamw galore" repeats methods (NAME_2 for a repeat)
declare -A seen
for m in ${PRETRAIN:-adamw galore fira frugal dct}; do
  seen[$m]=$(( ${seen[$m]:-0} + 1 ))
  name=$m; [ ${seen[$m]} -gt 1 ] && name=${m}_${seen[$m]}
  pretrain $name -- --optimizer $m
done
pack
cat $OUT/summary.txt
