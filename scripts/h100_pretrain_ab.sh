#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: kernel checks bare and
# under fusion, then pretraining (f32, `small`, after a warm-up run) of each method of METHODS
# (default "dct fira adamw") with the build's default and with AB_ENV (default
# EMBER_ADAM_VECTORS=off), alternating (NAME, NAME_off), ROUNDS times (default 1; later rounds
# NAME_2, NAME_off_2, …), after a warm-up run of every method of METHODS and EXTRA; then one run
# of each method of EXTRA (default none) with the build's default. TABLES=1: then issue 18's step
# table once (`step_table_reps 1`, carry the anchors and galore-torch's wheel in .device/ as for
# scripts/h100_tables_pretrain.sh).
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
pretrain_setup
pretrain_warmup ${METHODS:-dct fira adamw} ${EXTRA:-}
for k in $(seq 1 ${ROUNDS:-1}); do
  suffix=""; [ $k -gt 1 ] && suffix="_$k"
  for m in ${METHODS:-dct fira adamw}; do
    pretrain $m$suffix -- --optimizer $m
    pretrain ${m}_off$suffix ${AB_ENV:-EMBER_ADAM_VECTORS=off} -- --optimizer $m
  done
done
[ -n "${EXTRA:-}" ] && pretrain_runs $EXTRA
[ "${TABLES:-0}" = 1 ] && step_table_reps 1
pack
cat $OUT/summary.txt
