#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: where the optimizer
# step's host time goes in issue 18's pretraining run (f32, `small`, host NaN/Inf check):
# `EMBER_STEP_TIMING=100` (`ember_core::timing`) prints the mean host milliseconds of each phase
# of the step every 100 steps — collect, project-first, check (its wait for the device), prepare,
# update (queued) — for AdamW, GaLore, Fira and FRUGAL (and Fira without early projection).
PACKED=1
. scripts/lib_device.sh
pretrain_setup
pretrain_warmup fira
for m in ${METHODS:-adamw galore fira frugal fira:late}; do
  o=${m%%:*}
  case $m in
    *:late) pretrain $o-late EMBER_STEP_TIMING=100 EMBER_EARLY_PROJECTION=off -- --optimizer $o ;;
    *) pretrain $o EMBER_STEP_TIMING=100 -- --optimizer $o ;;
  esac
  grep "step timing" $OUT/${m/:/-}.log | tail -3 | tee -a $OUT/summary.txt
done
cat $OUT/summary.txt
