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
if [ -f .device4/pretrain.gz ]; then gzip -dc .device4/pretrain.gz > /tmp/pretrain; P=/tmp/pretrain; else P=.device4/pretrain; fi
chmod +x $P
COMMON="--device cuda --model small --batch 32 --seq 256 --epochs 6 --steps-per-epoch 100 --valid-windows 256 --lr 2e-3 --warmup 40 --gap 200 --seed 42"
timeout 120 $P train --device cuda --model small --batch 32 --seq 256 --epochs 1 --steps-per-epoch 20 \
  --valid-windows 16 --lr 2e-3 --warmup 5 --gap 200 --seed 42 --optimizer galore --out /tmp/warmup > $OUT/warmup.log 2>&1
echo "warmup: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
train() {  # name, optimizer, min macs ("" = default)
  local name=$1 o=$2 macs=$3
  local lim=$(( $(left) - 15 )); [ $lim -lt 45 ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; return; }
  if [ -n "$macs" ]; then export EMBER_CUBLAS_MIN_MACS=$macs; else unset EMBER_CUBLAS_MIN_MACS; fi
  timeout $lim $P train $COMMON --optimizer $o --out $OUT/$name > $OUT/$name.log 2>&1
  echo "$name: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/$name.log)" | tee -a $OUT/summary.txt
  rm -rf $OUT/$name/checkpoint
  unset EMBER_CUBLAS_MIN_MACS
  pack
}
train adamw adamw ""
for m in ${METHODS:-galore fira frugal}; do
  train $m-cublas $m 0
  train $m $m ""
done
cat $OUT/summary.txt
