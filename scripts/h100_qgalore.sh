#!/bin/bash
# Issue 14's Q-GaLore figure and issue 13's CUDA bf16 check, on the GPU machine (carry [".device"]
# after scripts/build_for_gpu.sh): LLaMA-7B layer-wise with INT8 attention/MLP weights (`QLinear`),
# Q-GaLore rank 1024, 8-bit subspace state, bf16 for the rest, its projector fitted on the device,
# burn's pools in exact-size pages (`--exact-pools`); then `ember-bench kernels --device cuda` (the
# fused kernels against the portable path, and a GaLore step on bf16 weights against the f32 step
# on the same values); then galore-torch's per-layer 8-bit mode on LLaMA-1B beside Ember's figures.
# SKIP_KERNELS=1, SKIP_L7=1, SKIP_ANCHOR=1 leave parts out; WITH_L1=1 adds layer-wise LLaMA-1B
# GaLore-8bit with exact-size pools.
# As in scripts/h100_memory.sh: one concurrent step first (kernel compilation), then the
# measurement alone on the GPU. Raw output: $OUT/qgalore.jsonl (both 7B runs), $OUT/kernels.txt, $OUT/anchor.jsonl.
JSONL=qgalore.jsonl RUN_MARGIN=60 RUN_MIN=30 MEASURE_PREFIX="--device cuda" BUDGET_S=${BUDGET_S:-540}
. scripts/lib_device.sh
L7="--model 7b --optimizer galore --rank 1024 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256"
Q7="--model 7b --optimizer qgalore --rank 1024 --weights-dtype bf16 --state-dtype int8 --int8-weights --layerwise --batch 1 --seq 256 --exact-pools"
timeout ${PASS1_S:-200} $B measure --device cuda --json --steps 1 --warmup 0 $Q7 > /tmp/pass1.json 2> /tmp/pass1.err &
[ -z "${SKIP_KERNELS:-}" ] && timeout 200 $B kernels --device cuda > $OUT/kernels.txt 2>&1 &
# GaLore-8bit layer-wise 7B (as measured before, scripts/h100_pools.sh): its first step against
# the 77.7 s (warm kernel caches) of 2026-11-23, before the device projector's 13-step schedule
[ -z "${SKIP_L7:-}" ] && timeout ${PASS1_S:-200} $B measure --device cuda --json --steps 1 --warmup 0 $L7 > /dev/null 2>&1 &
# layer-wise LLaMA-1B GaLore-8bit with exact-size pools, beside galore-torch's per-layer mode
L1="--model 1b --optimizer galore --rank 512 --weights-dtype bf16 --state-dtype int8 --layerwise --batch 4 --seq 256 --exact-pools"
[ -n "${WITH_L1:-}" ] && timeout ${PASS1_S:-200} $B measure --device cuda --json --steps 1 --warmup 0 $L1 > /dev/null 2>&1 &
wait
echo "pass 1 done at $(( $(date +%s) - T0 )) s; $(tail -1 /tmp/pass1.err)" | tee $OUT/summary.txt
[ -f $OUT/kernels.txt ] && tail -3 $OUT/kernels.txt | tee -a $OUT/summary.txt
run 7b-qgalore-int8-lw 240 $Q7 --steps 3 --warmup 1
[ -z "${SKIP_L7:-}" ] && run 7b-galore8-lw 150 $L7 --steps 3 --warmup 1
[ -n "${WITH_L1:-}" ] && run 1b-galore8-lw-exact 90 $L1 --steps 5 --warmup 2
l=$(left)
if [ $l -gt 60 ] && [ -z "${SKIP_ANCHOR:-}" ]; then
  DTYPE=bf16 LAYERWISE=1 timeout $(( l - 10 )) python3 .device/hf_anchor.py .device/whl 1b 4 256 512 $OUT/anchor.jsonl galore8bit,adamw \
    > /tmp/anchor.out 2> /tmp/anchor.err
  echo "anchor 1b layer-wise: exit $?; $(tail -2 /tmp/anchor.out | tr '\n' ' ')" | tee -a $OUT/summary.txt
fi
tar -C /tmp -czf $OUT/raw.tgz $(cd /tmp && ls *.json *.err 2>/dev/null)
cat $OUT/summary.txt
