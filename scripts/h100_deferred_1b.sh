#!/bin/bash
# One device call (carry [".device"]) after the CUDA build: the LLaMA-1B bf16 step of issue 13
# (4×256 tokens, rank 512) under the default policy (on CUDA the deferred NaN/Inf verdict):
# GaLore-8bit and AdamW with bf16 state — device peak, train step, and (`EMBER_STEP_TIMING=4`)
# the optimizer's host time by phase in each run's stderr; with KERNELS=1 the CUDA kernel
# checks first. Compare with docs/results/h100/batched_2026-11-24/call2/measure.jsonl.
PACKED=1
. scripts/lib_device.sh
[ "${KERNELS:-0}" = 1 ] && { kernel_checks; pack; }
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
export EMBER_STEP_TIMING=4
run g8 240 $M1B --optimizer galore --state-dtype int8 --stage-trace $OUT/trace_g8.jsonl
cp /tmp/g8.err $OUT/ 2>/dev/null; pack
run adamw 150 $M1B --optimizer adamw --state-dtype bf16 --stage-trace $OUT/trace_adamw.jsonl
cp /tmp/adamw.err $OUT/ 2>/dev/null; pack
grep -h "step timing" $OUT/*.err | tee -a $OUT/summary.txt
cat $OUT/summary.txt
