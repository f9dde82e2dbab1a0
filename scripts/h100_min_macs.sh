#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: the kernel checks on CUDA,
# then the pretraining run (scripts/h100_pretrain_cublas.sh's settings, f32) with the optimizers'
# small projection products on burn's matmul (the default, EMBER_CUBLAS_MIN_MACS = 2^29) and on
# cuBLAS (EMBER_CUBLAS_MIN_MACS=0) — the threshold was chosen when every cuBLAS window blocked the
# host; windows are now queued without blocking (issue 18). Methods: $METHODS (default
# "galore fira frugal"), AdamW once (its step has no projection products).
PACKED=1
JSONL=unused.jsonl
. scripts/lib_device.sh
kernel_checks
grep -E '^[a-z]* *(rotary)' $OUT/kernels_cuda.log | tee -a $OUT/summary.txt
pack
pretrain_setup
pretrain_warmup galore
pretrain adamw -- --optimizer adamw
for m in ${METHODS:-galore fira frugal}; do
  pretrain $m-cublas EMBER_CUBLAS_MIN_MACS=0 -- --optimizer $m
  pretrain $m -- --optimizer $m
done
cat $OUT/summary.txt
