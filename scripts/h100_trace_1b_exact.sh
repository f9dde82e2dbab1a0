#!/bin/bash
# scripts/h100_trace_1b.sh with exact-size pools (`measure --exact-pools`): the ordinary LLaMA-1B
# GaLore-8bit step (bf16, 4×256) traced after forward, backward and update.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
M1B="--device cuda --model 1b --rank 512 --steps 3 --warmup 1 --weights-dtype bf16"
run galore8_4x256_exact 150 $M1B --optimizer galore --state-dtype int8 --batch 4 --seq 256 --exact-pools \
  --stage-trace $OUT/trace_galore8_4x256_exact.jsonl
pack
cat $OUT/summary.txt
