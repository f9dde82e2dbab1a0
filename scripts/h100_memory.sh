#!/bin/bash
# Issues 13/14 on the GPU machine, in one call (carry [".device"] after scripts/build_for_gpu.sh),
# most important first; every result lands in $OUT as JSON lines with the command beside it.
#  1. kernel checks on CUDA (the 8-bit Adam kernels included);
#  2. LLaMA-1B, batch 4×256, bf16 weights: AdamW, GaLore, GaLore-8bit (rank 512) — peak device
#     memory (NVML) and train-step time — beside PyTorch (HF transformers, galore-torch) on the same
#     model, batch and sequence;
#  3. LLaMA-7B layer-wise: GaLore-8bit rank 1024 with bf16 weights, and Q-GaLore with INT8
#     projections, 1×256 tokens; `plan --model 7b --budget 24GiB` beside them;
#  4. LLaMA-1B ordinary vs layer-wise (AdamW-bf16, GaLore-8bit);
#  5. time to the first step: `measure --model 350m` and `--model 1b` a second time (warm caches).
# Every `measure` prints a progress line per step on stderr (kept in $OUT/*.err) with its time.
set -u
B=.device/ember-bench
chmod +x $B
export EMBER_KERNEL_CACHE=/tmp/ember-kernel-cache
export PYTHONUNBUFFERED=1
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > $OUT/env.txt 2>&1
timeout 300 $B kernels --device cuda > $OUT/kernels_cuda.log 2>&1; echo "kernels exit $?" >> $OUT/kernels_cuda.log
grep -v '^ok ' $OUT/kernels_cuda.log | tail -5

M=$OUT/measure.jsonl
run() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N)
  timeout $limit $B measure --device cuda --json "$@" > $OUT/$name.json 2> $OUT/$name.err
  local rc=$?
  local t1=$(date +%s.%N)
  python3 - "$name" "$rc" "$t0" "$t1" "$OUT/$name.json" "$*" >> $M <<'PY'
import json, sys
name, rc, t0, t1, path, args = sys.argv[1:]
try:
    rows = json.load(open(path))
except Exception:
    rows = None
print(json.dumps({"name": name, "exit": int(rc), "wall_s": float(t1) - float(t0), "args": args, "rows": rows}))
PY
  echo "$name: exit $rc, $(tail -1 $OUT/$name.err)"
}
# 2. 1B bf16, ordinary
for o in "adamw --state-dtype f32" "galore --state-dtype f32" "galore --state-dtype int8"; do
  set -- $o
  run 1b-$1-$3 420 --model 1b --optimizer $1 --state-dtype $3 --weights-dtype bf16 --rank 512 --batch 4 --seq 256 --steps 5 --warmup 3
done
DTYPE=bf16 timeout 500 python3 .device/hf_anchor.py .device/whl 1b 4 256 512 $OUT/anchor_1b_bf16.jsonl adamw,galore,galore8bit > $OUT/anchor_1b.log 2>&1
# 3. 7B layer-wise
run 7b-galore8-lw 540 --model 7b --optimizer galore --rank 1024 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256 --steps 2 --warmup 1
run 7b-qgalore-int8-lw 540 --model 7b --optimizer qgalore --rank 1024 --weights-dtype bf16 --state-dtype int8 --int8-weights --layerwise --batch 1 --seq 256 --steps 2 --warmup 1
$B plan --model 7b --budget 24GiB --json > $OUT/plan_7b_24GiB.json 2>&1
DTYPE=bf16 LAYERWISE=1 timeout 500 python3 .device/hf_anchor.py .device/whl 7b 1 256 1024 $OUT/anchor_7b_layerwise.jsonl galore8bit > $OUT/anchor_7b.log 2>&1
# 4. 1B ordinary vs layer-wise
run 1b-adamw-bf16-lw 420 --model 1b --optimizer adamw --weights-dtype bf16 --state-dtype bf16 --layerwise --batch 4 --seq 256 --steps 5 --warmup 3
run 1b-galore8-lw 420 --model 1b --optimizer galore --rank 512 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 4 --seq 256 --steps 5 --warmup 3
# 5. second runs (warm kernel caches)
run 350m-second 300 --model 350m --optimizer galore --batch 4 --seq 256 --steps 2 --warmup 1
run 1b-second 300 --model 1b --optimizer galore --rank 512 --weights-dtype bf16 --state-dtype int8 --batch 4 --seq 256 --steps 2 --warmup 1
du -sh $EMBER_KERNEL_CACHE > $OUT/kernel_cache_size.txt 2>&1
