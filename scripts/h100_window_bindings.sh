#!/bin/bash
# One device call (carry [".device", ".device4"]; issue 18): the build whose queued cuBLAS windows
# carry their operands' bindings instead of tensor handles (`OwnedJob`, crates/kernels/src/cube/
# cublas.rs), so that a gradient or weight is not "held" by the window that produced or read it.
# Kernel checks bare and under burn's fusion backend; then pretraining (f32, `small`) of every
# method after a warm-up of each, Fira three times and once more with the handles carried as before
# (EMBER_WINDOW_HANDLES=on, the comparison), each run's final checksum and its count of in-place
# outputs found held elsewhere; then the step table REPS times (default 1) beside PyTorch.
PACKED=1
. scripts/lib_device.sh
kernel_checks_both
grep -i "repeats\|bit for bit" $OUT/kernels_cuda.log | head -4 | tee -a $OUT/summary.txt
pretrain_setup
pretrain_warmup adamw galore fira frugal dct
pretrain_counted "fira" "adamw" "galore" "fira_2" "frugal" "dct" "fira_handles EMBER_WINDOW_HANDLES=on" \
  "galore_handles EMBER_WINDOW_HANDLES=on" "fira_3" "adamw_2"
pack
REPS=${REPS:-1} step_table_reps
pack
cat $OUT/summary.txt
