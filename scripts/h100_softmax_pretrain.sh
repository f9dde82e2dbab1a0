#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: the pretraining table
# (f32, `small`) with attention's fused softmax (default) against burn's composition
# (`EMBER_FUSED_SOFTMAX=off`), after a warm-up run of GaLore that compiles the kernels (the
# projector's among them) — calls 2 and 3 of launches_2026-11-25 had none, and their first
# GaLore run paid that compilation. RUNS: NAME[:off] in order.
PACKED=1
. scripts/lib_device.sh
pretrain_setup
pretrain_warmup galore
for m in ${RUNS:-adamw galore adamw:off galore:off galore adamw fira frugal dct}; do
  o=${m%%:*}; n=${m/:off/_composed}; [ -d $OUT/$n ] && n=$n-again
  case $m in
    *:off) pretrain $n EMBER_FUSED_SOFTMAX=off -- --optimizer $o ;;
    *) pretrain $n EMBER_FUSED_SOFTMAX=on -- --optimizer $o ;;
  esac
done
pack
cat $OUT/summary.txt
