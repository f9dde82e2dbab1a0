#!/bin/bash
# One device call (carry [".device"]) after the CUDA build: the LLaMA-1B bf16 GaLore-8bit step
# (issue 13's run: 4×256 tokens, rank 512) with the bf16 projector kept in bf16 on the native
# path (default) and widened to f32 as before (`EMBER_KEEP_PROJECTOR_DTYPE=off`), alternated
# twice after a warm-up run that compiles the kernels; `EMBER_STEP_TIMING=4` in each stderr.
PACKED=1
. scripts/lib_device.sh
M1B="--device cuda --model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
export EMBER_STEP_TIMING=4
run warmup 240 $M1B --optimizer galore --state-dtype int8
for pair in 1 2; do
  run keep$pair 90 $M1B --optimizer galore --state-dtype int8
  cp /tmp/keep$pair.err $OUT/
  EMBER_KEEP_PROJECTOR_DTYPE=off run widen$pair 90 $M1B --optimizer galore --state-dtype int8
  cp /tmp/widen$pair.err $OUT/
  pack
done
grep -H "step timing" $OUT/*.err | tee -a $OUT/summary.txt
pack
cat $OUT/summary.txt
