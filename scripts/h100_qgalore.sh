#!/bin/bash
# Issue 14's Q-GaLore figure and issue 13's CUDA bf16 check, on the GPU machine (carry [".device"]
# after scripts/build_for_gpu.sh): LLaMA-7B layer-wise with INT8 attention/MLP weights (`QLinear`),
# Q-GaLore rank 1024, 8-bit subspace state, bf16 for the rest, its projector fitted on the device,
# burn's pools in exact-size pages (`--exact-pools`); then `ember-bench kernels --device cuda` (the
# fused kernels against the portable path, and a GaLore step on bf16 weights against the f32 step
# on the same values); then galore-torch's per-layer 8-bit mode on LLaMA-1B beside Ember's figures.
# As in scripts/h100_memory.sh: one concurrent step first (kernel compilation), then the
# measurement alone on the GPU. Raw output: $OUT/qgalore.jsonl, $OUT/kernels.txt, $OUT/anchor.jsonl.
set -u
B=$(pwd)/.device/ember-bench
chmod +x $B
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET_S:-540}))
left() { echo $((DEADLINE - $(date +%s))); }
export EMBER_KERNEL_CACHE=/tmp/ember-kc CUDA_CACHE_PATH=/tmp/nv-cache CUDA_CACHE_MAXSIZE=4294967296
Q7="--model 7b --optimizer qgalore --rank 1024 --weights-dtype bf16 --state-dtype int8 --int8-weights --layerwise --batch 1 --seq 256 --exact-pools"
timeout ${PASS1_S:-200} $B measure --device cuda --json --steps 1 --warmup 0 $Q7 > /tmp/pass1.json 2> /tmp/pass1.err &
timeout 200 $B kernels --device cuda > $OUT/kernels.txt 2>&1 &
wait
echo "pass 1 done at $(( $(date +%s) - T0 )) s; $(tail -1 /tmp/pass1.err)" | tee $OUT/summary.txt
tail -3 $OUT/kernels.txt | tee -a $OUT/summary.txt
l=$(left); lim=$(( l - 120 )); [ $lim -gt 240 ] && lim=240
t0=$(date +%s%N)
timeout $lim $B measure --device cuda --json --steps 3 --warmup 1 $Q7 > /tmp/q7.json 2> /tmp/q7.err
rc=$?; t1=$(date +%s%N)
python3 - "$rc" "$t0" "$t1" "$Q7 --steps 3 --warmup 1" >> $OUT/qgalore.jsonl <<'PY'
import json, sys
rc, t0, t1, args = sys.argv[1:]
try:
    rows = json.load(open("/tmp/q7.json"))
except Exception:
    rows = None
print(json.dumps({"name": "7b-qgalore-int8-lw", "exit": int(rc), "wall_s": (int(t1) - int(t0)) / 1e9,
                  "args": args, "rows": rows}))
PY
echo "7b-qgalore-int8-lw: exit $rc, $(( (t1 - t0) / 1000000000 )) s; $(tail -1 /tmp/q7.err)" | tee -a $OUT/summary.txt
l=$(left)
if [ $l -gt 60 ]; then
  DTYPE=bf16 LAYERWISE=1 timeout $(( l - 10 )) python3 .device/hf_anchor.py .device/whl 1b 4 256 512 $OUT/anchor.jsonl galore8bit,adamw \
    > /tmp/anchor.out 2> /tmp/anchor.err
  echo "anchor 1b layer-wise: exit $?; $(tail -2 /tmp/anchor.out | tr '\n' ' ')" | tee -a $OUT/summary.txt
fi
tar -C /tmp -czf $OUT/raw.tgz pass1.json pass1.err q7.json q7.err anchor.err 2>/dev/null
cat $OUT/summary.txt
