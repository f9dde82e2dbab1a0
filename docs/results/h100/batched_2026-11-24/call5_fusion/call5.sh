#!/bin/bash
# One device call (carry [".device"]) after `FEATURES=cuda-fusion bash scripts/build_for_gpu.sh`:
# issue 18 item 3 for the block's element-wise layers (RMSNorm, SwiGLU, the rotary embedding as
# custom operations of burn's fusion stream, `ember_kernels::fusion`): the kernel checks bare and
# under fusion, then `measure --model 1b` (bf16, 4×256) AdamW (bf16 state) and GaLore-8bit on
# `--device cuda-fusion` beside `--device cuda`.
PACKED=1
. scripts/lib_device.sh
for d in cuda cuda-fusion; do
  timeout 150 $B kernels --device $d > $OUT/kernels_$d.log 2>&1
  echo "kernels $d: exit $? at $(( $(date +%s) - T0 )) s; $(grep -c '^ok ' $OUT/kernels_$d.log) ok" | tee -a $OUT/summary.txt
  grep -v '^ok ' $OUT/kernels_$d.log | grep -v '^bf16 step' | head -10 | tee -a $OUT/summary.txt
  grep -E '^[a-zA-Z]* *(rotary|rms_norm|swiglu)' $OUT/kernels_$d.log | tee -a $OUT/summary.txt
  pack
done
M1B="--model 1b --rank 512 --batch 4 --seq 256 --steps 8 --warmup 1 --weights-dtype bf16"
for d in cuda-fusion cuda; do
  run adamw-$d 120 --device $d $M1B --optimizer adamw --state-dtype bf16
  run g8-$d 150 --device $d $M1B --optimizer galore --state-dtype int8
  pack
done
cat $OUT/summary.txt
