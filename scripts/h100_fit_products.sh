#!/bin/bash
# One device call (carry [".device", ".device4"]) after the CUDA build: the device projector's
# fit with its tall products on the backend's projection product (cuBLAS on CUDA, default)
# against burn's matmul (`EMBER_FIT_PRODUCTS=burn`): the kernel checks; `ember-bench step
# --refreshes` (a warm device refresh per matrix, `refresh_device_ms`, and its energy against
# the exact SVD's) at the pretraining model's 512×1376 r128 and at 2048×5461 / 4096×11008 r512;
# then the pretraining run (f32, `small`) for GaLore and Fira both ways, and AdamW.
PACKED=1
. scripts/lib_device.sh
kernel_checks; pack
S="step --device cuda --optimizer galore --iters 2 --warmup 1"
for how in cublas burn; do
  e=EMBER_FIT_PRODUCTS=$how
  env $e timeout 120 $B $S --shapes 512x1376 --ranks 128 --refreshes 3 > $OUT/refresh_${how}_small.jsonl 2> $OUT/refresh_${how}_small.err
  env $e timeout 200 $B $S --shapes 2048x5461,4096x11008 --ranks 512 --refreshes 1 > $OUT/refresh_${how}_large.jsonl 2> $OUT/refresh_${how}_large.err
  echo "refresh $how: at $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  python3 - $OUT/refresh_${how}_small.jsonl $OUT/refresh_${how}_large.jsonl <<'PY' | tee -a $OUT/summary.txt
import json, sys
for f in sys.argv[1:]:
    for l in open(f):
        if l.startswith("{"):
            d = json.loads(l)
            print(f"  {d['m']}x{d['n']} r{d['rank']}: device refresh {d['refresh_device_ms']} ms, energy {d['device_energy_ratio']}, host SVD {d['refresh_ms']} ms")
PY
  pack
done
pretrain_setup
pretrain_warmup galore
for m in galore galore:burn fira fira:burn adamw galore; do
  o=${m%%:*}; n=${m/:burn/_burnfit}; [ -d $OUT/$n ] && n=$n-again
  case $m in
    *:burn) pretrain $n EMBER_FIT_PRODUCTS=burn EMBER_STEP_TIMING=100 -- --optimizer $o ;;
    *) pretrain $n EMBER_FIT_PRODUCTS=cublas EMBER_STEP_TIMING=100 -- --optimizer $o ;;
  esac
done
pack
cat $OUT/summary.txt
