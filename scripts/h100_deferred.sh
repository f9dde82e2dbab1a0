#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: issue 18's pretraining
# run (f32, `small`) with the NaN/Inf check's read-back deferred to the step's end
# (`EmberOptimizer::with_deferred_check`, the default on CUDA) against the check before the
# updates (`EMBER_DEFERRED_CHECK=off`) and the check on the device (`--check-on-device`), with
# `EMBER_STEP_TIMING=100` (host ms by phase, and between steps). RUNS: a list of
# NAME[:off|:device], in order.
PACKED=1
. scripts/lib_device.sh
pretrain_setup
pretrain_warmup fira
for m in ${RUNS:-adamw fira fira:off galore frugal dct fira:device adamw:off fira}; do
  o=${m%%:*}
  n=${m/:/-}; [ -d $OUT/$n ] && n=$n-again
  case $m in
    *:off) pretrain $n EMBER_STEP_TIMING=100 EMBER_DEFERRED_CHECK=off -- --optimizer $o ;;
    *:device) pretrain $n EMBER_STEP_TIMING=100 -- --optimizer $o --check-on-device ;;
    *) pretrain $n EMBER_STEP_TIMING=100 -- --optimizer $o ;;
  esac
  grep "step timing" $OUT/$n.log | tail -2 | tee -a $OUT/summary.txt
done
pack
cat $OUT/summary.txt
