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
pretrain_setup
# WARMUP=1: a short GaLore run first (not part of the results) compiles the model's kernels
[ "${WARMUP:-0}" = 1 ] && pretrain_warmup galore
for m in ${METHODS:-adamw galore}; do
  o=${m%%:*}; o=${o%%+*}; name=${m/:/-}; name=${name//+/-}
  flags=""; rest=${m%%:*}; [ "$rest" != "$o" ] && for f in $(echo ${rest#*+} | tr '+' ' '); do flags="$flags --$f"; done
  if [ "$m" != "${m%%:*}" ]; then
    pretrain $name EMBER_CUBLAS=${m##*:} -- --optimizer $o $flags
  else
    pretrain $name -- --optimizer $o $flags
  fi
done
cat $OUT/summary.txt
