#!/bin/bash
# One device call (carry [".device4"]) after the CUDA build (the pretraining binary in .device4/):
# issue 18's pretraining run (f32, `small`) with Fira's and FRUGAL's `R = down(G)` computed before
# the step's NaN/Inf check (`EmberOptimizer::with_early_projection`, the default) and inside each
# update (`EMBER_EARLY_PROJECTION=off`), alternated twice, then GaLore and DCT for the table.
PACKED=1
. scripts/lib_device.sh
pretrain_setup
pretrain_warmup fira
for m in ${METHODS:-adamw frugal frugal:late fira fira:late adamw.2 frugal:late.2 frugal.2 fira:late.2 fira.2 galore dct}; do
  o=${m%%[.:]*}
  case $m in
    *:late*) pretrain ${m/:late/-late} EMBER_EARLY_PROJECTION=off -- --optimizer $o ;;
    *) pretrain $m -- --optimizer $o ;;
  esac
done
cat $OUT/summary.txt
