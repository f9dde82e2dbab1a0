#!/bin/bash
# Device calls (carry [".device", ".device4"]) after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`
# and `bash scripts/build_pretrain_for_gpu.sh` (then `gzip .device4/pretrain`: the carried tree is
# limited to 64 MiB): the pretraining table of docs/benchmarks.md
# (issue 7's run: `small` model, 6 epochs of 100 steps) with the projection products on cuBLAS
# (issue 18 items 1 and "pretraining"). Usage:
#   CHECKS=1 METHODS="adamw galore fira" bash scripts/h100_pretrain_cublas.sh   # first call
#   METHODS="frugal dct qgalore galore:off" bash scripts/h100_pretrain_cublas.sh   # second call
# `NAME:off` runs NAME with EMBER_CUBLAS=off (burn's matmul), for a same-binary comparison;
# `NAME+FLAG…` adds `--FLAG` to its command line (e.g. `galore+host-svd+check-on-device`).
# WARMUP=1 compiles the kernels with a short run first (below). With CHECKS=1 the kernel checks on CUDA (bare and under burn's fusion) and the GaLore r512 steps
# run first. Output:
# $OUT/res.tgz (every method's summary.json and log; packed after each run), $OUT/summary.txt.
PACKED=1
JSONL=unused.jsonl
. scripts/lib_device.sh
if [ "${CHECKS:-0}" = 1 ]; then
  timeout 100 $B kernels --device cuda > $OUT/kernels_cuda.log 2>&1
  echo "kernels cuda: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/kernels_cuda.log)" | tee -a $OUT/summary.txt
  timeout 100 $B kernels --device cuda-fusion > $OUT/kernels_fusion.log 2>&1
  echo "kernels cuda-fusion: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/kernels_fusion.log)" | tee -a $OUT/summary.txt
  timeout 60 $B step --device cuda --optimizer galore --ranks 512 --iters 20 --refreshes 0 \
    > $OUT/step_galore.jsonl 2> $OUT/step.err
  echo "step galore: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  pack
fi
if [ -f .device4/pretrain.gz ]; then gzip -dc .device4/pretrain.gz > /tmp/pretrain; P=/tmp/pretrain; else P=.device4/pretrain; fi
chmod +x $P
COMMON="--device cuda --model small --batch 32 --seq 256 --epochs ${EPOCHS:-6} --steps-per-epoch ${STEPS:-100} --valid-windows 256 --lr 2e-3 --warmup 40 --gap 200 --seed 42"
# WARMUP=1: a short GaLore run first (1 epoch of 20 steps, not part of the results) compiles the
# model's kernels, so that the first method's tokens/s are not a cold start's
if [ "${WARMUP:-0}" = 1 ]; then
  timeout 120 $P train --device cuda --model small --batch 32 --seq 256 --epochs 1 --steps-per-epoch 20 \
    --valid-windows 16 --lr 2e-3 --warmup 5 --gap 200 --seed 42 --optimizer galore --out /tmp/warmup > $OUT/warmup.log 2>&1
  echo "warmup: exit $? at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
fi
for m in ${METHODS:-adamw galore}; do
  o=${m%%:*}; o=${o%%+*}; name=${m/:/-}; name=${name//+/-}
  flags=""; rest=${m%%:*}; [ "$rest" != "$o" ] && for f in $(echo ${rest#*+} | tr '+' ' '); do flags="$flags --$f"; done
  lim=$(( $(left) - 15 )); [ $lim -lt 60 ] && { echo "$name: skipped (deadline)" | tee -a $OUT/summary.txt; continue; }
  if [ "$m" != "${m%%:*}" ]; then export EMBER_CUBLAS=${m##*:}; else unset EMBER_CUBLAS; fi
  timeout $lim $P train $COMMON --optimizer $o $flags --out $OUT/$name > $OUT/$name.log 2>&1
  echo "$name: exit $? at $(( $(date +%s) - T0 )) s; $(tail -1 $OUT/$name.log)" | tee -a $OUT/summary.txt
  rm -rf $OUT/$name/checkpoint
  pack
done
unset EMBER_CUBLAS
cat $OUT/summary.txt
