#!/bin/bash
# Pretraining comparison on the GPU machine (device tool, carry [".device4"]), after
# scripts/build_pretrain_for_gpu.sh staged the CUDA binary in .device4/.
#   bash .device4/gpu_pretrain.sh methods "adamw galore"   # one H100: each method, same run
#   bash .device4/gpu_pretrain.sh multi                    # nvidia-h200-x2: data parallel, 2 GPUs
# Every run writes $OUT/<name>/summary.json (losses, tokens/s, NVML peak memory); burn-train's
# per-iteration progress goes to $OUT/<name>.log.
set -u
P=.device4/pretrain
chmod +x $P
MODE=${1:-methods}
COMMON="--device cuda --model small --batch 32 --seq 256 --epochs ${EPOCHS:-4} --steps-per-epoch ${STEPS:-100} --valid-windows 256 --lr 2e-3 --warmup 40 --gap 200 --seed 42"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "$MODE" = methods ]; then
  for o in ${2:-adamw galore fira frugal qgalore dct}; do
    $P train $COMMON --optimizer $o --out $OUT/$o > $OUT/$o.log 2>&1
    tail -1 $OUT/$o.log
    rm -rf $OUT/$o/checkpoint   # keep the logs and summary, not the weights
  done
else
  $P train $COMMON --optimizer galore --devices 2 --checksum-every 25 --out $OUT/galore-2gpu > $OUT/galore-2gpu.log 2>&1
  tail -1 $OUT/galore-2gpu.log
  rm -rf $OUT/galore-2gpu/checkpoint
fi
