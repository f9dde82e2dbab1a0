#!/bin/bash
# One device call (carry [".device"]): the layer-wise LLaMA-7B GaLore-8bit step of issue 14
# (bf16 weights, r1024, 1×256, exact pools) on the current build — its first step (224 device
# projector fits, with the Rayleigh–Ritz step since 2026-11-24), step time and NVML peak.
# Output: $OUT/res.tgz (measure.jsonl, the run's JSON and stderr) and summary.txt.
JSONL=measure.jsonl
PACKED=1
. scripts/lib_device.sh
run 7b-galore8-lw ${LIMIT:-400} --device cuda --model 7b --optimizer galore --rank 1024 \
  --weights-dtype bf16 --state-dtype int8 --layerwise --batch 1 --seq 256 --exact-pools \
  --steps ${STEPS:-3} --warmup 1
cp /tmp/7b-galore8-lw.json /tmp/7b-galore8-lw.err $OUT/ 2>/dev/null
pack
cat $OUT/summary.txt
