#!/bin/bash
# One device call (carry [".device"], the ember-bench build of scripts/build_for_gpu.sh with
# cuda-fusion): where an ordinary LLaMA-1B step's memory goes (issue 13). `measure
# --stage-trace` records burn's pools (in use, reserved) and NVML after the forward pass, the
# backward pass and the update of every step (each after a device synchronization), beside the
# polled NVML peak: bf16 weights, GaLore-8bit r512 at 4×256 and 1×1024 tokens, AdamW with bf16
# state at 4×256. Raw output: $OUT/res.tgz and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
M1B="--device cuda --model 1b --rank 512 --steps 3 --warmup 1 --weights-dtype bf16"
run galore8_4x256 150 $M1B --optimizer galore --state-dtype int8 --batch 4 --seq 256 \
  --stage-trace $OUT/trace_galore8_4x256.jsonl
pack
run galore8_1x1024 120 $M1B --optimizer galore --state-dtype int8 --batch 1 --seq 1024 \
  --stage-trace $OUT/trace_galore8_1x1024.jsonl
pack
run adamw_bf16_4x256 120 $M1B --optimizer adamw --state-dtype bf16 --batch 4 --seq 256 \
  --stage-trace $OUT/trace_adamw_4x256.jsonl
pack
cat $OUT/summary.txt
